// ModelRoute backends named by a Kubernetes Service: resolution against the registry
// (policies/service_backend.h), the pools it gives the waypoint, and the real waypoint
// following EndpointSlice changes in its --registry-dir.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include "policies/compiler.h"
#include "policies/loader.h"
#include "policies/registry.h"
#include "policies/service_backend.h"
#include "tests/waypoint/harness.h"
#include "waypoint/policy_view.h"

namespace sluice::waypoint::test {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using policies::kDefaultClusterDomain;
using policies::resolve_service_backend;

// Writes `text` to dir/file through a rename, so the watcher never reads half a file.
void writeFile(const std::filesystem::path& dir, const std::string& file, const std::string& text) {
    const auto tmp = dir / ("." + file + ".tmp");
    std::ofstream(tmp, std::ios::trunc) << text;
    std::filesystem::rename(tmp, dir / file);
}

policies::Registry registryOf(const std::string& yaml) {
    TempDir dir;
    writeFile(dir.path, "registry.yaml", yaml);
    std::vector<policies::Diagnostic> diagnostics;
    auto registry = policies::load_registry(dir.path.string(), diagnostics);
    for (const auto& d : diagnostics)
        ADD_FAILURE() << d.message;
    return registry;
}

std::string serviceDoc(const std::string& ns, const std::string& name, const std::string& ports) {
    return "apiVersion: v1\nkind: Service\nmetadata: {name: " + name + ", namespace: " + ns +
           "}\nspec:\n  selector: {app: " + name + "}\n  ports: " + ports + "\n---\n";
}

struct SliceEndpointDoc {
    std::string address;
    std::string pod;
    std::string ready = "true";  // "" leaves conditions out
};

std::string sliceDoc(const std::string& ns, const std::string& service, const std::string& slice,
                     const std::string& ports, const std::vector<SliceEndpointDoc>& endpoints) {
    std::string out =
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: " + slice +
        "\n  namespace: " + ns + "\n  labels: {kubernetes.io/service-name: " + service + "}\n";
    out += "addressType: IPv4\nendpoints:" + std::string(endpoints.empty() ? " []\n" : "\n");
    for (const auto& e : endpoints) {
        out += "- addresses: [\"" + e.address + "\"]\n";
        if (!e.ready.empty())
            out += "  conditions: {ready: " + e.ready + "}\n";
        if (!e.pod.empty())
            out += "  targetRef: {kind: Pod, name: " + e.pod + ", namespace: " + ns + "}\n";
    }
    if (!ports.empty())
        out += "ports: " + ports + "\n";
    return out + "---\n";
}

// Service ai/llm: port 8000 → the pods' port named "http" (a named targetPort: each slice says
// which number that is), port 9090 → 9091. Pods llm-0/llm-1 in one slice, llm-2 in another
// that only serves "http", llm-3 not ready. Service other/llm: a same-named decoy.
policies::Registry llmRegistry() {
    return registryOf(serviceDoc("ai", "llm",
                                 "[{name: http, port: 8000, targetPort: http}, "
                                 "{name: metrics, port: 9090, targetPort: 9091}]") +
                      sliceDoc("ai", "llm", "llm-a",
                               "[{name: http, port: 31000}, {name: metrics, port: 9091}]",
                               {{"198.18.0.1", "llm-0"}, {"198.18.0.2", "llm-1", ""}}) +
                      sliceDoc("ai", "llm", "llm-b", "[{name: http, port: 32000}]",
                               {{"198.18.0.3", "llm-2"}, {"198.18.0.4", "llm-3", "false"}}) +
                      serviceDoc("other", "llm", "[{port: 8000}]") +
                      sliceDoc("other", "llm", "llm-x", "[{port: 8000}]", {{"198.18.9.9", "x"}}));
}

std::string serviceOf(const policies::Registry& r, const std::string& host, uint16_t port,
                      const std::string& ns, const std::string& domain = kDefaultClusterDomain) {
    const auto res = resolve_service_backend(r, host, port, ns, domain);
    return res.backend ? res.backend->service : res.error.empty() ? "none" : "error";
}

TEST(ServiceBackend, EveryNameFormResolvesRelativeToTheRouteNamespace) {
    const auto r = llmRegistry();
    EXPECT_EQ(serviceOf(r, "llm", 8000, "ai"), "ai/llm");
    EXPECT_EQ(serviceOf(r, "llm", 8000, "other"), "other/llm") << "a bare name is the route's ns";
    EXPECT_EQ(serviceOf(r, "llm.ai", 8000, "other"), "ai/llm");
    EXPECT_EQ(serviceOf(r, "llm.ai.svc", 8000, "other"), "ai/llm");
    EXPECT_EQ(serviceOf(r, "llm.ai.svc.cluster.local", 8000, "other"), "ai/llm");
    EXPECT_EQ(serviceOf(r, "llm.ai.svc.corp.example", 8000, "other", "corp.example"), "ai/llm");
    EXPECT_EQ(serviceOf(r, "llm.ai.svc.corp.example", 8000, "other"), "none")
        << "another cluster domain";
    EXPECT_EQ(serviceOf(r, "llm.ai.cluster.local", 8000, "other"), "none");
    EXPECT_EQ(serviceOf(r, "llm.nowhere", 8000, "ai"), "none");
    EXPECT_EQ(serviceOf(r, "nope", 8000, "ai"), "none");
    EXPECT_EQ(serviceOf(r, "198.18.0.1", 8000, "ai"), "none");
    EXPECT_EQ(serviceOf(r, "LLM", 8000, "ai"), "none");

    const auto res = resolve_service_backend(r, "llm.ai.svc", 8000, "x", kDefaultClusterDomain);
    ASSERT_TRUE(res.backend);
    EXPECT_EQ(res.backend->pool, "llm.ai.svc.cluster.local:8000") << "one pool per service port";
}

TEST(ServiceBackend, PortsMapByNameAndNumberAndNotReadyEndpointsAreLeftOut) {
    const auto r = llmRegistry();
    auto endpoints = [&](const std::string& host, uint16_t port, const std::string& ns) {
        const auto res = resolve_service_backend(r, host, port, ns, kDefaultClusterDomain);
        return res.backend ? res.backend->endpoints : std::vector<std::string>{"unresolved"};
    };
    // llm-1 has no conditions (ready), llm-3 is not ready, llm-2's slice has its own number.
    EXPECT_EQ(
        endpoints("llm", 8000, "ai"),
        (std::vector<std::string>{"198.18.0.1:31000", "198.18.0.2:31000", "198.18.0.3:32000"}));
    EXPECT_EQ(endpoints("llm", 9090, "ai"),
              (std::vector<std::string>{"198.18.0.1:9091", "198.18.0.2:9091"}))
        << "llm-b does not serve the metrics port";
    EXPECT_EQ(endpoints("llm", 8000, "other"), std::vector<std::string>{"198.18.9.9:8000"})
        << "an unnamed port";

    const auto wrong = resolve_service_backend(r, "llm", 8080, "ai", kDefaultClusterDomain);
    EXPECT_FALSE(wrong.backend);
    EXPECT_EQ(wrong.error, "Service ai/llm has no port 8080 (its ports: 8000, 9090)");

    // A slice without ports serves the Service's numeric targetPort; a dual-stack pod counts once.
    const auto bare = registryOf(
        serviceDoc("ai", "emb", "[{port: 80, targetPort: 8080}]") +
        sliceDoc("ai", "emb", "emb-v4", "", {{"198.18.1.1", "emb-0"}}) +
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: emb-v6\n"
        "  namespace: ai\n  labels: {kubernetes.io/service-name: emb}\naddressType: IPv6\n"
        "endpoints:\n- addresses: [\"2001:db8::1\"]\n  targetRef: {kind: Pod, name: emb-0}\n"
        "- addresses: [\"2001:db8::2\"]\n  targetRef: {kind: Pod, name: emb-1}\n");
    const auto emb = resolve_service_backend(bare, "emb", 80, "ai", kDefaultClusterDomain);
    ASSERT_TRUE(emb.backend);
    EXPECT_EQ(emb.backend->endpoints,
              (std::vector<std::string>{"198.18.1.1:8080", "[2001:db8::2]:8080"}));
}

// The compiler's waypoint view (what PolicyWatcher hands the waypoint) for `routes` over
// `registry`, made into the waypoint's pools and routes.
PolicyView viewOf(const std::string& routes, const std::string& registry) {
    TempDir policy_dir, registry_dir;
    writeFile(policy_dir.path, "routes.yaml", routes);
    writeFile(registry_dir.path, "registry.yaml", registry);
    const auto loaded =
        policies::load_and_compile(policy_dir.path.string(), registry_dir.path.string());
    for (const auto& d : loaded.diagnostics)
        ADD_FAILURE() << d.message;
    const Config base = parseConfig(
        "kind: Waypoint\nspec:\n  pools: [{name: local, "
        "endpoints: [\"127.0.0.1:1\"]}]\n");
    return makePolicyView(base, loaded.compiled->waypoint);
}

std::string modelRoute(const std::string& backends) {
    return "apiVersion: sluice.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: big, namespace: "
           "ai}\nspec:\n  model: llama\n  backends: " +
           backends + "\n";
}

// The example a reader starts from must be one the waypoint takes, not only one that compiles.
TEST(ServiceBackend, TheRagExampleIsAConfigurationTheWaypointTakes) {
    const std::string dir = std::string(SLUICE_POLICY_EXAMPLES) + "/rag-two-tenants";
    const auto loaded = policies::load_and_compile(dir + "/policies", dir + "/registry");
    ASSERT_TRUE(loaded.compiled);
    const PolicyView v =
        makePolicyView(parseConfig("kind: Waypoint\nspec: {}\n"), loaded.compiled->waypoint);
    ASSERT_EQ(v.routes.size(), 2u);
    const route::ModelRouteConfig& chat = v.routes[0];
    const std::string pool = "llm.shared-llm.svc.cluster.local:80";
    ASSERT_EQ(chat.backends.size(), 2u);
    EXPECT_EQ(chat.backends[1].model, "llama-3-8b-canary");
    ASSERT_TRUE(chat.cost_tier);
    ASSERT_EQ(chat.cost_tier->targets.size(), 1u);
    EXPECT_EQ(chat.cost_tier->targets[0].pool, pool);
    EXPECT_EQ(chat.cost_tier->targets[0].model, "llama-3-8b-small");
    ASSERT_EQ(v.pools.size(), 1u);
    EXPECT_EQ(v.pools[0].name, pool);
    EXPECT_EQ(v.pools[0].policy, LbPolicy::PrefixAffinity);
    EXPECT_EQ(v.budget.api_key_sha256.size(), 1u);
}

TEST(ServiceBackend, AServiceBackendBecomesAPoolOfItsReadyEndpoints) {
    const std::string registry =
        serviceDoc("ai", "llm", "[{name: http, port: 8000, targetPort: http}]") +
        sliceDoc("ai", "llm", "llm-a", "[{name: http, port: 31000}]",
                 {{"198.18.0.1", "llm-0"}, {"198.18.0.2", "llm-1", "false"}}) +
        serviceDoc("ai", "idle", "[{port: 8000}]") +
        sliceDoc("ai", "idle", "idle-a", "[{port: 8000}]", {});
    const PolicyView v = viewOf(modelRoute("[{host: llm, port: 8000, weight: 3}, {host: "
                                           "llm.ai.svc.cluster.local, port: 8000}, {host: idle, "
                                           "port: 8000}, {host: local, port: 1}]"),
                                registry);
    ASSERT_EQ(v.routes.size(), 1u);
    ASSERT_EQ(v.routes[0].backends.size(), 4u);
    EXPECT_EQ(v.routes[0].backends[0].pool, "llm.ai.svc.cluster.local:8000");
    EXPECT_EQ(v.routes[0].backends[0].weight, 3u);
    EXPECT_EQ(v.routes[0].backends[1].pool, "llm.ai.svc.cluster.local:8000") << "same service";
    EXPECT_EQ(v.routes[0].backends[2].pool, "idle.ai.svc.cluster.local:8000");
    EXPECT_EQ(v.routes[0].backends[3].pool, "local") << "a Waypoint pool stays a pool";
    ASSERT_EQ(v.pools.size(), 3u);
    EXPECT_EQ(v.pools[1].name, "llm.ai.svc.cluster.local:8000");
    EXPECT_EQ(v.pools[1].endpoints, std::vector<std::string>{"198.18.0.1:31000"});
    EXPECT_EQ(v.pools[1].policy, LbPolicy::LeastRequest) << "the pool defaults";
    EXPECT_TRUE(v.pools[2].endpoints.empty()) << "no ready endpoint: a valid, empty pool";
}

TEST(ServiceBackend, AnUnknownHostOrPortIsAnErrorNamingTheRouteAndHost) {
    const std::string registry = serviceDoc("ai", "llm", "[{port: 8000}]");
    auto problem = [&](const std::string& backends) {
        try {
            viewOf(modelRoute(backends), registry);
        } catch (const std::invalid_argument& e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    EXPECT_NE(problem("[{host: nope, port: 8000}]")
                  .find("ModelRoute ai/big: backend host nope is neither a pool of the Waypoint "
                        "config, an IP address nor a Service of the registry"),
              std::string::npos);
    EXPECT_NE(problem("[{host: llm.other, port: 8000}]").find("backend host llm.other "),
              std::string::npos)
        << "the Service is looked up in the namespace the host names";
    EXPECT_NE(problem("[{host: llm, port: 8080}]")
                  .find("ModelRoute ai/big: backend host llm: Service ai/llm has no port 8080"),
              std::string::npos);
}

TEST(ServiceBackend, AReplacingPoolKeepsTheStateOfEndpointsThatStay) {
    PoolConfig config{.name = "llm.ai.svc.cluster.local:8000",
                      .endpoints = {"198.18.0.1:8000", "198.18.0.2:8000"},
                      .consecutive_failures = 2};
    BackendPool old_pool(config);
    Request request{http::verb::post, "/v1/chat/completions", 11};
    RequestContext ctx{request};
    Endpoint& first = old_pool.endpoint(0);
    for (int i = 0; i < 2; ++i) {
        Endpoint* ep = old_pool.pick(ctx, &old_pool.endpoint(1));  // avoiding the other one
        ASSERT_EQ(ep, &first);
        old_pool.finish(first, false, 5ms);
    }
    ASSERT_TRUE(old_pool.ejected(first));
    Endpoint* in_flight = old_pool.pick(ctx);  // the ejected one is skipped
    ASSERT_NE(in_flight, nullptr);
    EXPECT_EQ(in_flight->name, "198.18.0.2:8000");

    config.endpoints = {"198.18.0.1:8000", "198.18.0.3:8000"};
    BackendPool new_pool(config, old_pool);
    ASSERT_EQ(new_pool.size(), 2u);
    EXPECT_TRUE(new_pool.ejected(new_pool.endpoint(0))) << "ejection survives the reload";
    EXPECT_EQ(&new_pool.endpoint(0), &first) << "one endpoint, one state";
    EXPECT_FALSE(new_pool.ejected(new_pool.endpoint(1)));
    EXPECT_EQ(new_pool.inFlight(), 1u) << "the old pool's request counts for the circuit breaker";
    old_pool.finish(*in_flight, true, 5ms);
    EXPECT_EQ(new_pool.inFlight(), 0u);
    for (int i = 0; i < 4; ++i) {
        Endpoint* ep = new_pool.pick(ctx);
        ASSERT_NE(ep, nullptr);
        EXPECT_EQ(ep->name, "198.18.0.3:8000") << "the ejected endpoint stays out";
        new_pool.finish(*ep, true, 5ms);
    }

    BackendPool empty(PoolConfig{.name = "idle"});
    EXPECT_EQ(empty.pick(ctx), nullptr) << "nothing to pick from";
}

// ---- end to end: the waypoint with --policies-dir and --registry-dir ------------------------

std::string chat(bool stream) {
    json body{{"model", "llama"},
              {"max_tokens", 5},
              {"messages", {{{"role", "user"}, {"content", "hello"}}}}};
    if (stream)
        body["stream"] = true;
    return body.dump();
}

std::string llmService(const std::vector<std::pair<const Emulator*, std::string>>& pods) {
    // One slice per pod: each emulator listens on its own port, as pods whose named targetPort
    // resolves to different numbers (the EndpointSlice controller splits them the same way).
    std::string out = serviceDoc("ai", "llm", "[{name: http, port: 8000, targetPort: http}]");
    for (const auto& [emulator, ready] : pods) {
        const std::string pod = "llm-" + std::to_string(emulator->port());
        out += sliceDoc("ai", "llm", pod,
                        "[{name: http, port: " + std::to_string(emulator->port()) + "}]",
                        {{"127.0.0.1", pod, ready}});
    }
    return out;
}

int requestsOf(Emulator& e) {
    return json::parse(e.stats())["requests"].get<int>();
}

class ServiceRouteGateway : public ::testing::Test {
  protected:
    void start(const std::string& registry,
               const std::string& policies = modelRoute("[{host: llm, port: 8000}]")) {
        writeFile(registry_.path, "llm.yaml", registry);
        writeFile(policies_.path, "routes.yaml", policies);
        gw_ = startGateway("kind: Waypoint\nspec: {}\n", false, [&](Config& c) {
            c.policies_dir = policies_.path.string();
            c.registry_dir = registry_.path.string();
        });
    }
    double reloads(const std::string& result) {
        return metricValue(request(gw_->metricsPort(), "GET", "/metrics").body,
                           "sluice_policy_reload_total", {{"result", result}});
    }
    // Waits (up to 5 s) until `result` reloads were counted `n` times.
    bool waitForReloads(const std::string& result, double n) {
        for (int i = 0; i < 500; ++i) {
            if (reloads(result) >= n)
                return true;
            std::this_thread::sleep_for(10ms);
        }
        return false;
    }
    // The backends (x-backend) that answered `n` chats, all of which must succeed.
    std::set<std::string> backendsOf(int n) {
        std::set<std::string> seen;
        for (int i = 0; i < n; ++i) {
            Reply r = request(gw_->gatewayPort(), "POST", "/v1/chat/completions", chat(false));
            EXPECT_EQ(r.status, 200u) << r.body;
            seen.insert(r.headers["x-backend"]);
        }
        return seen;
    }

    TempDir policies_, registry_;
    std::unique_ptr<Gateway> gw_;
};

TEST_F(ServiceRouteGateway, RequestsFollowTheEndpointSliceAcrossAReloadAndInFlightOnesFinish) {
    Emulator a("a"), b("b"), c("c");
    start(llmService({{&a, "true"}, {&b, "true"}, {&c, "false"}}));
    EXPECT_EQ(backendsOf(24), (std::set<std::string>{"a", "b"})) << "c is not ready";
    EXPECT_EQ(requestsOf(c), 0);

    // A stream in flight (8 tokens 150 ms apart) on a or b while both leave the service.
    for (Emulator* e : {&a, &b})
        e->configure(R"({"token_delay_ms": 150, "completion_tokens": 8})");
    const double before = reloads("success");
    auto stream = std::async(std::launch::async, [&] {
        return request(gw_->gatewayPort(), "POST", "/v1/chat/completions", chat(true));
    });
    for (int i = 0; i < 200 && requestsOf(a) + requestsOf(b) < 25; ++i)
        std::this_thread::sleep_for(10ms);
    ASSERT_EQ(requestsOf(a) + requestsOf(b), 25) << "the stream went upstream";
    writeFile(registry_.path, "llm.yaml", llmService({{&a, "false"}, {&c, "true"}}));
    ASSERT_TRUE(waitForReloads("success", before + 1));
    EXPECT_EQ(stream.wait_for(0s), std::future_status::timeout) << "the reload came mid-stream";

    EXPECT_EQ(backendsOf(6), std::set<std::string>{"c"});
    const Reply streamed = stream.get();
    EXPECT_EQ(streamed.status, 200u);
    EXPECT_NE(streamed.body.find("data: [DONE]"), std::string::npos) << streamed.body;
    EXPECT_EQ(requestsOf(a) + requestsOf(b), 25) << "nothing new went to a or b";
    EXPECT_EQ(reloads("failure"), -1) << "no failed reload";
}

TEST_F(ServiceRouteGateway, AnEjectedEndpointStaysEjectedWhenTheServiceGrows) {
    Emulator a("a", {"--fail-status", "503"}), b("b"), c("c");
    start(llmService({{&a, "true"}, {&b, "true"}}));
    // Every pick of a fails and is retried on b; five failures in a row eject a for 30 s.
    for (int i = 0; i < 200 && requestsOf(a) < 5; ++i)
        EXPECT_EQ(request(gw_->gatewayPort(), "POST", "/v1/chat/completions", chat(false)).status,
                  200u);
    ASSERT_EQ(requestsOf(a), 5);

    const double before = reloads("success");
    writeFile(registry_.path, "llm.yaml", llmService({{&a, "true"}, {&b, "true"}, {&c, "true"}}));
    ASSERT_TRUE(waitForReloads("success", before + 1));
    EXPECT_EQ(backendsOf(20), (std::set<std::string>{"b", "c"}));
    EXPECT_EQ(requestsOf(a), 5) << "a stayed ejected: the new pool took over its state";
}

TEST_F(ServiceRouteGateway, AnUnknownHostKeepsTheLastGoodRoutesAndNoReadyEndpointIs503) {
    Emulator a("a");
    start(llmService({{&a, "true"}}));
    EXPECT_EQ(backendsOf(2), std::set<std::string>{"a"});

    std::string log;
    {
        LogCapture capture;
        writeFile(policies_.path, "routes.yaml", modelRoute("[{host: llm-v2, port: 8000}]"));
        ASSERT_TRUE(waitForReloads("failure", 1));
        log = capture.text();  // the watcher thread logged before it counted the failure
    }
    EXPECT_EQ(backendsOf(2), std::set<std::string>{"a"}) << "the last good routes stay";
    EXPECT_NE(log.find("policies not applied (the previous ones stay in force): ModelRoute "
                       "ai/big: backend host llm-v2 is neither a pool"),
              std::string::npos)
        << log;

    // Back to the service (valid with either registry), then no ready endpoint: valid, and 503.
    const double failures = reloads("failure");
    writeFile(policies_.path, "routes.yaml", modelRoute("[{host: llm.ai.svc, port: 8000}]"));
    writeFile(registry_.path, "llm.yaml", llmService({{&a, "false"}}));
    Reply r;
    int served = 0;
    for (int i = 0; i < 500; ++i) {
        r = request(gw_->gatewayPort(), "POST", "/v1/chat/completions", chat(false));
        if (r.status != 200)
            break;
        ++served;
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_EQ(r.status, 503u);
    EXPECT_EQ(json::parse(r.body)["error"]["message"],
              "upstream pool llm.ai.svc.cluster.local:8000 has no ready endpoints");
    EXPECT_EQ(reloads("failure"), failures) << "an empty service is a valid configuration";
    EXPECT_EQ(requestsOf(a), 4 + served) << "the 503 never went upstream";
}

// The policies folder alone (no TokenBudget or ModelRoute in --config) sets what the gateway
// config can: a Service pool's balancer, a backend's model rewrite, a cost tier, and a tenant
// known by the SHA-256 of its API key.
TEST_F(ServiceRouteGateway, FolderRoutesAndBudgetsTuneBalancingCostTiersAndApiKeyTenants) {
    Emulator a("a"), b("b"), small("small");
    const auto [rc, sum] = runCommand("printf %s sk-team-a | sha256sum");
    ASSERT_EQ(rc, 0);
    const std::string digest = sum.substr(0, 64);
    auto folder = [&](int prefix_bytes) {
        return "apiVersion: sluice.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: big, "
               "namespace: ai}\nspec:\n  model: llama\n  backends: [{host: llm, port: 8000, "
               "model: llama-70b}]\n  costTier: {maxPromptTokens: 30, maxOutputTokens: 8, model: "
               "small}\n  loadBalancer: {policy: prefix-affinity, prefixBytes: " +
               std::to_string(prefix_bytes) +
               "}\n---\napiVersion: sluice.dev/v1alpha1\nkind: ModelRoute\nmetadata: {name: "
               "small, namespace: ai}\nspec:\n  model: small\n  backends: [{host: 127.0.0.1, "
               "port: " +
               std::to_string(small.port()) +
               "}]\n---\napiVersion: sluice.dev/v1alpha1\nkind: TokenBudget\nmetadata: {name: "
               "team-a, namespace: ai}\nspec:\n  tenant: {apiKey: {name: team-a, sha256: [" +
               digest + "]}}\n  limits: {requestsPerMinute: 3}\n";
    };
    start(llmService({{&a, "true"}, {&b, "true"}}), folder(64));
    auto ask = [&](const std::string& prompt, int max_tokens,
                   const std::map<std::string, std::string>& headers = {}) {
        const json body{{"model", "llama"},
                        {"max_tokens", max_tokens},
                        {"messages", {{{"role", "user"}, {"content", prompt}}}}};
        return request(gw_->gatewayPort(), "POST", "/v1/chat/completions", body.dump(), headers);
    };
    const std::string tail = " and the rest of a long question that the cost tier must not take";

    // Prefix affinity on the Service's pool: one prompt prefix, one backend, every time.
    std::set<std::string> one_prefix, prefixes;
    for (int i = 0; i < 8; ++i) {
        Reply r = ask("shared system prompt" + tail + " #" + std::to_string(i), 100);
        ASSERT_EQ(r.status, 200u) << r.body;
        one_prefix.insert(r.headers["x-backend"]);
        EXPECT_EQ(json::parse(r.body)["model"], "llama-70b") << "the backend's model rewrite";
        EXPECT_EQ(r.headers["x-sluice-route"], "big;weighted:llm.ai.svc.cluster.local:8000");
    }
    EXPECT_EQ(one_prefix.size(), 1u) << "least-request would have spread 8 requests";
    for (int i = 0; i < 16; ++i)
        prefixes.insert(ask("prefix " + std::to_string(i) + tail, 100).headers["x-backend"]);
    EXPECT_EQ(prefixes, (std::set<std::string>{"a", "b"})) << "other prefixes hash elsewhere";

    // A short request with a small max_tokens: the cost tier, small's backend, model rewritten.
    Reply cheap = ask("hi", 5);
    ASSERT_EQ(cheap.status, 200u) << cheap.body;
    EXPECT_EQ(cheap.headers["x-backend"], "small");
    EXPECT_EQ(json::parse(cheap.body)["model"], "small");
    EXPECT_EQ(cheap.headers["x-sluice-route"], "big;cost-tier:prompt<=30");

    // team-a is known only by its key's digest: its fourth request in the minute is refused,
    // while an unknown key is not team-a and goes on.
    const std::map<std::string, std::string> key{{"authorization", "Bearer sk-team-a"}};
    for (int i = 0; i < 3; ++i)
        EXPECT_EQ(ask("hi", 5, key).status, 200u);
    Reply refused = ask("hi", 5, key);
    EXPECT_EQ(refused.status, 429u) << refused.body;
    EXPECT_EQ(refused.headers["x-ratelimit-limit-requests"], "3");
    EXPECT_EQ(json::parse(refused.body)["error"]["type"], "requests");
    EXPECT_EQ(ask("hi", 5, {{"authorization", "Bearer sk-other"}}).status, 200u);

    // A reload that only shortens the hashed prefix to "prefix" puts those 16 prompts together.
    const double before = reloads("success");
    writeFile(policies_.path, "routes.yaml", folder(6));
    ASSERT_TRUE(waitForReloads("success", before + 1));
    prefixes.clear();
    for (int i = 0; i < 16; ++i)
        prefixes.insert(ask("prefix " + std::to_string(i) + tail, 100).headers["x-backend"]);
    EXPECT_EQ(prefixes.size(), 1u) << "the new prefixBytes applies after the reload";
    EXPECT_EQ(reloads("failure"), -1) << "no failed reload";
}

}  // namespace
}  // namespace sluice::waypoint::test
