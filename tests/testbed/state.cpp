#include "tests/testbed/state.h"

namespace sluice::testbed {

using nlohmann::json;

const PodState* ClusterState::find_pod(const std::string& ref) const {
    auto slash = ref.find('/');
    const PodState* found = nullptr;
    for (const auto& p : pods) {
        bool match = slash == std::string::npos ? p.name == ref
                                                : p.namespace_name == ref.substr(0, slash) &&
                                                      p.name == ref.substr(slash + 1);
        if (!match)
            continue;
        if (found != nullptr)
            return nullptr;  // ambiguous bare name
        found = &p;
    }
    return found;
}

json to_json(const ClusterState& s) {
    json j;
    j["name"] = s.name;
    j["mesh"] = to_string(s.mesh);
    j["runDir"] = s.run_dir;
    j["registryDir"] = s.registry_dir;
    j["policiesDir"] = s.policies_dir;
    if (!s.ca_dir.empty())
        j["caDir"] = s.ca_dir;
    j["cgroupRoot"] = s.cgroup_root;
    j["bpffsRoot"] = s.bpffs_root;
    j["fabricNetns"] = s.fabric_netns;
    j["conflist"] = s.conflist;
    j["cniPath"] = s.cni_path;
    j["namespaces"] = json::array();
    for (const auto& n : s.namespaces)
        j["namespaces"].push_back({{"name", n.name}, {"labels", n.labels}});
    j["nodes"] = json::array();
    for (const auto& n : s.nodes) {
        j["nodes"].push_back({{"index", n.index},
                              {"name", n.name},
                              {"netns", n.netns},
                              {"cgroup", n.cgroup},
                              {"systemCgroup", n.system_cgroup},
                              {"bpffs", n.bpffs},
                              {"runDir", n.run_dir},
                              {"fabricIP", n.fabric_ip},
                              {"fabricIP6", n.fabric_ip6},
                              {"podCIDR", n.pod_cidr},
                              {"podCIDR6", n.pod_cidr6}});
    }
    j["pods"] = json::array();
    for (const auto& p : s.pods) {
        j["pods"].push_back({{"name", p.name},
                             {"namespace", p.namespace_name},
                             {"serviceAccount", p.service_account},
                             {"uid", p.uid},
                             {"containerID", p.container_id},
                             {"node", p.node},
                             {"nodeName", p.node_name},
                             {"netns", p.netns},
                             {"cgroup", p.cgroup},
                             {"ip", p.ip},
                             {"ip6", p.ip6},
                             {"labels", p.labels},
                             {"cniResult", p.cni_result}});
    }
    j["services"] = json::array();
    for (const auto& sv : s.services) {
        json ports = json::array();
        for (const auto& p : sv.spec.ports) {
            ports.push_back({{"name", p.name},
                             {"port", p.port},
                             {"targetPort", p.target_port},
                             {"protocol", p.protocol}});
        }
        j["services"].push_back({{"name", sv.spec.name},
                                 {"namespace", sv.spec.namespace_name},
                                 {"selector", sv.spec.selector},
                                 {"labels", sv.spec.labels},
                                 {"ports", ports},
                                 {"vip", sv.vip},
                                 {"uid", sv.uid}});
    }
    if (s.waypoint) {
        const auto& w = *s.waypoint;
        j["waypoint"] = {{"pod", w.pod},          {"gateway", w.gateway}, {"metrics", w.metrics},
                         {"ready", w.ready},      {"config", w.config},   {"log", w.log},
                         {"backends", w.backends}};
        if (!w.hbone.empty())
            j["waypoint"]["hbone"] = w.hbone;
    }
    j["daemons"] = json::array();
    for (const auto& d : s.daemons) {
        j["daemons"].push_back(
            {{"node", d.node}, {"pod", d.pod}, {"name", d.name}, {"pid", d.pid}, {"log", d.log}});
    }
    return j;
}

ClusterState state_from_json(const json& j) {
    ClusterState s;
    s.name = j.at("name");
    s.mesh = parse_mesh_mode(j.at("mesh"));
    s.run_dir = j.at("runDir");
    s.registry_dir = j.at("registryDir");
    s.policies_dir = j.at("policiesDir");
    s.ca_dir = j.value("caDir", "");
    s.cgroup_root = j.at("cgroupRoot");
    s.bpffs_root = j.at("bpffsRoot");
    s.fabric_netns = j.at("fabricNetns");
    s.conflist = j.at("conflist");
    s.cni_path = j.at("cniPath").get<std::vector<std::string>>();
    for (const auto& n : j.at("namespaces")) {
        s.namespaces.push_back(
            {n.at("name"), n.at("labels").get<std::map<std::string, std::string>>()});
    }
    for (const auto& n : j.at("nodes")) {
        NodeState ns;
        ns.index = n.at("index");
        ns.name = n.at("name");
        ns.netns = n.at("netns");
        ns.cgroup = n.at("cgroup");
        ns.system_cgroup = n.at("systemCgroup");
        ns.bpffs = n.at("bpffs");
        ns.run_dir = n.at("runDir");
        ns.fabric_ip = n.at("fabricIP");
        ns.fabric_ip6 = n.at("fabricIP6");
        ns.pod_cidr = n.at("podCIDR");
        ns.pod_cidr6 = n.at("podCIDR6");
        s.nodes.push_back(ns);
    }
    for (const auto& p : j.at("pods")) {
        PodState ps;
        ps.name = p.at("name");
        ps.namespace_name = p.at("namespace");
        ps.service_account = p.at("serviceAccount");
        ps.uid = p.at("uid");
        ps.container_id = p.at("containerID");
        ps.node = p.at("node");
        ps.node_name = p.at("nodeName");
        ps.netns = p.at("netns");
        ps.cgroup = p.at("cgroup");
        ps.ip = p.at("ip");
        ps.ip6 = p.at("ip6");
        ps.labels = p.at("labels").get<std::map<std::string, std::string>>();
        ps.cni_result = p.at("cniResult");
        s.pods.push_back(ps);
    }
    for (const auto& sv : j.at("services")) {
        ServiceState ss;
        ss.spec.name = sv.at("name");
        ss.spec.namespace_name = sv.at("namespace");
        ss.spec.selector = sv.at("selector").get<std::map<std::string, std::string>>();
        ss.spec.labels =
            sv.value("labels", json::object()).get<std::map<std::string, std::string>>();
        for (const auto& p : sv.at("ports")) {
            ss.spec.ports.push_back(
                {p.at("name"), p.at("port"), p.at("targetPort"), p.at("protocol")});
        }
        ss.vip = sv.at("vip");
        ss.uid = sv.at("uid");
        s.services.push_back(ss);
    }
    if (j.contains("waypoint")) {
        const json& w = j["waypoint"];
        s.waypoint = WaypointState{.pod = w.at("pod"),
                                   .gateway = w.at("gateway"),
                                   .metrics = w.at("metrics"),
                                   .ready = w.at("ready"),
                                   .config = w.at("config"),
                                   .log = w.at("log"),
                                   .backends = w.at("backends").get<std::vector<std::string>>(),
                                   .hbone = w.value("hbone", "")};
    }
    for (const auto& d : j.value("daemons", json::array())) {
        s.daemons.push_back({d.at("node"), d.at("pod"), d.at("name"), d.at("pid"), d.at("log")});
    }
    return s;
}

}  // namespace sluice::testbed
