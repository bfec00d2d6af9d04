#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "agent/datapath/address.h"
#include "policies/diagnostic.h"

namespace sluice::policies {

using Labels = std::map<std::string, std::string>;
using datapath::Cidr;
using datapath::IpAddress;

// Kubernetes object identity of a policy document, and where it was written.
struct ObjectMeta {
    std::string kind;  // "AuthorizationPolicy", ...
    std::string name;
    std::string namespace_name;  // empty for cluster-scoped kinds (IsolationBoundary)
    SourcePosition where;

    std::string ref() const;  // "AuthorizationPolicy ns/name" or "IsolationBoundary name"
};

// `selector.matchLabels`: every label must be present with that value. An empty map selects
// every workload of the namespace (Istio treats `selector: {}` like no selector).
bool labels_match(const Labels& match_labels, const Labels& labels);

// Istio's string match for principals and namespaces: exact, "prefix*", "*suffix" or "*".
bool istio_string_match(const std::string& pattern, const std::string& value);

// ---- security.istio.io AuthorizationPolicy (L4 subset) -------------------------------------

enum class Action { Allow, Deny };
const char* action_name(Action action);

// `from[].source`: all present fields must match (AND); inside a field, any value (OR).
struct Source {
    std::vector<std::string> principals, not_principals;
    std::vector<std::string> namespaces, not_namespaces;
    std::vector<Cidr> ip_blocks, not_ip_blocks;
    // Fields this build cannot evaluate at L4 (requestPrincipals, remoteIpBlocks, …).
    std::vector<std::string> l7_fields;
    // Names this build does not know (a typo, a newer Istio field); see Rule::unknown_fields.
    std::vector<std::string> unknown_fields;

    bool uses_principals() const { return !principals.empty() || !not_principals.empty(); }
};

// `to[].operation`: ports (destination, target port of the workload), or L7 fields.
struct Operation {
    std::vector<uint16_t> ports, not_ports;
    std::vector<std::string> l7_fields;       // hosts, methods, paths, …
    std::vector<std::string> unknown_fields;  // names this build does not know
};

// `when[]` condition on `destination.ip`: the address the connection was made to.
struct DestinationIpCondition {
    std::vector<Cidr> cidrs, not_cidrs;
};

struct Rule {
    std::vector<Source> from;   // empty: any source
    std::vector<Operation> to;  // empty: any operation
    // `when[]` conditions on the keys Istio's ztunnel evaluates at L4; every one must hold.
    // source.ip, source.namespace and source.principal are read as a Source with that one field
    // (values → ipBlocks/namespaces/principals, notValues → the not* field), destination.port as
    // an Operation, destination.ip as its own. Other keys are L7 fields ("when.<key>").
    std::vector<Source> when_sources;
    std::vector<Operation> when_operations;
    std::vector<DestinationIpCondition> when_destination_ips;
    // Names of L7 fields anywhere in the rule ("to.operation.methods", "when", …). Without a
    // waypoint such a rule in an ALLOW policy matches nothing; in a DENY policy the L7 conditions
    // are dropped so it denies at least as much (Istio ambient's fail-closed behaviour).
    std::vector<std::string> l7_fields;
    // Fields this build does not know, anywhere in the rule (a typo such as `namepaces`, or a
    // field of a newer Istio): treated as L7 fields are, so an ALLOW rule with one matches
    // nothing and a DENY rule is enforced without it. Dropping it would widen an ALLOW rule:
    // `source: {namepaces: [backend]}` would allow every source.
    std::vector<std::string> unknown_fields;
    SourcePosition where;
};

struct AuthorizationPolicy {
    ObjectMeta meta;
    std::optional<Labels> selector;  // nullopt: every workload in scope
    Action action = Action::Allow;
    std::vector<Rule> rules;
    // Policies with targetRef/targetRefs bind to a waypoint or gateway, not to workloads: the
    // node (kernel and ztunnel) ignores them and hands them to the waypoint config.
    bool waypoint_targeted = false;
    nlohmann::json raw_spec;  // for the waypoint config and `policy diff`
};

// ---- security.istio.io PeerAuthentication ---------------------------------------------------

enum class MtlsMode { Unset, Strict, Permissive, Disable };
const char* mtls_mode_name(MtlsMode mode);

struct PeerAuthentication {
    ObjectMeta meta;
    std::optional<Labels> selector;
    MtlsMode mode = MtlsMode::Unset;
    std::map<uint16_t, MtlsMode> port_modes;  // portLevelMtls (needs a selector, as in Istio)
    nlohmann::json raw_spec;
};

// ---- sluice.dev/v1alpha1 IsolationBoundary --------------------------------------------------

// A peer a boundary lets across: namespaces by name, other boundaries by name, optionally only on
// some destination ports (empty: all).
struct BoundaryPeer {
    std::vector<std::string> namespaces;
    std::vector<std::string> boundaries;
    std::vector<uint16_t> ports;
};

struct IsolationBoundary {
    ObjectMeta meta;
    std::vector<std::string> namespaces;       // members by name
    std::optional<Labels> namespace_selector;  // members by Namespace labels
    std::vector<BoundaryPeer> allow_from;      // who may connect in
    std::vector<BoundaryPeer> allow_to;        // where members may connect out
    nlohmann::json raw_spec;
};

// ---- sluice.dev/v1alpha1 TokenBudget and ModelRoute (waypoint, validated and passed on) -----

struct TokenBudget {
    ObjectMeta meta;
    nlohmann::json spec;  // validated shape, see docs/policies.md
};

struct ModelRoute {
    ObjectMeta meta;
    nlohmann::json spec;
};

// Every policy document of one configuration, in the order read (files by name, documents in
// file order). Compilation sorts what it needs, so the order never changes the result.
struct PolicySet {
    std::vector<AuthorizationPolicy> authorization;
    std::vector<PeerAuthentication> peer_authentication;
    std::vector<IsolationBoundary> boundaries;
    std::vector<TokenBudget> token_budgets;
    std::vector<ModelRoute> model_routes;

    std::size_t size() const {
        return authorization.size() + peer_authentication.size() + boundaries.size() +
               token_budgets.size() + model_routes.size();
    }
};

}  // namespace sluice::policies
