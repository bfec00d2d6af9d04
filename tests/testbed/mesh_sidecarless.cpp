// --mesh sidecarless: sluice-agent (and sluice-ztunnel) per node, sluice-cni chained after the
// bridge plugin, exactly as the DaemonSet runs them on a real node.
#include <spdlog/spdlog.h>

#include <filesystem>

#include "tests/testbed/mesh.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;

constexpr auto kAgentReadyTimeout = std::chrono::seconds(20);
constexpr int kAgentReadyPort = 15031;
constexpr int kZtunnelReadyPort = 15021;

}  // namespace

std::string agent_socket(const NodeState& node) {
    return node.run_dir + "/cni.sock";
}

void start_sidecarless_node(ClusterState& state, const NodeState& node,
                            const TestbedOptions& options) {
    const std::string bin = sluice_bin_dir(options) + "/sluice-agent";
    if (!fs::exists(bin))
        throw TestbedError("sidecarless mesh needs " + bin + " (build it: scripts/build.sh)");
    ProcessSpec spec = node_process(
        node, {bin, "--node-name", node.name, "--run-dir", node.run_dir, "--bpffs-root", node.bpffs,
               "--cgroup-path", node.cgroup, "--registry-dir", state.registry_dir, "--policies-dir",
               state.policies_dir, "--audit-log", node.run_dir + "/audit.log"});
    pid_t pid = spawn_process(spec, node.run_dir + "/agent.log");
    state.daemons.push_back({.node = node.index,
                             .name = "sluice-agent",
                             .pid = pid,
                             .log = node.run_dir + "/agent.log"});
    if (!wait_http_ready(node.netns, kAgentReadyPort, "/healthz/ready", kAgentReadyTimeout)) {
        throw TestbedError("sluice-agent on " + node.name + " did not become ready; see " +
                           node.run_dir + "/agent.log");
    }
    spdlog::info("sluice-agent ready on {} (pid {})", node.name, pid);
    if (!options.start_ztunnel)
        return;

    // The node's ztunnel, in the same netns and system cgroup (under the cgroup the agent attached
    // at, so cgroup/getsockopt answers its SO_ORIGINAL_DST calls). It is ready once it applied
    // the agent's first snapshot.
    ensure_cluster_ca(state, options);
    const std::string zt = sluice_bin_dir(options) + "/sluice-ztunnel";
    if (!fs::exists(zt))
        throw TestbedError("sidecarless mesh needs " + zt + " (build it: scripts/build.sh)");
    ProcessSpec zspec =
        node_process(node, {zt, "--mode", "node", "--node-name", node.name, "--zds-socket",
                            node.run_dir + "/ztunnel.sock", "--registry-dir", state.registry_dir,
                            "--policies-dir", state.policies_dir, "--ca-cert",
                            state.ca_dir + "/ca.crt", "--ca-key", state.ca_dir + "/ca.key",
                            "--access-log", node.run_dir + "/ztunnel-access.log"});
    pid_t zpid = spawn_process(zspec, node.run_dir + "/ztunnel.log");
    state.daemons.push_back({.node = node.index,
                             .name = "sluice-ztunnel",
                             .pid = zpid,
                             .log = node.run_dir + "/ztunnel.log"});
    if (!wait_http_ready(node.netns, kZtunnelReadyPort, "/healthz/ready", kAgentReadyTimeout)) {
        throw TestbedError("sluice-ztunnel on " + node.name + " did not become ready; see " +
                           node.run_dir + "/ztunnel.log");
    }
    spdlog::info("sluice-ztunnel ready on {} (pid {})", node.name, zpid);
}

nlohmann::json sidecarless_cni_plugins(const NodeState& node) {
    return nlohmann::json::array(
        {{{"type", "sluice-cni"}, {"agentSocket", agent_socket(node)}, {"timeoutSeconds", 15}}});
}

}  // namespace sluice::testbed
