#include "policies/service_backend.h"

#include <algorithm>
#include <map>

#include "policies/yaml_reader.h"

namespace sluice::policies {
namespace {

std::vector<std::string> split_labels(const std::string& host) {
    std::vector<std::string> labels;
    std::size_t start = 0;
    for (;;) {
        const std::size_t dot = host.find('.', start);
        labels.push_back(host.substr(start, dot - start));
        if (dot == std::string::npos)
            return labels;
        start = dot + 1;
    }
}

std::string endpoint_name(const IpAddress& ip, uint16_t port) {
    const std::string text = ip.to_string();
    return (ip.is_v4() ? text : "[" + text + "]") + ":" + std::to_string(port);
}

// The slice's port for the Service port `sp`, or 0 when the slice does not serve it.
uint16_t slice_port(const EndpointSlice& slice, const ServicePort& sp) {
    if (slice.ports.empty())
        return sp.target_port;
    for (const auto& p : slice.ports) {
        if (p.name == sp.name && p.protocol == sp.protocol)
            return p.port;
    }
    return 0;
}

}  // namespace

std::optional<ServiceRef> parse_service_host(const std::string& host,
                                             const std::string& namespace_name,
                                             const std::string& cluster_domain) {
    const auto labels = split_labels(host);
    const std::size_t n = labels.size();
    const bool svc = n >= 3 && labels[2] == "svc";
    if (n == 3 && !svc)
        return std::nullopt;
    if (n > 3 && (!svc || host.substr(labels[0].size() + labels[1].size() + 6) != cluster_domain))
        return std::nullopt;
    ServiceRef ref{.namespace_name = n == 1 ? namespace_name : labels[1], .name = labels[0]};
    // Service names are DNS-1035 labels and namespaces DNS-1123 labels, both at most 63.
    const auto label = [](const std::string& s) {
        return is_dns_label(s, 63) && s.find('.') == std::string::npos;
    };
    if (!label(ref.name) || !label(ref.namespace_name))
        return std::nullopt;
    return ref;
}

ServiceResolution resolve_service_backend(const Registry& registry, const std::string& host,
                                          uint16_t port, const std::string& namespace_name,
                                          const std::string& cluster_domain) {
    ServiceResolution out;
    const auto ref = parse_service_host(host, namespace_name, cluster_domain);
    if (!ref)
        return out;
    const Service* service = registry.find_service(ref->namespace_name, ref->name);
    if (!service)
        return out;
    auto sp = std::find_if(service->ports.begin(), service->ports.end(),
                           [&](const ServicePort& p) { return p.port == port; });
    if (sp == service->ports.end()) {
        std::string ports;
        for (const auto& p : service->ports)
            ports += (ports.empty() ? "" : ", ") + std::to_string(p.port);
        out.error = "Service " + service->key() + " has no port " + std::to_string(port) +
                    " (its ports: " + (ports.empty() ? "none" : ports) + ")";
        return out;
    }
    std::vector<std::string> endpoints;
    std::map<std::string, std::pair<bool, std::string>> by_pod;  // pod → (is IPv4, endpoint)
    for (const auto& slice : registry.endpoint_slices) {
        if (slice.namespace_name != service->namespace_name || slice.service_name != service->name)
            continue;
        const uint16_t target = slice_port(slice, *sp);
        if (target == 0)
            continue;
        for (const auto& ep : slice.endpoints) {
            // Kubernetes: the addresses of one endpoint are fungible; one is enough.
            if (!ep.ready || ep.addresses.empty())
                continue;
            const IpAddress& ip = ep.addresses.front();
            std::string name = endpoint_name(ip, target);
            if (ep.pod.empty()) {
                endpoints.push_back(std::move(name));
                continue;
            }
            auto [it, fresh] = by_pod.try_emplace(ep.pod, ip.is_v4(), name);
            if (!fresh && ip.is_v4() && !it->second.first)
                it->second = {true, std::move(name)};
        }
    }
    for (auto& [pod, chosen] : by_pod)
        endpoints.push_back(std::move(chosen.second));
    std::sort(endpoints.begin(), endpoints.end());
    endpoints.erase(std::unique(endpoints.begin(), endpoints.end()), endpoints.end());
    out.backend = ServiceBackend{.service = service->key(),
                                 .pool = service->name + "." + service->namespace_name + ".svc." +
                                         cluster_domain + ":" + std::to_string(port),
                                 .endpoints = std::move(endpoints)};
    return out;
}

}  // namespace sluice::policies
