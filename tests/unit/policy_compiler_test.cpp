#include <gtest/gtest.h>

#include "policies/compiler.h"
#include "policies/evaluate.h"
#include "policies/identity.h"
#include "policies/kernel_model.h"
#include "policies/registry.h"
#include "tests/unit/policy_test_util.h"

namespace sluice::policies {
namespace {

Pod pod(const std::string& ns, const std::string& name, const std::string& ip, Labels labels = {}) {
    Pod p;
    p.namespace_name = ns;
    p.name = name;
    p.service_account = name;
    p.labels = std::move(labels);
    p.addresses = {*datapath::parse_ip(ip)};
    return p;
}

PolicySet policies_from(const std::string& yaml) {
    std::vector<Diagnostic> d;
    auto set = test::parse_text(yaml, d);
    EXPECT_FALSE(has_errors(d));
    return set;
}

const char* kDenyNamespace = R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-b, namespace: a}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [b]}}], to: [{operation: {ports: ["80"]}}]}]
)";

TEST(StableIdAllocator, KeepsIdsAndResolvesCollisions) {
    StableIdAllocator tiny(10, 13);  // four ids: collisions are certain
    auto first = tiny.assign({"a", "b", "c"}, {});
    ASSERT_EQ(first.size(), 3u);
    std::set<uint32_t> ids;
    for (auto& [k, v] : first) {
        EXPECT_GE(v, 10u);
        EXPECT_LE(v, 13u);
        ids.insert(v);
    }
    EXPECT_EQ(ids.size(), 3u);
    auto second = tiny.assign({"c", "d", "b", "a"}, first);
    for (auto& [k, v] : first)
        EXPECT_EQ(second.at(k), v) << k;
    EXPECT_THROW(tiny.assign({"a", "b", "c", "d", "e"}, {}), std::length_error);
}

TEST(PolicyCompiler, DeterministicAndStableAcrossRecompiles) {
    Registry r;
    r.pods = {pod("a", "x", "198.18.0.2"), pod("b", "y", "198.18.0.3")};
    const auto set = policies_from(kDenyNamespace);
    const auto c1 = compile(set, r);
    const auto c2 = compile(set, r);
    EXPECT_EQ(c1.kernel_json(), c2.kernel_json());
    EXPECT_EQ(c1.ztunnel_json(), c2.ztunnel_json());

    // A new pod and namespace must not move existing ids.
    Registry r2 = r;
    r2.pods.push_back(pod("c", "z", "198.18.0.4"));
    const IdState prev = c1.id_state();
    CompileOptions o;
    o.previous = &prev;
    const auto c3 = compile(set, r2, o);
    for (const auto& [key, id] : prev.identities)
        EXPECT_EQ(c3.id_state().identities.at(key), id);
    for (const auto& [key, id] : prev.endpoints)
        EXPECT_EQ(c3.id_state().endpoints.at(key), id);
    EXPECT_EQ(c1.rule_id("AuthorizationPolicy a/deny-b", 0),
              c3.rule_id("AuthorizationPolicy a/deny-b", 0));
}

