#include <gtest/gtest.h>

#include "policies/loader.h"
#include "policies/validator.h"
#include "tests/unit/policy_test_util.h"

namespace sluice::policies {
namespace {

using test::parse_text;

std::string all(const std::vector<Diagnostic>& d) {
    std::string s;
    for (const auto& x : d)
        s += x.to_string() + "\n";
    return s;
}

TEST(PolicyParser, ParsesAuthorizationPolicyWithIstioFields) {
    std::vector<Diagnostic> d;
    auto set = parse_text(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: ns1}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
    - from:
        - source:
            principals: [cluster.local/ns/a/sa/b]
            notNamespaces: [x]
            ipBlocks: [10.0.0.0/8, "2001:db8::/32"]
      to:
        - operation: {ports: ["5432", 6379], notPorts: ["22"]}
)",
                          d);
    ASSERT_FALSE(has_errors(d)) << all(d);
    ASSERT_EQ(set.authorization.size(), 1u);
    const auto& p = set.authorization[0];
    EXPECT_EQ(p.meta.ref(), "AuthorizationPolicy ns1/p");
    EXPECT_EQ(p.action, Action::Deny);
    ASSERT_TRUE(p.selector);
    EXPECT_EQ(p.selector->at("app"), "db");
    ASSERT_EQ(p.rules.size(), 1u);
    EXPECT_EQ(p.rules[0].from[0].ip_blocks.size(), 2u);
    EXPECT_EQ(p.rules[0].to[0].ports, (std::vector<uint16_t>{5432, 6379}));
    EXPECT_EQ(p.rules[0].where.line, 8);
}

TEST(PolicyParser, ErrorsArePositionedAndNamed) {
    struct Case {
        const char* yaml;
        const char* expect;  // substring of the one error
        int line;
    };
    const Case cases[] = {
        {"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
         "spec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.300/8]\n",
         "is not an IP address or CIDR", 8},
        {"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
         "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"8000-8080\"]\n",
         "port range", 8},
        {"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
         "spec:\n  action: MAYBE\n",
         "not one of ALLOW, DENY", 5},
        {"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
         "spec:\n  rules: {a: 1}\n",
         "expected a list", 5},
        {"apiVersion: security.istio.io/v2\nkind: AuthorizationPolicy\nmetadata: {name: p}\n",
         "not supported for AuthorizationPolicy", 1},
        {"kind: [unclosed\n", "YAML syntax", 2},
        // yaml-cpp 0.7 would allocate without bound on this; we refuse it first.
        {"- a\n  , x\n", "cannot start with ','", 2},
        {"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\n"
         "spec:\n  portLevelMtls:\n    8080: {mode: STRICT}\n",
         "needs a non-empty spec.selector", 5},
        {"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: "
         "Bad_Name}\n",
         "not a valid name", 3},
        {"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
         "spec:\n  rules:\n  - to:\n    - operation:\n        ports: [\"70000\"]\n",
         "outside 1..65535", 8},
    };
    for (const auto& c : cases) {
        std::vector<Diagnostic> d;
        auto set = parse_text(c.yaml, d);
        ASSERT_EQ(error_count(d), 1u) << c.yaml << all(d);
        const auto it = std::find_if(d.begin(), d.end(),
                                     [](const auto& x) { return x.severity == Severity::Error; });
        EXPECT_NE(it->message.find(c.expect), std::string::npos) << all(d);
        EXPECT_EQ(it->where.line, c.line) << all(d);
        EXPECT_EQ(it->where.file, "test.yaml");
        EXPECT_EQ(set.authorization.size(), 0u);
    }
}

TEST(PolicyParser, UnknownKindsAndFieldsAreNamedWarnings) {
    std::vector<Diagnostic> d;
    auto set = parse_text(R"(apiVersion: v1
kind: ConfigMap
metadata: {name: x}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: a}
spec:
  rules:
  - to:
    - operation:
        methods: [GET]
)",
                          d);
    EXPECT_FALSE(has_errors(d)) << all(d);
    EXPECT_NE(all(d).find("unknown kind 'ConfigMap'"), std::string::npos) << all(d);
    ASSERT_EQ(set.authorization.size(), 1u);
    EXPECT_EQ(set.authorization[0].rules[0].l7_fields,
              (std::vector<std::string>{"to.operation.methods"}));
    auto v = validate(set);
    ASSERT_EQ(v.size(), 1u);
    EXPECT_NE(v[0].message.find("requires a waypoint"), std::string::npos);
    EXPECT_NE(v[0].message.find("matches nothing"), std::string::npos);
}

