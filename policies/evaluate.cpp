#include "policies/evaluate.h"

#include <algorithm>
#include <sstream>

#include "policies/identity.h"
#include "policies/matcher.h"

namespace sluice::policies {
namespace {

const Pod* pod_by_address(const Registry& registry, const IpAddress& address) {
    for (const auto& pod : registry.pods) {
        for (const auto& a : pod.addresses) {
            if (a == address)
                return &pod;
        }
    }
    return nullptr;
}

Decision decided(Verdict v, const CompiledPolicy& c, uint32_t rule_id, std::string reason,
                 std::vector<std::string> trace) {
    Decision d;
    d.verdict = v;
    d.rule_id = rule_id;
    if (const RuleInfo* r = c.rule(rule_id)) {
        d.rule = r->describe();
        d.where = r->where;
    }
    d.reason = std::move(reason);
    d.trace = std::move(trace);
    return d;
}

}  // namespace

Decision evaluate(const CompiledPolicy& c, const Connection& conn) {
    std::vector<std::string> trace;
    const WorkloadRules* w = c.workload(conn.destination);
    if (!w)
        return decided(Verdict::Deny, c, 0,
                       "destination workload " + conn.destination + " is not in the registry",
                       trace);
    const std::string principal = principal_of(conn.peer_identity);
    const bool mtls = !principal.empty();
    std::string src_ns;
    if (mtls) {
        src_ns = namespace_of_principal(principal);
        trace.push_back("source principal " + principal + " (namespace " +
                        (src_ns.empty() ? "none" : src_ns) + ")");
    } else if (const Pod* p = pod_by_address(*c.registry, conn.source)) {
        src_ns = p->namespace_name;
        trace.push_back("plaintext from " + conn.source.to_string() + " = pod " + p->key());
    } else {
        trace.push_back("plaintext from " + conn.source.to_string() + " (not a workload)");
    }

    MtlsMode mode = w->mtls;
    std::string mode_source = w->mtls_source;
    if (auto it = w->port_mtls.find(conn.port); it != w->port_mtls.end()) {
        mode = it->second;
        mode_source += " (port " + std::to_string(conn.port) + ")";
    }
    trace.push_back(std::string("mTLS mode ") + mtls_mode_name(mode) + " from " + mode_source);
    if (mode == MtlsMode::Strict && !mtls) {
        Decision d = decided(Verdict::Deny, c, 0,
                             "plaintext refused: mTLS is STRICT for this workload and port",
                             std::move(trace));
        d.rule = mode_source;
        return d;
    }

    if (!src_ns.empty()) {
        auto b = boundary_crossing(*c.policies, c.ztunnel.namespace_boundary, src_ns,
                                   w->namespace_name, conn.port);
        if (b.denied) {
            trace.push_back("crosses isolation boundary '" + b.boundary + "'");
            return decided(Verdict::Deny, c, c.rule_id("IsolationBoundary " + b.boundary, -1),
                           "namespace " + src_ns + " → " + w->namespace_name +
                               " crosses isolation boundary '" + b.boundary +
                               "', which does not allow it",
                           std::move(trace));
        }
    }

    std::span<const IpAddress> destinations = w->addresses;
    if (conn.destination_address)
        destinations = std::span<const IpAddress>(&*conn.destination_address, 1);
    SourceFacts facts;
    facts.principal = principal;
    facts.namespace_name = src_ns;
    facts.address = &conn.source;
    const auto& authz = c.policies->authorization;
    for (auto i : w->deny_policies) {
        auto m = policy_matches(authz[i], facts, conn.port, destinations);
        if (m.result == Tri::Yes) {
            trace.push_back(authz[i].meta.ref() + " rule " + std::to_string(m.rule_index) +
                            " matches (DENY)");
            return decided(Verdict::Deny, c, c.rule_id(authz[i].meta.ref(), m.rule_index),
                           "a DENY rule matches", std::move(trace));
        }
        trace.push_back(authz[i].meta.ref() + ": no DENY rule matches");
    }
    if (w->allow_policies.empty()) {
        trace.push_back("no ALLOW policy selects " + w->workload);
        return decided(Verdict::Allow, c, 0,
                       "no DENY rule matches and no ALLOW policy selects the workload",
                       std::move(trace));
    }
    for (auto i : w->allow_policies) {
        auto m = policy_matches(authz[i], facts, conn.port, destinations);
        if (m.result == Tri::Yes) {
            trace.push_back(authz[i].meta.ref() + " rule " + std::to_string(m.rule_index) +
                            " matches (ALLOW)");
            return decided(Verdict::Allow, c, c.rule_id(authz[i].meta.ref(), m.rule_index),
                           "an ALLOW rule matches", std::move(trace));
        }
        trace.push_back(authz[i].meta.ref() + ": no ALLOW rule matches" +
                        (authz[i].rules.empty() ? " (it has no rules: allow-nothing)" : ""));
    }
    return decided(Verdict::Deny, c, kRuleIdNoAllowMatched,
                   "ALLOW policies select the workload and none of their rules matches",
                   std::move(trace));
}

Explanation explain(const CompiledPolicy& c, const ExplainQuery& q) {
    Explanation e;
    const Registry& reg = *c.registry;
    Connection conn;
    conn.port = q.port;
    conn.destination = q.to;
    const Pod* dst = nullptr;
    if (auto slash = q.to.find('/'); slash != std::string::npos)
        dst = reg.find_pod(q.to.substr(0, slash), q.to.substr(slash + 1));
    if (!dst) {
        e.notes.push_back("--to " + q.to + ": no such pod in the registry (want ns/pod)");
        e.ztunnel = evaluate(c, conn);
        return e;
    }
    if (!q.to_ip.empty()) {
        auto ip = datapath::parse_ip(q.to_ip);
        if (!ip ||
            std::find(dst->addresses.begin(), dst->addresses.end(), *ip) == dst->addresses.end()) {
            e.notes.push_back("--to-ip " + q.to_ip + ": not an address of " + q.to);
            return e;
        }
        conn.destination_address = *ip;
    }
    const Pod* src = nullptr;
    if (auto ip = datapath::parse_ip(q.from)) {
        conn.source = *ip;
        e.notes.push_back("--from " + q.from + ": a plaintext client at that address");
    } else if (auto slash = q.from.find('/'); slash != std::string::npos) {
        const std::string ns = q.from.substr(0, slash);
        const std::string name = q.from.substr(slash + 1);
        for (const auto& p : reg.pods) {
            if (p.namespace_name == ns && p.service_account == name) {
                src = &p;
                break;
            }
        }
        if (!src) {
            src = reg.find_pod(ns, name);
            if (src)
                e.notes.push_back("--from " + q.from + ": pod, service account " +
                                  src->service_account);
        } else {
            e.notes.push_back("--from " + q.from + ": service account; its pod " + src->key() +
                              " is the source address");
        }
        const std::string sa = src ? src->service_account : name;
        if (!q.plaintext)
            conn.peer_identity = "spiffe://" + c.options.trust_domain + "/ns/" + ns + "/sa/" + sa;
        if (src && !src->addresses.empty())
            conn.source = src->addresses.front();
        if (!src)
            e.notes.push_back("--from " + q.from +
                              ": no pod runs as this service account; only ztunnel's view");
    } else {
        e.notes.push_back("--from " + q.from + ": want ns/sa, ns/pod or an IP address");
        return e;
    }
    e.connection = conn;
    e.ztunnel = evaluate(c, conn);
    if (!conn.destination_address && dst->addresses.size() > 1) {
        // ztunnel decides a connection to one address; a destination.ip condition can hold for
        // one of the pod's addresses and not another. Then the answer is the DENY one.
        std::string per_address;
        bool differ = false;
        for (const auto& address : dst->addresses) {
            Connection to = conn;
            to.destination_address = address;
            Decision d = evaluate(c, to);
            per_address += (per_address.empty() ? "" : ", ") +
                           std::string(d.verdict == Verdict::Allow ? "ALLOW" : "DENY") + " to " +
                           address.to_string();
            if (d.verdict != e.ztunnel.verdict) {
                differ = true;
                if (d.verdict == Verdict::Deny)
                    e.ztunnel = std::move(d);
            }
        }
        if (differ)
            e.notes.push_back("the verdict depends on the address connected to (" + per_address +
                              "); --to-ip names one");
    }

    KernelModel model(c.kernel);
    auto describe = [&](uint32_t id) {
        const RuleInfo* r = c.rule(id);
        return r ? r->describe() : std::string(id == 0 ? "default" : "unknown rule");
    };
    if (src) {
        if (const KernelEndpoint* ep = model.endpoint_by_pod(src->key());
            ep && !dst->addresses.empty()) {
            KernelView v;
            v.direction = "egress at " + src->key() + " (connect)";
            v.peer_identity =
                model.identity_of(conn.destination_address.value_or(dst->addresses.front()));
            v.lookup =
                model.lookup(ep->value.endpoint_id, v.peer_identity, q.port, 6, SLUICE_DIR_EGRESS);
            v.rule = describe(v.lookup.rule_id);
            e.kernel.push_back(v);
        }
    }
    if (const KernelEndpoint* ep = model.endpoint_by_pod(dst->key())) {
        KernelView v;
        v.direction = "ingress at " + dst->key() + " (plaintext, sk_lookup)";
        v.peer_identity = model.identity_of(conn.source);
        v.lookup =
            model.lookup(ep->value.endpoint_id, v.peer_identity, q.port, 6, SLUICE_DIR_INGRESS);
        v.rule = describe(v.lookup.rule_id);
        e.kernel.push_back(v);
    }
    return e;
}

std::string Explanation::text() const {
    std::ostringstream o;
    for (const auto& n : notes)
        o << "note: " << n << "\n";
    if (connection) {
        o << "connection: "
          << (connection->peer_identity.empty() ? "plaintext" : connection->peer_identity)
          << " from " << connection->source.to_string() << " to " << connection->destination
          << " port " << connection->port << "\n";
    }
    o << "ztunnel: " << (ztunnel.verdict == Verdict::Allow ? "ALLOW" : "DENY") << " — "
      << ztunnel.reason << "\n";
    if (!ztunnel.rule.empty()) {
        o << "  deciding rule: " << ztunnel.rule;
        if (ztunnel.where.line > 0)
            o << " at " << ztunnel.where.to_string();
        o << "\n";
    }
    for (const auto& t : ztunnel.trace)
        o << "  - " << t << "\n";
    for (const auto& k : kernel) {
        o << "kernel " << k.direction << ": peer identity " << k.peer_identity << " → "
          << (k.lookup.verdict == SLUICE_VERDICT_ALLOW ? "allow (pass to ztunnel)" : "DENY");
        if (k.lookup.step > 0)
            o << " via lookup " << k.lookup.step << " {peer " << k.lookup.key.peer_identity
              << ", port " << k.lookup.key.port << "}, rule " << k.lookup.rule_id << " (" << k.rule
              << ")";
        else
            o << " (no entry: default)";
        o << "\n";
    }
    return o.str();
}

}  // namespace sluice::policies
