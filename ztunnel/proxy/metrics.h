#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace sluice::ztunnel::proxy {

// The labels of Istio's TCP metrics (DESIGN.md §7), so existing dashboards work unchanged.
struct ConnectionLabels {
    std::string reporter;  // "source" (outbound side) or "destination" (inbound side)
    std::string source_workload, source_workload_namespace, source_principal, source_app;
    std::string destination_workload, destination_workload_namespace, destination_principal,
        destination_app;
    std::string destination_service, destination_service_name, destination_service_namespace;
    std::string connection_security_policy;  // "mutual_tls" or "none"
    std::string response_flags = "-";        // Envoy-style: "-", "UF" (upstream failure), ...
    std::string destination_waypoint;        // "ns/name" of the waypoint Service on the way, if any

    std::map<std::string, std::string> to_map() const;
    bool operator==(const ConnectionLabels&) const = default;
};

// Equal label sets of open connections share one copy: 10k connections between the same two
// workloads hold one ConnectionLabels instead of 10k. Thread-safe; an entry lives as long as a
// connection holds it.
class SharedLabels {
  public:
    std::shared_ptr<const ConnectionLabels> get(ConnectionLabels labels);
    size_t size();  // entries still held, after dropping released ones

  private:
    void sweep();  // with mutex_ held

    std::mutex mutex_;
    std::unordered_multimap<size_t, std::weak_ptr<const ConnectionLabels>> by_hash_;
    size_t sweep_at_ = 64;
};

// Prometheus on :15020: Istio's istio_tcp_* families plus sluice_* internals. Counters are
// thread-safe; workers update them directly.
class Metrics {
  public:
    Metrics();

    // Serves /metrics at `address` from prometheus-cpp's own (civetweb) threads.
    void expose(const std::string& address);

    void connection_opened(const ConnectionLabels& l);
    void connection_closed(const ConnectionLabels& l, uint64_t sent, uint64_t received);
    void authz_denied(const std::string& direction, const std::string& reason);
    void handshake_failed(const std::string& reason);
    // An outbound connection refused before any upstream was tried (fail closed).
    void outbound_refused(const std::string& reason);
    void set_pool(size_t connections, size_t streams);
    void set_cert_expiry(const std::string& identity, double seconds);
    void set_workloads(size_t n);

    prometheus::Registry& registry() { return *registry_; }
    SharedLabels& shared_labels() { return shared_labels_; }

  private:
    std::shared_ptr<prometheus::Registry> registry_;
    std::unique_ptr<prometheus::Exposer> exposer_;
    prometheus::Family<prometheus::Counter>& opened_;
    prometheus::Family<prometheus::Counter>& closed_;
    prometheus::Family<prometheus::Counter>& sent_;
    prometheus::Family<prometheus::Counter>& received_;
    prometheus::Family<prometheus::Counter>& authz_denied_;
    prometheus::Family<prometheus::Counter>& handshake_failures_;
    prometheus::Family<prometheus::Counter>& outbound_refused_;
    prometheus::Gauge& pool_connections_;
    prometheus::Gauge& pool_streams_;
    prometheus::Family<prometheus::Gauge>& cert_expiry_;
    prometheus::Gauge& workloads_;
    SharedLabels shared_labels_;
};

}  // namespace sluice::ztunnel::proxy