// Outside the rules, a field the parser does not know could reverse a security policy: these
// misspellings would read as an ALLOW policy, a DENY policy without rules, and a namespace-wide
// policy. Each is an error at its key, so the whole set is refused and the last good one stays.
// In sluice's own kinds every unknown field is an error.
TEST(PolicyParser, UnknownFieldsOutsideRulesOfSecurityAndSluiceKindsAreErrors) {
    struct Case {
        const char* spec;
        const char* message;
    };
    const Case cases[] = {
        {"  actoin: DENY\n  rules:\n  - from:\n    - source: {namespaces: [b]}\n",
         "t.yaml:5:3: error: unknown field 'actoin' in spec"},
        {"  action: DENY\n  rule:\n  - from:\n    - source: {namespaces: [b]}\n",
         "t.yaml:6:3: error: unknown field 'rule' in spec"},
        {"  selector: {matchLabel: {app: x}}\n  action: DENY\n",
         "t.yaml:5:14: error: unknown field 'matchLabel' in spec.selector"},
    };
    for (const auto& c : cases) {
        std::vector<Diagnostic> d;
        auto set = parse_text(std::string("apiVersion: security.istio.io/v1\n"
                                          "kind: AuthorizationPolicy\n"
                                          "metadata: {name: p, namespace: a}\n"
                                          "spec:\n") +
                                  c.spec,
                              d, "t.yaml");
        EXPECT_TRUE(has_errors(d)) << all(d);
        EXPECT_NE(all(d).find(c.message), std::string::npos) << all(d);
        EXPECT_TRUE(set.authorization.empty());
    }
    std::vector<Diagnostic> d;
    auto set = parse_text(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p, namespace: a}
spec:
  mtls: {mdoe: STRICT}
---
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: b}
spec:
  namespaces: [a]
  allowFrom:
  - namespaces: [c]
    port: [80]
)",
                          d, "t.yaml");
    EXPECT_NE(all(d).find("t.yaml:5:10: error: unknown field 'mdoe' in spec.mtls"),
              std::string::npos)
        << all(d);
    EXPECT_NE(all(d).find("t.yaml:14:5: error: unknown field 'port' in spec.allowFrom[0]"),
              std::string::npos)
        << all(d);
    EXPECT_TRUE(set.peer_authentication.empty());
    EXPECT_TRUE(set.boundaries.empty());

    // sluice's own kinds: this build knows every field, so any other is a typo.
    d.clear();
    set = parse_text(R"(apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: t, namespace: a}
spec:
  tenant: {header: x-tenant}
  limits: {tokensPerMinute: 1000, requestsPerMinut: 10}
)",
                     d, "t.yaml");
    EXPECT_NE(all(d).find("t.yaml:6:35: error: unknown field 'requestsPerMinut' in spec.limits"),
              std::string::npos)
        << all(d);
    EXPECT_TRUE(has_errors(d));  // the whole set is refused; the last good one stays

    // At the document's top level and in metadata too: `Spec` would leave a STRICT
    // PeerAuthentication with no mode, `namespce` would put it in `default`.
    d.clear();
    parse_text(R"(apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p, namespce: prod, labels: {a: b}}
Spec: {mtls: {mode: STRICT}}
)",
               d, "t.yaml");
    EXPECT_NE(all(d).find("t.yaml:4:1: error: unknown field 'Spec' in the document"),
              std::string::npos)
        << all(d);
    EXPECT_NE(all(d).find("t.yaml:3:21: error: unknown field 'namespce' in metadata"),
              std::string::npos)
        << all(d);
    EXPECT_EQ(all(d).find("labels"), std::string::npos) << all(d);
}

TEST(PolicyParser, DuplicatesAndBoundaryConflictsAreErrors) {
    std::vector<Diagnostic> d;
    auto set = parse_text(R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: a}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: a}
