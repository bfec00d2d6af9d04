#include "tests/testbed/registry.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <system_error>

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;

void emit_labels(YAML::Emitter& out, const char* key, const std::map<std::string, std::string>& m) {
    if (m.empty())
        return;
    out << YAML::Key << key << YAML::Value << YAML::BeginMap;
    for (const auto& [k, v] : m)
        out << YAML::Key << k << YAML::Value << YAML::DoubleQuoted << v;
    out << YAML::EndMap;
}

bool selects(const std::map<std::string, std::string>& selector, const PodState& pod) {
    if (selector.empty())
        return false;  // Kubernetes: a Service without selector has no endpoints
    for (const auto& [k, v] : selector) {
        auto it = pod.labels.find(k);
        if (it == pod.labels.end() || it->second != v)
            return false;
    }
    return true;
}

std::string pod_doc(const PodState& p, const NodeState& node) {
    YAML::Emitter out;
    out << YAML::BeginMap;
    out << YAML::Key << "apiVersion" << YAML::Value << "v1";
    out << YAML::Key << "kind" << YAML::Value << "Pod";
    out << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << p.name;
    out << YAML::Key << "namespace" << YAML::Value << p.namespace_name;
    out << YAML::Key << "uid" << YAML::Value << p.uid;
    emit_labels(out, "labels", p.labels);
    emit_labels(out, "annotations", {{kNetnsAnnotation, p.netns}});
    out << YAML::EndMap;
    out << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "nodeName" << YAML::Value << p.node_name;
    out << YAML::Key << "serviceAccountName" << YAML::Value << p.service_account;
    out << YAML::Key << "containers" << YAML::Value << YAML::BeginSeq << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << "app";
    out << YAML::Key << "image" << YAML::Value << "sluice-testbed/process";
    out << YAML::EndMap << YAML::EndSeq;
    out << YAML::EndMap;
    out << YAML::Key << "status" << YAML::Value << YAML::BeginMap;
    // A pod the runtime is still networking is Pending and has no addresses yet, as in Kubernetes.
    out << YAML::Key << "phase" << YAML::Value << (p.ip.empty() ? "Pending" : "Running");
    out << YAML::Key << "hostIP" << YAML::Value << node.fabric_ip;
    if (!p.ip.empty()) {
        out << YAML::Key << "podIP" << YAML::Value << p.ip;
        out << YAML::Key << "podIPs" << YAML::Value << YAML::BeginSeq;
        for (const auto& ip : {p.ip, p.ip6}) {
            if (!ip.empty())
                out << YAML::BeginMap << YAML::Key << "ip" << YAML::Value << ip << YAML::EndMap;
        }
        out << YAML::EndSeq;
    }
    out << YAML::EndMap;
    out << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
}

std::string namespace_doc(const NamespaceSpec& n) {
    YAML::Emitter out;
    out << YAML::BeginMap;
    out << YAML::Key << "apiVersion" << YAML::Value << "v1";
    out << YAML::Key << "kind" << YAML::Value << "Namespace";
    out << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << n.name;
    emit_labels(out, "labels", n.labels);
    out << YAML::EndMap << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
}

std::string service_doc(const ServiceState& s) {
    YAML::Emitter out;
    out << YAML::BeginMap;
    out << YAML::Key << "apiVersion" << YAML::Value << "v1";
    out << YAML::Key << "kind" << YAML::Value << "Service";
    out << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << s.spec.name;
    out << YAML::Key << "namespace" << YAML::Value << s.spec.namespace_name;
    out << YAML::Key << "uid" << YAML::Value << s.uid;
    emit_labels(out, "labels", s.spec.labels);
    out << YAML::EndMap;
    out << YAML::Key << "spec" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "type" << YAML::Value << "ClusterIP";
    out << YAML::Key << "clusterIP" << YAML::Value << s.vip;
    out << YAML::Key << "clusterIPs" << YAML::Value << YAML::Flow << YAML::BeginSeq << s.vip
        << YAML::EndSeq;
    emit_labels(out, "selector", s.spec.selector);
    out << YAML::Key << "ports" << YAML::Value << YAML::BeginSeq;
    for (const auto& p : s.spec.ports) {
        out << YAML::BeginMap;
        if (!p.name.empty())
            out << YAML::Key << "name" << YAML::Value << p.name;
        out << YAML::Key << "port" << YAML::Value << p.port;
        out << YAML::Key << "targetPort" << YAML::Value << p.target_port;
        out << YAML::Key << "protocol" << YAML::Value << p.protocol;
        out << YAML::EndMap;
    }
    out << YAML::EndSeq << YAML::EndMap << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
}

