#include "policies/compiler.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>
#include <unordered_map>

#include "policies/identity.h"
#include "policies/matcher.h"

namespace sluice::policies {
namespace {

constexpr uint8_t kProtoTcp = 6;
// The "every other port" column of a row; never a real destination port.
constexpr uint16_t kOtherPort = SLUICE_PORT_ANY;

std::string join_cidrs(const std::vector<Cidr>& cidrs) {
    std::string s;
    for (const auto& c : cidrs)
        s += (s.empty() ? "" : ",") + c.to_string();
    return s;
}

struct Verdict {
    uint8_t verdict = SLUICE_VERDICT_ALLOW;
    uint32_t rule_id = 0;
    auto operator<=>(const Verdict&) const = default;
};
using Row = std::vector<Verdict>;  // one per port column; column 0 is "other ports"

// The policy entries of one endpoint and direction, as (peer, port, verdict) before the endpoint
// id is stamped in. Shared by every endpoint with the same inputs.
struct RowEntry {
    uint32_t peer;
    uint16_t port;
    Verdict v;
};

class Compiler {
  public:
    Compiler(std::shared_ptr<const PolicySet> policies, std::shared_ptr<const Registry> registry,
             const CompileOptions& options)
        : p_(*policies), r_(*registry), opt_(options) {
        out_.options = options;
        out_.options.previous = nullptr;
        out_.policies = std::move(policies);
        out_.registry = std::move(registry);
        if (options.previous)
            prev_ = *options.previous;
    }

    CompiledPolicy run() {
        select_node_policies();
        resolve_boundaries();
        allocate_identities();
        allocate_rules();
        build_workloads();
        build_kernel_policy();
        build_waypoint();
        finish();
        return std::move(out_);
    }

  private:
    void error(const SourcePosition& where, std::string message) {
        out_.diagnostics.push_back({Severity::Error, where, std::move(message)});
    }
    void warning(const SourcePosition& where, std::string message) {
        out_.diagnostics.push_back({Severity::Warning, where, std::move(message)});
    }

    // AuthorizationPolicies the node enforces, sorted by (namespace, name).
    void select_node_policies() {
        for (std::size_t i = 0; i < p_.authorization.size(); ++i) {
            if (!p_.authorization[i].waypoint_targeted)
                node_policies_.push_back(i);
        }
        std::sort(node_policies_.begin(), node_policies_.end(), [&](auto a, auto b) {
            const auto& ma = p_.authorization[a].meta;
            const auto& mb = p_.authorization[b].meta;
            return std::tie(ma.namespace_name, ma.name) < std::tie(mb.namespace_name, mb.name);
        });
        for (auto i : node_policies_) {
            for (const auto& rule : p_.authorization[i].rules) {
                for (const auto* sources : {&rule.from, &rule.when_sources}) {
                    for (const auto& src : *sources) {
                        cidrs_.insert(cidrs_.end(), src.ip_blocks.begin(), src.ip_blocks.end());
                        cidrs_.insert(cidrs_.end(), src.not_ip_blocks.begin(),
                                      src.not_ip_blocks.end());
                    }
                }
            }
        }
        std::sort(cidrs_.begin(), cidrs_.end(), cidr_less);
        cidrs_.erase(std::unique(cidrs_.begin(), cidrs_.end(), cidr_equal), cidrs_.end());
    }

    void resolve_boundaries() {
        std::vector<const IsolationBoundary*> sorted;
        for (const auto& b : p_.boundaries)
            sorted.push_back(&b);
        std::sort(sorted.begin(), sorted.end(),
                  [](auto* a, auto* b) { return a->meta.name < b->meta.name; });
        std::set<std::string> names;
        for (auto* b : sorted) {
            names.insert(b->meta.name);
            boundaries_[b->meta.name] = b;
        }
        auto assign = [&](const std::string& ns, const IsolationBoundary& b) {
            auto [it, inserted] = out_.ztunnel.namespace_boundary.emplace(ns, b.meta.name);
            if (!inserted && it->second != b.meta.name) {
                error(b.meta.where, "namespace '" + ns + "' is in two isolation boundaries ('" +
                                        it->second + "' and '" + b.meta.name + "')");
            }
        };
        const auto registry_namespaces = r_.namespace_names();
        for (auto* b : sorted) {
            for (const auto& ns : b->namespaces)
                assign(ns, *b);
            if (b->namespace_selector && !b->namespace_selector->empty()) {
                for (const auto& ns : registry_namespaces) {
                    if (labels_match(*b->namespace_selector, r_.namespace_labels(ns)))
                        assign(ns, *b);
                }
            }
            for (const auto* peers : {&b->allow_from, &b->allow_to}) {
                for (const auto& peer : *peers) {
                    for (const auto& other : peer.boundaries) {
                        if (!names.contains(other))
                            error(b->meta.where,
                                  b->meta.ref() + ": allows unknown boundary '" + other + "'");
                    }
                }
            }
        }
    }