---
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: one}
spec: {namespaces: [a]}
---
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: two}
spec:
  namespaces: [a]
  allowFrom: [{boundaries: [three]}]
)",
                          d);
    EXPECT_FALSE(has_errors(d)) << all(d);
    auto v = validate(set);
    EXPECT_EQ(error_count(v), 3u) << all(v);
    EXPECT_NE(all(v).find("duplicate AuthorizationPolicy a/p (first defined at test.yaml:1:1)"),
              std::string::npos)
        << all(v);
    EXPECT_NE(all(v).find("two isolation boundaries"), std::string::npos);
    EXPECT_NE(all(v).find("unknown boundary 'three'"), std::string::npos);
}

TEST(PolicyParser, WaypointKindsAreValidated) {
    std::vector<Diagnostic> d;
    auto set = parse_text(R"(apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: b, namespace: n}
spec:
  tenant: {namespace: t}
  limits: {tokensPerMinute: 0, maxConcurrent: 4}
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: r, namespace: n}
spec:
  model: m
  timeoutSeconds: 5
  backends: [{host: h, port: 80}]
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: ok, namespace: n}
spec:
  model: m
  backends: [{host: h, port: 80}]
)",
                          d);
    EXPECT_EQ(error_count(d), 2u) << all(d);
    EXPECT_NE(all(d).find("spec.limits.tokensPerMinute: 0 is outside"), std::string::npos);
    EXPECT_NE(all(d).find("spec.timeoutSeconds: 5 is outside 30..300"), std::string::npos);
    ASSERT_EQ(set.model_routes.size(), 1u);
    EXPECT_EQ(set.model_routes[0].spec["timeoutSeconds"], 60);
}

TEST(PolicyParser, WaypointKindsTakeApiKeysCostTiersRetriesAndLoadBalancing) {
    std::vector<Diagnostic> d;
    const std::string digest(64, 'a');
    auto set =
        parse_text(R"(apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: team-a, namespace: ai}
spec:
  tenant: {apiKey: {name: team-a, sha256: [")" +
                       digest +
                       R"(", "B94D27B9934D3E08A52E52D7DA7DABFAC484EFE37A5380EE9088F7ACE2EFCDE9"]}}
  limits: {requestsPerMinute: 2}
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: big, namespace: ai}
spec:
  model: big
  backends: [{host: llm, port: 8000, model: big-v2}]
  costTier: {maxPromptTokens: 200, maxOutputTokens: 64, model: small}
  retries: {attempts: 1, backoffMilliseconds: 10}
  loadBalancer:
    policy: prefix-affinity
    prefixBytes: 256
    outlierDetection: {consecutiveFailures: 2, ejectionSeconds: 5}
    loadMetrics: {path: /metrics}
)",
                   d);
    ASSERT_FALSE(has_errors(d)) << all(d);
    EXPECT_TRUE(d.empty()) << all(d);
    ASSERT_EQ(set.token_budgets.size(), 1u);
    const auto& key = set.token_budgets[0].spec["tenant"]["apiKey"];
    EXPECT_EQ(key["name"], "team-a");
    EXPECT_EQ(key["header"], "authorization");
    ASSERT_EQ(key["sha256"].size(), 2u);
    EXPECT_EQ(key["sha256"][1], "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9")
        << "digests are compared in lower case";
    ASSERT_EQ(set.model_routes.size(), 1u);
    const auto& spec = set.model_routes[0].spec;
    EXPECT_EQ(spec["backends"][0]["model"], "big-v2");
    EXPECT_EQ(spec["costTier"]["model"], "small");
    EXPECT_EQ(spec["costTier"]["maxOutputTokens"], 64);
    EXPECT_EQ(spec["retries"]["attempts"], 1);
    EXPECT_EQ(spec["loadBalancer"]["policy"], "prefix-affinity");
    EXPECT_EQ(spec["loadBalancer"]["outlierDetection"]["ejectionSeconds"], 5);
    EXPECT_EQ(spec["loadBalancer"]["loadMetrics"]["intervalMilliseconds"], 1000);

    d.clear();
    set = parse_text(R"(apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: short-digest, namespace: ai}
spec:
  tenant: {apiKey: {name: t, sha256: [abc]}}
  limits: {requestsPerMinute: 2}
---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: no-name, namespace: ai}
spec:
  tenant: {apiKey: {sha256: [")" +
                         digest + R"("]}}
  limits: {requestsPerMinute: 2}
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: r, namespace: ai}
spec:
  model: m
  backends: [{host: h, port: 80}]
  costTier: {maxPromptTokens: 10}
  retries: {attempts: 11}
  loadBalancer: {policy: round-robin}
)",
                     d);
    EXPECT_EQ(error_count(d), 5u) << all(d);
    EXPECT_NE(all(d).find("test.yaml:5:39: error: spec.tenant.apiKey.sha256[0]: not a SHA-256 "
                          "digest (64 hex digits)"),
              std::string::npos)
        << all(d);
    EXPECT_NE(all(d).find("spec.tenant.apiKey: name and at least one sha256 digest are required"),
              std::string::npos);
    EXPECT_NE(all(d).find("spec.costTier: model and maxPromptTokens are required"),
              std::string::npos);
    EXPECT_NE(all(d).find("spec.retries.attempts: 11 is outside 0..10"), std::string::npos);
    EXPECT_NE(all(d).find("test.yaml:23:26: error: spec.loadBalancer.policy: 'round-robin' is not "
                          "one of least-request, peak-ewma, prefix-affinity"),
              std::string::npos)
        << all(d);
    EXPECT_TRUE(set.token_budgets.empty());
    EXPECT_TRUE(set.model_routes.empty());
}

