#include "waypoint/lb/config.h"

#include <yaml-cpp/yaml.h>

#include <stdexcept>

namespace sluice::waypoint {

std::chrono::milliseconds parseDuration(const YAML::Node& node,
                                        std::chrono::milliseconds fallback) {
    if (!node)
        return fallback;
    const auto text = node.as<std::string>();
    std::size_t used = 0;
    const double value = std::stod(text, &used);
    const std::string unit = text.substr(used);
    const double scale = unit == "ms"                  ? 1
                         : unit == "s" || unit.empty() ? 1000
                         : unit == "m"                 ? 60'000
                                                       : 0;
    if (scale == 0)
        throw std::invalid_argument("bad duration '" + text + "' (use ms, s or m)");
    // Negative (a backoff of -2ms divided by zero on the first retry), NaN and beyond any
    // sensible timeout (a year) are refused.
    const double ms = value * scale;
    if (!(ms >= 0 && ms <= 365.0 * 24 * 3600 * 1000))
        throw std::invalid_argument("bad duration '" + text + "' (from 0 up to a year)");
    return std::chrono::milliseconds(std::int64_t(ms));
}

std::optional<LbPolicy> lbPolicyNamed(std::string_view name) {
    if (name == "least-request")
        return LbPolicy::LeastRequest;
    if (name == "peak-ewma")
        return LbPolicy::PeakEwma;
    if (name == "prefix-affinity")
        return LbPolicy::PrefixAffinity;
    return std::nullopt;
}

PoolConfig parsePoolConfig(const YAML::Node& node) {
    PoolConfig pool;
    pool.name = node["name"].as<std::string>("");
    if (pool.name.empty())
        throw std::invalid_argument("pool without a name");
    const auto policy = node["loadBalancer"].as<std::string>("least-request");
    const auto named = lbPolicyNamed(policy);
    if (!named)
        throw std::invalid_argument("pool " + pool.name + ": unknown loadBalancer " + policy);
    pool.policy = *named;
    for (const auto& ep : node["endpoints"])
        pool.endpoints.push_back(ep.as<std::string>());
    if (pool.endpoints.empty())
        throw std::invalid_argument("pool " + pool.name + ": no endpoints");
    pool.prefix_bytes = node["prefixBytes"].as<std::size_t>(512);
    // yaml-cpp throws when indexing into a missing map, so look at each section first.
    if (const auto breaker = node["circuitBreaker"]) {
        pool.max_requests = breaker["maxRequests"].as<std::uint32_t>(pool.max_requests);
    }
    if (const auto outlier = node["outlierDetection"]) {
        pool.consecutive_failures =
            outlier["consecutiveFailures"].as<std::uint32_t>(pool.consecutive_failures);
        pool.ejection_time = parseDuration(outlier["ejectionTime"], pool.ejection_time);
    }
    if (const auto load = node["loadMetrics"]) {
        pool.load_metrics = true;
        pool.metrics_path = load["path"].as<std::string>(pool.metrics_path);
        pool.metrics_interval = parseDuration(load["interval"], pool.metrics_interval);
        if (pool.metrics_interval < std::chrono::milliseconds(10))
            throw std::invalid_argument("pool " + pool.name + ": loadMetrics interval below 10ms");
    }
    return pool;
}

}  // namespace sluice::waypoint
