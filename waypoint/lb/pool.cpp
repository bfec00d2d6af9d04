#include "waypoint/lb/pool.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "waypoint/filters/filter.h"

namespace sluice::waypoint {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kEwmaDecayMs = 10'000;    // peak-EWMA time constant (Finagle's default)
constexpr double kKvCacheSaturated = 0.9;  // vllm:kv_cache_usage_perc from which to avoid
constexpr double kKvCachePenalty = 1'000;  // counts as that many queued requests
// A load report is used for three scrape intervals, and never dropped sooner than this (a slow
// scrape round on a busy node must not turn the reports off and on).
constexpr std::chrono::seconds kLoadReportMaxAge{2};

std::uint64_t mix(std::uint64_t h) {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

std::uint64_t hashOf(std::string_view s) {
    std::uint64_t h = 1469598103934665603ULL;
    for (unsigned char c : s)
        h = (h ^ c) * 1099511628211ULL;
    return mix(h);
}

thread_local std::minstd_rand rng{std::random_device{}()};

}  // namespace

std::string promptPrefix(const RequestContext& ctx, std::size_t bytes) {
    std::string prefix;
    if (!ctx.body || !ctx.body->root().IsObject())
        return prefix;
    auto append = [&](const json::Value* v) {
        if (v != nullptr && v->IsString())
            prefix.append(json::text(*v));
    };
    const json::Value& body = ctx.body->root();
    if (const json::Value* messages = json::member(body, "messages");
        messages != nullptr && messages->IsArray()) {
        for (const auto& m : messages->GetArray()) {
            if (prefix.size() >= bytes)
                break;
            append(json::member(m, "content"));
            prefix += '\n';
        }
    } else if (const json::Value* p = json::member(body, "prompt")) {
        append(p);
    } else if (const json::Value* in = json::member(body, "input")) {
        append(in);
    }
    if (prefix.size() > bytes)
        prefix.resize(bytes);
    return prefix;
}

BackendPool::BackendPool(PoolConfig config, const BackendPool& previous)
    : BackendPool(std::move(config)) {
    in_flight_ = previous.in_flight_;
    for (auto& ep : endpoints_) {
        auto same = std::find_if(previous.endpoints_.begin(), previous.endpoints_.end(),
                                 [&](const auto& old) { return old->name == ep->name; });
        if (same != previous.endpoints_.end())
            ep = *same;
    }
}

BackendPool::BackendPool(PoolConfig config) : config_(std::move(config)) {
    for (const auto& name : config_.endpoints) {
        const auto colon = name.rfind(':');
        if (colon == std::string::npos)
            throw std::invalid_argument("endpoint without port: " + name);
        auto ep = std::make_shared<Endpoint>();
        ep->name = name;
        std::string host = name.substr(0, colon);
        if (host.size() > 2 && host.front() == '[')
            host = host.substr(1, host.size() - 2);
        ep->address = tcp::endpoint(asio::ip::make_address(host),
                                    static_cast<unsigned short>(std::stoi(name.substr(colon + 1))));
        endpoints_.push_back(std::move(ep));
    }
}

bool BackendPool::ejected(const Endpoint& ep) const {
    auto& m = const_cast<Endpoint&>(ep).mutex;
    std::lock_guard lock(m);
    return Clock::now() < ep.ejected_until;
}

std::optional<double> BackendPool::reportedLoad(const Endpoint& ep, Clock::time_point now) const {
    const std::int64_t at = ep.load_at_ns.load(std::memory_order_relaxed);
    if (!config_.load_metrics || at == 0)
        return std::nullopt;
    const auto age = now.time_since_epoch() - std::chrono::nanoseconds(at);
    if (age > std::max<std::chrono::nanoseconds>(3 * config_.metrics_interval, kLoadReportMaxAge))
        return std::nullopt;  // stale: the scraper cannot reach it
    const double kv = ep.kv_cache_usage.load(std::memory_order_relaxed);
    // A nearly full KV cache means new requests queue or preempt others there: avoid it
    // unless every endpoint is in that state. Below that, the fill level breaks ties.
    return ep.queue_waiting.load(std::memory_order_relaxed) +
           (kv >= kKvCacheSaturated ? kKvCachePenalty : kv);
}

double BackendPool::cost(Endpoint& ep, Clock::time_point now, double reported) {
    std::lock_guard lock(ep.mutex);
    // Decay toward zero while idle so a slow endpoint is retried eventually.
    const double idle_ms = std::chrono::duration<double, std::milli>(now - ep.ewma_at).count();
    const double ewma = ep.ewma_ms * std::exp(-std::max(0.0, idle_ms) / kEwmaDecayMs);
    return (ewma + 1.0) * (ep.in_flight.load() + 1 + reported);
}

