#include "policies/diff.h"

#include <map>

#include "policies/kernel_apply.h"

namespace sluice::policies {
namespace {

std::map<std::string, nlohmann::json> by_ref(const PolicySet& p) {
    std::map<std::string, nlohmann::json> m;
    for (const auto& x : p.authorization)
        m[x.meta.ref()] = x.raw_spec;
    for (const auto& x : p.peer_authentication)
        m[x.meta.ref()] = x.raw_spec;
    for (const auto& x : p.boundaries)
        m[x.meta.ref()] = x.raw_spec;
    for (const auto& x : p.token_budgets)
        m[x.meta.ref()] = x.spec;
    for (const auto& x : p.model_routes)
        m[x.meta.ref()] = x.spec;
    return m;
}

}  // namespace

std::vector<std::string> diff_policies(const PolicySet& a, const PolicySet& b) {
    std::vector<std::string> out;
    const auto ma = by_ref(a);
    const auto mb = by_ref(b);
    for (const auto& [ref, spec] : ma) {
        auto it = mb.find(ref);
        if (it == mb.end())
            out.push_back("- " + ref);
        else if (it->second != spec)
            out.push_back("~ " + ref + ": spec " + spec.dump() + " → " + it->second.dump());
    }
    for (const auto& [ref, spec] : mb) {
        if (!ma.contains(ref))
            out.push_back("+ " + ref);
    }
    return out;
}

std::vector<std::string> diff_kernel(const CompiledPolicy& a, const CompiledPolicy& b) {
    const KernelDelta d = kernel_delta(a.kernel, b.kernel);
    if (d.empty())
        return {};
    return {"kernel: " + std::to_string(d.policy_upserts.size()) + " policy upserts, " +
            std::to_string(d.policy_deletes.size()) + " policy deletes, " +
            std::to_string(d.ipcache_upserts.size()) + " ipcache upserts, " +
            std::to_string(d.ipcache_deletes.size()) + " ipcache deletes"};
}

}  // namespace sluice::policies