    std::string boundary_of(const std::string& ns) const {
        auto it = out_.ztunnel.namespace_boundary.find(ns);
        return it == out_.ztunnel.namespace_boundary.end() ? std::string() : it->second;
    }

    BoundaryDecision cross(const std::string& src, const std::string& dst,
                           std::optional<uint16_t> port) const {
        return boundary_crossing(p_, out_.ztunnel.namespace_boundary, src, dst, port);
    }

  private:
    std::vector<Cidr> cidrs_containing(const IpAddress& a) const {
        std::vector<Cidr> out;
        for (const auto& c : cidrs_) {
            if (cidr_contains(c, a))
                out.push_back(c);
        }
        return out;
    }

    void allocate_identities() {
        struct Pending {
            Cidr cidr;
            std::string key;
            IdentityInfo info;
        };
        std::vector<Pending> pending;
        auto workload_address = [&](const std::string& ns, const IpAddress& a) {
            IdentityInfo info;
            info.kind = IdentityKind::Namespace;
            info.namespace_name = ns;
            info.cidrs = cidrs_containing(a);
            info.key = "ns:" + ns + (info.cidrs.empty() ? "" : "|" + join_cidrs(info.cidrs));
            pending.push_back({Cidr{a, 128}, info.key, info});
        };
        for (const auto& pod : r_.pods) {
            for (const auto& a : pod.addresses)
                workload_address(pod.namespace_name, a);
        }
        for (const auto& svc : r_.services) {
            for (const auto& a : svc.cluster_ips)
                workload_address(svc.namespace_name, a);
        }
        for (const auto& c : cidrs_) {
            IdentityInfo info;
            info.kind = IdentityKind::Cidr;
            for (const auto& outer : cidrs_) {
                if (cidr_contains(outer, c))
                    info.cidrs.push_back(outer);
            }
            info.key = "cidr:" + join_cidrs(info.cidrs);
            pending.push_back({c, info.key, info});
        }
        std::vector<std::string> keys;
        for (const auto& p : pending)
            keys.push_back(p.key);
        const auto ids =
            StableIdAllocator(kFirstAllocatedIdentity, UINT32_MAX).assign(keys, prev_.identities);
        out_.identities.clear();
        std::set<std::string> seen;
        std::vector<std::pair<Cidr, uint32_t>> cache;
        for (auto& p : pending) {
            p.info.id = ids.at(p.key);
            if (seen.insert(p.key).second)
                out_.identities.push_back(p.info);
            cache.emplace_back(p.cidr, p.info.id);
        }
        std::stable_sort(cache.begin(), cache.end(),
                         [](const auto& a, const auto& b) { return cidr_less(a.first, b.first); });
        for (std::size_t i = 0; i < cache.size(); ++i) {
            if (i > 0 && cidr_equal(cache[i].first, cache[i - 1].first)) {
                if (cache[i].second != cache[i - 1].second)
                    warning({}, "address " + cache[i].first.to_string() +
                                    " belongs to two workloads in different namespaces; the "
                                    "first one in address order wins");
                continue;
            }
            out_.kernel.ipcache.push_back({cache[i].first, cache[i].second});
        }
        std::sort(out_.identities.begin(), out_.identities.end(),
                  [](const auto& a, const auto& b) { return a.id < b.id; });
        universe_ = out_.identities;
        IdentityInfo world;
        world.id = SLUICE_IDENTITY_WORLD;
        world.kind = IdentityKind::Cidr;
        world.key = "world";
        universe_.insert(universe_.begin(), world);
    }

    static std::string rule_key(const std::string& policy_ref, int index) {
        return index < 0 ? policy_ref : policy_ref + "#" + std::to_string(index);
    }

    void allocate_rules() {
        std::vector<std::string> keys;
        std::vector<RuleInfo> infos;
        for (auto i : node_policies_) {
            const auto& pol = p_.authorization[i];
            for (std::size_t r = 0; r < pol.rules.size(); ++r) {
                RuleInfo info;
                info.kind = RuleKind::AuthorizationRule;
                info.policy = pol.meta.ref();
                info.rule_index = static_cast<int>(r);
                info.action = pol.action;
                info.where = pol.rules[r].where;
                infos.push_back(info);
                keys.push_back(rule_key(info.policy, info.rule_index));
            }
        }
        for (const auto& [name, b] : boundaries_) {
            RuleInfo info;
            info.kind = RuleKind::IsolationBoundary;
            info.policy = b->meta.ref();
            info.where = b->meta.where;
            infos.push_back(info);
            keys.push_back(rule_key(info.policy, -1));
        }
        const auto ids =
            StableIdAllocator(kFirstAllocatedRuleId, UINT32_MAX).assign(keys, prev_.rules);
        for (auto& info : infos) {
            info.id = ids.at(rule_key(info.policy, info.rule_index));
            rule_ids_[rule_key(info.policy, info.rule_index)] = info.id;
            out_.rules.push_back(info);
        }
        RuleInfo none;
        none.id = kRuleIdNoAllowMatched;
        none.kind = RuleKind::NoAllowMatched;
        out_.rules.push_back(none);
        std::sort(out_.rules.begin(), out_.rules.end(),
                  [](const auto& a, const auto& b) { return a.id < b.id; });
    }

