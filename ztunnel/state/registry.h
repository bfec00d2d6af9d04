#pragma once

#include <boost/asio/ip/address.hpp>

#include <atomic>
#include <expected>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ztunnel/identity/spiffe.h"

namespace sluice::ztunnel::state {

using IpAddress = boost::asio::ip::address;
using Labels = std::map<std::string, std::string>;

// Istio's enrollment label (DESIGN.md §3), on the Pod or its Namespace.
inline constexpr const char* kDataplaneModeLabel = "istio.io/dataplane-mode";
// A Service annotation choosing how ztunnel spreads connections over its endpoints.
inline constexpr const char* kLoadBalancerAnnotation = "sluice.dev/load-balancer";
// Istio ambient's waypoint labels: on a Service (or its Namespace) `use-waypoint: <name>`
// (`none` on a Service opts out of its Namespace's label), `use-waypoint-namespace: <ns>`
// (default: the Service's namespace); waypoint pods carry `managed: istio.io-mesh-controller`.
inline constexpr const char* kUseWaypointLabel = "istio.io/use-waypoint";
inline constexpr const char* kUseWaypointNamespaceLabel = "istio.io/use-waypoint-namespace";
inline constexpr const char* kWaypointManagedLabel = "gateway.istio.io/managed";
inline constexpr const char* kWaypointManagedValue = "istio.io-mesh-controller";

struct Workload {
    std::string uid, name, namespace_name, service_account, node;
    Labels labels;
    std::vector<IpAddress> ips;
    bool ambient = false;   // enrolled by label: reachable over HBONE in sidecarless mode
    bool waypoint = false;  // a waypoint pod: terminates HBONE on :15008 itself

    std::string key() const { return namespace_name + "/" + name; }
    identity::Identity identity(const std::string& trust_domain) const {
        return {trust_domain, namespace_name, service_account};
    }
};

enum class LoadBalancing { RoundRobin, LeastConnections, ConsistentHash };
const char* to_string(LoadBalancing lb);

struct ServicePort {
    std::string name;
    uint16_t port = 0;
    uint16_t target_port = 0;
};

struct Endpoint {
    IpAddress ip;
    std::string pod_key;  // "ns/name" of the targetRef, empty when not a pod
    bool ready = true;
};

struct Service {
    std::string name, namespace_name;
    std::vector<IpAddress> vips;
    std::vector<ServicePort> ports;
    std::vector<Endpoint> endpoints;
    LoadBalancing load_balancing = LoadBalancing::RoundRobin;
    Labels labels;
    std::optional<std::string> waypoint;  // "ns/name" of the waypoint Service it uses

    std::string key() const { return namespace_name + "/" + name; }
    std::string hostname() const { return name + "." + namespace_name + ".svc.cluster.local"; }
    const ServicePort* port(uint16_t p) const;
};

// An immutable view of workloads and services. The proxy holds a shared_ptr to one snapshot per
// connection; a reload swaps in a new one.
class Snapshot {
  public:
    Snapshot() = default;
    Snapshot(std::vector<Workload> workloads, std::vector<Service> services);

    const Workload* workload_by_ip(const IpAddress& ip) const;
    const Workload* workload(const std::string& namespace_name, const std::string& name) const;
    const Service* service_by_vip(const IpAddress& ip) const;
    const Service* service(const std::string& key) const;  // "ns/name"
    const std::vector<Workload>& workloads() const { return workloads_; }
    const std::vector<Service>& services() const { return services_; }

  private:
    std::vector<Workload> workloads_;
    std::vector<Service> services_;
    std::map<IpAddress, size_t> workload_by_ip_;
    std::map<std::string, size_t> workload_by_key_;
    std::map<IpAddress, size_t> service_by_vip_;
    std::map<std::string, size_t> service_by_key_;
};

// The waypoint Service ("ns/name") a Service in `namespace_name` uses by its own labels, else by
// its Namespace's; none when neither names one, or the Service says `none`.
std::optional<std::string> use_waypoint(const Labels& service_labels,
                                        const Labels& namespace_labels,
                                        const std::string& namespace_name);
bool is_waypoint_pod(const Labels& pod_labels);

// Where a connection from `source` (nullptr: not in the registry) to `destination` goes first.
struct WaypointRoute {
    const Service* waypoint = nullptr;  // nullptr: straight to the destination's endpoints
};
// A waypoint's own connections never go to a waypoint (no loops), nor does a Service that is its
// own waypoint. An error when the Service names a waypoint the registry does not hold: the caller
// refuses the connection (fail closed) instead of bypassing the waypoint.
std::expected<WaypointRoute, std::string> waypoint_route(const Snapshot& snap,
                                                         const Workload* source,
                                                         const Service& destination);

// Where snapshots come from: a folder of Kubernetes YAML documents in the embedded default
// (DESIGN.md §5). One interface, so the reader can be swapped for the policies library's.
class RegistrySource {
  public:
    virtual ~RegistrySource() = default;
    // A new snapshot, or why the documents could not be read (the caller keeps the last good).
    virtual std::expected<Snapshot, std::string> load() = 0;
    // Cheap check whether load() could return something new.
    virtual bool changed() = 0;
    virtual std::string describe() const = 0;
};

std::unique_ptr<RegistrySource> yaml_folder_registry(std::string dir);

// Names and modification times of a folder's entries: changes when any file changes.
std::string directory_fingerprint(const std::string& dir);

// The current snapshot, swapped atomically on reload.
class RegistryView {
  public:
    explicit RegistryView(std::unique_ptr<RegistrySource> source);
    std::shared_ptr<const Snapshot> current() const;
    // Reloads if the source changed; keeps the last good snapshot on error. Any thread.
    void refresh();

  private:
    std::mutex refresh_mutex_;  // one reload at a time (admin thread, ZDS thread)
    std::unique_ptr<RegistrySource> source_;
    mutable std::mutex mutex_;
    std::shared_ptr<const Snapshot> current_;
};

}  // namespace sluice::ztunnel::state
