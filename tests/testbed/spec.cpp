#include "tests/testbed/spec.h"

#include <yaml-cpp/yaml.h>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

namespace sluice::testbed {
namespace {

// DNS-1123 label, as Kubernetes requires for namespace and pod names.
const std::regex kDnsLabel("[a-z0-9]([-a-z0-9]*[a-z0-9])?");
// Cluster names go into netns, cgroup and bpffs names after "sluice.<name>."; no '-' or '.' so
// that one cluster's prefix can never be a prefix of another's.
const std::regex kClusterName("[a-z0-9]{1,16}");

std::string where(const std::string& origin, const YAML::Node& n) {
    const YAML::Mark m = n.Mark();
    if (m.is_null())
        return origin;
    return origin + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
}

[[noreturn]] void fail(const std::string& origin, const YAML::Node& n, const std::string& msg) {
    throw SpecError(where(origin, n) + ": " + msg);
}

void check_fields(const std::string& origin, const YAML::Node& map, const std::string& what,
                  const std::set<std::string>& allowed) {
    if (!map.IsMap())
        fail(origin, map, what + " must be a mapping");
    for (const auto& kv : map) {
        const auto key = kv.first.as<std::string>();
        if (!allowed.contains(key))
            fail(origin, kv.first, "unknown field '" + key + "' in " + what);
    }
}

template <typename T>
T scalar(const std::string& origin, const YAML::Node& n, const std::string& what) {
    if (!n.IsScalar())
        fail(origin, n, what + " must be a scalar");
    try {
        return n.as<T>();
    } catch (const YAML::Exception&) {
        fail(origin, n, what + " has the wrong type: '" + n.Scalar() + "'");
    }
}

std::map<std::string, std::string> string_map(const std::string& origin, const YAML::Node& n,
                                              const std::string& what) {
    std::map<std::string, std::string> out;
    if (!n)
        return out;
    if (!n.IsMap())
        fail(origin, n, what + " must be a mapping of strings");
    for (const auto& kv : n) {
        out[scalar<std::string>(origin, kv.first, what + " key")] =
            scalar<std::string>(origin, kv.second, what + " value");
    }
    return out;
}

}  // namespace

MeshMode parse_mesh_mode(const std::string& s) {
    if (s == "none")
        return MeshMode::None;
    if (s == "sidecar")
        return MeshMode::Sidecar;
    if (s == "sidecarless")
        return MeshMode::Sidecarless;
    throw SpecError("unknown mesh mode '" + s + "' (expected none, sidecar or sidecarless)");
}

std::string to_string(MeshMode m) {
    switch (m) {
        case MeshMode::None:
            return "none";
        case MeshMode::Sidecar:
            return "sidecar";
        case MeshMode::Sidecarless:
            return "sidecarless";
    }
    return "none";
}

ClusterSpec parse_spec(const std::string& yaml_text, const std::string& origin) {
    YAML::Node root;
    try {
        root = YAML::Load(yaml_text);
    } catch (const YAML::ParserException& e) {
        throw SpecError(origin + ":" + std::to_string(e.mark.line + 1) + ":" +
                        std::to_string(e.mark.column + 1) + ": malformed YAML: " + e.msg);
    }
    ClusterSpec spec;
    spec.nodes = 1;
    check_fields(origin, root, "cluster spec",
                 {"name", "nodes", "mesh", "waypoint", "namespaces", "pods", "services"});
    if (root["name"])
        spec.name = scalar<std::string>(origin, root["name"], "name");
    if (root["nodes"])
        spec.nodes = scalar<int>(origin, root["nodes"], "nodes");
    if (root["waypoint"])
        spec.waypoint = scalar<bool>(origin, root["waypoint"], "waypoint");
    if (root["mesh"]) {
        try {
            spec.mesh = parse_mesh_mode(scalar<std::string>(origin, root["mesh"], "mesh"));
        } catch (const SpecError& e) {
            fail(origin, root["mesh"], e.what());
        }
    }
    if (auto nss = root["namespaces"]) {
        if (!nss.IsSequence())
            fail(origin, nss, "namespaces must be a list");
        for (const auto& n : nss) {
            check_fields(origin, n, "namespace", {"name", "labels"});
            spec.namespaces.push_back({scalar<std::string>(origin, n["name"], "namespace name"),
                                       string_map(origin, n["labels"], "labels")});
        }
    }
    if (auto pods = root["pods"]) {
        if (!pods.IsSequence())
            fail(origin, pods, "pods must be a list");
        for (const auto& p : pods) {
            check_fields(origin, p, "pod",
                         {"name", "namespace", "serviceAccount", "node", "labels", "replicas"});
            if (!p["name"])
                fail(origin, p, "pod needs a name");
            PodSpec pod;
            pod.name = scalar<std::string>(origin, p["name"], "pod name");
            if (p["namespace"])
                pod.namespace_name = scalar<std::string>(origin, p["namespace"], "namespace");
            if (p["serviceAccount"]) {
                pod.service_account =
                    scalar<std::string>(origin, p["serviceAccount"], "serviceAccount");
            }
            if (p["node"])
                pod.node = scalar<int>(origin, p["node"], "node");
            pod.labels = string_map(origin, p["labels"], "labels");
            int replicas = p["replicas"] ? scalar<int>(origin, p["replicas"], "replicas") : 1;
            if (replicas < 1 || replicas > kMaxPodsPerNode)
                fail(origin, p["replicas"], "replicas out of range");
            if (replicas == 1) {
                spec.pods.push_back(pod);
                continue;
            }
            // Replicas spread round-robin over nodes from `node`, named <name>-<i>.
            for (int i = 0; i < replicas; ++i) {
                PodSpec r = pod;
                r.name = pod.name + "-" + std::to_string(i);
                r.node = (pod.node + i) % std::max(spec.nodes, 1);
                spec.pods.push_back(r);
            }
        }
    }
    if (auto svcs = root["services"]) {
        if (!svcs.IsSequence())
            fail(origin, svcs, "services must be a list");
        for (const auto& s : svcs) {
            check_fields(origin, s, "service",
                         {"name", "namespace", "selector", "ports", "labels"});
            if (!s["name"])
                fail(origin, s, "service needs a name");
            ServiceSpec svc;
            svc.name = scalar<std::string>(origin, s["name"], "service name");
            if (s["namespace"])
                svc.namespace_name = scalar<std::string>(origin, s["namespace"], "namespace");
            svc.selector = string_map(origin, s["selector"], "selector");
            svc.labels = string_map(origin, s["labels"], "labels");
            if (auto ports = s["ports"]) {
                if (!ports.IsSequence())
                    fail(origin, ports, "ports must be a list");
                for (const auto& pt : ports) {
                    check_fields(origin, pt, "service port",
                                 {"name", "port", "targetPort", "protocol"});
                    ServicePort sp;
                    if (pt["name"])
                        sp.name = scalar<std::string>(origin, pt["name"], "port name");
                    if (!pt["port"])
                        fail(origin, pt, "service port needs 'port'");
                    sp.port = scalar<int>(origin, pt["port"], "port");
                    sp.target_port = pt["targetPort"]
                                         ? scalar<int>(origin, pt["targetPort"], "targetPort")
                                         : sp.port;
                    if (pt["protocol"])
                        sp.protocol = scalar<std::string>(origin, pt["protocol"], "protocol");
                    svc.ports.push_back(sp);
                }
            }
            spec.services.push_back(svc);
        }
    }
    return spec;
}

ClusterSpec load_spec_file(const std::string& path) {
    std::ifstream f(path);
    if (!f)
        throw SpecError(path + ": cannot read the spec file");
    std::stringstream ss;
    ss << f.rdbuf();
    return parse_spec(ss.str(), path);
}

ClusterSpec generated_spec(const std::string& name, int nodes, int pods_per_node) {
    ClusterSpec spec;
    spec.name = name;
    spec.nodes = nodes;
    for (int n = 0; n < nodes; ++n) {
        for (int j = 0; j < pods_per_node; ++j) {
            PodSpec p;
            p.name = "pod-" + std::to_string(n) + "-" + std::to_string(j);
            p.node = n;
            p.labels["app"] = p.name;
            spec.pods.push_back(p);
        }
    }
    return spec;
}

std::vector<std::string> validate(const ClusterSpec& spec) {
    std::vector<std::string> problems;
    if (!std::regex_match(spec.name, kClusterName)) {
        problems.push_back("cluster name '" + spec.name +
                           "' must be 1-16 characters of [a-z0-9] (it prefixes every resource)");
    }
    if (spec.nodes < 1 || spec.nodes > kMaxNodes) {
        problems.push_back("nodes must be between 1 and " + std::to_string(kMaxNodes));
    }
    std::set<std::string> seen;
    std::map<int, int> per_node;
    for (const auto& p : spec.pods) {
        const std::string id = p.namespace_name + "/" + p.name;
        if (!std::regex_match(p.name, kDnsLabel) || p.name.size() > 63) {
            problems.push_back("pod name '" + p.name + "' is not a DNS-1123 label");
        }
        if (!std::regex_match(p.namespace_name, kDnsLabel) || p.namespace_name.size() > 63) {
            problems.push_back("namespace '" + p.namespace_name + "' is not a DNS-1123 label");
        }
        if (!seen.insert(id).second)
            problems.push_back("duplicate pod " + id);
        if (p.node < 0 || p.node >= spec.nodes) {
            problems.push_back("pod " + id + " is on node " + std::to_string(p.node) +
                               " but the cluster has " + std::to_string(spec.nodes) + " nodes");
        }
        if (++per_node[p.node] == kMaxPodsPerNode + 1) {
            problems.push_back("node " + std::to_string(p.node) + " has more than " +
                               std::to_string(kMaxPodsPerNode) + " pods");
        }
    }
    std::set<std::string> svc_seen;
    for (const auto& s : spec.services) {
        const std::string id = s.namespace_name + "/" + s.name;
        if (!std::regex_match(s.name, kDnsLabel))
            problems.push_back("service name '" + s.name + "' is not a DNS-1123 label");
        if (!svc_seen.insert(id).second)
            problems.push_back("duplicate service " + id);
        if (s.ports.empty())
            problems.push_back("service " + id + " has no ports");
        for (const auto& p : s.ports) {
            if (p.port < 1 || p.port > 65535 || p.target_port < 1 || p.target_port > 65535) {
                problems.push_back("service " + id + " has a port outside 1-65535");
            }
            if (p.protocol != "TCP" && p.protocol != "UDP") {
                problems.push_back("service " + id + " protocol must be TCP or UDP");
            }
        }
    }
    if (spec.services.size() > 254)
        problems.push_back("at most 254 services (one /24 of VIPs)");
    return problems;
}

}  // namespace sluice::testbed