    bool applies(const AuthorizationPolicy& pol, const Pod& pod) const {
        if (pol.meta.namespace_name != pod.namespace_name &&
            pol.meta.namespace_name != opt_.root_namespace)
            return false;
        return !pol.selector || labels_match(*pol.selector, pod.labels);
    }

    void resolve_mtls(const Pod& pod, WorkloadRules& w) const {
        const PeerAuthentication* workload = nullptr;
        const PeerAuthentication* ns = nullptr;
        const PeerAuthentication* mesh = nullptr;
        auto older = [](const PeerAuthentication* cur, const PeerAuthentication& cand) {
            return !cur || cand.meta.name < cur->meta.name;  // deterministic tie-break
        };
        for (const auto& pa : p_.peer_authentication) {
            const bool scoped = pa.selector && !pa.selector->empty();
            if (pa.meta.namespace_name == pod.namespace_name && scoped &&
                labels_match(*pa.selector, pod.labels) && older(workload, pa))
                workload = &pa;
            else if (pa.meta.namespace_name == pod.namespace_name && !scoped && older(ns, pa))
                ns = &pa;
            if (pa.meta.namespace_name == opt_.root_namespace && !scoped && older(mesh, pa))
                mesh = &pa;
        }
        w.mtls = MtlsMode::Permissive;
        w.mtls_source = "default (PERMISSIVE)";
        for (const PeerAuthentication* pa : {mesh, ns, workload}) {
            if (pa && pa->mode != MtlsMode::Unset) {
                w.mtls = pa->mode;
                w.mtls_source = pa->meta.ref();
            }
        }
        if (workload) {
            for (const auto& [port, mode] : workload->port_modes) {
                if (mode != MtlsMode::Unset)
                    w.port_mtls[port] = mode;
            }
        }
    }

    void build_workloads() {
        std::vector<const Pod*> pods;
        for (const auto& pod : r_.pods)
            pods.push_back(&pod);
        std::sort(pods.begin(), pods.end(), [](auto* a, auto* b) { return a->key() < b->key(); });
        std::vector<std::string> keys;
        for (auto* pod : pods)
            keys.push_back(pod->key());
        const auto ids =
            StableIdAllocator(kFirstEndpointId, 0x7fffffff).assign(keys, prev_.endpoints);
        std::set<std::string> seen;
        for (auto* pod : pods) {
            if (!seen.insert(pod->key()).second) {
                warning({}, "pod " + pod->key() + " appears twice in the registry; first kept");
                continue;
            }
            WorkloadRules w;
            w.workload = pod->key();
            w.namespace_name = pod->namespace_name;
            w.service_account = pod->service_account;
            w.boundary = boundary_of(pod->namespace_name);
            w.endpoint_id = ids.at(pod->key());
            w.addresses = pod->addresses;
            for (auto i : node_policies_) {
                const auto& pol = p_.authorization[i];
                if (!applies(pol, *pod))
                    continue;
                (pol.action == Action::Deny ? w.deny_policies : w.allow_policies).push_back(i);
            }
            resolve_mtls(*pod, w);
            out_.ztunnel.workloads.push_back(std::move(w));
            KernelEndpoint ep;
            ep.pod = pod->key();
            ep.node_name = pod->node_name;
            ep.netns = pod->netns;
            ep.addresses = pod->addresses;
            ep.value.endpoint_id = ids.at(pod->key());
            // Defaults are explicit TCP entries, never the DEFAULT_DENY flags: those would also
            // refuse UDP (DNS), which AuthorizationPolicy does not govern.
            ep.value.flags = 0;
            out_.kernel.endpoints.push_back(ep);
        }
    }

    // Source-match of every rule of authorization policy `index` against every identity of the
    // universe: independent of the destination and port, so computed once per policy.
    const std::vector<std::vector<Tri>>& source_table(std::size_t index) {
        auto it = source_tables_.find(index);
        if (it != source_tables_.end())
            return it->second;
        const auto& pol = p_.authorization[index];
        std::vector<std::vector<Tri>> table(pol.rules.size());
        for (std::size_t r = 0; r < pol.rules.size(); ++r) {
            table[r].reserve(universe_.size());
            for (const auto& id : universe_) {
                SourceFacts facts;
                facts.namespace_name = id.namespace_name;
                facts.identity_cidrs = &id.cidrs;
                table[r].push_back(rule_source_matches(pol.rules[r], pol.action, facts));
            }
        }
        return source_tables_.emplace(index, std::move(table)).first->second;
    }

    int namespace_index(const std::string& ns) {
        return namespace_index_.try_emplace(ns, static_cast<int>(namespace_index_.size()))
            .first->second;
    }