Endpoint* BackendPool::prefixAffinity(const RequestContext& ctx,
                                      const std::vector<Endpoint*>& healthy) {
    // Rendezvous hashing: each endpoint scores hash(prefix, endpoint); the highest wins, so
    // adding or ejecting an endpoint moves only the prefixes that scored highest on it.
    const std::uint64_t key = hashOf(promptPrefix(ctx, config_.prefix_bytes));
    Endpoint* best = nullptr;
    std::uint64_t best_score = 0;
    for (Endpoint* ep : healthy) {
        const std::uint64_t score = mix(key ^ hashOf(ep->name));
        if (!best || score > best_score) {
            best = ep;
            best_score = score;
        }
    }
    return best;
}

Endpoint* BackendPool::pick(const RequestContext& ctx, const Endpoint* avoid) {
    if (endpoints_.empty())
        return nullptr;  // nothing to send to
    // The circuit's slot is taken before the endpoint is chosen, in one step with the check:
    // workers picking at once cannot all pass a check of the same count.
    std::uint32_t in_flight = in_flight_->load();
    do {
        if (in_flight >= config_.max_requests)
            return nullptr;  // the circuit is open
    } while (!in_flight_->compare_exchange_weak(in_flight, in_flight + 1));
    const auto now = Clock::now();
    std::vector<Endpoint*> healthy;
    for (auto& ep : endpoints_) {
        std::lock_guard lock(ep->mutex);
        if (now >= ep->ejected_until && ep.get() != avoid)
            healthy.push_back(ep.get());
    }
    // Everything ejected (or avoided): use all endpoints rather than fail (Envoy's panic mode).
    if (healthy.empty()) {
        for (auto& ep : endpoints_) {
            if (ep.get() != avoid || endpoints_.size() == 1)
                healthy.push_back(ep.get());
        }
    }
    Endpoint* chosen = nullptr;
    if (healthy.size() == 1) {
        chosen = healthy[0];
    } else if (config_.policy == LbPolicy::PrefixAffinity) {
        chosen = prefixAffinity(ctx, healthy);
    } else {
        std::uniform_int_distribution<std::size_t> dist(0, healthy.size() - 1);
        Endpoint* a = healthy[dist(rng)];
        Endpoint* b = healthy[dist(rng)];
        while (b == a)
            b = healthy[dist(rng)];
        // The backends' own reports count only when both candidates have a fresh one: an
        // endpoint the scraper cannot reach must not look idle next to one reporting a queue.
        const auto ra = reportedLoad(*a, now), rb = reportedLoad(*b, now);
        const bool reports = ra && rb;
        const double la = reports ? *ra : 0, lb = reports ? *rb : 0;
        if (config_.policy == LbPolicy::PeakEwma) {
            chosen = cost(*a, now, la) <= cost(*b, now, lb) ? a : b;
        } else {
            chosen = a->in_flight.load() + la <= b->in_flight.load() + lb ? a : b;
        }
    }
    chosen->in_flight.fetch_add(1);
    return chosen;
}

void BackendPool::abandon(Endpoint& ep) {
    ep.in_flight.fetch_sub(1);
    in_flight_->fetch_sub(1);
}

void BackendPool::finish(Endpoint& ep, bool ok,
                         std::optional<std::chrono::steady_clock::duration> latency) {
    abandon(ep);  // the in-flight counts; then what the attempt tells about the endpoint
    const auto now = Clock::now();
    std::lock_guard lock(ep.mutex);
    if (latency) {
        const double ms = std::chrono::duration<double, std::milli>(*latency).count();
        const double idle_ms = std::chrono::duration<double, std::milli>(now - ep.ewma_at).count();
        const double w = std::exp(-std::max(0.0, idle_ms) / kEwmaDecayMs);
        // Peak: a slower observation replaces the average at once; faster ones decay into it.
        ep.ewma_ms = ms > ep.ewma_ms ? ms : ep.ewma_ms * w + ms * (1 - w);
        ep.ewma_at = now;
    }
    if (ok) {
        ep.consecutive_failures = 0;
        return;
    }
    if (++ep.consecutive_failures >= config_.consecutive_failures) {
        ep.ejected_until = now + config_.ejection_time;
        ep.consecutive_failures = 0;
    }
}

}  // namespace sluice::waypoint