TEST(PolicyParser, TokenBudgetConcurrencyLimit) {
    std::vector<Diagnostic> d;
    auto set = parse_text(R"(apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: only-concurrency, namespace: ai}
spec:
  tenant: {header: tenant-a}
  limits: {maxConcurrent: 3}
---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: too-many, namespace: ai}
spec:
  tenant: {header: tenant-b}
  limits: {maxConcurrent: 2000000}
)",
                          d);
    EXPECT_EQ(d.size(), 1u) << all(d);
    EXPECT_NE(all(d).find("test.yaml:13:27: error: spec.limits.maxConcurrent: 2000000 is outside "
                          "1..1000000"),
              std::string::npos)
        << all(d);
    ASSERT_EQ(set.token_budgets.size(), 1u);
    EXPECT_EQ(set.token_budgets[0].spec["limits"]["maxConcurrent"], 3);
}

TEST(PolicyParser, HostileInputGivesErrorsNotCrashes) {
    const std::string deep(100000, '[');
    std::string wide =
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: "
        "{name: p}\nspec:\n  rules:\n";
    for (int i = 0; i < 2000; ++i)
        wide += "  - to: [{operation: {ports: [\"" + std::to_string(i % 65535 + 1) + "\"]}}]\n";
    for (const std::string& text :
         {deep, wide, std::string("\0\xff\xfe", 3), std::string("- 1\n- 2\n"),
          std::string("a: *unknown\n"), std::string("{apiVersion: 1, kind: 2, metadata: 3}")}) {
        std::vector<Diagnostic> d;
        EXPECT_NO_THROW(parse_text(text, d));
    }
    // The leading-comma guard must not refuse valid YAML: inside a block scalar or a flow list.
    for (const std::string& text :
         {std::string("k: |\n  , fine in a block scalar\n"), std::string("k: [a\n  , b]\n")}) {
        std::vector<Diagnostic> d;
        EXPECT_EQ(parse_yaml({"test.yaml", text}, d).size(), 1u);
        EXPECT_FALSE(has_errors(d)) << text << all(d);
    }
    std::vector<Diagnostic> d;
    parse_yaml({"test.yaml", "note: a[b\n, x\n"}, d);  // '[' inside a plain scalar opens no flow
    EXPECT_TRUE(has_errors(d));
}

TEST(PolicyLoader, ReadsConfigMapDirectorySkippingKubeletEntries) {
    test::TempDir dir;
    dir.write("..2026_01_01/a.yaml",
              "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n");
    std::filesystem::create_directory_symlink("..2026_01_01", dir.path() / "..data");
    std::filesystem::create_symlink("..data/a.yaml", dir.path() / "a.yaml");
    dir.write("README.txt", "not yaml");
    auto loaded = load_policies(dir.path().string());
    EXPECT_TRUE(loaded.ok()) << all(loaded.diagnostics);
    ASSERT_EQ(loaded.policies->authorization.size(), 1u);
    EXPECT_EQ(loaded.policies->authorization[0].meta.where.file, (dir.path() / "a.yaml").string());
}

}  // namespace
}  // namespace sluice::policies
