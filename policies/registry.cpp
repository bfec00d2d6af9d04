#include "policies/registry.h"

#include <set>

#include "policies/yaml_reader.h"

namespace sluice::policies {
namespace {

Labels read_labels(YamlReader& r, const YAML::Node& node, const std::string& ctx) {
    if (!node)
        return {};
    return r.string_map(node, ctx).value_or(Labels{});
}

std::vector<IpAddress> read_addresses(YamlReader& r, const YAML::Node& list,
                                      const std::string& ctx) {
    std::vector<IpAddress> out;
    if (!list || !r.expect_sequence(list, ctx))
        return out;
    for (std::size_t i = 0; i < list.size(); ++i) {
        const YAML::Node item = list[i];
        // podIPs items are {ip: …}; EndpointSlice addresses and clusterIPs are plain strings.
        const YAML::Node value = item.IsMap() ? item["ip"] : item;
        auto s = r.string(value, ctx + "[" + std::to_string(i) + "]");
        if (!s)
            continue;
        if (*s == "None")  // headless Service
            continue;
        auto ip = datapath::parse_ip(*s);
        if (!ip) {
            r.error(value, ctx + ": '" + *s + "' is not an IP address");
            continue;
        }
        out.push_back(*ip);
    }
    return out;
}

// A Service's or an EndpointSlice's `ports`: name, port and protocol of each entry, then
// `extra(entry, ctx, port)` for the fields only one kind has.
template <typename Port, typename Extra>
std::vector<Port> read_ports(YamlReader& r, const YAML::Node& list, const std::string& ctx,
                             Extra extra) {
    std::vector<Port> out;
    if (!list || !r.expect_sequence(list, ctx))
        return out;
    for (std::size_t i = 0; i < list.size(); ++i) {
        const YAML::Node pn = list[i];
        const std::string item = ctx + "[" + std::to_string(i) + "]";
        if (!r.expect_map(pn, item))
            continue;
        Port p;
        if (pn["name"])
            p.name = r.string(pn["name"], item + ".name").value_or("");
        p.port = r.port(pn["port"], item + ".port").value_or(0);
        if (pn["protocol"])
            p.protocol = r.string(pn["protocol"], item + ".protocol").value_or("TCP");
        extra(pn, item, p);
        out.push_back(std::move(p));
    }
    return out;
}

void read_pod(YamlReader& r, const YAML::Node& n, const std::string& ns, const std::string& name,
              Registry& out) {
    Pod p;
    p.namespace_name = ns;
    p.name = name;
    const YAML::Node meta = n["metadata"];
    if (meta["uid"])
        p.uid = r.string(meta["uid"], "metadata.uid").value_or("");
    p.labels = read_labels(r, meta["labels"], "metadata.labels");
    const Labels annotations = read_labels(r, meta["annotations"], "metadata.annotations");
    if (auto it = annotations.find("sluice.dev/netns"); it != annotations.end())
        p.netns = it->second;
    if (const YAML::Node spec = n["spec"]; spec && spec.IsMap()) {
        if (spec["serviceAccountName"])
            p.service_account =
                r.string(spec["serviceAccountName"], "spec.serviceAccountName").value_or("default");
        if (spec["nodeName"])
            p.node_name = r.string(spec["nodeName"], "spec.nodeName").value_or("");
    }
    if (const YAML::Node status = n["status"]; status && status.IsMap()) {
        p.addresses = read_addresses(r, status["podIPs"], "status.podIPs");
        if (p.addresses.empty() && status["podIP"]) {
            YAML::Node one(YAML::NodeType::Sequence);
            one.push_back(status["podIP"]);
            p.addresses = read_addresses(r, one, "status.podIP");
        }
        // A host-network pod's IP is its node's, and a finished pod has handed its IP back (a
        // new pod may hold it): neither gives an address its identity (as ztunnel's registry).
        const YAML::Node spec = n["spec"];
        const bool host_network =
            spec && spec.IsMap() && spec["hostNetwork"] &&
            r.boolean(spec["hostNetwork"], "spec.hostNetwork").value_or(false);
        const std::string phase =
            status["phase"] ? r.string(status["phase"], "status.phase").value_or("") : "";
        if (host_network || phase == "Succeeded" || phase == "Failed")
            p.addresses.clear();
    }
    out.pods.push_back(std::move(p));
}

void read_service(YamlReader& r, const YAML::Node& n, const std::string& ns,
                  const std::string& name, Registry& out) {
    Service s;
    s.namespace_name = ns;
    s.name = name;
    const YAML::Node spec = n["spec"];
    if (spec && spec.IsMap()) {
        s.selector = read_labels(r, spec["selector"], "spec.selector");
        s.cluster_ips = read_addresses(r, spec["clusterIPs"], "spec.clusterIPs");
        if (s.cluster_ips.empty() && spec["clusterIP"]) {
            YAML::Node one(YAML::NodeType::Sequence);
            one.push_back(spec["clusterIP"]);
            s.cluster_ips = read_addresses(r, one, "spec.clusterIP");
        }
        s.ports = read_ports<ServicePort>(
            r, spec["ports"], "spec.ports",
            [&](const YAML::Node& pn, const std::string& ctx, ServicePort& sp) {
                // A named targetPort needs the pod's container ports: EndpointSlices carry the
                // number (service_backend.cpp); here it is treated as `port`.
                if (pn["targetPort"] && pn["targetPort"].IsScalar() &&
                    pn["targetPort"].Scalar().find_first_not_of("0123456789") == std::string::npos)
                    sp.target_port = r.port(pn["targetPort"], ctx + ".targetPort").value_or(0);
                if (sp.target_port == 0)
                    sp.target_port = sp.port;
            });
    }
    out.services.push_back(std::move(s));
}

void read_endpoint_slice(YamlReader& r, const YAML::Node& n, const std::string& ns,
                         const std::string& name, Registry& out) {
    EndpointSlice e;
    e.namespace_name = ns;
    e.name = name;
    const Labels labels = read_labels(r, n["metadata"]["labels"], "metadata.labels");
    if (auto it = labels.find("kubernetes.io/service-name"); it != labels.end())
        e.service_name = it->second;
    if (const YAML::Node eps = n["endpoints"]; eps && r.expect_sequence(eps, "endpoints")) {
        for (std::size_t i = 0; i < eps.size(); ++i) {
            const YAML::Node ep = eps[i];
            if (!r.expect_map(ep, "endpoints[" + std::to_string(i) + "]"))
                continue;
            SliceEndpoint se;
            se.addresses = read_addresses(r, ep["addresses"], "endpoints.addresses");
            e.addresses.insert(e.addresses.end(), se.addresses.begin(), se.addresses.end());
            if (const YAML::Node ref = ep["targetRef"]; ref && ref.IsMap() && ref["name"]) {
                const std::string rns =
                    ref["namespace"] ? ref["namespace"].as<std::string>(ns) : ns;
                se.pod = rns + "/" + ref["name"].as<std::string>("");
                e.pods.push_back(se.pod);
            }
            if (const YAML::Node cond = ep["conditions"]; cond && cond.IsMap() && cond["ready"])
                se.ready = r.boolean(cond["ready"], "endpoints.conditions.ready").value_or(true);
            e.endpoints.push_back(std::move(se));
        }
    }
    e.ports = read_ports<EndpointSlicePort>(
        r, n["ports"], "ports", [](const YAML::Node&, const std::string&, EndpointSlicePort&) {});
    out.endpoint_slices.push_back(std::move(e));
}

}  // namespace

const Pod* Registry::find_pod(const std::string& namespace_name, const std::string& name) const {
    for (const auto& p : pods) {
        if (p.namespace_name == namespace_name && p.name == name)
            return &p;
    }
    return nullptr;
}

const Service* Registry::find_service(const std::string& namespace_name,
                                      const std::string& name) const {
    for (const auto& s : services) {
        if (s.namespace_name == namespace_name && s.name == name)
            return &s;
    }
    return nullptr;
}

const Labels& Registry::namespace_labels(const std::string& name) const {
    static const Labels kEmpty;
    for (const auto& n : namespaces) {
        if (n.name == name)
            return n.labels;
    }
    return kEmpty;
}

std::vector<std::string> Registry::namespace_names() const {
    std::set<std::string> names;
    for (const auto& n : namespaces)
        names.insert(n.name);
    for (const auto& p : pods)
        names.insert(p.namespace_name);
    for (const auto& s : services)
        names.insert(s.namespace_name);
    return {names.begin(), names.end()};
}

Registry parse_registry(const std::vector<SourceDocument>& documents,
                        std::vector<Diagnostic>& diagnostics) {
    Registry out;
    for (const auto& doc : documents) {
        YamlReader r(doc.file, diagnostics);
        const YAML::Node& n = doc.node;
        try {
            if (!n.IsMap() || !n["kind"] || !n["kind"].IsScalar())
                continue;
            const std::string kind = n["kind"].Scalar();
            const std::string api = n["apiVersion"] ? n["apiVersion"].as<std::string>("") : "";
            const bool core = api == "v1";
            const bool discovery = api == "discovery.k8s.io/v1";
            if (!((core && (kind == "Namespace" || kind == "Pod" || kind == "Service")) ||
                  (discovery && kind == "EndpointSlice")))
                continue;
            const YAML::Node meta = n["metadata"];
            if (!r.expect_map(meta, kind + ".metadata"))
                continue;
            auto name = r.required_string(meta, "name", "metadata");
            if (!name)
                continue;
            if (kind == "Namespace") {
                out.namespaces.push_back(
                    {*name, read_labels(r, meta["labels"], "metadata.labels")});
                continue;
            }
            const std::string ns =
                meta["namespace"] ? r.string(meta["namespace"], "metadata.namespace").value_or("")
                                  : "default";
            if (kind == "Pod")
                read_pod(r, n, ns, *name, out);
            else if (kind == "Service")
                read_service(r, n, ns, *name, out);
            else
                read_endpoint_slice(r, n, ns, *name, out);
        } catch (const YAML::Exception& e) {
            diagnostics.push_back(yaml_error(doc.file, e, "malformed registry document"));
        }
    }
    return out;
}

Registry load_registry(const std::string& path, std::vector<Diagnostic>& diagnostics) {
    std::vector<SourceDocument> docs;
    for (const auto& f : read_sources(path, diagnostics)) {
        auto d = parse_yaml(f, diagnostics);
        docs.insert(docs.end(), d.begin(), d.end());
    }
    return parse_registry(docs, diagnostics);
}

}  // namespace sluice::policies
