#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "policies/diagnostic.h"
#include "policies/schema.h"
#include "policies/source.h"

namespace sluice::policies {

// The workloads and services policies apply to, read from Kubernetes' own documents (v1
// Namespace, v1 Pod, v1 Service, discovery.k8s.io/v1 EndpointSlice), as the testbed writes them
// (docs/testbed.md "Registry") and as an API server would return them.
struct RegistryNamespace {
    std::string name;
    Labels labels;
};

struct Pod {
    std::string namespace_name;
    std::string name;
    std::string uid;
    Labels labels;
    std::string service_account = "default";
    std::string node_name;
    std::vector<IpAddress> addresses;  // status.podIPs (or podIP)
    std::string netns;                 // annotation sluice.dev/netns, when present

    std::string key() const { return namespace_name + "/" + name; }
};

struct ServicePort {
    std::string name;
    uint16_t port = 0;
    uint16_t target_port = 0;  // 0: same as port (named target ports are not resolved)
    std::string protocol = "TCP";
};

struct Service {
    std::string namespace_name;
    std::string name;
    Labels selector;
    std::vector<IpAddress> cluster_ips;
    std::vector<ServicePort> ports;

    std::string key() const { return namespace_name + "/" + name; }
};

// A port of an EndpointSlice: the number behind the Service port of the same name (a named
// targetPort already resolved to the pod's container port by the EndpointSlice controller).
struct EndpointSlicePort {
    std::string name;  // the Service port's name; "" for a Service's single unnamed port
    uint16_t port = 0;
    std::string protocol = "TCP";
};

// One entry of `endpoints`: a pod's addresses and whether it takes traffic.
struct SliceEndpoint {
    std::vector<IpAddress> addresses;
    bool ready = true;  // conditions.ready; absent means ready (as Kubernetes documents)
    std::string pod;    // targetRef "ns/name", when given
};

struct EndpointSlice {
    std::string namespace_name;
    std::string name;
    std::string service_name;          // label kubernetes.io/service-name
    std::vector<IpAddress> addresses;  // of every endpoint, ready or not
    std::vector<std::string> pods;     // targetRef "ns/name" of each endpoint, when given
    std::vector<SliceEndpoint> endpoints;
    std::vector<EndpointSlicePort> ports;
};

struct Registry {
    std::vector<RegistryNamespace> namespaces;
    std::vector<Pod> pods;
    std::vector<Service> services;
    std::vector<EndpointSlice> endpoint_slices;

    const Pod* find_pod(const std::string& namespace_name, const std::string& name) const;
    const Service* find_service(const std::string& namespace_name, const std::string& name) const;
    // Labels of the namespace (empty when the registry has no Namespace document for it).
    const Labels& namespace_labels(const std::string& name) const;
    // Every namespace named by a Namespace, Pod or Service document, sorted.
    std::vector<std::string> namespace_names() const;
};

// Reads registry documents; other kinds are skipped silently (a registry folder may hold more),
// malformed known kinds are positioned errors.
Registry parse_registry(const std::vector<SourceDocument>& documents,
                        std::vector<Diagnostic>& diagnostics);
// read_sources + parse_yaml + parse_registry.
Registry load_registry(const std::string& path, std::vector<Diagnostic>& diagnostics);

}  // namespace sluice::policies
