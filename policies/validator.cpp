#include "policies/validator.h"

#include <map>
#include <set>

namespace sluice::policies {
namespace {

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v)
        s += (s.empty() ? "" : ", ") + x;
    return s;
}

}  // namespace

std::vector<Diagnostic> validate(const PolicySet& p, const CompileOptions& options) {
    std::vector<Diagnostic> out;
    std::map<std::string, SourcePosition> seen;
    auto check_unique = [&](const ObjectMeta& m) {
        auto [it, inserted] = seen.emplace(m.ref(), m.where);
        if (!inserted)
            out.push_back(
                {Severity::Error, m.where,
                 "duplicate " + m.ref() + " (first defined at " + it->second.to_string() + ")"});
    };
    for (const auto& x : p.authorization)
        check_unique(x.meta);
    for (const auto& x : p.peer_authentication)
        check_unique(x.meta);
    for (const auto& x : p.boundaries)
        check_unique(x.meta);
    for (const auto& x : p.token_budgets)
        check_unique(x.meta);
    for (const auto& x : p.model_routes)
        check_unique(x.meta);

    std::set<std::string> boundary_names;
    for (const auto& b : p.boundaries)
        boundary_names.insert(b.meta.name);
    std::map<std::string, std::string> claimed;
    for (const auto& b : p.boundaries) {
        for (const auto& ns : b.namespaces) {
            auto [it, inserted] = claimed.emplace(ns, b.meta.name);
            if (!inserted && it->second != b.meta.name)
                out.push_back({Severity::Error, b.meta.where,
                               "namespace '" + ns + "' is in two isolation boundaries ('" +
                                   it->second + "' and '" + b.meta.name + "')"});
        }
        for (const auto* peers : {&b.allow_from, &b.allow_to}) {
            for (const auto& peer : *peers) {
                for (const auto& other : peer.boundaries) {
                    if (!boundary_names.contains(other))
                        out.push_back({Severity::Error, b.meta.where,
                                       b.meta.ref() + ": allows unknown boundary '" + other + "'"});
                }
            }
        }
    }

    int mesh_wide = 0;
    for (const auto& pa : p.peer_authentication) {
        if (pa.meta.namespace_name == options.root_namespace &&
            (!pa.selector || pa.selector->empty()) && ++mesh_wide == 2)
            out.push_back({Severity::Warning, pa.meta.where,
                           "more than one mesh-wide PeerAuthentication in " +
                               options.root_namespace + "; the first by name is used"});
    }

    for (const auto& pol : p.authorization) {
        if (pol.waypoint_targeted) {
            out.push_back({Severity::Warning, pol.meta.where,
                           pol.meta.ref() + " uses targetRef(s): enforced by a waypoint only"});
            continue;
        }
        for (std::size_t i = 0; i < pol.rules.size(); ++i) {
            const Rule& r = pol.rules[i];
            if (r.l7_fields.empty())
                continue;
            const std::string head = pol.meta.ref() + " rule " + std::to_string(i) +
                                     " requires a waypoint (" + join(r.l7_fields) + "): ";
            out.push_back(
                {Severity::Warning, r.where,
                 head + (pol.action == Action::Allow
                             ? "at L4 this ALLOW rule matches nothing"
                             : "at L4 this DENY rule is enforced without its L7 conditions, "
                               "so it denies more")});
        }
    }
    return out;
}

}  // namespace sluice::policies