    // Rule id of the boundary refusing src → dst on `port` (nullopt: any port), 0 if allowed.
    uint32_t boundary_rule(const std::string& src, const std::string& dst,
                           std::optional<uint16_t> port) {
        return boundary_rule(src, namespace_index(src), dst, namespace_index(dst), port);
    }
    uint32_t boundary_rule(const std::string& src, int src_index, const std::string& dst,
                           int dst_index, std::optional<uint16_t> port) {
        const uint64_t key =
            (uint64_t(src_index) << 40) | (uint64_t(dst_index) << 20) | (port ? *port : 0x10000u);
        auto it = boundary_cache_.find(key);
        if (it != boundary_cache_.end())
            return it->second;
        const auto b = cross(src, dst, port);
        const uint32_t id =
            b.denied ? rule_ids_.at(rule_key("IsolationBoundary " + b.boundary, -1)) : 0;
        boundary_cache_.emplace(key, id);
        return id;
    }

    // Rule ids of authorization policy `index`, by rule.
    const std::vector<uint32_t>& policy_rule_ids(std::size_t index) {
        auto it = policy_rule_ids_.find(index);
        if (it != policy_rule_ids_.end())
            return it->second;
        std::vector<uint32_t> ids;
        const auto& pol = p_.authorization[index];
        for (std::size_t r = 0; r < pol.rules.size(); ++r)
            ids.push_back(rule_ids_.at(rule_key(pol.meta.ref(), static_cast<int>(r))));
        return policy_rule_ids_.emplace(index, std::move(ids)).first->second;
    }

    // The ingress rows of workload `w`: one Row per identity of the universe, one column per
    // port of `ports` (column 0: every other port).
    std::vector<Row> ingress_rows(const WorkloadRules& w, const std::vector<uint16_t>& ports) {
        struct PolicyCols {
            const AuthorizationPolicy* pol;
            std::size_t index;
            const std::vector<std::vector<Tri>>* sources;
            const std::vector<uint32_t>* rule_ids;
            std::vector<std::vector<bool>> port_ok;  // [rule][column]
            std::vector<Tri> destination;            // [rule]: its destination.ip conditions
        };
        auto prepare = [&](const std::vector<std::size_t>& list) {
            std::vector<PolicyCols> out;
            for (auto i : list) {
                PolicyCols pc{&p_.authorization[i], i, &source_table(i), &policy_rule_ids(i), {}};
                for (const auto& rule : pc.pol->rules) {
                    std::vector<bool> ok;
                    for (auto port : ports)
                        ok.push_back(rule_port_matches(rule, port));
                    pc.port_ok.push_back(std::move(ok));
                    pc.destination.push_back(rule_destination_matches(rule, w.addresses));
                }
                out.push_back(std::move(pc));
            }
            return out;
        };
        const int dst_index = namespace_index(w.namespace_name);
        if (universe_ns_index_.empty()) {
            for (const auto& id : universe_)
                universe_ns_index_.push_back(namespace_index(id.namespace_name));
        }
        const auto deny = prepare(w.deny_policies);
        const auto allow = prepare(w.allow_policies);
        std::vector<Row> rows(universe_.size(), Row(ports.size()));
        for (std::size_t u = 0; u < universe_.size(); ++u) {
            const IdentityInfo& id = universe_[u];
            for (std::size_t c = 0; c < ports.size(); ++c) {
                rows[u][c] = ingress_cell(id, u, c, ports[c], w, dst_index, deny, allow);
            }
        }
        return rows;
    }

    template <typename Cols>
    Verdict ingress_cell(const IdentityInfo& id, std::size_t u, std::size_t c, uint16_t port,
                         const WorkloadRules& w, int dst_index, const Cols& deny,
                         const Cols& allow) {
        if (!id.namespace_name.empty()) {
            if (uint32_t b = boundary_rule(id.namespace_name, universe_ns_index_[u],
                                           w.namespace_name, dst_index, port))
                return {SLUICE_VERDICT_DENY, b};
        }
        for (const auto& pc : deny) {
            for (std::size_t r = 0; r < pc.port_ok.size(); ++r) {
                // A DENY rule refuses in the kernel only when it surely matches; Maybe is left
                // to ztunnel, which sees the principal and the address connected to.
                if ((*pc.sources)[r][u] == Tri::Yes && pc.port_ok[r][c] &&
                    pc.destination[r] == Tri::Yes)
                    return {SLUICE_VERDICT_DENY, (*pc.rule_ids)[r]};
            }
        }
        if (allow.empty())
            return {};
        bool any_maybe = false;
        for (const auto& pc : allow) {
            for (std::size_t r = 0; r < pc.port_ok.size(); ++r) {
                if (!pc.port_ok[r][c] || pc.destination[r] == Tri::No)
                    continue;
                const Tri source = (*pc.sources)[r][u];
                const Tri t = source == Tri::Yes ? pc.destination[r] : source;
                if (t == Tri::Yes)
                    return {SLUICE_VERDICT_ALLOW, (*pc.rule_ids)[r]};
                any_maybe = any_maybe || t == Tri::Maybe;
            }
        }
        // Maybe: only ztunnel, which sees the principal, can tell; the kernel lets it through
        // (rule 0) and ztunnel decides.
        if (any_maybe)
            return {};
        return {SLUICE_VERDICT_DENY, kRuleIdNoAllowMatched};
    }