TEST(PolicyCompiler, NamespaceDenyIsDecidedInTheKernel) {
    Registry r;
    r.pods = {pod("a", "x", "198.18.0.2"), pod("b", "y", "198.18.0.3"),
              pod("c", "w", "198.18.0.4")};
    const auto c = compile(policies_from(kDenyNamespace), r);
    ASSERT_FALSE(has_errors(c.diagnostics));
    KernelModel m(c.kernel);
    const uint32_t ep = m.endpoint_by_pod("a/x")->value.endpoint_id;
    const uint32_t id_b = m.identity_of(*datapath::parse_ip("198.18.0.3"));
    const uint32_t id_c = m.identity_of(*datapath::parse_ip("198.18.0.4"));
    EXPECT_GE(id_b, kFirstAllocatedIdentity);
    auto deny = m.lookup(ep, id_b, 80, 6, SLUICE_DIR_INGRESS);
    EXPECT_EQ(deny.verdict, SLUICE_VERDICT_DENY);
    EXPECT_EQ(deny.rule_id, c.rule_id("AuthorizationPolicy a/deny-b", 0));
    EXPECT_EQ(m.lookup(ep, id_b, 81, 6, SLUICE_DIR_INGRESS).verdict, SLUICE_VERDICT_ALLOW);
    EXPECT_EQ(m.lookup(ep, id_c, 80, 6, SLUICE_DIR_INGRESS).verdict, SLUICE_VERDICT_ALLOW);
    EXPECT_EQ(m.lookup(ep, SLUICE_IDENTITY_WORLD, 80, 6, SLUICE_DIR_INGRESS).verdict,
              SLUICE_VERDICT_ALLOW);
    // Only what differs from the default is stored: one entry for {b, 80}.
    EXPECT_EQ(c.kernel.policy.size(), 1u) << c.kernel_json().dump();
}

TEST(PolicyCompiler, IpBlocksGetCidrIdentitiesAndPodsInsideThemAreMarked) {
    Registry r;
    r.pods = {pod("a", "x", "198.18.0.2"), pod("b", "y", "10.1.0.3")};
    const auto c = compile(policies_from(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-corp, namespace: a}
spec:
  rules: [{from: [{source: {ipBlocks: [10.0.0.0/8]}}]}]
)"),
                           r);
    KernelModel m(c.kernel);
    const uint32_t ep = m.endpoint_by_pod("a/x")->value.endpoint_id;
    auto verdict = [&](const char* ip) {
        return m.lookup(ep, m.identity_of(*datapath::parse_ip(ip)), 443, 6, SLUICE_DIR_INGRESS)
            .verdict;
    };
    EXPECT_EQ(verdict("10.9.9.9"), SLUICE_VERDICT_ALLOW);   // the CIDR identity
    EXPECT_EQ(verdict("10.1.0.3"), SLUICE_VERDICT_ALLOW);   // a pod inside the CIDR
    EXPECT_EQ(verdict("192.0.2.1"), SLUICE_VERDICT_DENY);   // world
    EXPECT_EQ(verdict("198.18.0.2"), SLUICE_VERDICT_DENY);  // a pod outside
}

TEST(PolicyCompiler, PrincipalRulesAreLeftToZtunnel) {
    Registry r;
    r.pods = {pod("a", "x", "198.18.0.2"), pod("b", "y", "198.18.0.3")};
    const auto c = compile(policies_from(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: a}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/b/sa/y]}}], to: [{operation: {ports: ["80"]}}]}]
)"),
                           r);
    KernelModel m(c.kernel);
    const uint32_t ep = m.endpoint_by_pod("a/x")->value.endpoint_id;
    const uint32_t id_b = m.identity_of(*datapath::parse_ip("198.18.0.3"));
    // Port 80 might match (principal unknown in the kernel): pass to ztunnel.
    EXPECT_EQ(m.lookup(ep, id_b, 80, 6, SLUICE_DIR_INGRESS).verdict, SLUICE_VERDICT_ALLOW);
    // Port 81 cannot match any ALLOW rule: denied in the kernel.
    auto d = m.lookup(ep, id_b, 81, 6, SLUICE_DIR_INGRESS);
    EXPECT_EQ(d.verdict, SLUICE_VERDICT_DENY);
    EXPECT_EQ(d.rule_id, kRuleIdNoAllowMatched);
    Connection conn{"spiffe://cluster.local/ns/b/sa/y", *datapath::parse_ip("198.18.0.3"), "a/x",
                    80};
    EXPECT_EQ(evaluate(c, conn).verdict, Verdict::Allow);
    conn.peer_identity = "spiffe://cluster.local/ns/b/sa/other";
    EXPECT_EQ(evaluate(c, conn).verdict, Verdict::Deny);
}

