#include "waypoint/metrics.h"

#include <prometheus/text_serializer.h>

#include <sstream>

namespace sluice::waypoint {

Metrics::Metrics()
    : requests(prometheus::BuildCounter()
                   .Name("istio_requests_total")
                   .Help("Requests handled by the waypoint")
                   .Register(registry)),
      duration_ms(prometheus::BuildHistogram()
                      .Name("istio_request_duration_milliseconds")
                      .Help("Request duration as the client saw it")
                      .Register(registry)),
      token_usage(prometheus::BuildHistogram()
                      .Name("gen_ai_client_token_usage")
                      .Help("Tokens per request by gen_ai_token_type (input, output)")
                      .Register(registry)),
      tokens(prometheus::BuildCounter()
                 .Name("sluice_gen_ai_tokens_total")
                 .Help("Tokens counted into budgets, by type, tenant and model")
                 .Register(registry)),
      operation_s(prometheus::BuildHistogram()
                      .Name("gen_ai_client_operation_duration_seconds")
                      .Help("GenAI operation duration")
                      .Register(registry)),
      ttft_s(prometheus::BuildHistogram()
                 .Name("gen_ai_server_time_to_first_token_seconds")
                 .Help("Time from request to the first streamed token")
                 .Register(registry)),
      tpot_s(prometheus::BuildHistogram()
                 .Name("gen_ai_server_time_per_output_token_seconds")
                 .Help("Time per output token after the first")
                 .Register(registry)),
      budget_remaining(prometheus::BuildGauge()
                           .Name("sluice_budget_remaining_tokens")
                           .Help("Tokens left in a tenant's per-minute budget")
                           .Register(registry)),
      rejected(prometheus::BuildCounter()
                   .Name("sluice_requests_rejected_total")
                   .Help("Requests the waypoint answered itself, by reason")
                   .Register(registry)),
      upstream_attempts(prometheus::BuildCounter()
                            .Name("sluice_upstream_attempts_total")
                            .Help("Attempts to forward to an endpoint, by outcome")
                            .Register(registry)),
      shed(prometheus::BuildCounter()
               .Name("sluice_requests_shed_total")
               .Help("Requests refused with 503 by admission control, by class and reason")
               .Register(registry)),
      admission_in_flight(prometheus::BuildGauge()
                              .Name("sluice_admission_in_flight")
                              .Help("Requests holding an admission slot (upstream)")
                              .Register(registry)),
      admission_queued(prometheus::BuildGauge()
                           .Name("sluice_admission_queued")
                           .Help("Requests waiting for an admission slot, by class")
                           .Register(registry)),
      backend_waiting(prometheus::BuildGauge()
                          .Name("sluice_backend_requests_waiting")
                          .Help("Requests queued at a backend, as it reports them (vLLM)")
                          .Register(registry)),
      backend_kv_cache(prometheus::BuildGauge()
                           .Name("sluice_backend_kv_cache_usage")
                           .Help("A backend's KV-cache usage 0..1, as it reports it (vLLM)")
                           .Register(registry)),
      policy_reloads(prometheus::BuildCounter()
                         .Name("sluice_policy_reload_total")
                         .Help("Reloads of the policies folder, by result")
                         .Register(registry)),
      handshake_failures(prometheus::BuildCounter()
                             .Name("sluice_tls_handshake_failures_total")
                             .Help("HBONE connections refused at the TLS handshake, by reason")
                             .Register(registry)),
      hbone_streams(prometheus::BuildCounter()
                        .Name("sluice_hbone_streams_total")
                        .Help("HBONE CONNECT streams accepted (200) or refused, by response code")
                        .Register(registry)),
      gateway_tls(prometheus::BuildCounter()
                      .Name("sluice_gateway_tls_handshakes_total")
                      .Help("TLS listener handshakes by result: the protocol chosen (h2, "
                            "http/1.1), failed or timeout")
                      .Register(registry)),
      gateway_tls_reloads(prometheus::BuildCounter()
                              .Name("sluice_gateway_tls_reloads_total")
                              .Help("TLS listener certificate reloads after a file changed, by "
                                    "result (a failure keeps the certificate in use)")
                              .Register(registry)),
      gateway_tls_not_after(prometheus::BuildGauge()
                                .Name("sluice_gateway_tls_certificate_not_after_seconds")
                                .Help("Expiry (Unix time) of the TLS listener's certificate")
                                .Register(registry)) {}

std::string Metrics::serialize() const {
    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, registry.Collect());
    return out.str();
}

}  // namespace sluice::waypoint