    Verdict egress_verdict(const IdentityInfo& id, const std::string& src_ns) {
        if (id.namespace_name.empty())
            return {};  // boundaries govern workloads only; world traffic passes
        // The port is not known in a form ingress agrees on (a service port here, the target
        // port there), so egress only refuses what no port of the destination would admit.
        if (uint32_t b = boundary_rule(src_ns, id.namespace_name, std::nullopt))
            return {SLUICE_VERDICT_DENY, b};
        return {};
    }

    // Picks the most common row as the ANY-identity row and emits only what differs, following
    // the lookup order of sluice_abi.h: {peer, port} → {peer, ANY} → {ANY, port} → {ANY, ANY}.
    static std::vector<RowEntry> compress(const std::vector<uint16_t>& ports,
                                          const std::vector<Row>& rows,
                                          const std::vector<IdentityInfo>& universe) {
        std::map<Row, std::size_t> count;
        for (const auto& r : rows)
            ++count[r];
        const Row* any = nullptr;
        std::size_t best = 0;
        for (const auto& [row, n] : count) {
            if (n > best) {
                best = n;
                any = &row;
            }
        }
        std::vector<RowEntry> out;
        if (!any)
            return out;
        const Verdict kDefault{};
        auto emit_row = [&](uint32_t peer, const Row& row, bool is_any) {
            // {ANY, ANY} equal to the map's no-hit default (allow) is left out.
            if (!is_any || row[0] != kDefault)
                out.push_back({peer, kOtherPort, row[0]});
            for (std::size_t c = 1; c < ports.size(); ++c) {
                if (row[c] != row[0])
                    out.push_back({peer, ports[c], row[c]});
            }
        };
        emit_row(SLUICE_IDENTITY_ANY, *any, true);
        for (std::size_t i = 0; i < rows.size(); ++i) {
            const Row& row = rows[i];
            if (row == *any)
                continue;
            const uint32_t peer = universe[i].id;
            if (row[0] == (*any)[0]) {
                // No {peer, ANY}: unlisted ports fall through to the ANY row, which agrees.
                for (std::size_t c = 1; c < ports.size(); ++c) {
                    if (row[c] != (*any)[c])
                        out.push_back({peer, ports[c], row[c]});
                }
            } else {
                emit_row(peer, row, false);
            }
        }
        return out;
    }

    std::vector<uint16_t> ingress_ports(const WorkloadRules& w) const {
        std::vector<uint16_t> ports = {kOtherPort};
        for (const auto* list : {&w.deny_policies, &w.allow_policies}) {
            for (auto i : *list) {
                for (const auto& rule : p_.authorization[i].rules) {
                    for (const auto* ops : {&rule.to, &rule.when_operations}) {
                        for (const auto& op : *ops) {
                            ports.insert(ports.end(), op.ports.begin(), op.ports.end());
                            ports.insert(ports.end(), op.not_ports.begin(), op.not_ports.end());
                        }
                    }
                }
            }
        }
        for (const auto& [name, b] : boundaries_) {
            for (const auto* peers : {&b->allow_from, &b->allow_to}) {
                for (const auto& peer : *peers)
                    ports.insert(ports.end(), peer.ports.begin(), peer.ports.end());
            }
        }
        std::sort(ports.begin(), ports.end());
        ports.erase(std::unique(ports.begin(), ports.end()), ports.end());
        return ports;
    }

    void stamp(uint32_t endpoint, uint8_t direction, const std::vector<RowEntry>& entries) {
        for (const auto& e : entries) {
            KernelPolicyEntry k;
            k.key.endpoint_id = endpoint;
            k.key.peer_identity = e.peer;
            k.key.port = e.port;
            k.key.proto = kProtoTcp;
            k.key.direction = direction;
            k.value.verdict = e.v.verdict;
            k.value.rule_id = e.v.rule_id;
            out_.kernel.policy.push_back(k);
        }
    }

    bool reads_destination_ips(const WorkloadRules& w) const {
        for (const auto* list : {&w.deny_policies, &w.allow_policies}) {
            for (auto i : *list) {
                const auto& rules = p_.authorization[i].rules;
                if (std::any_of(rules.begin(), rules.end(),
                                [](const Rule& r) { return !r.when_destination_ips.empty(); }))
                    return true;
            }
        }
        return false;
    }

