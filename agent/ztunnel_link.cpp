#include "agent/ztunnel_link.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "agent/unix_listener.h"

namespace sluice::agent {

using namespace std::chrono_literals;

namespace {

constexpr int kPollMs = 200;

pid_t peer_pid(int fd) {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
        return 0;
    return cred.pid;
}

}  // namespace

ZtunnelLink::ZtunnelLink(std::string socket_path, OnConnected on_connected,
                         OnDisconnected on_disconnected)
    : socket_path_(std::move(socket_path)),
      on_connected_(std::move(on_connected)),
      on_disconnected_(std::move(on_disconnected)) {}

ZtunnelLink::~ZtunnelLink() {
    stopping_ = true;
    if (listen_fd_ >= 0)
        ::shutdown(listen_fd_, SHUT_RDWR);
    if (accept_thread_.joinable())
        accept_thread_.join();
    if (listen_fd_ >= 0)
        ::close(listen_fd_);
    for (auto& s : sessions_) {
        std::lock_guard io(s->io);
        if (!s->closed)
            ::close(s->fd);
        s->closed = true;
    }
}

std::expected<void, std::string> ZtunnelLink::start() {
    auto fd = listen_unix(socket_path_, SOCK_SEQPACKET, 4);
    if (!fd)
        return std::unexpected(fd.error());
    listen_fd_ = *fd;
    accept_thread_ = std::thread([this] { accept_loop(); });
    return {};
}

std::shared_ptr<ZtunnelLink::Session> ZtunnelLink::find(SessionId id) const {
    std::lock_guard lk(state_mu_);
    for (const auto& s : sessions_) {
        if (s->id == id)
            return s;
    }
    return nullptr;
}

std::optional<ZtunnelLink::SessionId> ZtunnelLink::steering_locked() const {
    for (auto it = sessions_.rbegin(); it != sessions_.rend(); ++it) {
        if ((*it)->ready)
            return (*it)->id;
    }
    if (!sessions_.empty())
        return sessions_.back()->id;
    return std::nullopt;
}

std::optional<ZtunnelLink::SessionId> ZtunnelLink::steering() const {
    std::lock_guard lk(state_mu_);
    return steering_locked();
}

std::vector<ZtunnelLink::SessionId> ZtunnelLink::sessions() const {
    std::lock_guard lk(state_mu_);
    std::vector<SessionId> out;
    for (const auto& s : sessions_)
        out.push_back(s->id);
    return out;
}

bool ZtunnelLink::mark_ready(SessionId id) {
    std::lock_guard lk(state_mu_);
    for (auto& s : sessions_) {
        if (s->id == id)
            s->ready = true;
    }
    return steering_locked() == id;
}

std::vector<ZtunnelLink::SessionView> ZtunnelLink::describe() const {
    std::lock_guard lk(state_mu_);
    const auto steer = steering_locked();
    std::vector<SessionView> out;
    for (const auto& s : sessions_)
        out.push_back({.id = s->id, .pid = s->pid, .ready = s->ready, .steering = steer == s->id});
    return out;
}

void ZtunnelLink::drop_locked(Session& s, const std::string& why) {
    if (s.closed)
        return;
    s.closed = true;
    ::close(s.fd);
    std::lock_guard lk(state_mu_);
    const bool was_steering = steering_locked() == s.id;
    std::erase_if(sessions_, [&](const auto& p) { return p.get() == &s; });
    lost_.emplace_back(s.id, was_steering);
    spdlog::warn("ztunnel session {} (pid {}) ended: {}; {} session(s) left", s.id, s.pid, why,
                 sessions_.size());
}

void ZtunnelLink::report_lost() {
    std::vector<std::pair<SessionId, bool>> lost;
    {
        std::lock_guard lk(state_mu_);
        lost.swap(lost_);
    }
    for (const auto& [id, was_steering] : lost) {
        if (on_disconnected_)
            on_disconnected_(id, was_steering);
    }
}

void ZtunnelLink::accept_loop() {
    while (!stopping_) {
        std::vector<std::shared_ptr<Session>> watched;
        {
            std::lock_guard lk(state_mu_);
            watched = sessions_;
        }
        // The listener for new ztunnels; each session only for a hang-up (its Acks are read by
        // request(), never here).
        std::vector<pollfd> fds{{listen_fd_, POLLIN, 0}};
        for (const auto& s : watched)
            fds.push_back({s->fd, 0, 0});
        const int n = ::poll(fds.data(), fds.size(), kPollMs);
        if (n > 0) {
            bool busy = false;
            for (size_t i = 1; i < fds.size(); ++i) {
                if ((fds[i].revents & (POLLHUP | POLLERR)) == 0)
                    continue;
                // A request in flight sees the hang-up itself.
                std::unique_lock io(watched[i - 1]->io, std::try_to_lock);
                if (io)
                    drop_locked(*watched[i - 1], "ztunnel closed the connection");
                busy |= !io;
            }
            if (busy)  // the hang-up stays reported until that request has dropped the session
                std::this_thread::sleep_for(10ms);
            if ((fds[0].revents & POLLIN) != 0)
                accept_one();
        }
        report_lost();
    }
}

void ZtunnelLink::accept_one() {
    int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0)
        return;
    auto hello = zds::recv_message(c, 5000);
    if (!hello || hello->message.type != zds::MessageType::Hello) {
        spdlog::warn("ztunnel connection without Hello: {}",
                     hello ? zds::type_name(hello->message.type) : hello.error());
        if (hello && hello->fd >= 0)
            ::close(hello->fd);
        ::close(c);
        return;
    }
    if (hello->message.version != zds::kProtocolVersion) {
        spdlog::error("ztunnel speaks ZDS version {}, this agent {}; refusing it",
                      hello->message.version, zds::kProtocolVersion);
        ::close(c);
        return;
    }
    auto s = std::make_shared<Session>();
    s->fd = c;
    s->pid = peer_pid(c);
    size_t count = 0;
    {
        std::lock_guard state(state_mu_);  // so wait_connected() cannot miss the wakeup
        s->id = next_id_++;
        sessions_.push_back(s);
        count = sessions_.size();
    }
    spdlog::info("ztunnel session {} connected (pid {}); {} session(s)", s->id, s->pid, count);
    connected_cv_.notify_all();
    if (on_connected_)
        on_connected_(s->id);
}

