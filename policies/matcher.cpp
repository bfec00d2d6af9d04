#include "policies/matcher.h"

#include <algorithm>

#include "policies/compiler.h"

namespace sluice::policies {
namespace {

Tri tri_and(Tri a, Tri b) {
    if (a == Tri::No || b == Tri::No)
        return Tri::No;
    if (a == Tri::Maybe || b == Tri::Maybe)
        return Tri::Maybe;
    return Tri::Yes;
}

Tri tri_or(Tri a, Tri b) {
    if (a == Tri::Yes || b == Tri::Yes)
        return Tri::Yes;
    if (a == Tri::Maybe || b == Tri::Maybe)
        return Tri::Maybe;
    return Tri::No;
}

Tri from_bool(bool b) {
    return b ? Tri::Yes : Tri::No;
}

bool any_pattern(const std::vector<std::string>& patterns, const std::string& value) {
    return std::any_of(patterns.begin(), patterns.end(),
                       [&](const std::string& p) { return istio_string_match(p, value); });
}

Tri principal_field(const std::vector<std::string>& patterns, const SourceFacts& s, bool negate) {
    if (!s.principal)
        return Tri::Maybe;
    const bool m = any_pattern(patterns, *s.principal);
    return from_bool(negate ? !m : m);
}

Tri source_matches(const Source& src, const SourceFacts& s) {
    Tri r = Tri::Yes;
    if (!src.principals.empty())
        r = tri_and(r, principal_field(src.principals, s, false));
    if (!src.not_principals.empty())
        r = tri_and(r, principal_field(src.not_principals, s, true));
    if (!src.namespaces.empty())
        r = tri_and(r, from_bool(any_pattern(src.namespaces, s.namespace_name)));
    if (!src.not_namespaces.empty())
        r = tri_and(r, from_bool(!any_pattern(src.not_namespaces, s.namespace_name)));
    auto in_any = [&](const std::vector<Cidr>& cidrs) {
        return std::any_of(cidrs.begin(), cidrs.end(), [&](const Cidr& c) { return s.in(c); });
    };
    if (!src.ip_blocks.empty())
        r = tri_and(r, from_bool(in_any(src.ip_blocks)));
    if (!src.not_ip_blocks.empty())
        r = tri_and(r, from_bool(!in_any(src.not_ip_blocks)));
    return r;
}

bool operation_matches(const Operation& op, uint16_t port) {
    if (!op.ports.empty() && std::find(op.ports.begin(), op.ports.end(), port) == op.ports.end())
        return false;
    if (!op.not_ports.empty() &&
        std::find(op.not_ports.begin(), op.not_ports.end(), port) != op.not_ports.end())
        return false;
    return true;
}

}  // namespace

bool SourceFacts::in(const Cidr& cidr) const {
    if (address)
        return cidr_contains(cidr, *address);
    if (identity_cidrs) {
        return std::any_of(identity_cidrs->begin(), identity_cidrs->end(),
                           [&](const Cidr& c) { return cidr_equal(c, cidr); });
    }
    return false;
}

Tri rule_source_matches(const Rule& rule, Action action, const SourceFacts& source) {
    if (action == Action::Allow && (!rule.l7_fields.empty() || !rule.unknown_fields.empty()))
        return Tri::No;
    Tri from = rule.from.empty() ? Tri::Yes : Tri::No;
    for (const auto& src : rule.from) {
        from = tri_or(from, source_matches(src, source));
        if (from == Tri::Yes)
            break;
    }
    for (const auto& condition : rule.when_sources) {
        if (from == Tri::No)
            break;
        from = tri_and(from, source_matches(condition, source));
    }
    return from;
}

bool rule_port_matches(const Rule& rule, uint16_t port) {
    auto matches = [&](const Operation& op) { return operation_matches(op, port); };
    if (!std::all_of(rule.when_operations.begin(), rule.when_operations.end(), matches))
        return false;
    return rule.to.empty() || std::any_of(rule.to.begin(), rule.to.end(), matches);
}

Tri rule_destination_matches(const Rule& rule, std::span<const IpAddress> destinations) {
    if (rule.when_destination_ips.empty())
        return Tri::Yes;
    auto holds = [&](const IpAddress& address) {
        auto in = [&](const std::vector<Cidr>& cidrs) {
            return std::any_of(cidrs.begin(), cidrs.end(),
                               [&](const Cidr& c) { return cidr_contains(c, address); });
        };
        return std::all_of(rule.when_destination_ips.begin(), rule.when_destination_ips.end(),
                           [&](const DestinationIpCondition& c) {
                               return (c.cidrs.empty() || in(c.cidrs)) && !in(c.not_cidrs);
                           });
    };
    if (destinations.empty())
        return Tri::Maybe;
    const auto n = std::count_if(destinations.begin(), destinations.end(), holds);
    if (n == 0)
        return Tri::No;
    return static_cast<std::size_t>(n) == destinations.size() ? Tri::Yes : Tri::Maybe;
}

Tri rule_matches(const Rule& rule, Action action, const SourceFacts& source, uint16_t port,
                 std::span<const IpAddress> destinations) {
    const Tri from = rule_source_matches(rule, action, source);
    if (from == Tri::No || !rule_port_matches(rule, port))
        return Tri::No;
    return tri_and(from, rule_destination_matches(rule, destinations));
}

PolicyMatch policy_matches(const AuthorizationPolicy& policy, const SourceFacts& source,
                           uint16_t port, std::span<const IpAddress> destinations) {
    PolicyMatch m;
    for (std::size_t i = 0; i < policy.rules.size(); ++i) {
        const Tri t = rule_matches(policy.rules[i], policy.action, source, port, destinations);
        if (t == Tri::Yes)
            return {Tri::Yes, static_cast<int>(i)};
        if (t == Tri::Maybe && m.result == Tri::No)
            m = {Tri::Maybe, static_cast<int>(i)};
    }
    return m;
}

}  // namespace sluice::policies