std::string endpointslice_doc(const ServiceState& s, const std::vector<const PodState*>& pods,
                              bool ipv6) {
    YAML::Emitter out;
    out << YAML::BeginMap;
    out << YAML::Key << "apiVersion" << YAML::Value << "discovery.k8s.io/v1";
    out << YAML::Key << "kind" << YAML::Value << "EndpointSlice";
    out << YAML::Key << "metadata" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << s.spec.name + (ipv6 ? "-v6" : "-v4");
    out << YAML::Key << "namespace" << YAML::Value << s.spec.namespace_name;
    emit_labels(out, "labels", {{"kubernetes.io/service-name", s.spec.name}});
    out << YAML::EndMap;
    out << YAML::Key << "addressType" << YAML::Value << (ipv6 ? "IPv6" : "IPv4");
    out << YAML::Key << "endpoints" << YAML::Value << YAML::BeginSeq;
    for (const PodState* p : pods) {
        out << YAML::BeginMap;
        out << YAML::Key << "addresses" << YAML::Value << YAML::Flow << YAML::BeginSeq
            << (ipv6 ? p->ip6 : p->ip) << YAML::EndSeq;
        out << YAML::Key << "conditions" << YAML::Value << YAML::BeginMap << YAML::Key << "ready"
            << YAML::Value << true << YAML::EndMap;
        out << YAML::Key << "nodeName" << YAML::Value << p->node_name;
        out << YAML::Key << "targetRef" << YAML::Value << YAML::BeginMap;
        out << YAML::Key << "kind" << YAML::Value << "Pod";
        out << YAML::Key << "name" << YAML::Value << p->name;
        out << YAML::Key << "namespace" << YAML::Value << p->namespace_name;
        out << YAML::Key << "uid" << YAML::Value << p->uid;
        out << YAML::EndMap << YAML::EndMap;
    }
    out << YAML::EndSeq;
    out << YAML::Key << "ports" << YAML::Value << YAML::BeginSeq;
    for (const auto& p : s.spec.ports) {
        out << YAML::BeginMap;
        if (!p.name.empty())
            out << YAML::Key << "name" << YAML::Value << p.name;
        out << YAML::Key << "port" << YAML::Value << p.target_port;
        out << YAML::Key << "protocol" << YAML::Value << p.protocol;
        out << YAML::EndMap;
    }
    out << YAML::EndSeq << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
}

}  // namespace

std::vector<RegistryDocument> registry_documents(const ClusterState& state) {
    std::vector<RegistryDocument> docs;
    // Every namespace a pod or service uses exists, with the labels the spec gave it.
    std::map<std::string, NamespaceSpec> namespaces;
    for (const auto& p : state.pods)
        namespaces[p.namespace_name].name = p.namespace_name;
    for (const auto& s : state.services)
        namespaces[s.spec.namespace_name].name = s.spec.namespace_name;
    for (const auto& n : state.namespaces)
        namespaces[n.name] = n;
    for (const auto& [name, ns] : namespaces)
        docs.push_back({"namespace." + name + ".yaml", namespace_doc(ns)});
    for (const auto& p : state.pods) {
        docs.push_back({"pod." + p.namespace_name + "." + p.name + ".yaml",
                        pod_doc(p, state.nodes.at(p.node))});
    }
    for (const auto& s : state.services) {
        std::vector<const PodState*> selected;
        for (const auto& p : state.pods) {
            if (p.namespace_name == s.spec.namespace_name && selects(s.spec.selector, p))
                selected.push_back(&p);
        }
        const std::string base = s.spec.namespace_name + "." + s.spec.name;
        docs.push_back({"service." + base + ".yaml", service_doc(s)});
        docs.push_back(
            {"endpointslice." + base + "-v4.yaml", endpointslice_doc(s, selected, false)});
        docs.push_back(
            {"endpointslice." + base + "-v6.yaml", endpointslice_doc(s, selected, true)});
    }
    return docs;
}

void write_registry(const std::string& dir, const std::vector<RegistryDocument>& docs, bool prune) {
    fs::create_directories(dir);
    std::set<std::string> keep;
    for (const auto& d : docs) {
        const fs::path tmp = fs::path(dir) / ("." + d.file_name + ".tmp");
        {
            std::ofstream f(tmp, std::ios::trunc);
            f << d.yaml;
            if (!f)
                throw std::system_error(errno, std::generic_category(), "write " + tmp.string());
        }
        fs::rename(tmp, fs::path(dir) / d.file_name);
        keep.insert(d.file_name);
    }
    if (!prune)
        return;
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (!keep.contains(entry.path().filename().string()))
            fs::remove(entry.path());
    }
}

}  // namespace sluice::testbed
