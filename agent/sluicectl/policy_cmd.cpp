// sluicectl policy check | explain | diff | compile | status (docs/policies.md).
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

#include "agent/config.h"
#include "agent/policy_status.h"
#include "agent/sluicectl/commands.h"
#include "policies/diff.h"
#include "policies/evaluate.h"
#include "policies/loader.h"

namespace sluice::ctl {
namespace {

namespace pol = sluice::policies;

constexpr const char* kEnvPolicyDir = "SLUICE_POLICY_DIR";
constexpr const char* kEnvRegistryDir = "SLUICE_REGISTRY_DIR";
constexpr const char* kDefaultPolicyDir = "/etc/sluice/policies";
constexpr const char* kDefaultRegistryDir = "/var/run/sluice/registry";

// Exit codes: 0 fine / ALLOW / same, 1 errors / DENY / different, 2 usage or unresolved input.
constexpr int kExitProblem = 1;
constexpr int kExitUsage = 2;

std::string env_or(const char* name, const char* fallback) {
    const char* v = std::getenv(name);
    return v && *v ? v : fallback;
}

struct Options {
    std::string registry;
    std::string root_namespace = "istio-system";
    std::string trust_domain = "cluster.local";

    pol::CompileOptions compile() const {
        pol::CompileOptions o;
        o.root_namespace = root_namespace;
        o.trust_domain = trust_domain;
        return o;
    }
};

void add_common(CLI::App* cmd, Options& o) {
    cmd->add_option("--root-namespace", o.root_namespace, "Istio root namespace (mesh-wide)")
        ->capture_default_str();
    cmd->add_option("--trust-domain", o.trust_domain, "SPIFFE trust domain")->capture_default_str();
}

void print(const std::vector<pol::Diagnostic>& diagnostics) {
    for (const auto& d : diagnostics)
        std::cerr << d.to_string() << "\n";
}

}  // namespace

void add_policy_commands(CLI::App& app, Context& ctx) {
    auto* policy = app.add_subcommand("policy", "Check, explain and compare policies");
    policy->require_subcommand(1);
    auto opts = std::make_shared<Options>();

    // check
    auto* check = policy->add_subcommand(
        "check", "Validate a policy file or ConfigMap directory (exit 1 on any error)");
    auto check_path = std::make_shared<std::string>();
    check->add_option("path", *check_path, "file or directory")->required();
    check->add_option("--registry", opts->registry,
                      "also compile against this registry directory (registry-dependent checks)");
    add_common(check, *opts);
    check->callback([&ctx, opts, check_path] {
        std::vector<pol::Diagnostic> diags;
        std::size_t objects = 0;
        if (opts->registry.empty()) {
            auto loaded = pol::load_policies(*check_path, opts->compile());
            diags = loaded.diagnostics;
            objects = loaded.policies->size();
        } else {
            auto loaded = pol::load_and_compile(*check_path, opts->registry, opts->compile());
            diags = loaded.diagnostics;
            objects = loaded.compiled->policies->size();
            if (loaded.ok())
                std::cout << loaded.compiled->kernel.policy.size() << " kernel policy entries, "
                          << loaded.compiled->kernel.ipcache.size() << " ipcache entries, "
                          << loaded.compiled->ztunnel.workloads.size() << " workloads\n";
        }
        print(diags);
        const auto errors = pol::error_count(diags);
        std::cout << *check_path << ": " << objects << " objects, " << errors << " errors, "
                  << diags.size() - errors << " warnings\n";
        ctx.exit_code = errors ? kExitProblem : 0;
    });

    // explain
    auto* explain = policy->add_subcommand(
        "explain", "Which rule decides a connection (exit 0 ALLOW, 1 DENY, 2 unresolved)");
    auto q = std::make_shared<pol::ExplainQuery>();
    auto policy_dir = std::make_shared<std::string>(env_or(kEnvPolicyDir, kDefaultPolicyDir));
    explain->add_option("--from", q->from, "source: ns/serviceaccount, ns/pod or an IP address")
        ->required();
    explain->add_option("--to", q->to, "destination pod: ns/pod")->required();
    explain->add_option("--to-ip", q->to_ip,
                        "the destination pod's address connected to (for destination.ip)");
    explain->add_option("--port", q->port, "destination (target) port")
        ->required()
        ->check(CLI::Range(1, 65535));
    explain->add_flag("--plaintext", q->plaintext, "the source connects without mTLS");
    explain
        ->add_option("--policies", *policy_dir, "policy file or directory (env SLUICE_POLICY_DIR)")
        ->capture_default_str();
    opts->registry = env_or(kEnvRegistryDir, kDefaultRegistryDir);
    explain
        ->add_option("--registry", opts->registry, "registry directory (env SLUICE_REGISTRY_DIR)")
        ->capture_default_str();
    add_common(explain, *opts);
    explain->callback([&ctx, opts, q, policy_dir] {
        auto loaded = pol::load_and_compile(*policy_dir, opts->registry, opts->compile());
        if (!loaded.ok()) {
            print(loaded.diagnostics);
            std::cerr << "note: the policies have errors; explaining what they would do anyway\n";
        }
        const auto e = pol::explain(*loaded.compiled, *q);
        std::cout << e.text();
        if (!e.connection)
            ctx.exit_code = kExitUsage;
        else
            ctx.exit_code = e.ztunnel.verdict == pol::Verdict::Allow ? 0 : kExitProblem;
    });

    // diff
    auto* diff = policy->add_subcommand(
        "diff", "Objects and kernel entries that differ between two policy sets (exit 1 if any)");
    auto a = std::make_shared<std::string>();
    auto b = std::make_shared<std::string>();
    diff->add_option("a", *a, "old file or directory")->required();
    diff->add_option("b", *b, "new file or directory")->required();
    auto diff_registry = std::make_shared<std::string>();
    diff->add_option("--registry", *diff_registry,
                     "compile both against this registry and compare kernel entries too");
    add_common(diff, *opts);
    diff->callback([&ctx, opts, a, b, diff_registry] {
        auto la = pol::load_and_compile(*a, *diff_registry, opts->compile());
        auto lb = pol::load_and_compile(*b, *diff_registry, opts->compile());
        if (!la.ok() || !lb.ok()) {
            print(la.diagnostics);
            print(lb.diagnostics);
            ctx.exit_code = kExitUsage;
            return;
        }
        auto lines = pol::diff_policies(*la.compiled->policies, *lb.compiled->policies);
        if (!diff_registry->empty()) {
            auto k = pol::diff_kernel(*la.compiled, *lb.compiled);
            lines.insert(lines.end(), k.begin(), k.end());
        }
        for (const auto& l : lines)
            std::cout << l << "\n";
        ctx.exit_code = lines.empty() ? 0 : kExitProblem;
    });

    // status
    auto* status = policy->add_subcommand(
        "status",
        "The agent's policy generation and last reload (exit 1 when the last reload failed)");
    auto run_dir = std::make_shared<std::string>(agent::kDefaultRunDir);
    auto status_json = std::make_shared<bool>(false);
    status->add_option("--run-dir", *run_dir, "the agent's run directory")
        ->envname(agent::kEnvRunDir)
        ->capture_default_str();
    status->add_flag("--json", *status_json, "print the status document as the agent wrote it");
    status->callback([&ctx, run_dir, status_json] {
        const std::string path = agent::AgentConfig{.run_dir = *run_dir}.policy_status_file();
        std::ifstream f(path);
        auto doc = nlohmann::json::parse(f, nullptr, false);
        if (!f.is_open() || doc.is_discarded() || !doc.is_object()) {
            std::cerr << "no policy status at " << path
                      << " (is sluice-agent running with this --run-dir?)\n";
            ctx.exit_code = kExitUsage;
            return;
        }
        std::cout << (*status_json ? doc.dump(2) + "\n" : agent::format_policy_status(doc));
        ctx.exit_code = agent::policy_status_failed(doc) ? kExitProblem : 0;
    });

    // compile
    auto* compile = policy->add_subcommand(
        "compile", "Print the compiled kernel entries, ztunnel rules and waypoint config (JSON)");
    auto compile_path = std::make_shared<std::string>();
    compile->add_option("path", *compile_path, "file or directory")->required();
    compile->add_option("--registry", opts->registry, "registry directory")->required();
    add_common(compile, *opts);
    compile->callback([&ctx, opts, compile_path] {
        auto loaded = pol::load_and_compile(*compile_path, opts->registry, opts->compile());
        print(loaded.diagnostics);
        const auto& c = *loaded.compiled;
        nlohmann::json out = {
            {"kernel", c.kernel_json()}, {"ztunnel", c.ztunnel_json()}, {"waypoint", c.waypoint}};
        std::cout << out.dump(2) << "\n";
        ctx.exit_code = loaded.ok() ? 0 : kExitProblem;
    });
}

}  // namespace sluice::ctl
