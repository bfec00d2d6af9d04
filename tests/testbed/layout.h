#pragma once

#include <string>

namespace sluice::testbed {

// The address plan of DESIGN.md §8. Only RFC 2544 (198.18.0.0/15) and documentation
// (2001:db8::/32) addresses, and only inside the cluster's own namespaces.
std::string node_fabric_ip(int node);   // 198.19.0.(node+1)
std::string node_fabric_ip6(int node);  // 2001:db8:ff::(node+1)
std::string pod_cidr(int node);         // 198.18.<node>.0/24
std::string pod_cidr6(int node);        // 2001:db8:0:<node>::/64
std::string pod_gateway(int node);      // 198.18.<node>.1 (the node's cni0 bridge)
std::string service_vip(int index);     // 198.19.128.(index+1)
inline constexpr const char* kFabricCidr = "198.19.0.0/24";
inline constexpr const char* kFabricCidr6 = "2001:db8:ff::/64";
inline constexpr const char* kServiceCidr = "198.19.128.0/24";

// Where a cluster's resources live on the host. Every name starts with the cluster prefix
// "sluice.<cluster>." (netns) or sits below a directory named after the cluster, so `down` can
// remove what a crashed run left without any record of it.
struct ClusterLayout {
    std::string cluster;
    std::string cgroup2_mount;                      // e.g. /sys/fs/cgroup/unified
    std::string bpffs_root = "/sys/fs/bpf/sluice";  // per-node sub-roots below <cluster>/
    std::string run_root = "/var/run/sluice/testbed";

    std::string netns_prefix() const { return "sluice." + cluster + "."; }
    std::string fabric_netns() const { return netns_prefix() + "fabric"; }
    std::string node_name(int node) const { return "node" + std::to_string(node); }
    std::string node_netns(int node) const { return netns_prefix() + node_name(node); }
    std::string pod_netns(const std::string& ns, const std::string& pod) const {
        return netns_prefix() + "pod." + ns + "." + pod;
    }

    std::string cgroup_root() const { return cgroup2_mount + "/sluice.testbed." + cluster; }
    std::string node_cgroup(int node) const { return cgroup_root() + "/" + node_name(node); }
    // Node daemons (agent, ztunnel) run here; pods below node_cgroup()/pods.
    std::string node_system_cgroup(int node) const { return node_cgroup(node) + "/system"; }
    std::string pod_cgroup(int node, const std::string& ns, const std::string& pod) const {
        return node_cgroup(node) + "/pods/" + ns + "." + pod;
    }

    std::string bpffs_cluster_root() const { return bpffs_root + "/" + cluster; }
    std::string node_bpffs(int node) const { return bpffs_cluster_root() + "/" + node_name(node); }

    std::string run_dir() const { return run_root + "/" + cluster; }
    std::string state_file() const { return run_dir() + "/state.json"; }
    std::string registry_dir() const { return run_dir() + "/registry"; }
    std::string policies_dir() const { return run_dir() + "/policies"; }
    std::string node_run_dir(int node) const { return run_dir() + "/" + node_name(node); }
};

}  // namespace sluice::testbed
