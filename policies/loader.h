#pragma once

#include <memory>
#include <string>
#include <vector>

#include "policies/compiler.h"
#include "policies/diagnostic.h"
#include "policies/registry.h"
#include "policies/schema.h"

namespace sluice::policies {

// Reads, parses and validates the policies at `path` (a file or a ConfigMap directory).
struct LoadedPolicies {
    std::shared_ptr<const PolicySet> policies;
    std::vector<Diagnostic> diagnostics;
    bool ok() const { return !has_errors(diagnostics); }
};
LoadedPolicies load_policies(const std::string& path, const CompileOptions& options = {});

// load_policies + load_registry + compile; `compiled` is set even when there are errors (for
// explain on a broken set); callers check ok().
struct LoadedConfig {
    std::shared_ptr<const CompiledPolicy> compiled;
    std::vector<Diagnostic> diagnostics;  // policy, registry and compile diagnostics
    bool ok() const { return !has_errors(diagnostics); }
};
LoadedConfig load_and_compile(const std::string& policy_path, const std::string& registry_path,
                              const CompileOptions& options = {});

// The same policies, kernel entries, ztunnel rules and waypoint configuration.
bool same_output(const CompiledPolicy& a, const CompiledPolicy& b);

// The policies of `in_force` compiled with the registry at `registry_path` as it is now: what
// is in force while the policy folder is broken, for the pods created meanwhile. Null when the
// registry or the compile has errors, or when the output would be the same.
std::shared_ptr<const CompiledPolicy> recompile_for_registry(const CompiledPolicy& in_force,
                                                             const std::string& registry_path,
                                                             const CompileOptions& options = {});

}  // namespace sluice::policies
