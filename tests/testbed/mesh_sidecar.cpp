// `--mesh sidecar`: one sluice-ztunnel per pod, inside the pod's netns and cgroup, with the
// pod's own identity, and iptables REDIRECT rules wired the way Istio wires its sidecars.
#include <spdlog/spdlog.h>

#include <fmt/format.h>
#include <filesystem>

#include "tests/testbed/mesh.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;

constexpr auto kSidecarStartTimeout = std::chrono::milliseconds(10000);
constexpr int kReadinessPort = 15021;
constexpr const char* kZtunnelMark = "0x539";  // SLUICE_ZTUNNEL_MARK
// Connections ztunnel makes to the app from the client's address carry this connmark, so the
// app's replies route back to ztunnel (policy routing table kTransparentTable).
constexpr const char* kTransparentMark = "0x111";
constexpr const char* kTransparentTable = "133";

void run_in_pod(const PodState& pod, std::vector<std::string> argv) {
    ProcessSpec spec;
    spec.argv = std::move(argv);
    spec.netns = pod.netns;
    ProcessResult r = run_process(spec, std::chrono::seconds(30));
    if (r.exit_code != 0 || r.timed_out) {
        throw TestbedError(fmt::format("`{}` in pod {} failed (exit {}): {}", join_argv(spec.argv),
                                       pod.name, r.exit_code, r.err));
    }
}

// The sidecar capture of Istio's istio-iptables, for one address family:
//   outbound: every TCP connection the pod makes goes to 127.0.0.1:15001, except ztunnel's own
//             (mark 0x539) and loopback traffic;
//   inbound:  every TCP connection arriving for the pod goes to :15006, except HBONE (15008)
//             and ztunnel's metrics/readiness ports.
void install_capture(const PodState& pod, const std::string& iptables) {
    auto ipt = [&](std::vector<std::string> args) {
        args.insert(args.begin(), iptables);
        args.insert(args.begin() + 1, "-w");
        run_in_pod(pod, std::move(args));
    };
    ipt({"-t", "nat", "-N", "SLUICE_OUTPUT"});
    ipt({"-t", "nat", "-A", "SLUICE_OUTPUT", "-m", "mark", "--mark", kZtunnelMark, "-j", "RETURN"});
    ipt({"-t", "nat", "-A", "SLUICE_OUTPUT", "-o", "lo", "-j", "RETURN"});
    ipt({"-t", "nat", "-A", "SLUICE_OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"});
    ipt({"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "SLUICE_OUTPUT"});
    ipt({"-t", "nat", "-N", "SLUICE_INBOUND"});
    ipt({"-t", "nat", "-A", "SLUICE_INBOUND", "-p", "tcp", "-m", "multiport", "--dports",
         "15008,15020,15021", "-j", "RETURN"});
    ipt({"-t", "nat", "-A", "SLUICE_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports",
         "15006"});
    ipt({"-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "SLUICE_INBOUND"});
}

// So the app sees the client's real address: ztunnel connects to the app from that address
// (IP_TRANSPARENT). Its packets have a non-local source and mark 0x539: remember the connection
// (connmark); the app's replies on it get a mark that routes them to the local stack, where
// ztunnel's transparent socket picks them up.
void install_transparent_return(const PodState& pod, const std::string& iptables) {
    const bool v6 = iptables == "ip6tables";
    auto ipt = [&](std::vector<std::string> args) {
        args.insert(args.begin(), iptables);
        args.insert(args.begin() + 1, "-w");
        run_in_pod(pod, std::move(args));
    };
    auto ip = [&](std::vector<std::string> args) {
        args.insert(args.begin(), "ip");
        if (v6)
            args.insert(args.begin() + 1, "-6");
        run_in_pod(pod, std::move(args));
    };
    ipt({"-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "--mark", kZtunnelMark, "-m",
         "addrtype", "!", "--src-type", "LOCAL", "-j", "CONNMARK", "--set-mark", kTransparentMark});
    ipt({"-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "-m", "mark", "--mark", "0", "-m", "connmark",
         "--mark", kTransparentMark, "-j", "MARK", "--set-mark", kTransparentMark});
    ip({"rule", "add", "fwmark", kTransparentMark, "lookup", kTransparentTable});
    ip({"route", "add", "local", v6 ? "::/0" : "0.0.0.0/0", "dev", "lo", "table",
        kTransparentTable});
}

}  // namespace

void ensure_cluster_ca(ClusterState& state, const TestbedOptions& options) {
    const std::string dir = state.run_dir + "/ca";
    if (!fs::exists(dir + "/ca.crt")) {
        ProcessSpec spec;
        spec.argv = {sluice_bin_dir(options) + "/sluice-ztunnel", "ca", "create", "--dir", dir};
        ProcessResult r = run_process(spec, std::chrono::seconds(30));
        if (r.exit_code != 0)
            throw TestbedError("cannot create the cluster CA: " + r.err);
    }
    state.ca_dir = dir;
}

void install_sidecar_capture(const PodState& pod) {
    install_capture(pod, "iptables");
    install_transparent_return(pod, "iptables");
    if (!pod.ip6.empty()) {
        install_capture(pod, "ip6tables");
        install_transparent_return(pod, "ip6tables");
    }
}

void start_sidecar(ClusterState& state, const PodState& pod, const TestbedOptions& options) {
    ensure_cluster_ca(state, options);
    install_sidecar_capture(pod);
    const std::string logs = state.run_dir + "/logs";
    const std::string base = pod.namespace_name + "." + pod.name;
    std::vector<std::string> argv = {sluice_bin_dir(options) + "/sluice-ztunnel",
                                     "--mode",
                                     "sidecar",
                                     "--workload-name",
                                     pod.name,
                                     "--workload-namespace",
                                     pod.namespace_name,
                                     "--workload-uid",
                                     pod.uid,
                                     "--service-account",
                                     pod.service_account,
                                     "--workload-ip",
                                     pod.ip,
                                     "--node-name",
                                     pod.node_name,
                                     "--registry-dir",
                                     state.registry_dir,
                                     "--policies-dir",
                                     state.policies_dir,
                                     "--ca-cert",
                                     state.ca_dir + "/ca.crt",
                                     "--ca-key",
                                     state.ca_dir + "/ca.key",
                                     "--transparent-inbound",
                                     "--access-log",
                                     logs + "/access." + base + ".log"};
    if (!pod.ip6.empty()) {
        argv.push_back("--workload-ip");
        argv.push_back(pod.ip6);
    }
    const std::string log = logs + "/ztunnel." + base + ".log";
    const pid_t pid = start_pod_daemon(state, pod, "sluice-ztunnel", argv, log, kReadinessPort,
                                       "/healthz/ready", kSidecarStartTimeout);
    spdlog::info("sidecar ztunnel for {}/{} running (pid {})", pod.namespace_name, pod.name, pid);
}

}  // namespace sluice::testbed
