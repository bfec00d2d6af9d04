#include "ztunnel/proxy/load_balancer.h"

#include <functional>
#include <vector>

namespace sluice::ztunnel::proxy {

std::optional<state::Endpoint> LoadBalancer::pick(const state::Service& service,
                                                  const state::IpAddress& client, bool ipv6) {
    std::vector<const state::Endpoint*> ready;
    for (const auto& e : service.endpoints) {
        if (e.ready && e.ip.is_v6() == ipv6)
            ready.push_back(&e);
    }
    if (ready.empty())
        return std::nullopt;
    std::lock_guard lock(mutex_);
    switch (service.load_balancing) {
        case state::LoadBalancing::RoundRobin:
            return *ready[next_[service.key()]++ % ready.size()];
        case state::LoadBalancing::LeastConnections: {
            // Endpoints with nothing open have no entry: the map holds only what is in use.
            auto open = [this](const state::Endpoint* e) {
                auto it = in_flight_.find(e->ip);
                return it == in_flight_.end() ? size_t{0} : it->second;
            };
            const state::Endpoint* best = ready.front();
            for (const auto* e : ready) {
                if (open(e) < open(best))
                    best = e;
            }
            return *best;
        }
        case state::LoadBalancing::ConsistentHash: {
            // Rendezvous hashing: a client keeps its endpoint while that endpoint is ready, and
            // only the clients of a removed endpoint move.
            const auto* best = ready.front();
            size_t best_score = 0;
            for (const auto* e : ready) {
                const size_t score =
                    std::hash<std::string>{}(client.to_string() + "|" + e->ip.to_string());
                if (score >= best_score) {
                    best_score = score;
                    best = e;
                }
            }
            return *best;
        }
    }
    return *ready.front();
}

void LoadBalancer::opened(const state::IpAddress& endpoint) {
    std::lock_guard lock(mutex_);
    ++in_flight_[endpoint];
}

void LoadBalancer::closed(const state::IpAddress& endpoint) {
    std::lock_guard lock(mutex_);
    if (auto it = in_flight_.find(endpoint); it != in_flight_.end() && --it->second == 0)
        in_flight_.erase(it);
}

}  // namespace sluice::ztunnel::proxy
