#include "agent/ztunnel_link.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/unix_listener.h"

namespace sluice::agent {

using namespace std::chrono_literals;

ZtunnelLink::ZtunnelLink(std::string socket_path, OnConnected on_connected)
    : socket_path_(std::move(socket_path)), on_connected_(std::move(on_connected)) {}

ZtunnelLink::~ZtunnelLink() {
    stopping_ = true;
    if (listen_fd_ >= 0)
        ::shutdown(listen_fd_, SHUT_RDWR);
    if (accept_thread_.joinable())
        accept_thread_.join();
    if (listen_fd_ >= 0)
        ::close(listen_fd_);
    int fd = conn_fd_.exchange(-1);
    if (fd >= 0)
        ::close(fd);
}

std::expected<void, std::string> ZtunnelLink::start() {
    auto fd = listen_unix(socket_path_, SOCK_SEQPACKET, 4);
    if (!fd)
        return std::unexpected(fd.error());
    listen_fd_ = *fd;
    accept_thread_ = std::thread([this] { accept_loop(); });
    return {};
}

void ZtunnelLink::drop_connection_locked() {
    int fd = conn_fd_.exchange(-1);
    if (fd >= 0) {
        ::close(fd);
        spdlog::warn("ztunnel disconnected; enrollment waits for it to reconnect");
    }
}

void ZtunnelLink::accept_loop() {
    while (!stopping_) {
        pollfd p{listen_fd_, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0)
            continue;
        int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        auto hello = zds::recv_message(c, 5000);
        if (!hello || hello->message.type != zds::MessageType::Hello) {
            spdlog::warn("ztunnel connection without Hello: {}",
                         hello ? zds::type_name(hello->message.type) : hello.error());
            if (hello && hello->fd >= 0)
                ::close(hello->fd);
            ::close(c);
            continue;
        }
        if (hello->message.version != zds::kProtocolVersion) {
            spdlog::error("ztunnel speaks ZDS version {}, this agent {}; refusing it",
                          hello->message.version, zds::kProtocolVersion);
            ::close(c);
            continue;
        }
        {
            std::lock_guard io(io_mu_);
            std::lock_guard state(state_mu_);  // so wait_connected() cannot miss the wakeup
            drop_connection_locked();
            conn_fd_ = c;
        }
        spdlog::info("ztunnel connected");
        connected_cv_.notify_all();
        if (on_connected_)
            on_connected_();
    }
}

bool ZtunnelLink::wait_connected(std::chrono::milliseconds timeout) {
    std::unique_lock lk(state_mu_);
    return connected_cv_.wait_for(lk, timeout, [this] {
        return connected() || stopping_.load();
    }) && connected();
}

std::expected<zds::Received, std::string> ZtunnelLink::request(const zds::Message& m, int fd,
                                                               std::chrono::milliseconds timeout) {
    if (!connected() && !wait_connected(timeout)) {
        return std::unexpected("ztunnel is not connected to " + socket_path_);
    }
    std::lock_guard io(io_mu_);
    int c = conn_fd_.load();
    if (c < 0)
        return std::unexpected("ztunnel disconnected");
    if (auto sent = zds::send_message(c, m, fd); !sent) {
        drop_connection_locked();
        return std::unexpected(sent.error());
    }
    auto ack = zds::recv_message(c, static_cast<int>(timeout.count()));
    if (!ack) {
        // A lost or late Ack leaves the stream out of step: start over with a fresh connection.
        drop_connection_locked();
        return std::unexpected("no Ack from ztunnel: " + ack.error());
    }
    if (ack->message.type != zds::MessageType::Ack) {
        if (ack->fd >= 0)
            ::close(ack->fd);
        drop_connection_locked();
        return std::unexpected(std::string("ztunnel sent ") + zds::type_name(ack->message.type) +
                               " instead of Ack");
    }
    if (!ack->message.error.empty()) {
        if (ack->fd >= 0)
            ::close(ack->fd);
        return std::unexpected("ztunnel refused: " + ack->message.error);
    }
    return std::move(*ack);
}

std::expected<int, std::string> ZtunnelLink::add_workload(const zds::WorkloadInfo& w, int netns_fd,
                                                          std::chrono::milliseconds timeout) {
    auto ack = request({.type = zds::MessageType::AddWorkload, .workload = w}, netns_fd, timeout);
    if (!ack)
        return std::unexpected(ack.error());
    if (ack->fd < 0)
        return std::unexpected("ztunnel acked AddWorkload without its inbound listener");
    return ack->fd;
}

std::expected<void, std::string> ZtunnelLink::del_workload(const std::string& uid,
                                                           std::chrono::milliseconds timeout) {
    auto ack = request({.type = zds::MessageType::DelWorkload, .uid = uid}, -1, timeout);
    if (!ack)
        return std::unexpected(ack.error());
    if (ack->fd >= 0)
        ::close(ack->fd);
    return {};
}

std::expected<void, std::string> ZtunnelLink::snapshot_sent(std::chrono::milliseconds timeout) {
    auto ack = request({.type = zds::MessageType::SnapshotSent}, -1, timeout);
    if (!ack)
        return std::unexpected(ack.error());
    if (ack->fd >= 0)
        ::close(ack->fd);
    return {};
}

}  // namespace sluice::agent