bool ZtunnelLink::wait_connected(std::chrono::milliseconds timeout) {
    std::unique_lock lk(state_mu_);
    return connected_cv_.wait_for(lk, timeout, [this] {
        return !sessions_.empty() || stopping_.load();
    }) && !sessions_.empty();
}

std::expected<zds::Received, std::string> ZtunnelLink::request(SessionId id, const zds::Message& m,
                                                               int fd,
                                                               std::chrono::milliseconds timeout) {
    auto s = find(id);
    if (!s)
        return std::unexpected("ztunnel session " + std::to_string(id) + " has ended");
    std::lock_guard io(s->io);
    if (s->closed)
        return std::unexpected("ztunnel session " + std::to_string(id) + " has ended");
    if (auto sent = zds::send_message(s->fd, m, fd); !sent) {
        drop_locked(*s, sent.error());
        return std::unexpected(sent.error());
    }
    auto ack = zds::recv_message(s->fd, static_cast<int>(timeout.count()));
    if (!ack) {
        // A lost or late Ack leaves the stream out of step: that ztunnel reconnects afresh.
        drop_locked(*s, "no Ack: " + ack.error());
        return std::unexpected("no Ack from ztunnel: " + ack.error());
    }
    if (ack->message.type != zds::MessageType::Ack) {
        if (ack->fd >= 0)
            ::close(ack->fd);
        const std::string what =
            std::string("ztunnel sent ") + zds::type_name(ack->message.type) + " instead of Ack";
        drop_locked(*s, what);
        return std::unexpected(what);
    }
    if (!ack->message.error.empty()) {
        if (ack->fd >= 0)
            ::close(ack->fd);
        return std::unexpected("ztunnel refused: " + ack->message.error);
    }
    return std::move(*ack);
}

std::expected<int, std::string> ZtunnelLink::add_workload(SessionId s, const zds::WorkloadInfo& w,
                                                          int netns_fd,
                                                          std::chrono::milliseconds timeout) {
    auto ack =
        request(s, {.type = zds::MessageType::AddWorkload, .workload = w}, netns_fd, timeout);
    if (!ack)
        return std::unexpected(ack.error());
    if (ack->fd < 0)
        return std::unexpected("ztunnel acked AddWorkload without its inbound listener");
    return ack->fd;
}

std::expected<void, std::string> ZtunnelLink::del_workload(SessionId s, const std::string& uid,
                                                           std::chrono::milliseconds timeout) {
    auto ack = request(s, {.type = zds::MessageType::DelWorkload, .uid = uid}, -1, timeout);
    if (!ack)
        return std::unexpected(ack.error());
    if (ack->fd >= 0)
        ::close(ack->fd);
    return {};
}

std::expected<void, std::string> ZtunnelLink::snapshot_sent(SessionId s,
                                                            std::chrono::milliseconds timeout) {
    auto ack = request(s, {.type = zds::MessageType::SnapshotSent}, -1, timeout);
    if (!ack)
        return std::unexpected(ack.error());
    if (ack->fd >= 0)
        ::close(ack->fd);
    return {};
}

}  // namespace sluice::agent