// A field this build does not know inside a rule (here the typo `namepaces`) is not dropped:
// dropped, it would turn the ALLOW rule into allow-all. An ALLOW rule with it matches nothing;
// a DENY rule is enforced without it (denies more), as with L7 fields. In the kernel as in
// ztunnel's evaluation.
TEST(PolicyCompiler, AnUnknownFieldInARuleFailsClosed) {
    Registry r;
    r.pods = {pod("a", "x", "198.18.0.2"), pod("b", "y", "198.18.0.3")};
    std::vector<Diagnostic> d;
    const auto allow = test::parse_text(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: a}
spec:
  rules: [{from: [{source: {namepaces: [b]}}]}]
)",
                                        d);
    ASSERT_FALSE(has_errors(d));
    ASSERT_EQ(d.size(), 1u);
    EXPECT_NE(d[0].message.find("unknown field 'namepaces'"), std::string::npos) << d[0].message;
    EXPECT_NE(d[0].message.find("matches nothing"), std::string::npos) << d[0].message;
    const auto c = compile(allow, r);
    Connection conn{"spiffe://cluster.local/ns/b/sa/y", *datapath::parse_ip("198.18.0.3"), "a/x",
                    80};
    EXPECT_EQ(evaluate(c, conn).verdict, Verdict::Deny);
    KernelModel m(c.kernel);
    const uint32_t ep = m.endpoint_by_pod("a/x")->value.endpoint_id;
    EXPECT_EQ(
        m.lookup(ep, m.identity_of(*datapath::parse_ip("198.18.0.3")), 80, 6, SLUICE_DIR_INGRESS)
            .verdict,
        SLUICE_VERDICT_DENY);

    const auto deny = compile(policies_from(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db, namespace: a}
spec:
  action: DENY
  rules: [{from: [{source: {notNamepaces: [a]}}], to: [{operation: {ports: ["80"]}}]}]
)"),
                              r);
    EXPECT_EQ(evaluate(deny, conn).verdict, Verdict::Deny);  // without the unknown: all sources
    conn.port = 81;
    EXPECT_EQ(evaluate(deny, conn).verdict, Verdict::Allow);  // its ports still hold
}

