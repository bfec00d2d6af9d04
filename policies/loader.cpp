#include "policies/loader.h"

#include "policies/diff.h"
#include "policies/parser.h"
#include "policies/source.h"
#include "policies/validator.h"

namespace sluice::policies {

LoadedPolicies load_policies(const std::string& path, const CompileOptions& options) {
    LoadedPolicies out;
    auto files = read_sources(path, out.diagnostics);
    auto set = parse_policy_files(files, out.diagnostics);
    auto more = validate(set, options);
    out.diagnostics.insert(out.diagnostics.end(), more.begin(), more.end());
    out.policies = std::make_shared<const PolicySet>(std::move(set));
    return out;
}

LoadedConfig load_and_compile(const std::string& policy_path, const std::string& registry_path,
                              const CompileOptions& options) {
    LoadedConfig out;
    auto loaded = load_policies(policy_path, options);
    out.diagnostics = std::move(loaded.diagnostics);
    auto registry = std::make_shared<const Registry>(
        registry_path.empty() ? Registry{} : load_registry(registry_path, out.diagnostics));
    auto compiled = std::make_shared<CompiledPolicy>(compile(loaded.policies, registry, options));
    out.diagnostics.insert(out.diagnostics.end(), compiled->diagnostics.begin(),
                           compiled->diagnostics.end());
    out.compiled = std::move(compiled);
    return out;
}

bool same_output(const CompiledPolicy& a, const CompiledPolicy& b) {
    return diff_policies(*a.policies, *b.policies).empty() && a.kernel_json() == b.kernel_json() &&
           a.ztunnel_json() == b.ztunnel_json() && a.waypoint == b.waypoint;
}

std::shared_ptr<const CompiledPolicy> recompile_for_registry(const CompiledPolicy& in_force,
                                                             const std::string& registry_path,
                                                             const CompileOptions& options) {
    std::vector<Diagnostic> diagnostics;
    auto registry = std::make_shared<const Registry>(
        registry_path.empty() ? Registry{} : load_registry(registry_path, diagnostics));
    if (has_errors(diagnostics))
        return nullptr;
    auto compiled = std::make_shared<CompiledPolicy>(compile(in_force.policies, registry, options));
    if (has_errors(compiled->diagnostics) || same_output(in_force, *compiled))
        return nullptr;
    return compiled;
}

}  // namespace sluice::policies