    void build_kernel_policy() {
        // Endpoints with the same inputs share their rows (most pods of a deployment do).
        std::map<std::string, std::vector<RowEntry>> ingress_cache;
        std::map<std::string, std::vector<RowEntry>> egress_cache;
        for (const auto& w : out_.ztunnel.workloads) {
            std::string sig = w.namespace_name + "|";
            for (auto i : w.deny_policies)
                sig += std::to_string(i) + ",";
            sig += "|";
            for (auto i : w.allow_policies)
                sig += std::to_string(i) + ",";
            // Rows that read destination.ip conditions differ by the pod's own addresses.
            if (reads_destination_ips(w)) {
                for (const auto& a : w.addresses)
                    sig += "|" + a.to_string();
            }
            auto it = ingress_cache.find(sig);
            if (it == ingress_cache.end()) {
                const auto ports = ingress_ports(w);
                const std::vector<Row> rows = ingress_rows(w, ports);
                it = ingress_cache.emplace(sig, compress(ports, rows, universe_)).first;
            }
            stamp(w.endpoint_id, SLUICE_DIR_INGRESS, it->second);

            auto eit = egress_cache.find(w.namespace_name);
            if (eit == egress_cache.end()) {
                std::vector<Row> rows;
                rows.reserve(universe_.size());
                for (const auto& id : universe_)
                    rows.push_back({egress_verdict(id, w.namespace_name)});
                eit =
                    egress_cache.emplace(w.namespace_name, compress({kOtherPort}, rows, universe_))
                        .first;
            }
            stamp(w.endpoint_id, SLUICE_DIR_EGRESS, eit->second);
        }
    }

    // The backends of a ModelRoute whose host names a Service of the registry, resolved to its
    // ready endpoints: {"<host>:<port>": {"service", "pool", "endpoints"} or {"service",
    // "error"}}. Part of the waypoint output, so an EndpointSlice change is a new generation.
    // Hosts that name no Service are left to the waypoint (its own pools, IP addresses).
    nlohmann::json service_backends(const ModelRoute& m) const {
        nlohmann::json out = nlohmann::json::object();
        for (const auto& b : m.spec.value("backends", nlohmann::json::array())) {
            if (!b.contains("host") || !b.contains("port") || !b["host"].is_string() ||
                !b["port"].is_number_unsigned())
                continue;
            const std::string host = b["host"];
            const uint16_t port = b["port"];
            const auto r =
                resolve_service_backend(r_, host, port, m.meta.namespace_name, opt_.cluster_domain);
            if (r.backend) {
                out[host + ":" + std::to_string(port)] = {{"service", r.backend->service},
                                                          {"pool", r.backend->pool},
                                                          {"endpoints", r.backend->endpoints}};
            } else if (!r.error.empty()) {
                out[host + ":" + std::to_string(port)] = {{"error", r.error}};
            }
        }
        return out;
    }

    void build_waypoint() {
        nlohmann::json authz = nlohmann::json::array();
        for (const auto& pol : p_.authorization) {
            const bool l7 = std::any_of(pol.rules.begin(), pol.rules.end(),
                                        [](const Rule& r) { return !r.l7_fields.empty(); });
            if (!pol.waypoint_targeted && !l7)
                continue;
            authz.push_back({{"name", pol.meta.name},
                             {"namespace", pol.meta.namespace_name},
                             {"spec", pol.raw_spec}});
        }
        nlohmann::json budgets = nlohmann::json::array();
        for (const auto& b : p_.token_budgets)
            budgets.push_back(
                {{"name", b.meta.name}, {"namespace", b.meta.namespace_name}, {"spec", b.spec}});
        nlohmann::json routes = nlohmann::json::array();
        // One route per model: the waypoint could only pick one of two silently. The first by
        // (namespace, name) is the one named in the error, so the message does not depend on
        // file order.
        std::map<std::string, const ModelRoute*> route_of_model;
        for (const auto& m : p_.model_routes) {
            const std::string model = m.spec.value("model", "");
            auto [it, fresh] = route_of_model.emplace(model, &m);
            if (!fresh) {
                const ModelRoute* a = it->second;
                const ModelRoute* b = &m;
                if (std::tie(b->meta.namespace_name, b->meta.name) <
                    std::tie(a->meta.namespace_name, a->meta.name))
                    std::swap(a, b);
                error(b->meta.where, "model '" + model + "' is already routed by " + a->meta.ref() +
                                         "; a model has one ModelRoute");
                it->second = a;
            }
        }
        for (const auto& m : p_.model_routes) {
            nlohmann::json route = {
                {"name", m.meta.name}, {"namespace", m.meta.namespace_name}, {"spec", m.spec}};
            if (auto services = service_backends(m); !services.empty())
                route["services"] = std::move(services);
            routes.push_back(std::move(route));
        }
        auto by_ref = [](const nlohmann::json& a, const nlohmann::json& b) {
            return std::tie(a["namespace"].get_ref<const std::string&>(),
                            a["name"].get_ref<const std::string&>()) <
                   std::tie(b["namespace"].get_ref<const std::string&>(),
                            b["name"].get_ref<const std::string&>());
        };
        for (auto* arr : {&authz, &budgets, &routes})
            std::sort(arr->begin(), arr->end(), by_ref);
        out_.waypoint = {
            {"authorizationPolicies", authz}, {"tokenBudgets", budgets}, {"modelRoutes", routes}};
    }

