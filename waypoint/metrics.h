#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <initializer_list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace sluice::waypoint {

// A metric family with a cache from label set to metric, for the data path. prometheus-cpp's
// Family::Add builds a new metric (for a histogram, its bucket vectors) before it looks the
// labels up, and takes a std::map of strings: several allocations per call, several calls per
// request. at() allocates only the first time it sees a label set. No family here ever removes a
// metric, so the cached references stay valid.
template <typename T>
class Labeled {
  public:
    using Label = std::pair<std::string_view, std::string_view>;  // name, value

    explicit Labeled(prometheus::Family<T>& family) : family_(family) {}

    // The metric with these labels (the same names in the same order at every call of one
    // family); `args` build it on first use (a histogram's buckets).
    //
    // Label values a client chooses (a tenant header, the model named in the body) would grow a
    // family without bound, a series each: once the family holds kMaxSeries, a new label set
    // has those values replaced by "other" (the series that exist keep counting).
    static constexpr std::size_t kMaxSeries = 2000;
    template <typename... Args>
    T& at(std::initializer_list<Label> labels, Args&&... args) {
        thread_local std::string key;
        auto build_key = [&](bool bounded) {
            key.clear();
            for (const auto& [name, value] : labels) {
                key.append(name).push_back('\0');
                key.append(bounded && clientChosen(name) ? "other" : value).push_back('\0');
            }
        };
        build_key(false);
        std::lock_guard lock(mutex_);
        if (auto it = cache_.find(std::string_view(key)); it != cache_.end())
            return *it->second;
        const bool bounded = cache_.size() >= kMaxSeries;
        if (bounded) {
            build_key(true);
            if (auto it = cache_.find(std::string_view(key)); it != cache_.end())
                return *it->second;
        }
        prometheus::Labels map;
        for (const auto& [name, value] : labels)
            map.emplace(name, bounded && clientChosen(name) ? "other" : value);
        T& metric = family_.Add(map, std::forward<Args>(args)...);
        cache_.emplace(key, &metric);
        return metric;
    }

  private:
    static bool clientChosen(std::string_view label) {
        return label == "tenant" || label == "model" || label == "gen_ai_request_model";
    }
    struct Hash {
        using is_transparent = void;
        std::size_t operator()(std::string_view s) const {
            return std::hash<std::string_view>{}(s);
        }
    };
    prometheus::Family<T>& family_;
    std::mutex mutex_;
    std::unordered_map<std::string, T*, Hash, std::equal_to<>> cache_;
};

// The waypoint's Prometheus metrics, served on :15020/metrics. Istio's HTTP names where they
// apply (istio_requests_total, istio_request_duration_milliseconds) and the OpenTelemetry GenAI
// semantic conventions (gen_ai.client.token.usage, gen_ai.server.time_to_first_token, …) with
// dots turned into underscores and the unit appended, as the OTel Prometheus exporter does.
// prometheus-cpp metrics are thread-safe; every worker thread updates the same families.
struct Metrics {
    Metrics();
    std::string serialize() const;

    prometheus::Registry registry;
    Labeled<prometheus::Counter> requests;             // istio_requests_total
    Labeled<prometheus::Histogram> duration_ms;        // istio_request_duration_ms
    Labeled<prometheus::Histogram> token_usage;        // gen_ai_client_token_usage
    Labeled<prometheus::Counter> tokens;               // sluice_gen_ai_tokens_total
    Labeled<prometheus::Histogram> operation_s;        // gen_ai_client_operation_duration
    Labeled<prometheus::Histogram> ttft_s;             // time to first token
    Labeled<prometheus::Histogram> tpot_s;             // time per output token
    Labeled<prometheus::Gauge> budget_remaining;       // sluice_budget_remaining_tokens
    Labeled<prometheus::Counter> rejected;             // sluice_requests_rejected_total
    Labeled<prometheus::Counter> upstream_attempts;    // sluice_upstream_attempts_total
    Labeled<prometheus::Counter> shed;                 // sluice_requests_shed_total
    Labeled<prometheus::Gauge> admission_in_flight;    // sluice_admission_in_flight
    Labeled<prometheus::Gauge> admission_queued;       // sluice_admission_queued
    Labeled<prometheus::Gauge> backend_waiting;        // sluice_backend_requests_waiting
    Labeled<prometheus::Gauge> backend_kv_cache;       // sluice_backend_kv_cache_usage
    Labeled<prometheus::Counter> policy_reloads;       // sluice_policy_reload_total
    Labeled<prometheus::Counter> handshake_failures;   // sluice_tls_handshake_failures_total
    Labeled<prometheus::Counter> hbone_streams;        // sluice_hbone_streams_total
    Labeled<prometheus::Counter> gateway_tls;          // sluice_gateway_tls_handshakes_total
    Labeled<prometheus::Counter> gateway_tls_reloads;  // sluice_gateway_tls_reloads_total
    Labeled<prometheus::Gauge> gateway_tls_not_after;  // …_certificate_not_after_seconds
};

}  // namespace sluice::waypoint
