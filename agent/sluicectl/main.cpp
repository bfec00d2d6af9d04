// sluicectl: the operator CLI (status, workloads, policy check/explain, map dumps, certs).
#include <CLI/CLI.hpp>

#include <iostream>

#include "agent/sluicectl/commands.h"
#include "common/log.h"

int main(int argc, char** argv) {
    sluice::init_logging("sluicectl", "warn");
    CLI::App app{"sluicectl: operate a sluice node"};
    app.require_subcommand(1);
    app.fallthrough();
    sluice::ctl::Context ctx;

    auto* version = app.add_subcommand("version", "Print the sluicectl version");
    version->callback([] { std::cout << "sluicectl " << SLUICE_VERSION << "\n"; });

    sluice::ctl::add_datapath_commands(app, ctx);
    sluice::ctl::add_policy_commands(app, ctx);
    sluice::ctl::add_tokenize_commands(app, ctx);
    sluice::ctl::add_ztunnel_commands(app, ctx);

    CLI11_PARSE(app, argc, argv);
    return ctx.exit_code;
}