// `when` conditions on the L4 keys hold together with the rule's from/to (AND). A principal
// condition is ztunnel's alone; a destination.ip condition on a dual-stack pod that names one of
// its addresses is decided per connection by ztunnel, and the kernel, which sees only the pod,
// leaves it through.
TEST(PolicyCompiler, WhenConditionsOnL4KeysAreEvaluated) {
    Registry r;
    Pod dual = pod("a", "x", "198.18.0.2");
    dual.addresses.push_back(*datapath::parse_ip("2001:db8::2"));
    r.pods = {dual, pod("b", "y", "198.18.0.3"), pod("c", "z", "198.18.0.4")};
    std::vector<Diagnostic> d;
    const auto set = test::parse_text(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-b-v6, namespace: a}
spec:
  action: DENY
  rules:
  - when:
    - {key: source.namespace, values: [b]}
    - {key: destination.ip, values: ["2001:db8::/32"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: a}
spec:
  rules:
  - from: [{source: {namespaces: [b, c]}}]
    when:
    - {key: destination.port, notValues: ["22"]}
    - {key: source.ip, notValues: ["198.18.0.4/32"]}
  - when:
    - {key: source.principal, values: [cluster.local/ns/c/sa/z]}
    - {key: "request.headers[x-user]", values: [admin]}
)",
                                      d);
    ASSERT_FALSE(has_errors(d)) << (d.empty() ? "" : d[0].to_string());
    const auto c = compile(set, r);
    ASSERT_FALSE(has_errors(c.diagnostics));
    ASSERT_EQ(set.authorization[1].rules[1].l7_fields,
              (std::vector<std::string>{"when.request.headers[x-user]"}));
    const IpAddress b = *datapath::parse_ip("198.18.0.3"), cz = *datapath::parse_ip("198.18.0.4");
    const IpAddress v4 = *datapath::parse_ip("198.18.0.2"), v6 = *datapath::parse_ip("2001:db8::2");
    auto ztunnel = [&](const IpAddress& src, const std::string& ns, uint16_t port,
                       const IpAddress& dst) {
        Connection conn{"spiffe://cluster.local/ns/" + ns + "/sa/" + (ns == "b" ? "y" : "z"), src,
                        "a/x", port, dst};
        return evaluate(c, conn).verdict;
    };
    EXPECT_EQ(ztunnel(b, "b", 80, v4), Verdict::Allow);
    EXPECT_EQ(ztunnel(b, "b", 80, v6), Verdict::Deny);   // destination.ip
    EXPECT_EQ(ztunnel(b, "b", 22, v4), Verdict::Deny);   // destination.port notValues
    EXPECT_EQ(ztunnel(cz, "c", 80, v4), Verdict::Deny);  // source.ip notValues; rule 2 is L7
    KernelModel m(c.kernel);
    const uint32_t ep = m.endpoint_by_pod("a/x")->value.endpoint_id;
    auto kernel = [&](const IpAddress& src, uint16_t port) {
        return m.lookup(ep, m.identity_of(src), port, 6, SLUICE_DIR_INGRESS).verdict;
    };
    EXPECT_EQ(kernel(b, 80), SLUICE_VERDICT_ALLOW);  // the v6 DENY is ztunnel's
    EXPECT_EQ(kernel(b, 22), SLUICE_VERDICT_DENY);
    EXPECT_EQ(kernel(cz, 80), SLUICE_VERDICT_DENY);

    // explain: as ztunnel decides a connection to one address with --to-ip; without it, DENY
    // when a connection to one of the pod's addresses is denied, and a note says so.
    auto explained = [&](const std::string& to_ip) {
        return explain(c, {.from = "b/y", .to = "a/x", .to_ip = to_ip, .port = 80});
    };
    EXPECT_EQ(explained("198.18.0.2").ztunnel.verdict, Verdict::Allow);
    EXPECT_EQ(explained("2001:db8::2").ztunnel.verdict, Verdict::Deny);
    const Explanation any = explained("");
    EXPECT_EQ(any.ztunnel.verdict, Verdict::Deny);
    EXPECT_NE(any.text().find("depends on the address connected to (ALLOW to 198.18.0.2, DENY "
                              "to 2001:db8::2)"),
              std::string::npos)
        << any.text();
    EXPECT_EQ(explain(c, {.from = "b/y", .to = "a/x", .port = 22}).text().find("depends"),
              std::string::npos)
        << "no note when every address gets the same verdict";
    const Explanation wrong = explained("198.18.0.3");
    EXPECT_FALSE(wrong.connection.has_value());
    EXPECT_NE(wrong.text().find("--to-ip 198.18.0.3: not an address of a/x"), std::string::npos)
        << wrong.text();

    // A condition names a key and values or notValues.
    for (const char* when : {"[{values: [b]}]", "[{key: source.namespace}]",
                             "[{key: source.namespace, values: []}]"}) {
        std::vector<Diagnostic> bad;
        test::parse_text(std::string(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: a}
spec:
  rules: [{when: )") + when + "}]\n",
                         bad);
        EXPECT_TRUE(has_errors(bad)) << when;
    }
}

