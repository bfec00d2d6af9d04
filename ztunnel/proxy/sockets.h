#pragma once

#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without it

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <expected>
#include <functional>
#include <optional>
#include <string>
#include <thread>

namespace sluice::ztunnel::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// Every socket ztunnel makes carries this mark (Istio's value, bpf/include/sluice_abi.h), so
// neither the eBPF datapath nor the sidecar iptables rules capture ztunnel's own traffic.
inline constexpr uint32_t kZtunnelMark = 0x539;

// Makes sockets inside pods' network namespaces. A socket keeps the netns it was created in, so
// only creation has to happen there: one dedicated thread setns()es into the pod's netns,
// creates the socket and hands the descriptor back; workers never change namespace.
class NetnsSockets {
  public:
    NetnsSockets();
    ~NetnsSockets();
    NetnsSockets(const NetnsSockets&) = delete;
    NetnsSockets& operator=(const NetnsSockets&) = delete;

    // Runs `make` (returns an fd or -errno) in the netns of `netns_fd` (-1: ztunnel's own).
    // Blocking: for the enrollment thread.
    int run_sync(int netns_fd, std::function<int()> make);
    // The same from a worker coroutine, without blocking the worker.
    asio::awaitable<int> run(int netns_fd, std::function<int()> make);

  private:
    int enter_and_run(int netns_fd, const std::function<int()>& make);

    int own_netns_ = -1;
    asio::io_context ctx_;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
    std::thread thread_;
};

// A marked, listening TCP socket (SO_REUSEADDR, SO_REUSEPORT, non-blocking): fd or -errno.
// SO_REUSEPORT lets a second ztunnel listen on the same ports during a takeover.
int open_listener(const tcp::endpoint& at, int backlog = 1024);
// HBONE connections notice a peer that went away (node crash, partition) instead of holding
// streams for the ~15 minutes of TCP's retransmissions: keepalive probes after 60 s idle (3,
// 10 s apart), and TCP_USER_TIMEOUT 30 s for bytes the peer does not acknowledge. ztunnel
// always reads its HBONE sockets, so a live peer never meets the timeout by not reading. On a
// listener, accepted connections inherit them. 0 or -errno.
inline constexpr int kHboneKeepIdleSeconds = 60;
inline constexpr int kHboneKeepIntervalSeconds = 10;
inline constexpr int kHboneKeepCount = 3;
inline constexpr unsigned kHboneUserTimeoutMs = 30'000;
int keep_hbone_alive(int fd);
// Writes 1 to net.ipv4.tcp_migrate_req of the calling thread's netns: 0 or -errno.
int enable_tcp_migrate_req();
// A marked TCP socket, optionally bound to `source` (with IP_TRANSPARENT when `transparent`,
// so a non-local address can be the source): fd or -errno.
int open_client_socket(bool ipv6, const std::optional<asio::ip::address>& source, bool transparent);
// SO_ORIGINAL_DST (IPv4) / IP6T_SO_ORIGINAL_DST (IPv6): answered by the datapath's
// cgroup/getsockopt program in sidecarless mode and by netfilter behind iptables REDIRECT.
std::expected<tcp::endpoint, int> original_destination(int fd);

std::string to_string(const tcp::endpoint& ep);

// A TCP socket typed with its io_context's own executor: 32 bytes smaller than tcp::socket, and
// its pending operations keep a 16-byte executor instead of any_io_executor's 48 (10k held
// connections each have one, and a pending wait on it). Converts to tcp::socket by moving.
using WorkerSocket = asio::basic_stream_socket<tcp, asio::io_context::executor_type>;

// A connection accept() returned, not yet registered with any io_context: the worker that
// serves it makes the socket. An outbound connection is registered only with the worker that
// owns its HBONE pool (handing a registered socket over leaves its reactor state behind in the
// first worker's free list: 10k held connections, ~0.8 MiB). Closes the descriptor unless
// made into a socket.
class AcceptedFd {
  public:
    AcceptedFd(int fd, tcp protocol) : fd_(fd), protocol_(protocol) {}
    AcceptedFd(AcceptedFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)), protocol_(o.protocol_) {}
    AcceptedFd& operator=(AcceptedFd&&) = delete;
    ~AcceptedFd();

    int fd() const { return fd_; }
    // The client's address (unset when the peer is gone).
    tcp::endpoint remote_endpoint() const;
    // The socket on `io`; on failure the connection is reset and the error returned.
    std::expected<WorkerSocket, boost::system::error_code> socket(asio::io_context& io) &&;
    // Closes with RST: the client learns the connection failed.
    void reset();

  private:
    int fd_;
    tcp protocol_;
};

}  // namespace sluice::ztunnel::proxy
