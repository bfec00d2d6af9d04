#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace YAML {
class Node;
}

namespace sluice::waypoint {

enum class LbPolicy {
    LeastRequest,    // power of two choices on in-flight requests
    PeakEwma,        // power of two choices on peak-EWMA latency × (in-flight + 1)
    PrefixAffinity,  // rendezvous hash of the prompt prefix, so a shared prefix hits a warm cache
};

// A backend pool: what the Waypoint document's `pools:` entries hold.
struct PoolConfig {
    std::string name;
    LbPolicy policy = LbPolicy::LeastRequest;
    std::vector<std::string> endpoints;  // "ip:port"
    std::size_t prefix_bytes = 512;      // prompt bytes hashed by PrefixAffinity
    // Circuit breaker: more requests in flight to the pool than this and it refuses new ones.
    std::uint32_t max_requests = 1024;
    // Outlier ejection: this many consecutive failures eject an endpoint for ejection_time.
    std::uint32_t consecutive_failures = 5;
    std::chrono::milliseconds ejection_time{30'000};
    // Backends' own load reports (`loadMetrics:`): vLLM's Prometheus metrics scraped from each
    // endpoint; the balancers then add the endpoint's queue to its in-flight count.
    bool load_metrics = false;
    std::string metrics_path = "/metrics";
    std::chrono::milliseconds metrics_interval{1'000};

    bool operator==(const PoolConfig&) const = default;
};

// Throws std::invalid_argument on a bad entry.
PoolConfig parsePoolConfig(const YAML::Node& node);
// "least-request", "peak-ewma", "prefix-affinity"; nullopt for anything else.
std::optional<LbPolicy> lbPolicyNamed(std::string_view name);
std::chrono::milliseconds parseDuration(const YAML::Node& node, std::chrono::milliseconds fallback);

}  // namespace sluice::waypoint
