#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "policies/diagnostic.h"
#include "policies/registry.h"
#include "policies/schema.h"
#include "policies/service_backend.h"
#include "sluice_abi.h"

namespace sluice::policies {

struct CompileOptions {
    // Policies in this namespace apply mesh-wide (Istio's root namespace).
    std::string root_namespace = "istio-system";
    std::string trust_domain = "cluster.local";
    // The suffix of `name.ns.svc.<domain>` in ModelRoute backend hosts (service_backend.h).
    std::string cluster_domain = kDefaultClusterDomain;
    // Ids of the previous generation (CompiledPolicy::id_state()); keeps ids stable even when a
    // hash collision is resolved differently for a changed key set.
    const struct IdState* previous = nullptr;
};

// Every id assigned by a compile, by key; fed back through CompileOptions::previous.
struct IdState {
    std::map<std::string, uint32_t> identities;
    std::map<std::string, uint32_t> endpoints;
    std::map<std::string, uint32_t> rules;
};

// ---- kernel output (sluice_abi.h) ----------------------------------------------------------

struct KernelIpcacheEntry {
    Cidr cidr;
    uint32_t identity = 0;
};

struct KernelPolicyEntry {
    sluice_policy_key key{};
    sluice_policy_value value{};
};

// One pod's enrollment value. The agent enrolls the pod's netns (found via `netns` or the CNI)
// with {endpoint_id, flags} and only installs the policy entries of pods on its own node.
struct KernelEndpoint {
    std::string pod;  // "ns/name"
    std::string node_name;
    std::string netns;
    std::vector<IpAddress> addresses;
    sluice_enrolled_value value{};
};

// Sorted (ipcache by address then prefix, policy by key fields, endpoints by pod), so two
// compiles of the same input are byte-for-byte equal.
struct KernelState {
    std::vector<KernelIpcacheEntry> ipcache;
    std::vector<KernelPolicyEntry> policy;
    std::vector<KernelEndpoint> endpoints;
};

// ---- what the ids mean (explain, sluicectl, audit log) --------------------------------------

enum class IdentityKind { Namespace, Cidr };

struct IdentityInfo {
    uint32_t id = 0;
    IdentityKind kind = IdentityKind::Namespace;
    std::string namespace_name;  // Namespace kind: the workloads' namespace
    std::vector<Cidr> cidrs;     // policy ipBlocks that contain every address of this identity
    std::string key;             // the allocation key
};

enum class RuleKind { AuthorizationRule, IsolationBoundary, NoAllowMatched };

struct RuleInfo {
    uint32_t id = 0;
    RuleKind kind = RuleKind::AuthorizationRule;
    std::string policy;   // ObjectMeta::ref()
    int rule_index = -1;  // AuthorizationRule: index in spec.rules
    std::optional<Action> action;
    SourcePosition where;
    std::string describe() const;
};

// ---- ztunnel output --------------------------------------------------------------------------

// Everything ztunnel needs to decide one inbound connection to a workload, with Istio's
// order: (mTLS mode) → isolation boundary → DENY policies → ALLOW policies.
struct WorkloadRules {
    std::string workload;  // "ns/name"
    std::string namespace_name;
    std::string service_account;
    std::string boundary;                    // empty: not in a boundary
    std::vector<std::size_t> deny_policies;  // indexes into CompiledPolicy::policies->authorization
    std::vector<std::size_t> allow_policies;  // idem; non-empty → default deny
    MtlsMode mtls = MtlsMode::Permissive;     // resolved workload/namespace/mesh mode
    std::map<uint16_t, MtlsMode> port_mtls;   // port-level overrides
    std::string mtls_source;                  // the PeerAuthentication that set `mtls`
    uint32_t endpoint_id = 0;
    std::vector<IpAddress> addresses;  // the pod's, for `when` conditions on destination.ip
};

struct ZtunnelRules {
    std::vector<WorkloadRules> workloads;                   // sorted by workload
    std::map<std::string, std::string> namespace_boundary;  // namespace → boundary name
};

// ---- the whole output ------------------------------------------------------------------------

struct CompiledPolicy {
    CompileOptions options;  // `previous` is cleared
    std::shared_ptr<const PolicySet> policies;
    std::shared_ptr<const Registry> registry;

    KernelState kernel;
    ZtunnelRules ztunnel;
    nlohmann::json waypoint;  // {"authorizationPolicies": [...], "tokenBudgets": [...], ...}

    std::vector<IdentityInfo> identities;  // sorted by id
    std::vector<RuleInfo> rules;           // sorted by id
    std::vector<Diagnostic> diagnostics;   // compile-time problems; errors make it unusable

    IdState id_state() const;
    const WorkloadRules* workload(const std::string& ns_name) const;
    const RuleInfo* rule(uint32_t id) const;
    const IdentityInfo* identity(uint32_t id) const;
    // Rule id of an AuthorizationPolicy rule / an IsolationBoundary.
    uint32_t rule_id(const std::string& policy_ref, int rule_index) const;

    nlohmann::json kernel_json() const;
    nlohmann::json ztunnel_json() const;
};

// The pure compiler: same inputs (and same `previous`) → identical output. Never throws on
// input; problems that make the set unusable (a namespace in two boundaries, an unknown boundary
// peer) are errors in `diagnostics`.
CompiledPolicy compile(const PolicySet& policies, const Registry& registry,
                       const CompileOptions& options = {});

// The same, sharing already-owned inputs (the watcher keeps them for evaluate()).
CompiledPolicy compile(std::shared_ptr<const PolicySet> policies,
                       std::shared_ptr<const Registry> registry,
                       const CompileOptions& options = {});

// Crossing from namespace `src` to `dst`: each boundary guards its own edge, so the source's
// boundary must list the destination in allowTo and the destination's boundary must list the
// source in allowFrom. Same boundary (or neither in one): not a crossing. `port` nullopt asks
// "is any port admitted" (a peer restricted to some ports counts as admitting).
struct BoundaryDecision {
    bool denied = false;
    std::string boundary;  // the boundary that refused
};
BoundaryDecision boundary_crossing(const PolicySet& policies,
                                   const std::map<std::string, std::string>& namespace_boundary,
                                   const std::string& src, const std::string& dst,
                                   std::optional<uint16_t> port);

// Helpers shared with evaluation.
bool cidr_contains(const Cidr& outer, const IpAddress& address);
bool cidr_contains(const Cidr& outer, const Cidr& inner);
bool cidr_less(const Cidr& a, const Cidr& b);
bool cidr_equal(const Cidr& a, const Cidr& b);
// "spiffe://td/ns/x/sa/y" → "td/ns/x/sa/y" (Istio writes principals without the scheme).
std::string principal_of(const std::string& spiffe_id);
// The namespace of a principal "td/ns/<ns>/sa/<sa>", empty if it has none.
std::string namespace_of_principal(const std::string& principal);

}  // namespace sluice::policies
