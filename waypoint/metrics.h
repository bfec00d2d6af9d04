#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>

namespace sluice::waypoint {

// The waypoint's Prometheus metrics, served on :15020/metrics. Istio's HTTP names where they
// apply (istio_requests_total, istio_request_duration_milliseconds) and the OpenTelemetry GenAI
// semantic conventions (gen_ai.client.token.usage, gen_ai.server.time_to_first_token, …) with
// dots turned into underscores and the unit appended, as the OTel Prometheus exporter does.
// prometheus-cpp metrics are thread-safe; every worker thread updates the same families.
struct Metrics {
    Metrics();
    std::string serialize() const;

    prometheus::Registry registry;
    prometheus::Family<prometheus::Counter>& requests;           // istio_requests_total
    prometheus::Family<prometheus::Histogram>& duration_ms;      // istio_request_duration_ms
    prometheus::Family<prometheus::Histogram>& token_usage;      // gen_ai_client_token_usage
    prometheus::Family<prometheus::Counter>& tokens;             // sluice_gen_ai_tokens_total
    prometheus::Family<prometheus::Histogram>& operation_s;      // gen_ai_client_operation_duration
    prometheus::Family<prometheus::Histogram>& ttft_s;           // time to first token
    prometheus::Family<prometheus::Histogram>& tpot_s;           // time per output token
    prometheus::Family<prometheus::Gauge>& budget_remaining;     // sluice_budget_remaining_tokens
    prometheus::Family<prometheus::Counter>& rejected;           // sluice_requests_rejected_total
    prometheus::Family<prometheus::Counter>& upstream_attempts;  // sluice_upstream_attempts_total
    prometheus::Family<prometheus::Counter>& shed;               // sluice_requests_shed_total
    prometheus::Family<prometheus::Gauge>& admission_in_flight;  // sluice_admission_in_flight
    prometheus::Family<prometheus::Gauge>& admission_queued;     // sluice_admission_queued
    prometheus::Family<prometheus::Gauge>& backend_waiting;      // sluice_backend_requests_waiting
    prometheus::Family<prometheus::Gauge>& backend_kv_cache;     // sluice_backend_kv_cache_usage
    prometheus::Family<prometheus::Counter>& policy_reloads;     // sluice_policy_reload_total
    prometheus::Family<prometheus::Counter>& handshake_failures;  // sluice_tls_handshake_failures
    prometheus::Family<prometheus::Counter>& hbone_streams;       // sluice_hbone_streams_total
};

}  // namespace sluice::waypoint
