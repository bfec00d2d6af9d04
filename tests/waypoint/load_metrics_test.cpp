// Load-aware balancing on the backends' own reports: the vLLM metrics parser, and a gateway
// whose pool scrapes two emulator backends and steers away from the one that says it is loaded.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <thread>

#include "tests/waypoint/harness.h"
#include "waypoint/lb/load_metrics.h"

namespace sluice::waypoint::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

TEST(VllmMetrics, SumsWaitingOverModelsAndTakesTheFullestKvCache) {
    auto r = parseVllmMetrics(R"(# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="llama-3-8b"} 4.0
vllm:num_requests_waiting{model_name="llama-3-70b"} 3
vllm:num_requests_waiting_by_reason{reason="capacity"} 99
vllm:kv_cache_usage_perc{model_name="llama-3-8b"} 0.25
vllm:kv_cache_usage_perc{model_name="llama-3-70b"} 0.875 1700000000000
vllm:num_requests_running{model_name="llama-3-8b"} 12
)");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->waiting, 7);
    EXPECT_EQ(r->kv_cache, 0.875);
    EXPECT_FALSE(parseVllmMetrics("# nothing here\nprocess_cpu_seconds_total 3\n"));
    EXPECT_FALSE(parseVllmMetrics("vllm:num_requests_waiting{broken 3\n"));
    EXPECT_FALSE(parseVllmMetrics("vllm:num_requests_waiting NaN\nvllm:kv_cache_usage_perc +Inf\n"))
        << "non-finite samples are ignored";
    auto bare = parseVllmMetrics("vllm:num_requests_waiting 2\n");
    ASSERT_TRUE(bare);
    EXPECT_EQ(bare->waiting, 2);
}

std::string twoBackends(const Emulator& a, const Emulator& b) {
    return R"(
kind: Waypoint
spec:
  pools:
    - name: main
      loadBalancer: least-request
      loadMetrics: {path: /metrics, interval: 50ms}
      endpoints: [")" +
           a.address() + "\", \"" + b.address() + R"("]
---
kind: ModelRoute
metadata: {name: chat}
spec:
  models: ["*"]
  backends: [{pool: main}]
)";
}

// Waits until the gateway's gauge for `ep` reads `value`.
bool waitForGauge(Gateway& gw, const std::string& name, const Emulator& ep, double value) {
    for (int i = 0; i < 300; ++i) {
        const auto text = request(gw.metricsPort(), "GET", "/metrics").body;
        if (metricValue(text, name, {{"pool", "main"}, {"endpoint", ep.address()}}) == value)
            return true;
        std::this_thread::sleep_for(10ms);
    }
    return false;
}

// Which backend served each of `n` sequential chat requests (the emulator's x-backend).
std::map<std::string, int> servedBy(Gateway& gw, int n) {
    std::map<std::string, int> count;
    const std::string body =
        R"({"model":"m","max_tokens":2,"messages":[{"role":"user","content":"hi"}]})";
    for (int i = 0; i < n; ++i) {
        auto r = request(gw.gatewayPort(), "POST", "/v1/chat/completions", body);
        EXPECT_EQ(r.status, 200u) << r.body;
        ++count[r.headers["x-backend"]];
    }
    return count;
}

TEST(WaypointLoadMetrics, TrafficAvoidsTheBackendThatReportsAQueueOrAFullKvCache) {
    Emulator a("a"), b("b");
    auto gw = startGateway(twoBackends(a, b));
    // Sequential requests leave both in-flight counts at 0: without the reports every pick is a
    // coin toss, so 28 or more of 30 on one side would not happen by chance (< 1e-6). Not all
    // 30: a scrape that a starved machine delays past the reports' 2 s age makes a pick ignore
    // them (as designed: a stale report must not steer), which is one coin toss.
    a.configure(R"({"waiting": 25})");
    ASSERT_TRUE(waitForGauge(*gw, "sluice_backend_requests_waiting", a, 25));
    auto avoided_queue = servedBy(*gw, 30);
    EXPECT_GE(avoided_queue["b"], 28) << request(gw->metricsPort(), "GET", "/metrics").body;

    a.configure(R"({"waiting": 0})");
    b.configure(R"({"kv_cache_usage": 0.97})");
    ASSERT_TRUE(waitForGauge(*gw, "sluice_backend_kv_cache_usage", b, 0.97));
    ASSERT_TRUE(waitForGauge(*gw, "sluice_backend_requests_waiting", a, 0));
    auto avoided_cache = servedBy(*gw, 30);
    EXPECT_GE(avoided_cache["a"], 28) << request(gw->metricsPort(), "GET", "/metrics").body;

    // Both healthy again: the coin tosses return (each side gets some of 40).
    b.configure(R"({"kv_cache_usage": 0.1})");
    ASSERT_TRUE(waitForGauge(*gw, "sluice_backend_kv_cache_usage", b, 0.1));
    auto mixed = servedBy(*gw, 40);
    EXPECT_GT(mixed["a"], 0);
    EXPECT_GT(mixed["b"], 0);
}

}  // namespace
}  // namespace sluice::waypoint::test
