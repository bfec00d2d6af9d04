#include "tests/support/sockets.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <system_error>

#include "common/fd_io.h"
#include "common/netns.h"

namespace sluice::test {
namespace {

sockaddr_storage make_addr(const std::string& ip, uint16_t port, socklen_t* len) {
    sockaddr_storage ss{};
    if (ip.find(':') != std::string::npos) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        if (inet_pton(AF_INET6, ip.c_str(), &a->sin6_addr) != 1)
            throw std::invalid_argument("bad ip " + ip);
        *len = sizeof(sockaddr_in6);
    } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        if (inet_pton(AF_INET, ip.c_str(), &a->sin_addr) != 1)
            throw std::invalid_argument("bad ip " + ip);
        *len = sizeof(sockaddr_in);
    }
    return ss;
}

template <typename F>
void maybe_in_netns(const std::string& netns, F&& fn) {
    if (netns.empty()) {
        fn();
    } else {
        run_in_netns(netns, fn);
    }
}

std::string format_ip(const sockaddr_storage& ss) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
        inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof buf);
        return buf;
    }
    const auto* a6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr)) {
        inet_ntop(AF_INET, &a6->sin6_addr.s6_addr[12], buf, sizeof buf);
        return buf;
    }
    inet_ntop(AF_INET6, &a6->sin6_addr, buf, sizeof buf);
    return buf;
}

}  // namespace

Fd& Fd::operator=(Fd&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
}

Fd::~Fd() {
    if (fd_ >= 0)
        ::close(fd_);
}

Fd tcp_listen(const std::string& netns, const std::string& ip, uint16_t port) {
    Fd s;
    maybe_in_netns(netns, [&] {
        socklen_t len = 0;
        sockaddr_storage addr = make_addr(ip, port, &len);
        s = Fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
        if (!s)
            throw std::system_error(errno, std::generic_category(), "socket");
        int one = 1;
        ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0) {
            throw std::system_error(errno, std::generic_category(),
                                    "bind " + ip + ":" + std::to_string(port));
        }
        if (::listen(s.get(), 128) != 0)
            throw std::system_error(errno, std::generic_category(), "listen");
    });
    return s;
}

Fd tcp_connect(const std::string& netns, const std::string& ip, uint16_t port, int* error,
               int timeout_ms) {
    Fd s;
    int err = 0;
    maybe_in_netns(netns, [&] {
        socklen_t len = 0;
        sockaddr_storage addr = make_addr(ip, port, &len);
        s = Fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!s)
            throw std::system_error(errno, std::generic_category(), "socket");
        if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0)
            return;
        if (errno != EINPROGRESS) {
            err = errno;
            return;
        }
        if (!wait_fd(s.get(), POLLOUT, timeout_ms)) {
            err = ETIMEDOUT;
            return;
        }
        socklen_t elen = sizeof err;
        ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &elen);
    });
    if (error != nullptr)
        *error = err;
    if (err != 0)
        return Fd();
    // The socket stays non-blocking: every helper below bounds its waits with poll().
    int one = 1;
    ::setsockopt(s.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return s;
}

Fd tcp_accept(const Fd& listener, int timeout_ms) {
    if (!wait_fd(listener.get(), POLLIN, timeout_ms))
        return Fd();
    return Fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
}

std::string send_and_receive(const Fd& s, const std::string& data, int timeout_ms) {
    size_t sent = 0;
    while (sent < data.size()) {
        if (!wait_fd(s.get(), POLLOUT, timeout_ms))
            return {};
        ssize_t w = ::send(s.get(), data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (w <= 0)
            return {};
        sent += static_cast<size_t>(w);
    }
    return recv_exactly(s.get(), data.size(), timeout_ms);
}

std::string recv_exactly(int fd, size_t n, int timeout_ms) {
    std::string got;
    char buf[65536];
    while (got.size() < n) {
        if (!wait_fd(fd, POLLIN, timeout_ms))
            break;
        ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - got.size()), 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0)
            break;
        got.append(buf, static_cast<size_t>(r));
    }
    return got;
}

bool bytes_flow(int a, int b, const std::string& msg, int timeout_ms) {
    return send_all(a, msg, timeout_ms) && recv_exactly(b, msg.size(), timeout_ms) == msg &&
           send_all(b, msg, timeout_ms) && recv_exactly(a, msg.size(), timeout_ms) == msg;
}

