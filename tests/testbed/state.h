#pragma once

#include <nlohmann/json.hpp>

#include <sys/types.h>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tests/testbed/spec.h"

namespace sluice::testbed {

struct NodeState {
    int index = 0;
    std::string name;           // node0, node1, ... (Kubernetes nodeName)
    std::string netns;          // path under /var/run/netns
    std::string cgroup;         // node cgroup-v2 subtree (agent programs attach here)
    std::string system_cgroup;  // where node daemons run
    std::string bpffs;          // the node's bpffs sub-root
    std::string run_dir;        // the node's <run> dir (CNI config, IPAM, sockets, logs)
    std::string fabric_ip, fabric_ip6;
    std::string pod_cidr, pod_cidr6;
};

struct PodState {
    std::string name, namespace_name, service_account, uid, container_id;
    int node = 0;
    std::string node_name;
    std::string netns;   // path
    std::string cgroup;  // directory
    std::string ip, ip6;
    std::map<std::string, std::string> labels;
    nlohmann::json cni_result;  // cached ADD result, given back on DEL/CHECK
};

struct ServiceState {
    ServiceSpec spec;
    std::string vip;
    std::string uid;
};

// A mesh daemon the testbed started (agent, ztunnel, waypoint, sidecar).
struct DaemonState {
    int node = -1;     // node index, or -1
    std::string pod;   // "ns/name" for a sidecar
    std::string name;  // binary name
    pid_t pid = 0;
    std::string log;
};

// `up --waypoint`: where the waypoint and its backends are (status --json "waypoint").
struct WaypointState {
    std::string pod;                    // "ai/waypoint"
    std::string gateway;                // ip:port of the OpenAI-compatible listener
    std::string metrics;                // ip:port of /metrics
    std::string ready;                  // ip:port of /healthz/ready
    std::string config;                 // the generated --config file
    std::string log;                    // its stderr: logs and the JSON access log ("access {...}")
    std::vector<std::string> backends;  // emulator endpoints ip:port (test fixture)
    std::string hbone;  // ip:15008 when the waypoint terminates HBONE itself (sidecarless), else ""
};

// What `up` built, written to <run>/state.json for status/exec/down in later invocations.
// `down` never depends on it: it finds resources by name prefix.
struct ClusterState {
    std::string name;
    MeshMode mesh = MeshMode::None;
    std::string run_dir, registry_dir, policies_dir, cgroup_root, bpffs_root, fabric_netns;
    // The cluster's signing CA (ca.crt, ca.key) when a mesh runs: ensure_cluster_ca().
    std::string ca_dir;
    nlohmann::json conflist;
    std::vector<std::string> cni_path;
    std::vector<NamespaceSpec> namespaces;
    std::vector<NodeState> nodes;
    std::vector<PodState> pods;
    std::vector<ServiceState> services;
    std::vector<DaemonState> daemons;
    std::optional<WaypointState> waypoint;

    // "ns/name" or a bare name that is unique across namespaces.
    const PodState* find_pod(const std::string& ref) const;
};

nlohmann::json to_json(const ClusterState& s);
ClusterState state_from_json(const nlohmann::json& j);

}  // namespace sluice::testbed