    void finish() {
        auto& k = out_.kernel;
        std::sort(k.ipcache.begin(), k.ipcache.end(),
                  [](const auto& a, const auto& b) { return cidr_less(a.cidr, b.cidr); });
        std::sort(k.policy.begin(), k.policy.end(), [](const auto& a, const auto& b) {
            return std::tie(a.key.endpoint_id, a.key.direction, a.key.peer_identity, a.key.port,
                            a.key.proto) < std::tie(b.key.endpoint_id, b.key.direction,
                                                    b.key.peer_identity, b.key.port, b.key.proto);
        });
    }

    const PolicySet& p_;
    const Registry& r_;
    CompileOptions opt_;
    IdState prev_;
    CompiledPolicy out_;
    std::vector<std::size_t> node_policies_;
    std::vector<Cidr> cidrs_;
    std::map<std::string, const IsolationBoundary*> boundaries_;
    std::vector<IdentityInfo> universe_;  // WORLD first, then every allocated identity
    std::map<std::string, uint32_t> rule_ids_;
    std::map<std::size_t, std::vector<std::vector<Tri>>> source_tables_;
    std::map<std::size_t, std::vector<uint32_t>> policy_rule_ids_;
    std::unordered_map<std::string, int> namespace_index_;
    std::vector<int> universe_ns_index_;  // namespace_index() of each universe_ entry
    std::unordered_map<uint64_t, uint32_t> boundary_cache_;
};

bool peer_allows(const std::vector<BoundaryPeer>& peers, const std::string& ns,
                 const std::string& boundary, std::optional<uint16_t> port) {
    for (const auto& peer : peers) {
        const bool who =
            std::find(peer.namespaces.begin(), peer.namespaces.end(), ns) !=
                peer.namespaces.end() ||
            (!boundary.empty() && std::find(peer.boundaries.begin(), peer.boundaries.end(),
                                            boundary) != peer.boundaries.end());
        if (!who)
            continue;
        // nullopt port: "some port" - a port-restricted peer still lets something across.
        if (peer.ports.empty() || !port ||
            std::find(peer.ports.begin(), peer.ports.end(), *port) != peer.ports.end())
            return true;
    }
    return false;
}

const IsolationBoundary* find_boundary(const PolicySet& policies, const std::string& name) {
    for (const auto& b : policies.boundaries) {
        if (b.meta.name == name)
            return &b;
    }
    return nullptr;
}

}  // namespace

BoundaryDecision boundary_crossing(const PolicySet& policies,
                                   const std::map<std::string, std::string>& namespace_boundary,
                                   const std::string& src, const std::string& dst,
                                   std::optional<uint16_t> port) {
    auto boundary_of = [&](const std::string& ns) {
        auto it = namespace_boundary.find(ns);
        return it == namespace_boundary.end() ? std::string() : it->second;
    };
    const std::string bs = boundary_of(src);
    const std::string bd = boundary_of(dst);
    if (bs == bd)
        return {};
    if (const auto* b = bs.empty() ? nullptr : find_boundary(policies, bs);
        b && !peer_allows(b->allow_to, dst, bd, port))
        return {true, bs};
    if (const auto* b = bd.empty() ? nullptr : find_boundary(policies, bd);
        b && !peer_allows(b->allow_from, src, bs, port))
        return {true, bd};
    return {};
}

bool cidr_contains(const Cidr& outer, const IpAddress& address) {
    const uint32_t bits = std::min<uint32_t>(outer.prefix_len, 128);
    const uint32_t full = bits / 8;
    for (uint32_t i = 0; i < full; ++i) {
        if (outer.address.bytes[i] != address.bytes[i])
            return false;
    }
    if (bits % 8 == 0)
        return true;
    const uint8_t mask = static_cast<uint8_t>(0xff << (8 - bits % 8));
    return (outer.address.bytes[full] & mask) == (address.bytes[full] & mask);
}

bool cidr_contains(const Cidr& outer, const Cidr& inner) {
    return outer.prefix_len <= inner.prefix_len && cidr_contains(outer, inner.address);
}

bool cidr_less(const Cidr& a, const Cidr& b) {
    return std::tie(a.address.bytes, a.prefix_len) < std::tie(b.address.bytes, b.prefix_len);
}

bool cidr_equal(const Cidr& a, const Cidr& b) {
    return a.address == b.address && a.prefix_len == b.prefix_len;
}

std::string principal_of(const std::string& spiffe_id) {
    constexpr std::string_view kScheme = "spiffe://";
    if (spiffe_id.compare(0, kScheme.size(), kScheme) == 0)
        return spiffe_id.substr(kScheme.size());
    return spiffe_id;
}

std::string namespace_of_principal(const std::string& principal) {
    const auto ns = principal.find("/ns/");
    if (ns == std::string::npos)
        return {};
    const auto start = ns + 4;
    const auto end = principal.find('/', start);
    if (end == std::string::npos || principal.compare(end, 4, "/sa/") != 0)
        return {};
    return principal.substr(start, end - start);
}

std::string RuleInfo::describe() const {
    switch (kind) {
        case RuleKind::AuthorizationRule:
            return policy + " rule " + std::to_string(rule_index) + " (" +
                   (action ? action_name(*action) : "?") + ")";
        case RuleKind::IsolationBoundary:
            return policy;
        case RuleKind::NoAllowMatched:
            break;
    }
    return "no ALLOW rule matched (ALLOW policies select the workload)";
}

IdState CompiledPolicy::id_state() const {
    IdState s;
    for (const auto& i : identities)
        s.identities[i.key] = i.id;
    for (const auto& e : kernel.endpoints)
        s.endpoints[e.pod] = e.value.endpoint_id;
    for (const auto& r : rules) {
        if (r.kind != RuleKind::NoAllowMatched)
            s.rules[r.rule_index < 0 ? r.policy : r.policy + "#" + std::to_string(r.rule_index)] =
                r.id;
    }
    return s;
}

const WorkloadRules* CompiledPolicy::workload(const std::string& ns_name) const {
    auto it = std::lower_bound(
        ztunnel.workloads.begin(), ztunnel.workloads.end(), ns_name,
        [](const WorkloadRules& w, const std::string& key) { return w.workload < key; });
    return it != ztunnel.workloads.end() && it->workload == ns_name ? &*it : nullptr;
}

const RuleInfo* CompiledPolicy::rule(uint32_t id) const {
    auto it = std::lower_bound(rules.begin(), rules.end(), id,
                               [](const RuleInfo& r, uint32_t v) { return r.id < v; });
    return it != rules.end() && it->id == id ? &*it : nullptr;
}

const IdentityInfo* CompiledPolicy::identity(uint32_t id) const {
    auto it = std::lower_bound(identities.begin(), identities.end(), id,
                               [](const IdentityInfo& r, uint32_t v) { return r.id < v; });
    return it != identities.end() && it->id == id ? &*it : nullptr;
}

uint32_t CompiledPolicy::rule_id(const std::string& policy_ref, int rule_index) const {
    for (const auto& r : rules) {
        if (r.policy == policy_ref && r.rule_index == rule_index)
            return r.id;
    }
    return 0;
}

nlohmann::json CompiledPolicy::kernel_json() const {
    nlohmann::json ipc = nlohmann::json::array();
    for (const auto& e : kernel.ipcache)
        ipc.push_back({{"cidr", e.cidr.to_string()}, {"identity", e.identity}});
    nlohmann::json pol = nlohmann::json::array();
    for (const auto& e : kernel.policy) {
        pol.push_back({{"endpoint", e.key.endpoint_id},
                       {"peer", e.key.peer_identity},
                       {"port", e.key.port},
                       {"proto", e.key.proto},
                       {"direction", e.key.direction == SLUICE_DIR_INGRESS ? "ingress" : "egress"},
                       {"verdict", e.value.verdict == SLUICE_VERDICT_ALLOW ? "allow" : "deny"},
                       {"rule", e.value.rule_id}});
    }
    nlohmann::json eps = nlohmann::json::array();
    for (const auto& e : kernel.endpoints)
        eps.push_back(
            {{"pod", e.pod}, {"endpoint", e.value.endpoint_id}, {"flags", e.value.flags}});
    return {{"ipcache", ipc}, {"policy", pol}, {"endpoints", eps}};
}

nlohmann::json CompiledPolicy::ztunnel_json() const {
    nlohmann::json wl = nlohmann::json::array();
    auto refs = [&](const std::vector<std::size_t>& idx) {
        nlohmann::json a = nlohmann::json::array();
        for (auto i : idx)
            a.push_back(policies->authorization[i].meta.ref());
        return a;
    };
    for (const auto& w : ztunnel.workloads) {
        nlohmann::json ports = nlohmann::json::object();
        for (const auto& [p, m] : w.port_mtls)
            ports[std::to_string(p)] = mtls_mode_name(m);
        wl.push_back({{"workload", w.workload},
                      {"boundary", w.boundary},
                      {"deny", refs(w.deny_policies)},
                      {"allow", refs(w.allow_policies)},
                      {"mtls", mtls_mode_name(w.mtls)},
                      {"portMtls", ports}});
    }
    return {{"workloads", wl}, {"namespaceBoundary", ztunnel.namespace_boundary}};
}

CompiledPolicy compile(std::shared_ptr<const PolicySet> policies,
                       std::shared_ptr<const Registry> registry, const CompileOptions& options) {
    return Compiler(std::move(policies), std::move(registry), options).run();
}

CompiledPolicy compile(const PolicySet& policies, const Registry& registry,
                       const CompileOptions& options) {
    return compile(std::make_shared<const PolicySet>(policies),
                   std::make_shared<const Registry>(registry), options);
}

}  // namespace sluice::policies
