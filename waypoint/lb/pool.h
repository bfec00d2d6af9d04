#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "waypoint/http/asio.h"
#include "waypoint/lb/config.h"

namespace sluice::waypoint {

struct RequestContext;

// One backend endpoint and what the balancers know about it. Shared by all worker threads.
struct Endpoint {
    std::string name;  // "ip:port"
    tcp::endpoint address;
    std::atomic<std::uint32_t> in_flight{0};
    std::mutex mutex;    // guards the fields below
    double ewma_ms = 0;  // peak-EWMA of response-header latency
    std::chrono::steady_clock::time_point ewma_at{};
    std::uint32_t consecutive_failures = 0;
    std::chrono::steady_clock::time_point ejected_until{};
    // The backend's own load report (pool `loadMetrics`), written by the scraper.
    std::atomic<double> queue_waiting{0};     // vllm:num_requests_waiting
    std::atomic<double> kv_cache_usage{0};    // vllm:kv_cache_usage_perc, 0..1
    std::atomic<std::int64_t> load_at_ns{0};  // steady clock of the last good scrape; 0 = never
};

// A pool of endpoints with a load-balancing policy, a circuit breaker (max requests in flight)
// and outlier ejection (consecutive failures). Thread-safe.
class BackendPool {
  public:
    explicit BackendPool(PoolConfig config);
    // The pool that replaces `previous` on a reload (a Service's endpoints changed): endpoints
    // of both share their state (in-flight counts, peak-EWMA, failures and ejection, load
    // reports) and the two count one circuit breaker, so requests still in flight on the old
    // pool are seen by the new one and finish on the same counters.
    BackendPool(PoolConfig config, const BackendPool& previous);
    const std::string& name() const { return config_.name; }
    const PoolConfig& config() const { return config_; }

    // The endpoint for this request, or nullptr when the circuit is open or the pool has no
    // endpoints (a Service without ready endpoints). Increments the
    // endpoint's in-flight count; pair with finish().
    Endpoint* pick(const RequestContext& ctx, const Endpoint* avoid = nullptr);
    // Records one attempt's result: `ok` false for connect failures, timeouts and 5xx.
    void finish(Endpoint& ep, bool ok, std::optional<std::chrono::steady_clock::duration> latency);
    // Ends an attempt that tells nothing about the endpoint (the client left under it): the
    // in-flight counts only, no failure, no success, no latency sample.
    void abandon(Endpoint& ep);

    std::size_t size() const { return endpoints_.size(); }
    std::uint32_t inFlight() const { return in_flight_->load(); }
    bool ejected(const Endpoint& ep) const;
    Endpoint& endpoint(std::size_t i) { return *endpoints_[i]; }

    // What the endpoint reported about its own load, when fresh (within three scrape
    // intervals, at least 2 s): queued requests, plus a large penalty when its KV cache is
    // nearly full. nullopt: no fresh report (or load metrics are off for the pool).
    std::optional<double> reportedLoad(const Endpoint& ep,
                                       std::chrono::steady_clock::time_point now) const;

  private:
    // Peak-EWMA cost with `reported` queued requests added to the in-flight count.
    double cost(Endpoint& ep, std::chrono::steady_clock::time_point now, double reported);
    Endpoint* prefixAffinity(const RequestContext& ctx, const std::vector<Endpoint*>& healthy);

    PoolConfig config_;
    // Shared with the pool this one replaced or is replaced by (the constructor above).
    std::vector<std::shared_ptr<Endpoint>> endpoints_;
    std::shared_ptr<std::atomic<std::uint32_t>> in_flight_ =
        std::make_shared<std::atomic<std::uint32_t>>(0);
};

// The prompt prefix PrefixAffinity hashes: the leading messages / prompt text of the body.
std::string promptPrefix(const RequestContext& ctx, std::size_t bytes);

}  // namespace sluice::waypoint
