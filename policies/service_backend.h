#pragma once

#include <optional>
#include <string>
#include <vector>

#include "policies/registry.h"

namespace sluice::policies {

// Kubernetes' cluster domain: the suffix of `name.ns.svc.<domain>` service names.
inline constexpr const char* kDefaultClusterDomain = "cluster.local";

// A Service named by a host, the way a pod's resolver reads it from `namespace_name`.
struct ServiceRef {
    std::string namespace_name;
    std::string name;
};

// `name` (in `namespace_name`), `name.ns`, `name.ns.svc` or `name.ns.svc.<cluster_domain>`;
// nullopt for any other form (an IP address, another domain, labels that are not RFC 1123).
std::optional<ServiceRef> parse_service_host(const std::string& host,
                                             const std::string& namespace_name,
                                             const std::string& cluster_domain);

// The ready endpoints behind one port of a Service: what a ModelRoute backend
// `{host: <service>, port: <service port>}` sends to.
struct ServiceBackend {
    std::string service;                 // "ns/name"
    std::string pool;                    // "name.ns.svc.<domain>:<port>": one pool per port
    std::vector<std::string> endpoints;  // "ip:port" / "[v6]:port", sorted
};

struct ServiceResolution {
    std::optional<ServiceBackend> backend;  // the host names a Service that has `port`
    std::string error;                      // it names a Service that lacks `port`
    bool names_service() const { return backend || !error.empty(); }
};

// Resolves `host:port` as kube-proxy would: the Service port `port`, then, in every
// EndpointSlice labelled kubernetes.io/service-name with it, the slice port of the same name
// (the targetPort, named or not, as the EndpointSlice controller resolved it per pod; a slice
// without ports falls back to the Service's numeric targetPort). Endpoints whose
// conditions.ready is false are left out; a pod in both an IPv4 and an IPv6 slice counts once,
// with its IPv4 address. Neither field set: the host names no Service of the registry.
ServiceResolution resolve_service_backend(const Registry& registry, const std::string& host,
                                          uint16_t port, const std::string& namespace_name,
                                          const std::string& cluster_domain);

}  // namespace sluice::policies
