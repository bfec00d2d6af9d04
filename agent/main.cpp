// sluice-agent: the node agent (DESIGN.md §1, §3). Parses flags, starts the Agent, waits for
// SIGTERM/SIGINT. Exiting leaves the eBPF programs pinned and enforcing; `--uninstall` removes
// them.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <iostream>

#include "agent/agent.h"
#include "common/log.h"

int main(int argc, char** argv) {
    using sluice::agent::AgentConfig;
    AgentConfig config;
    config.datapath.bpffs_root = "/sys/fs/bpf/sluice";
    CLI::App app{"sluice-agent: eBPF capture and L4 policy for the pods of this node"};
    int ztunnel_timeout_ms = static_cast<int>(config.ztunnel_timeout.count());
    bool uninstall = false;
    app.add_option("--node-name", config.node_name,
                   "This node's name (pods with spec.nodeName = it)")
        ->envname(sluice::agent::kEnvNodeName);
    app.add_option("--run-dir", config.run_dir, "cni.sock, ztunnel.sock and state live here")
        ->envname(sluice::agent::kEnvRunDir);
    app.add_option("--bpffs-root", config.datapath.bpffs_root, "Where maps and links are pinned")
        ->envname(sluice::agent::kEnvBpffsRoot);
    app.add_option("--cgroup-path", config.datapath.cgroup_path, "cgroup-v2 directory to attach at")
        ->envname(sluice::agent::kEnvCgroupPath);
    app.add_option("--registry-dir", config.registry_dir, "Pod/Namespace/Service YAML documents")
        ->envname(sluice::agent::kEnvRegistryDir);
    app.add_option("--policies-dir", config.policies_dir, "Policy ConfigMap mount")
        ->envname(sluice::agent::kEnvPoliciesDir);
    app.add_option("--metrics-address", config.metrics_address, "Prometheus listener")
        ->envname("SLUICE_AGENT_METRICS_ADDRESS");
    app.add_option("--ready-address", config.ready_address, "Readiness listener")
        ->envname("SLUICE_AGENT_READY_ADDRESS");
    app.add_option("--audit-log", config.audit_log, "File for JSON audit lines (default stdout)")
        ->envname("SLUICE_AUDIT_LOG");
    app.add_option("--log-level", config.log_level, "trace|debug|info|warn|error")
        ->envname("SLUICE_LOG_LEVEL");
    app.add_option("--ztunnel-timeout-ms", ztunnel_timeout_ms,
                   "Wait this long for ztunnel to connect/ack");
    app.add_option("--exclude-port", config.datapath.excluded_ports,
                   "Destination port never captured");
    app.add_option("--exclude-cidr", config.excluded_cidrs, "Destination CIDR never captured");
    app.add_flag("!--no-enroll-existing", config.enroll_existing,
                 "Do not enroll running pods at startup");
    app.add_flag("--same-node-splice", config.datapath.same_node_splice,
                 "Splice the app<->ztunnel loopback hops with sockops + sk_msg (probed; off when "
                 "the kernel cannot)")
        ->envname(sluice::agent::kEnvSameNodeSplice);
    app.add_flag("--uninstall", uninstall, "Detach every program, remove the pins and exit");
    CLI11_PARSE(app, argc, argv);
    config.ztunnel_timeout = std::chrono::milliseconds(ztunnel_timeout_ms);
    sluice::init_logging("sluice-agent", config.log_level);

    if (uninstall) {
        auto dp = sluice::datapath::Datapath::open(config.datapath);
        if (!dp) {
            spdlog::error("{}", dp.error().message);
            return 1;
        }
        if (auto r = (*dp)->detach_and_unpin(); !r) {
            spdlog::error("{}", r.error().message);
            return 1;
        }
        spdlog::info("detached and unpinned everything under {}", config.datapath.bpffs_root);
        return 0;
    }

    // Block the stop signals before any thread starts, then wait for one here.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);

    auto agent = sluice::agent::Agent::start(config);
    if (!agent) {
        spdlog::error("{}", agent.error());
        return 1;
    }
    int sig = 0;
    sigwait(&stop, &sig);
    spdlog::info("signal {}: stopping; the eBPF programs stay attached and enforcing", sig);
    agent->reset();
    return 0;
}
