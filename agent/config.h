#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "agent/datapath/config.h"

namespace sluice::agent {

// Environment variables that set each flag (flags win).
inline constexpr const char* kEnvNodeName = "SLUICE_NODE_NAME";
inline constexpr const char* kEnvRunDir = "SLUICE_RUN_DIR";
inline constexpr const char* kEnvBpffsRoot = "SLUICE_BPFFS_ROOT";
inline constexpr const char* kEnvCgroupPath = "SLUICE_CGROUP_PATH";
inline constexpr const char* kEnvRegistryDir = "SLUICE_REGISTRY_DIR";
inline constexpr const char* kEnvPoliciesDir = "SLUICE_POLICIES_DIR";
inline constexpr const char* kEnvSameNodeSplice = "SLUICE_SAME_NODE_SPLICE";

inline constexpr const char* kDefaultRunDir = "/var/run/sluice";
inline constexpr const char* kDefaultRegistryDir = "/etc/sluice/registry";
inline constexpr const char* kDefaultPoliciesDir = "/etc/sluice/policies";
inline constexpr const char* kDefaultMetricsAddress = "0.0.0.0:15030";
inline constexpr const char* kDefaultReadyAddress = "0.0.0.0:15031";

// sluice-agent's configuration: one flat struct, every field set by a flag and an env variable.
struct AgentConfig {
    std::string node_name;                 // pods whose spec.nodeName matches are ours
    std::string run_dir = kDefaultRunDir;  // sockets, agent-state.json, policy-status.json
    std::string registry_dir = kDefaultRegistryDir;  // Pod/Namespace/Service/EndpointSlice YAML
    std::string policies_dir = kDefaultPoliciesDir;  // the policy ConfigMap mount
    std::string metrics_address = kDefaultMetricsAddress;
    std::string ready_address = kDefaultReadyAddress;
    std::string audit_log;  // file for JSON audit lines; empty: stdout
    std::string log_level = "info";
    // How long enrollment waits for ztunnel (to connect, then to ack a workload).
    std::chrono::milliseconds ztunnel_timeout{10000};
    // Enroll pods already running on this node (from the registry) at startup.
    bool enroll_existing = true;
    std::vector<std::string> excluded_cidrs;  // destinations never captured
    // bpffs root, cgroup path, map sizes, ports, same_node_splice (--same-node-splice)
    datapath::DatapathConfig datapath;

    std::string cni_socket() const { return run_dir + "/cni.sock"; }
    std::string ztunnel_socket() const { return run_dir + "/ztunnel.sock"; }
    std::string state_file() const { return run_dir + "/agent-state.json"; }
    // The policy generation in force and the last reload's result (sluicectl policy status).
    std::string policy_status_file() const { return run_dir + "/policy-status.json"; }

    // Every problem at once; empty when the agent can start.
    std::vector<std::string> validate() const;
};

}  // namespace sluice::agent
