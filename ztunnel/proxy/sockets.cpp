#include "ztunnel/proxy/sockets.h"

#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cerrno>
#include <cstring>
#include <future>
#include <stdexcept>

namespace sluice::ztunnel::proxy {
namespace {

socklen_t fill_sockaddr(const tcp::endpoint& ep, sockaddr_storage& ss) {
    std::memset(&ss, 0, sizeof(ss));
    std::memcpy(&ss, ep.data(), ep.size());
    return static_cast<socklen_t>(ep.size());
}

int fail(int fd) {
    const int err = errno;
    ::close(fd);
    return -err;
}

}  // namespace

AcceptedFd::~AcceptedFd() {
    if (fd_ >= 0)
        ::close(fd_);
}

tcp::endpoint AcceptedFd::remote_endpoint() const {
    tcp::endpoint ep;
    socklen_t len = static_cast<socklen_t>(ep.capacity());
    if (::getpeername(fd_, ep.data(), &len) != 0)
        return {};
    ep.resize(len);
    return ep;
}

std::expected<WorkerSocket, boost::system::error_code> AcceptedFd::socket(asio::io_context& io) && {
    WorkerSocket s(io);
    boost::system::error_code ec;
    s.assign(protocol_, fd_, ec);
    if (ec) {
        reset();
        return std::unexpected(ec);
    }
    fd_ = -1;
    return s;
}

void AcceptedFd::reset() {
    if (fd_ < 0)
        return;
    const linger rst{.l_onoff = 1, .l_linger = 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));
    ::close(std::exchange(fd_, -1));
}

NetnsSockets::NetnsSockets() {
    own_netns_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own_netns_ < 0)
        throw std::runtime_error(std::string("cannot open own netns: ") + strerror(errno));
    work_.emplace(ctx_.get_executor());
    thread_ = std::thread([this] { ctx_.run(); });
}

NetnsSockets::~NetnsSockets() {
    work_.reset();
    ctx_.stop();
    if (thread_.joinable())
        thread_.join();
    ::close(own_netns_);
}

int NetnsSockets::enter_and_run(int netns_fd, const std::function<int()>& make) {
    if (::setns(netns_fd >= 0 ? netns_fd : own_netns_, CLONE_NEWNET) != 0)
        return -errno;
    return make();
}

int NetnsSockets::run_sync(int netns_fd, std::function<int()> make) {
    std::promise<int> result;
    asio::post(ctx_, [&] { result.set_value(enter_and_run(netns_fd, make)); });
    return result.get_future().get();
}

asio::awaitable<int> NetnsSockets::run(int netns_fd, std::function<int()> make) {
    // Named, not a temporary inside the co_await: g++ 12 can destroy such temporaries twice.
    auto on_netns_thread = [this, netns_fd, &make]() -> asio::awaitable<int> {
        co_return enter_and_run(netns_fd, make);
    };
    const int fd =
        co_await asio::co_spawn(ctx_.get_executor(), on_netns_thread, asio::use_awaitable);
    co_return fd;
}

int open_listener(const tcp::endpoint& at, int backlog) {
    const int family = at.address().is_v6() ? AF_INET6 : AF_INET;
    int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    const int one = 1;
    const uint32_t mark = kZtunnelMark;
    // TCP_NODELAY here is inherited by every accepted connection (Linux clones the listener's
    // socket): a small write (a response, an HBONE frame of another stream) leaves at once
    // instead of waiting for the ACK of the previous one.
    if (::setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0 ||
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
        return fail(fd);
    }
    if (family == AF_INET6)
        ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    sockaddr_storage ss;
    const socklen_t len = fill_sockaddr(at, ss);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, backlog) != 0)
        return fail(fd);
    return fd;
}

int keep_hbone_alive(int fd) {
    const int one = 1;
    const unsigned user_timeout = kHboneUserTimeoutMs;
    if (::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) != 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &kHboneKeepIdleSeconds,
                     sizeof(kHboneKeepIdleSeconds)) != 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &kHboneKeepIntervalSeconds,
                     sizeof(kHboneKeepIntervalSeconds)) != 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &kHboneKeepCount, sizeof(kHboneKeepCount)) !=
            0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout)) != 0) {
        return -errno;
    }
    return 0;
}

int enable_tcp_migrate_req() {
    // /proc/sys/net resolves against the opening thread's netns.
    const int fd = ::open("/proc/sys/net/ipv4/tcp_migrate_req", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (::write(fd, "1", 1) != 1)
        return fail(fd);
    ::close(fd);
    return 0;
}

int open_client_socket(bool ipv6, const std::optional<asio::ip::address>& source,
                       bool transparent) {
    int fd = ::socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    const uint32_t mark = kZtunnelMark;
    if (::setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0)
        return fail(fd);
    if (source) {
        const int one = 1;
        if (transparent) {
            const int rc = ipv6 ? ::setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one))
                                : ::setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
            if (rc != 0)
                return fail(fd);
        }
        // Port 0 with IP_BIND_ADDRESS_NO_PORT: the port is picked at connect(), so many
        // connections can share the source address.
        ::setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        sockaddr_storage ss;
        const socklen_t len = fill_sockaddr(tcp::endpoint(*source, 0), ss);
        if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0)
            return fail(fd);
    }
    return fd;
}

std::expected<tcp::endpoint, int> original_destination(int fd) {
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0)
        return std::unexpected(errno);
    tcp::endpoint ep;
    if (local.ss_family == AF_INET6) {
        sockaddr_in6 dst{};
        socklen_t dlen = sizeof(dst);
        if (::getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &dst, &dlen) != 0)
            return std::unexpected(errno);
        ep.resize(sizeof(dst));
        std::memcpy(ep.data(), &dst, sizeof(dst));
    } else {
        sockaddr_in dst{};
        socklen_t dlen = sizeof(dst);
        if (::getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst, &dlen) != 0)
            return std::unexpected(errno);
        ep.resize(sizeof(dst));
        std::memcpy(ep.data(), &dst, sizeof(dst));
    }
    return ep;
}

std::string to_string(const tcp::endpoint& ep) {
    if (ep.address().is_v6())
        return "[" + ep.address().to_string() + "]:" + std::to_string(ep.port());
    return ep.address().to_string() + ":" + std::to_string(ep.port());
}

}  // namespace sluice::ztunnel::proxy
