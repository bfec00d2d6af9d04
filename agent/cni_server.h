#pragma once

#include <atomic>
#include <expected>
#include <functional>
#include <string>
#include <thread>

#include "agent/cni/protocol.h"

namespace sluice::agent {

// Serves sluice-cni on <run>/cni.sock (agent/cni/protocol.h): one request per connection,
// handled on the server thread, so pods enroll one at a time in the order the runtime asks.
class CniServer {
  public:
    using Handler = std::function<cni::Response(const cni::Request&)>;

    CniServer(std::string socket_path, Handler handler);
    ~CniServer();
    CniServer(const CniServer&) = delete;
    CniServer& operator=(const CniServer&) = delete;

    std::expected<void, std::string> start();

  private:
    void serve();
    void handle(int fd);

    std::string socket_path_;
    Handler handler_;
    int listen_fd_ = -1;
    std::atomic<bool> stopping_{false};
    std::thread thread_;
};

}  // namespace sluice::agent