int recv_error_within(int fd, int timeout_ms) {
    if (!wait_fd(fd, POLLIN, timeout_ms))
        return 0;
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
    if (n == 0)
        return -1;
    return n < 0 ? errno : 0;
}

std::string echo_one_connection(const Fd& listener, int timeout_ms) {
    Fd c = tcp_accept(listener, timeout_ms);
    if (!c)
        return {};
    std::string peer = peer_ip(c.get());
    char buf[65536];
    while (wait_fd(c.get(), POLLIN, timeout_ms)) {
        ssize_t r = ::recv(c.get(), buf, sizeof buf, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0)
            break;
        size_t off = 0;
        while (off < static_cast<size_t>(r)) {
            if (!wait_fd(c.get(), POLLOUT, timeout_ms))
                return peer;
            ssize_t w = ::send(c.get(), buf + off, static_cast<size_t>(r) - off, MSG_NOSIGNAL);
            if (w < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (w <= 0)
                return peer;
            off += static_cast<size_t>(w);
        }
    }
    return peer;
}

std::string peer_ip(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
        return {};
    return format_ip(ss);
}

std::string local_ip(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
        return {};
    return format_ip(ss);
}

uint16_t local_port(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
        return 0;
    return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                         : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

}  // namespace sluice::test

namespace sluice::test {

HttpReply http_request(const std::string& netns, const std::string& ip, uint16_t port,
                       const std::string& method, const std::string& path,
                       const std::map<std::string, std::string>& headers, const std::string& body,
                       int timeout_ms) {
    HttpReply reply;
    int err = 0;
    Fd s = tcp_connect(netns, ip, port, &err, timeout_ms);
    if (!s)
        return reply;
    std::string req =
        method + " " + path + " HTTP/1.1\r\nHost: " + ip + "\r\nConnection: close\r\n";
    for (const auto& [name, value] : headers)
        req += name + ": " + value + "\r\n";
    if (!body.empty() || method == "POST")
        req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    req += "\r\n" + body;
    if (::send(s.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size()))
        return reply;
    std::string raw;
    char buf[16384];
    for (;;) {
        pollfd p{s.get(), POLLIN, 0};
        if (::poll(&p, 1, timeout_ms) <= 0)
            break;
        ssize_t r = ::recv(s.get(), buf, sizeof buf, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0)
            break;
        raw.append(buf, static_cast<size_t>(r));
    }
    const auto head_end = raw.find("\r\n\r\n");
    if (raw.rfind("HTTP/1.", 0) != 0 || head_end == std::string::npos)
        return reply;
    std::istringstream head(raw.substr(0, head_end));
    std::string line;
    std::getline(head, line);
    reply.status = static_cast<unsigned>(std::atoi(line.c_str() + 9));
    while (std::getline(head, line)) {
        if (!line.empty() && line.back() == '\r')
            line.pop_back();
        const auto colon = line.find(':');
        if (colon == std::string::npos)
            continue;
        std::string name = line.substr(0, colon);
        std::transform(name.begin(), name.end(), name.begin(), ::tolower);
        reply.headers[name] = line.substr(line.find_first_not_of(' ', colon + 1));
    }
    std::string rest = raw.substr(head_end + 4);
    if (reply.headers["transfer-encoding"] != "chunked") {
        reply.body = std::move(rest);
        return reply;
    }
    for (std::size_t at = 0;;) {
        const auto eol = rest.find("\r\n", at);
        if (eol == std::string::npos)
            break;
        const std::size_t size = std::strtoul(rest.c_str() + at, nullptr, 16);
        if (size == 0)
            break;
        reply.body += rest.substr(eol + 2, size);
        at = eol + 2 + size + 2;
    }
    return reply;
}

std::string http_get(const std::string& netns, const std::string& ip, uint16_t port,
                     const std::string& path) {
    HttpReply r = http_request(netns, ip, port, "GET", path, {}, "", 3000);
    if (r.status == 0)
        return {};
    return std::to_string(r.status) + "\n" + r.body;
}

Fd accept_on(int listener_fd, int timeout_ms) {
    pollfd p{listener_fd, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) <= 0)
        return Fd();
    return Fd(::accept4(listener_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
}

}  // namespace sluice::test
