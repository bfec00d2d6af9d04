#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/zds.h"

namespace sluice::agent {

// The agent's end of the ZDS socket (common/zds.h): listens on <run>/ztunnel.sock for the node's
// ztunnels. Several sessions at once, as during an upgrade (a new ztunnel starts while the old
// one drains): every session gets every workload; the newest ready one (its snapshot acked)
// steers, i.e. its :15006 listeners go into the sk_lookup map. A session ends only when its
// ztunnel closes it or breaks the protocol, never because another one connected.
// Requests are strictly request → Ack, serialized per session, so callers on different threads
// (CNI server, reconcile, accept thread) never interleave on one socket.
class ZtunnelLink {
  public:
    using SessionId = uint64_t;  // increasing: a larger id connected later
    // Called on the accept thread after a ztunnel said Hello, so the owner can replay every
    // enrolled workload to it and send SnapshotSent.
    using OnConnected = std::function<void(SessionId)>;
    // Called on the accept thread after a session ended; `was_steering`: its listeners were the
    // ones in the steering map.
    using OnDisconnected = std::function<void(SessionId, bool was_steering)>;

    struct SessionView {
        SessionId id = 0;
        pid_t pid = 0;  // the ztunnel process (SO_PEERCRED)
        bool ready = false;
        bool steering = false;
    };

    ZtunnelLink(std::string socket_path, OnConnected on_connected,
                OnDisconnected on_disconnected = {});
    ~ZtunnelLink();
    ZtunnelLink(const ZtunnelLink&) = delete;
    ZtunnelLink& operator=(const ZtunnelLink&) = delete;

    // Binds the socket (replacing a stale one) and starts accepting.
    std::expected<void, std::string> start();

    // Sends AddWorkload with the netns fd to one session and waits for the Ack; returns that
    // ztunnel's inbound listener fd (owned by the caller).
    std::expected<int, std::string> add_workload(SessionId s, const zds::WorkloadInfo& w,
                                                 int netns_fd, std::chrono::milliseconds timeout);
    std::expected<void, std::string> del_workload(SessionId s, const std::string& uid,
                                                  std::chrono::milliseconds timeout);
    std::expected<void, std::string> snapshot_sent(SessionId s, std::chrono::milliseconds timeout);

    // Connected sessions, oldest first.
    std::vector<SessionId> sessions() const;
    // The session whose listeners steer: the newest ready one, else the newest connected one.
    std::optional<SessionId> steering() const;
    // The session's snapshot was acked. Returns whether it steers now.
    bool mark_ready(SessionId s);
    std::vector<SessionView> describe() const;

    bool connected() const { return !sessions().empty(); }
    const std::string& socket_path() const { return socket_path_; }
    // Blocks until a ztunnel is connected or the timeout passes.
    bool wait_connected(std::chrono::milliseconds timeout);

  private:
    struct Session {
        SessionId id = 0;
        int fd = -1;
        pid_t pid = 0;
        bool ready = false;   // under state_mu_
        std::mutex io;        // one request/Ack exchange at a time
        bool closed = false;  // under io
    };
    std::shared_ptr<Session> find(SessionId s) const;
    std::optional<SessionId> steering_locked() const;
    std::expected<zds::Received, std::string> request(SessionId s, const zds::Message& m, int fd,
                                                      std::chrono::milliseconds timeout);
    void accept_loop();
    void accept_one();
    // Ends a session; the caller holds its io mutex. The owner hears of it on the accept thread.
    void drop_locked(Session& s, const std::string& why);
    void report_lost();

    std::string socket_path_;
    OnConnected on_connected_;
    OnDisconnected on_disconnected_;
    int listen_fd_ = -1;
    mutable std::mutex state_mu_;
    std::vector<std::shared_ptr<Session>> sessions_;  // oldest first
    std::vector<std::pair<SessionId, bool>> lost_;    // ended, not yet reported
    SessionId next_id_ = 1;
    std::condition_variable connected_cv_;
    std::atomic<bool> stopping_{false};
    std::thread accept_thread_;
};

}  // namespace sluice::agent
