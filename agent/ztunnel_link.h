#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <expected>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "common/zds.h"

namespace sluice::agent {

// The agent's end of the ZDS socket (common/zds.h): listens on <run>/ztunnel.sock for the node's
// ztunnel. One ztunnel at a time; a new connection replaces the old one (a restarted ztunnel).
// Requests are strictly request → Ack, serialized by a mutex, so callers on different threads
// (CNI server, reconcile) never interleave on the socket.
class ZtunnelLink {
  public:
    // Called on the accept thread after a ztunnel said Hello, so the owner can replay every
    // enrolled workload and send SnapshotSent.
    using OnConnected = std::function<void()>;

    ZtunnelLink(std::string socket_path, OnConnected on_connected);
    ~ZtunnelLink();
    ZtunnelLink(const ZtunnelLink&) = delete;
    ZtunnelLink& operator=(const ZtunnelLink&) = delete;

    // Binds the socket (replacing a stale one) and starts accepting.
    std::expected<void, std::string> start();

    // Sends AddWorkload with the netns fd and waits for the Ack; returns ztunnel's inbound
    // listener fd (owned by the caller). Waits up to `timeout` for a ztunnel to connect first.
    std::expected<int, std::string> add_workload(const zds::WorkloadInfo& w, int netns_fd,
                                                 std::chrono::milliseconds timeout);
    std::expected<void, std::string> del_workload(const std::string& uid,
                                                  std::chrono::milliseconds timeout);
    std::expected<void, std::string> snapshot_sent(std::chrono::milliseconds timeout);

    bool connected() const { return conn_fd_.load() >= 0; }
    // Blocks until a ztunnel is connected or the timeout passes.
    bool wait_connected(std::chrono::milliseconds timeout);

  private:
    std::expected<zds::Received, std::string> request(const zds::Message& m, int fd,
                                                      std::chrono::milliseconds timeout);
    void accept_loop();
    void drop_connection_locked();

    std::string socket_path_;
    OnConnected on_connected_;
    int listen_fd_ = -1;
    std::atomic<int> conn_fd_{-1};
    std::mutex io_mu_;  // one request/Ack exchange at a time
    std::mutex state_mu_;
    std::condition_variable connected_cv_;
    std::atomic<bool> stopping_{false};
    std::thread accept_thread_;
};

}  // namespace sluice::agent
