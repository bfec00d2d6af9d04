#include "ztunnel/proxy/metrics.h"

#include <algorithm>

namespace sluice::ztunnel::proxy {
namespace {

prometheus::Family<prometheus::Counter>& counter(prometheus::Registry& r, const std::string& name,
                                                 const std::string& help) {
    return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}

prometheus::Family<prometheus::Gauge>& gauge(prometheus::Registry& r, const std::string& name,
                                             const std::string& help) {
    return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}

std::string or_unknown(const std::string& s) {
    return s.empty() ? "unknown" : s;
}

}  // namespace

std::map<std::string, std::string> ConnectionLabels::to_map() const {
    std::map<std::string, std::string> m{
        {"reporter", reporter},
        {"source_workload", or_unknown(source_workload)},
        {"source_workload_namespace", or_unknown(source_workload_namespace)},
        {"source_principal", or_unknown(source_principal)},
        {"source_app", or_unknown(source_app)},
        {"source_canonical_service", or_unknown(source_app)},
        {"source_cluster", "Kubernetes"},
        {"destination_workload", or_unknown(destination_workload)},
        {"destination_workload_namespace", or_unknown(destination_workload_namespace)},
        {"destination_principal", or_unknown(destination_principal)},
        {"destination_app", or_unknown(destination_app)},
        {"destination_canonical_service", or_unknown(destination_app)},
        {"destination_cluster", "Kubernetes"},
        {"destination_service", or_unknown(destination_service)},
        {"destination_service_name", or_unknown(destination_service_name)},
        {"destination_service_namespace", or_unknown(destination_service_namespace)},
        {"request_protocol", "tcp"},
        {"response_flags", response_flags},
        {"connection_security_policy", connection_security_policy}};
    // Only on connections through a waypoint: Istio's label set stays as it is elsewhere.
    if (!destination_waypoint.empty())
        m["destination_waypoint"] = destination_waypoint;
    return m;
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      opened_(counter(*registry_, "istio_tcp_connections_opened_total", "TCP connections opened")),
      closed_(counter(*registry_, "istio_tcp_connections_closed_total", "TCP connections closed")),
      sent_(counter(*registry_, "istio_tcp_sent_bytes_total",
                    "Bytes sent to the downstream (response direction)")),
      received_(counter(*registry_, "istio_tcp_received_bytes_total",
                        "Bytes received from the downstream (request direction)")),
      authz_denied_(counter(*registry_, "sluice_authz_denials_total",
                            "Connections refused by authorization, by reason")),
      handshake_failures_(counter(*registry_, "sluice_tls_handshake_failures_total",
                                  "HBONE TLS handshakes refused, by reason")),
      outbound_refused_(counter(*registry_, "sluice_outbound_refused_total",
                                "Outbound connections refused before an upstream was tried")),
      pool_connections_(
          gauge(*registry_, "sluice_pool_connections", "Open HBONE client connections in the pools")
              .Add({})),
      pool_streams_(
          gauge(*registry_, "sluice_pool_streams", "Active HBONE client streams").Add({})),
      cert_expiry_(gauge(*registry_, "sluice_cert_expiry_seconds",
                         "Seconds until each workload certificate expires")),
      workloads_(gauge(*registry_, "sluice_workloads", "Workloads this ztunnel serves").Add({})) {}

void Metrics::expose(const std::string& address) {
    // One civetweb worker: a scrape every few seconds needs no more, and each thread costs an
    // idle ztunnel its stack and thread-local pages.
    exposer_ = std::make_unique<prometheus::Exposer>(address, 1);
    exposer_->RegisterCollectable(registry_);
}

namespace {

size_t hash_labels(const ConnectionLabels& l) {
    size_t h = 0;
    for (const std::string* s :
         {&l.reporter, &l.source_workload, &l.source_workload_namespace, &l.source_principal,
          &l.source_app, &l.destination_workload, &l.destination_workload_namespace,
          &l.destination_principal, &l.destination_app, &l.destination_service,
          &l.destination_service_name, &l.destination_service_namespace,
          &l.connection_security_policy, &l.response_flags}) {
        h = h * 1000003 ^ std::hash<std::string>{}(*s);
    }
    return h;
}

}  // namespace

std::shared_ptr<const ConnectionLabels> SharedLabels::get(ConnectionLabels labels) {
    const size_t h = hash_labels(labels);
    std::lock_guard lock(mutex_);
    auto [first, last] = by_hash_.equal_range(h);
    for (auto it = first; it != last; ++it) {
        auto held = it->second.lock();
        if (held && *held == labels)
            return held;
    }
    auto shared = std::make_shared<const ConnectionLabels>(std::move(labels));
    by_hash_.emplace(h, shared);
    if (by_hash_.size() >= sweep_at_) {
        sweep();
        sweep_at_ = std::max<size_t>(64, 2 * by_hash_.size());
    }
    return shared;
}

size_t SharedLabels::size() {
    std::lock_guard lock(mutex_);
    sweep();
    return by_hash_.size();
}

void SharedLabels::sweep() {
    std::erase_if(by_hash_, [](const auto& e) { return e.second.expired(); });
}

void Metrics::connection_opened(const ConnectionLabels& l) {
    opened_.Add(l.to_map()).Increment();
}

void Metrics::connection_closed(const ConnectionLabels& l, uint64_t sent, uint64_t received) {
    const auto m = l.to_map();
    closed_.Add(m).Increment();
    sent_.Add(m).Increment(static_cast<double>(sent));
    received_.Add(m).Increment(static_cast<double>(received));
}

void Metrics::outbound_refused(const std::string& reason) {
    outbound_refused_.Add({{"reason", reason}}).Increment();
}

void Metrics::authz_denied(const std::string& direction, const std::string& reason) {
    authz_denied_.Add({{"direction", direction}, {"reason", reason}}).Increment();
}

void Metrics::handshake_failed(const std::string& reason) {
    handshake_failures_.Add({{"reason", reason}}).Increment();
}

void Metrics::set_pool(size_t connections, size_t streams) {
    pool_connections_.Set(static_cast<double>(connections));
    pool_streams_.Set(static_cast<double>(streams));
}

void Metrics::set_cert_expiry(const std::string& identity, double seconds) {
    cert_expiry_.Add({{"identity", identity}}).Set(seconds);
}

void Metrics::set_workloads(size_t n) {
    workloads_.Set(static_cast<double>(n));
}

}  // namespace sluice::ztunnel::proxy
