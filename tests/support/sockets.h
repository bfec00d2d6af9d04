#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>

namespace sluice::test {

// An owned file descriptor.
class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd& operator=(Fd&& o) noexcept;
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd();
    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }

  private:
    int fd_ = -1;
};

// A TCP listener on ip:port created inside the network namespace at `netns` ("" = ours).
// Throws std::system_error on failure.
Fd tcp_listen(const std::string& netns, const std::string& ip, uint16_t port);

// Connects from inside `netns` with a bounded timeout. Returns the socket, or an invalid Fd
// with `*error` set to the errno of the failed connect() (EPERM, ECONNREFUSED, ETIMEDOUT…).
Fd tcp_connect(const std::string& netns, const std::string& ip, uint16_t port, int* error,
               int timeout_ms = 3000);

// Accepts one connection within the timeout; invalid Fd on timeout.
Fd tcp_accept(const Fd& listener, int timeout_ms = 3000);

// Sends all of `data`, then reads exactly data.size() bytes back (or until timeout/EOF).
std::string send_and_receive(const Fd& s, const std::string& data, int timeout_ms = 3000);

// Reads until `n` bytes arrived, EOF, an error or the timeout; returns what arrived.
std::string recv_exactly(int fd, size_t n, int timeout_ms = 3000);

// `msg` goes from `a` to `b` and then from `b` to `a`, both arriving intact.
bool bytes_flow(int a, int b, const std::string& msg, int timeout_ms = 3000);

// How a connection that should have been torn down ended, waiting up to `timeout_ms` for it:
// the errno recv() reports (ECONNRESET, ECONNABORTED…), -1 for an orderly EOF, or 0 when it is
// still open (nothing arrived). Reads at most one byte.
int recv_error_within(int fd, int timeout_ms);

// Serves one connection on `listener`: echoes everything until the peer closes. Returns the
// peer address as seen by accept(). Runs within the timeout.
std::string echo_one_connection(const Fd& listener, int timeout_ms = 5000);

// "ip" of getpeername()/getsockname(), without the port; IPv4-mapped IPv6 shown as IPv4.
std::string peer_ip(int fd);
std::string local_ip(int fd);
uint16_t local_port(int fd);

}  // namespace sluice::test

namespace sluice::test {

// A plain HTTP/1.1 GET to ip:port from inside `netns`; returns "<status>\n<body>" or "" on
// failure. For metrics and readiness endpoints.
std::string http_get(const std::string& netns, const std::string& ip, uint16_t port,
                     const std::string& path);

// One HTTP/1.1 exchange (Connection: close) from inside `netns`; status 0 when it failed.
struct HttpReply {
    unsigned status = 0;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;                            // de-chunked
};
HttpReply http_request(const std::string& netns, const std::string& ip, uint16_t port,
                       const std::string& method, const std::string& path,
                       const std::map<std::string, std::string>& headers = {},
                       const std::string& body = "", int timeout_ms = 5000);

// accept() on a listener the caller does not own as an Fd.
Fd accept_on(int listener_fd, int timeout_ms = 3000);

}  // namespace sluice::test
