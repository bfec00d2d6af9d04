#pragma once

#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "ztunnel/state/registry.h"

namespace sluice::ztunnel::proxy {

// Picks a service endpoint by the service's policy (round robin, least connections, or a
// consistent hash of the client address), skipping endpoints that are not ready. Shared by all
// workers; one short lock per new connection.
class LoadBalancer {
  public:
    std::optional<state::Endpoint> pick(const state::Service& service,
                                        const state::IpAddress& client, bool ipv6);
    // Least-connections bookkeeping: the outbound handler reports open and close.
    void opened(const state::IpAddress& endpoint);
    void closed(const state::IpAddress& endpoint);
    // Endpoints with connections open: what the bookkeeping holds (pods come and go).
    size_t tracked() {
        std::lock_guard lock(mutex_);
        return in_flight_.size();
    }

  private:
    std::mutex mutex_;
    std::map<std::string, size_t> next_;            // service key → round-robin cursor
    std::map<state::IpAddress, size_t> in_flight_;  // endpoint → open connections (> 0)
};

}  // namespace sluice::ztunnel::proxy
