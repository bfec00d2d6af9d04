// sluice-testbed: a local multi-node cluster of network namespaces (DESIGN.md §8).
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>

#include "common/log.h"
#include "tests/testbed/testbed.h"

namespace tb = sluice::testbed;

namespace {

std::string self_dir() {
    std::error_code ec;
    auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::string() : exe.parent_path().string();
}

void print_status(const tb::ClusterState& s) {
    std::cout << "cluster " << s.name << " (mesh: " << tb::to_string(s.mesh) << ")\n";
    for (const auto& n : s.nodes) {
        std::cout << "  " << n.name << "  fabric " << n.fabric_ip << " " << n.fabric_ip6
                  << "  pods " << n.pod_cidr << " " << n.pod_cidr6 << "\n";
    }
    for (const auto& p : s.pods) {
        std::cout << "    pod " << p.namespace_name << "/" << p.name << " on " << p.node_name
                  << "  " << p.ip << " " << p.ip6 << "  sa=" << p.service_account << "\n";
    }
    for (const auto& sv : s.services) {
        std::cout << "    service " << sv.spec.namespace_name << "/" << sv.spec.name << "  "
                  << sv.vip << "\n";
    }
    if (s.waypoint) {
        std::cout << "  waypoint " << s.waypoint->pod << "  gateway " << s.waypoint->gateway
                  << "  metrics " << s.waypoint->metrics << "  log " << s.waypoint->log << "\n";
    }
    std::cout << "  registry " << s.registry_dir << "\n  policies " << s.policies_dir << "\n";
}

}  // namespace

int main(int argc, char** argv) {
    sluice::init_logging("sluice-testbed", "info");
    CLI::App app{"sluice-testbed: a local cluster of network-namespace nodes and pods"};
    app.require_subcommand(1);
    app.fallthrough();  // global options may also follow the subcommand

    std::string name = "local";
    tb::TestbedOptions options;
    if (auto dir = self_dir(); !dir.empty()) {
        options.cni_path.insert(options.cni_path.begin(), dir);
        options.bin_dir = dir;
    }
    app.add_option("--name", name, "Cluster name ([a-z0-9], prefixes every resource)")
        ->envname("SLUICE_TESTBED_NAME");
    app.add_option("--run-root", options.run_root, "Where cluster run dirs live")
        ->envname("SLUICE_TESTBED_RUN_ROOT");
    app.add_option("--bpffs-root", options.bpffs_root, "bpffs directory for per-node sub-roots")
        ->envname("SLUICE_TESTBED_BPFFS_ROOT");
    app.add_option("--cgroup2", options.cgroup2_mount, "cgroup2 mount (detected by default)")
        ->envname("SLUICE_TESTBED_CGROUP2");
    app.add_option("--bin-dir", options.bin_dir, "Where the sluice binaries are")
        ->envname("SLUICE_BIN_DIR");
    app.add_option("--emulator", options.emulator_script,
                   "up --waypoint: the OpenAI-compatible emulator script (a test fixture)")
        ->envname("SLUICE_TESTBED_EMULATOR");

    auto* up = app.add_subcommand("up", "Create (or re-create) the cluster");
    int nodes = 2, pods_per_node = 2;
    std::string spec_file, mesh = "none";
    bool waypoint = false;
    up->add_option("--nodes", nodes, "Number of nodes (without --spec)")
        ->check(CLI::Range(1, tb::kMaxNodes));
    up->add_option("--pods-per-node", pods_per_node, "Pods per node (without --spec)")
        ->check(CLI::Range(0, tb::kMaxPodsPerNode));
    up->add_option("--spec", spec_file, "YAML cluster spec (docs/testbed.md)")
        ->check(CLI::ExistingFile);
    up->add_option("--mesh", mesh, "none | sidecar | sidecarless")
        ->check(CLI::IsMember({"none", "sidecar", "sidecarless"}));
    up->add_flag("--waypoint", waypoint,
                 "Also run sluice-waypoint (pod ai/waypoint) in front of emulator pods ai/llm-*");

    auto* down = app.add_subcommand("down", "Remove the cluster and anything a crashed run left");

    auto* status = app.add_subcommand("status", "Show the cluster");
    bool as_json = false;
    status->add_flag("--json", as_json, "Machine-readable state");

    auto* exec = app.add_subcommand("exec", "Run a command in a pod (or --node) netns and cgroup");
    std::string target, node_name, log_file;
    bool detach = false;
    std::vector<std::string> command;
    exec->add_option("pod", target, "Pod as ns/name or a unique name");
    exec->add_option("--node", node_name, "Run in a node's netns and system cgroup instead");
    exec->add_flag("--detach", detach, "Start in the background and print the pid");
    exec->add_option("--log", log_file, "With --detach: append output here");
    exec->add_option("command", command, "Command after --")->required();
    exec->positionals_at_end();

    CLI11_PARSE(app, argc, argv);

    // CLI11 keeps the "--" separator in a trailing positional list.
    if (!command.empty() && command.front() == "--")
        command.erase(command.begin());
    // With --node there is no pod: the first positional is already the command.
    if (!node_name.empty() && !target.empty())
        command.insert(command.begin(), target);
    try {
        if (up->parsed()) {
            tb::ClusterSpec spec = spec_file.empty()
                                       ? tb::generated_spec(name, nodes, pods_per_node)
                                       : tb::load_spec_file(spec_file);
            if (spec_file.empty() || app.get_option("--name")->count() > 0)
                spec.name = name;
            if (up->get_option("--mesh")->count() > 0)
                spec.mesh = tb::parse_mesh_mode(mesh);
            if (waypoint)
                spec.waypoint = true;
            print_status(tb::up(spec, options));
        } else if (down->parsed()) {
            tb::down(name, options);
            auto left = tb::leftovers(name, options);
            for (const auto& l : left)
                std::cerr << "left behind: " << l << "\n";
            return left.empty() ? 0 : 1;
        } else if (status->parsed()) {
            auto s = tb::load_state(name, options);
            if (as_json) {
                std::cout << tb::to_json(s).dump(2) << "\n";
            } else {
                print_status(s);
            }
        } else if (exec->parsed()) {
            auto s = tb::load_state(name, options);
            sluice::ProcessSpec spec;
            if (!node_name.empty()) {
                auto it = std::find_if(s.nodes.begin(), s.nodes.end(),
                                       [&](const auto& n) { return n.name == node_name; });
                if (it == s.nodes.end())
                    throw tb::TestbedError("no node " + node_name);
                spec = tb::node_process(*it, command);
            } else {
                const tb::PodState* pod = s.find_pod(target);
                if (pod == nullptr)
                    throw tb::TestbedError("no pod '" + target +
                                           "' (or the name is ambiguous; use ns/name)");
                spec = tb::pod_process(*pod, command);
            }
            if (detach) {
                std::cout << sluice::spawn_process(
                                 spec, log_file.empty() ? std::nullopt : std::optional(log_file))
                          << "\n";
                return 0;
            }
            spec.inherit_stdio = true;
            auto r = sluice::run_process(spec, std::chrono::hours(24));
            return r.exit_code;
        }
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return 1;
    }
    return 0;
}
