#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/zds.h"
#include "tests/support/sockets.h"

namespace sluice::test {

// The ztunnel side of the agent's ZDS socket, for agent tests that need to see exactly what
// the agent hands over and what the datapath then sends to the listeners. It does what ztunnel
// does with an AddWorkload: opens 127.0.0.1:15001, [::1]:15001 and [::]:15006 inside the pod's
// netns (SO_MARK 0x539 before bind, as the bind guard requires) and acks with the :15006 fd.
// It reconnects when the agent goes away, as ztunnel does, and keeps the listeners of workloads
// it already serves when the agent replays them.
//
// Listeners are created by a short-lived child process that joins `cgroup_dir` (the node's
// system cgroup, where ztunnel lives): a socket belongs to the cgroup of its creator, and the
// cgroup/getsockopt program that answers SO_ORIGINAL_DST runs for that cgroup.
class ZdsPeer {
  public:
    ZdsPeer(std::string socket_path, std::string cgroup_dir);
    ~ZdsPeer();

    struct Listeners {
        std::string uid;
        uint64_t netns_cookie = 0;
        int outbound4 = -1, outbound6 = -1, inbound = -1;  // owned by the peer
    };

    bool wait_connected(std::chrono::milliseconds timeout);
    // The listeners of a pod ("ns/name"), waiting up to `timeout` for its AddWorkload.
    std::optional<Listeners> listeners(const std::string& pod, std::chrono::milliseconds timeout);
    int connections() const { return connections_.load(); }
    int snapshots() const { return snapshots_.load(); }
    int deletes() const { return deletes_.load(); }
    // From now on, AddWorkload of `pod` ("ns/name") is refused (an Ack with an error), as a
    // ztunnel that cannot mint the pod's certificate refuses it.
    void refuse(const std::string& pod) {
        std::lock_guard lk(mu_);
        refused_.insert(pod);
    }
    void serve_again(const std::string& pod) {
        std::lock_guard lk(mu_);
        refused_.erase(pod);
    }
    // AddWorkload messages received for `pod` ("ns/name"), refused or not.
    int add_workloads(const std::string& pod) {
        std::lock_guard lk(mu_);
        return adds_[pod];
    }

  private:
    void run();
    void serve(int sock);

    std::string socket_path_;
    std::string cgroup_procs_;
    std::atomic<bool> stopping_{false};
    std::atomic<bool> connected_{false};
    std::atomic<int> connections_{0}, snapshots_{0}, deletes_{0};
    std::mutex mu_;
    std::set<std::string> refused_;            // "ns/name"
    std::map<std::string, int> adds_;          // "ns/name"
    std::map<std::string, Listeners> by_pod_;  // "ns/name"
    std::map<std::string, std::string> pod_by_uid_;
    std::map<std::string, std::vector<Fd>> owned_;  // by uid
    std::thread thread_;
};

}  // namespace sluice::test
