#pragma once

#include <atomic>
#include <expected>
#include <functional>
#include <memory>
#include <string>
#include <thread>

namespace sluice {

struct HttpResponse {
    int status = 200;
    std::string body;
    std::string content_type = "text/plain; charset=utf-8";
};

// A small HTTP/1.1 server for control endpoints (metrics, readiness, admin): one thread, one
// request per connection, bounded reads (Boost.Beast parser, 2 s socket timeouts, 16 KiB
// header limit), so a slow client delays a scrape but never wedges the process. Not for the
// data path.
class HttpServer {
  public:
    using Handler =
        std::function<HttpResponse(const std::string& method, const std::string& target)>;

    // `address` is "ip:port" ("0.0.0.0:15030", "[::]:15030", "127.0.0.1:0"). When `netns` is a
    // path, the listening socket is created inside that network namespace.
    static std::expected<std::unique_ptr<HttpServer>, std::string> start(
        const std::string& address, Handler handler, const std::string& netns = "");
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    uint16_t port() const { return port_; }

  private:
    HttpServer(int fd, uint16_t port, Handler handler);
    void serve();

    int listen_fd_;
    uint16_t port_;
    Handler handler_;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

// Splits "ip:port" / "[v6]:port" into its parts; false when malformed.
bool split_host_port(const std::string& address, std::string& host, uint16_t& port);

}  // namespace sluice