// An empty source or operation is refused, as Istio refuses it: it would match anything.
TEST(PolicyCompiler, AnEmptySourceOrOperationIsAnError) {
    for (const char* rule : {"{from: [{source: {}}]}", "{to: [{operation: {}}]}",
                             "{from: [{source: {namespaces: []}}]}",
                             "{to: [{operation: {ports: [], notPorts: []}}]}"}) {
        std::vector<Diagnostic> d;
        test::parse_text(std::string("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                     "metadata: {name: p, namespace: a}\nspec:\n  rules: [") +
                             rule + "]\n",
                         d);
        ASSERT_TRUE(has_errors(d)) << rule;
        EXPECT_NE(d[0].message.find("must not be empty"), std::string::npos) << d[0].message;
    }
}

// AUDIT decides nothing: such a policy is left out with a warning (Istio's ztunnel ignores it
// too), not refused, which would hold back every later change of the set.
TEST(PolicyCompiler, AnAuditPolicyIsLeftOutNotRefused) {
    std::vector<Diagnostic> d;
    const auto set = test::parse_text(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: a}
spec:
  action: AUDIT
  rules: [{from: [{source: {namespaces: [b]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-b, namespace: a}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [b]}}]}]
)",
                                      d);
    ASSERT_FALSE(has_errors(d));
    ASSERT_EQ(set.authorization.size(), 1u);
    EXPECT_EQ(set.authorization[0].meta.name, "deny-b");
    ASSERT_EQ(d.size(), 1u);
    EXPECT_NE(d[0].message.find("AUDIT"), std::string::npos) << d[0].message;
}

// The registry gives no identity to the address of a host-network pod (its node's) or of a
// finished pod (a new pod may hold it now).
TEST(PolicyCompiler, HostNetworkAndFinishedPodsGiveNoAddressAnIdentity) {
    std::vector<SourceDocument> docs;
    std::vector<Diagnostic> d;
    for (const char* text : {R"(apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system}
spec: {hostNetwork: true}
status: {phase: Running, podIP: 198.18.255.1})",
                             R"(apiVersion: v1
kind: Pod
metadata: {name: job, namespace: a}
spec: {}
status: {phase: Succeeded, podIPs: [{ip: 198.18.0.9}]})",
                             R"(apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a}
spec: {}
status: {phase: Running, podIPs: [{ip: 198.18.0.2}]})"}) {
        docs.push_back(
            {.file = "registry.yaml", .index = int(docs.size()), .node = YAML::Load(text)});
    }
    const Registry r = parse_registry(docs, d);
    ASSERT_FALSE(has_errors(d));
    ASSERT_EQ(r.pods.size(), 3u);
    for (const auto& p : r.pods)
        EXPECT_EQ(p.addresses.empty(), p.name != "web") << p.name;
}

TEST(PolicyCompiler, NamespaceInTwoBoundariesBySelectorIsAnError) {
    Registry r;
    r.namespaces = {{"a", {{"tenant", "x"}}}};
    r.pods = {pod("a", "x", "198.18.0.2")};
    const auto c = compile(policies_from(R"(apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: one}
spec: {namespaces: [a]}
---
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: two}
spec: {namespaceSelector: {matchLabels: {tenant: x}}}
)"),
                           r);
    ASSERT_TRUE(has_errors(c.diagnostics));
    EXPECT_NE(c.diagnostics[0].message.find("two isolation boundaries"), std::string::npos);
}

TEST(PolicyCompiler, TwoModelRoutesForOneModelAreAnError) {
    Registry r;
    auto route = [](const std::string& name, const std::string& model) {
        return "apiVersion: sluice.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: " + name +
               ", namespace: ai}\nspec:\n  model: " + model +
               "\n  backends: [{host: 198.18.1.5, port: 8000}]\n";
    };
    // "b" comes first in the file; the error still names the route first by (namespace, name).
    const auto c = compile(policies_from(route("b", "gpt-4o") + "---\n" + route("a", "gpt-4o") +
                                         "---\n" + route("c", "gpt-4o-mini")),
                           r);
    ASSERT_EQ(error_count(c.diagnostics), 1u);
    EXPECT_EQ(c.diagnostics[0].message,
              "model 'gpt-4o' is already routed by ModelRoute ai/a; a model has one ModelRoute");
    EXPECT_EQ(c.diagnostics[0].where.line, 1) << "reported at ModelRoute ai/b, the first document";

    const auto fine = compile(policies_from(route("a", "gpt-4o") + "---\n" + route("c", "m2")), r);
    EXPECT_FALSE(has_errors(fine.diagnostics));
    EXPECT_EQ(fine.waypoint["modelRoutes"].size(), 2u);
}

}  // namespace
}  // namespace sluice::policies
