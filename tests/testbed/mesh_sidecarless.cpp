// --mesh sidecarless: sluice-agent (and sluice-ztunnel) per node, sluice-cni chained after the
// bridge plugin, exactly as the DaemonSet runs them on a real node.
#include "tests/testbed/mesh.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

constexpr auto kAgentReadyTimeout = std::chrono::seconds(20);
constexpr int kAgentReadyPort = 15031;
constexpr int kZtunnelReadyPort = 15021;

}  // namespace

std::string agent_socket(const NodeState& node) {
    return node.run_dir + "/cni.sock";
}

void start_sidecarless_node(ClusterState& state, const NodeState& node,
                            const TestbedOptions& options) {
    start_node_daemon(state, node, "sluice-agent",
                      {sluice_bin_dir(options) + "/sluice-agent", "--node-name", node.name,
                       "--run-dir", node.run_dir, "--bpffs-root", node.bpffs, "--cgroup-path",
                       node.cgroup, "--registry-dir", state.registry_dir, "--policies-dir",
                       state.policies_dir, "--audit-log", node.run_dir + "/audit.log"},
                      node.run_dir + "/agent.log", kAgentReadyPort, kAgentReadyTimeout);
    if (!options.start_ztunnel)
        return;

    // The node's ztunnel, in the same netns and system cgroup (under the cgroup the agent attached
    // at, so cgroup/getsockopt answers its SO_ORIGINAL_DST calls). It is ready once it applied
    // the agent's first snapshot.
    ensure_cluster_ca(state, options);
    start_node_daemon(
        state, node, "sluice-ztunnel",
        {sluice_bin_dir(options) + "/sluice-ztunnel", "--mode", "node", "--node-name", node.name,
         "--zds-socket", node.run_dir + "/ztunnel.sock", "--registry-dir", state.registry_dir,
         "--policies-dir", state.policies_dir, "--ca-cert", state.ca_dir + "/ca.crt", "--ca-key",
         state.ca_dir + "/ca.key", "--access-log", node.run_dir + "/ztunnel-access.log"},
        node.run_dir + "/ztunnel.log", kZtunnelReadyPort, kAgentReadyTimeout);
}

nlohmann::json sidecarless_cni_plugins(const NodeState& node) {
    return nlohmann::json::array(
        {{{"type", "sluice-cni"}, {"agentSocket", agent_socket(node)}, {"timeoutSeconds", 15}}});
}

}  // namespace sluice::testbed
