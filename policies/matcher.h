#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "policies/schema.h"

namespace sluice::policies {

// Three-valued match: the kernel knows a source only by its ipcache identity (namespace + the
// ipBlocks it lies in), not its mTLS principal, so conditions on principals are Maybe there.
enum class Tri { No, Maybe, Yes };

// What is known about the source of a connection.
struct SourceFacts {
    // nullopt: unknown (kernel); "": plaintext, no principal; else "td/ns/x/sa/y".
    std::optional<std::string> principal;
    std::string namespace_name;  // empty: not a workload of the registry
    // Exactly one of these: the source address (ztunnel), or the set of policy ipBlocks that
    // contain every address of the source's identity (kernel).
    const IpAddress* address = nullptr;
    const std::vector<Cidr>* identity_cidrs = nullptr;

    bool in(const Cidr& cidr) const;
};

// Istio semantics of one rule of an `action` policy: AND over from/to/when, OR inside from[] and
// to[], OR over values inside a field. L7 conditions: an ALLOW rule that has any matches nothing
// (no waypoint on this path); a DENY rule is evaluated with them removed (fail closed).
// `destinations`: the address the connection was made to (ztunnel), or every address of the
// destination workload (kernel); only `when` conditions on destination.ip read it.
Tri rule_matches(const Rule& rule, Action action, const SourceFacts& source, uint16_t port,
                 std::span<const IpAddress> destinations);

// The parts of rule_matches(), for callers that evaluate many (source, port) pairs: the source
// part (with the L7 rule for ALLOW folded in), the port part and the destination-address part.
// rule_matches(r, a, s, p, d) ==
//     tri_and(rule_source_matches(r, a, s), rule_port_matches(r, p), rule_destination_matches(r,
//     d)).
Tri rule_source_matches(const Rule& rule, Action action, const SourceFacts& source);
bool rule_port_matches(const Rule& rule, uint16_t port);
// Yes when the conditions hold for every address of `destinations`, No when for none, else
// Maybe (none given, or a dual-stack workload whose conditions name only one family's address).
Tri rule_destination_matches(const Rule& rule, std::span<const IpAddress> destinations);

// The first rule of `policy` that matches (Yes), else whether any rule might (Maybe). A policy
// without rules matches nothing (ALLOW: allow-nothing; DENY: no effect).
struct PolicyMatch {
    Tri result = Tri::No;
    int rule_index = -1;  // the first Yes (or first Maybe when result is Maybe)
};
PolicyMatch policy_matches(const AuthorizationPolicy& policy, const SourceFacts& source,
                           uint16_t port, std::span<const IpAddress> destinations);

}  // namespace sluice::policies
