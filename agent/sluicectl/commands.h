#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace sluice::ctl {

// Each component contributes its sluicectl subcommands from its own file (policy_cmd.cpp,
// datapath_cmd.cpp, ztunnel_cmd.cpp, ...). A command's callback sets `exit_code`.
struct Context {
    int exit_code = 0;
};

using Registrar = std::function<void(CLI::App& app, Context& ctx)>;

// datapath_cmd.cpp: pods, datapath counters|policy
void add_datapath_commands(CLI::App& app, Context& ctx);
// tokenize_cmd.cpp: `sluicectl tokenize` (the waypoint's BPE tokenizer).
void add_tokenize_commands(CLI::App& app, Context& ctx);

// sluicectl policy check|explain|diff|compile (policy_cmd.cpp).
void add_policy_commands(CLI::App& app, Context& ctx);

// ztunnel_cmd.cpp: workloads, certs, connections (from the ztunnel admin port).
void add_ztunnel_commands(CLI::App& app, Context& ctx);

}  // namespace sluice::ctl
