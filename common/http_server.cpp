#include "common/http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <sstream>

#include "common/fd_io.h"
#include "common/netns.h"

namespace sluice {
namespace {

namespace http = boost::beast::http;

constexpr int kIoTimeoutMs = 2000;
constexpr size_t kMaxRequestBytes = 16 * 1024;

std::string render(const HttpResponse& r, bool head_only) {
    http::response<http::string_body> res{static_cast<http::status>(r.status), 11};
    res.set(http::field::content_type, r.content_type);
    res.set(http::field::connection, "close");
    res.body() = head_only ? std::string() : r.body;
    res.prepare_payload();
    if (head_only)
        res.content_length(r.body.size());
    std::ostringstream out;
    out << res;
    return out.str();
}

}  // namespace

bool split_host_port(const std::string& address, std::string& host, uint16_t& port) {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos || colon + 1 >= address.size())
        return false;
    host = address.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    unsigned value = 0;
    auto [p, ec] =
        std::from_chars(address.data() + colon + 1, address.data() + address.size(), value);
    if (ec != std::errc() || p != address.data() + address.size() || value > 65535)
        return false;
    port = static_cast<uint16_t>(value);
    return !host.empty();
}

std::expected<std::unique_ptr<HttpServer>, std::string> HttpServer::start(
    const std::string& address, Handler handler, const std::string& netns) {
    std::string host;
    uint16_t port = 0;
    if (!split_host_port(address, host, port))
        return std::unexpected("invalid listen address '" + address + "'");
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (host.find(':') != std::string::npos) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        if (inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) != 1)
            return std::unexpected("invalid IPv6 address " + host);
        len = sizeof(sockaddr_in6);
    } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        if (inet_pton(AF_INET, host.c_str(), &a->sin_addr) != 1)
            return std::unexpected("invalid IPv4 address " + host);
        len = sizeof(sockaddr_in);
    }
    int fd = -1;
    std::string error;
    auto open_listener = [&] {
        fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            error = std::string("socket: ") + std::strerror(errno);
            return;
        }
        int one = 1;
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 64) != 0) {
            error = "listen on " + address + ": " + std::strerror(errno);
            ::close(fd);
            fd = -1;
        }
    };
    try {
        if (netns.empty()) {
            open_listener();
        } else {
            run_in_netns(netns, open_listener);
        }
    } catch (const std::exception& e) {
        return std::unexpected(std::string(e.what()));
    }
    if (fd < 0)
        return std::unexpected(error);
    sockaddr_storage bound{};
    socklen_t blen = sizeof bound;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
    uint16_t actual =
        ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                         : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
    return std::unique_ptr<HttpServer>(new HttpServer(fd, actual, std::move(handler)));
}

HttpServer::HttpServer(int fd, uint16_t port, Handler handler)
    : listen_fd_(fd), port_(port), handler_(std::move(handler)) {
    thread_ = std::thread([this] { serve(); });
}

HttpServer::~HttpServer() {
    stopping_ = true;
    ::shutdown(listen_fd_, SHUT_RDWR);
    if (thread_.joinable())
        thread_.join();
    ::close(listen_fd_);
}

void HttpServer::serve() {
    while (!stopping_) {
        if (!wait_fd(listen_fd_, POLLIN, 200))
            continue;
        int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        std::string raw;
        boost::beast::error_code ec;
        char buf[4096];
        bool done = false;
        while (!done && raw.size() < kMaxRequestBytes && wait_fd(c, POLLIN, kIoTimeoutMs)) {
            ssize_t r = ::recv(c, buf, sizeof buf, 0);
            if (r <= 0)
                break;
            raw.append(buf, static_cast<size_t>(r));
            http::request_parser<http::empty_body> attempt;
            attempt.header_limit(kMaxRequestBytes);
            attempt.put(boost::asio::buffer(raw), ec);
            if (ec == http::error::need_more)
                continue;
            done = true;
            if (!ec) {
                const auto& req = attempt.get();
                const std::string method(req.method_string());
                const std::string target(req.target());
                HttpResponse res;
                try {
                    res = handler_(method, target);
                } catch (const std::exception& e) {
                    res = {500, std::string("internal error: ") + e.what() + "\n"};
                }
                send_all(c, render(res, method == "HEAD"), kIoTimeoutMs);
            } else {
                send_all(c, render({400, "bad request: " + ec.message() + "\n"}, false),
                         kIoTimeoutMs);
            }
        }
        ::close(c);
    }
}

}  // namespace sluice
