#pragma once

#include <atomic>
#include <functional>
#include <set>
#include <string>
#include <thread>

#include "ztunnel/proxy/proxy.h"

namespace sluice::ztunnel::proxy {

// Node mode: the client side of the agent's enrollment socket (common/zds.h). Runs on its own
// thread; listeners are opened through NetnsSockets, acked with the :15006 listener fd. After a
// reconnect the agent re-sends every workload; SnapshotSent then drops what it did not send.
class ZdsClient {
  public:
    ZdsClient(std::string socket_path, Proxy& proxy);
    ~ZdsClient();
    void start();
    // Ends the session for good (no reconnect): the first step of a drain.
    void stop();
    // True once a full snapshot has been applied (readiness in node mode).
    bool synced() const { return synced_; }

  private:
    void run();
    // One connection to the agent; returns when it closes or stop() is called.
    void session(int sock);

    std::string path_;
    Proxy& proxy_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> synced_{false};
    std::thread thread_;
};

}  // namespace sluice::ztunnel::proxy
