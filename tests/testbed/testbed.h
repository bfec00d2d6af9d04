#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/process.h"
#include "tests/testbed/layout.h"
#include "tests/testbed/spec.h"
#include "tests/testbed/state.h"

namespace sluice::testbed {

class TestbedError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

struct TestbedOptions {
    std::string cgroup2_mount;  // empty: detected from /proc/self/mountinfo
    std::string bpffs_root = "/sys/fs/bpf/sluice";
    std::string run_root = "/var/run/sluice/testbed";
    // CNI_PATH. The build's bin directory comes first so sluice-cni can be chained in.
    std::vector<std::string> cni_path = {"/usr/lib/cni", "/opt/cni/bin"};
    // Where sluice-agent, sluice-ztunnel, sluice-cni... are (mesh modes other than none).
    std::string bin_dir;
    // Called after a node's mesh daemons started and before its pods are created (tests use it
    // to attach their own peers to a node's agent).
    std::function<void(ClusterState&, const NodeState&)> after_node_mesh;
    // Sidecarless mesh: start the node's sluice-ztunnel (agent tests that play ztunnel themselves
    // turn it off).
    bool start_ztunnel = true;
    // `up --waypoint`: the OpenAI-compatible emulator (a test fixture) run in the llm pods.
    std::string emulator_script = SLUICE_TESTBED_EMULATOR;
};

// Builds the cluster: fabric, nodes, pods (through the real CNI plugins), services, registry.
// Replaces whatever a previous run of the same cluster name left behind. On failure it removes
// what it built and throws TestbedError.
ClusterState up(const ClusterSpec& spec, const TestbedOptions& options = {});

// Removes every resource of the cluster, found by name prefix, whether or not a state file
// exists: CNI DEL for known pods, processes in its cgroups, namespaces, cgroups, bpffs pins, run
// directory. Safe to call when nothing exists.
void down(const std::string& cluster, const TestbedOptions& options = {});

// What of the cluster still exists on the host (netns names, directories, pids); empty after a
// clean `down`.
std::vector<std::string> leftovers(const std::string& cluster, const TestbedOptions& options = {});

// The state `up` wrote, or TestbedError when the cluster is not up.
ClusterState load_state(const std::string& cluster, const TestbedOptions& options = {});

// A process spec that runs `argv` inside a pod: its network namespace and cgroup, with
// SLUICE_POD_{NAME,NAMESPACE,IP,IP6} and SLUICE_NODE_NAME in its environment.
ProcessSpec pod_process(const PodState& pod, std::vector<std::string> argv);

// The same for a node's system cgroup and network namespace (where node daemons run).
ProcessSpec node_process(const NodeState& node, std::vector<std::string> argv);

// Adds a pod to a running cluster as `up` creates each of its pods: its Pod object into the
// registry, then the runtime's CNI ADD through the node's chain. Returns a copy (references
// into `state.pods` may move). Throws TestbedError, or CniError with the plugin's error.
PodState add_pod(ClusterState& state, const PodSpec& pod, const TestbedOptions& options = {});

// CNI DEL / CHECK of one pod's network, as the container runtime runs them (DEL when a pod
// stops; its netns is left for the caller). Throw CniError with the plugin's error.
void cni_del(const ClusterState& state, const PodState& pod);
void cni_check(const ClusterState& state, const PodState& pod);

// The resolved layout for a cluster name under these options.
ClusterLayout layout_for(const std::string& cluster, const TestbedOptions& options);

}  // namespace sluice::testbed
