// Waypoint integration tests over loopback: real sluice Gateway, real HTTP, emulator backends
// (tests/waypoint/openai_emulator.py, a test fixture). Assertions are on what a client sees:
// status, headers, bytes, timing, and the Prometheus metrics.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <future>
#include <sstream>
#include <thread>

#include "tests/waypoint/harness.h"

namespace sluice::waypoint::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// `spec_extra`: more lines of the Waypoint spec (indented two spaces).
std::string baseConfig(const std::string& main_endpoints, const std::string& extra = "",
                       const std::string& spec_extra = "") {
    return R"(
apiVersion: sluice.dev/v1alpha1
kind: Waypoint
metadata: {name: test}
spec:
  limits: {maxBodyBytes: 65536, maxHeaderBytes: 4096}
)" + spec_extra +
           R"(
  pools:
    - name: main
      endpoints: [)" +
           main_endpoints + R"(]
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: chat}
spec:
  models: ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
  timeout: 5s
  backends: [{pool: main}]
)" + extra;
}

// A Waypoint with two single-endpoint pools and one ModelRoute taking every model.
std::string twoPoolConfig(const std::string& a, const Emulator& ea, const std::string& b,
                          const Emulator& eb, const std::string& route_spec) {
    return "kind: Waypoint\nspec:\n  pools:\n    - {name: " + a + ", endpoints: [\"" +
           ea.address() + "\"]}\n    - {name: " + b + ", endpoints: [\"" + eb.address() +
           "\"]}\n---\nkind: ModelRoute\nmetadata: {name: chat}\nspec:\n  models: [\"*\"]\n" +
           route_spec;
}

std::string chatBody(bool stream, bool include_usage = false, int max_tokens = 5) {
    json body{{"model", "gpt-4o"},
              {"max_tokens", max_tokens},
              {"messages", {{{"role", "user"}, {"content", "Say hello to the mesh"}}}}};
    if (stream)
        body["stream"] = true;
    if (include_usage)
        body["stream_options"] = {{"include_usage", true}};
    return body.dump();
}

// The metrics text once `requests` requests have been recorded. The worker records a request
// right after its last byte was written, on another thread than the one serving /metrics, so a
// client can be faster; istio_requests_total is recorded last, after the token metrics.
std::string metricsOf(Gateway& gw, int requests) {
    std::string text;
    for (int i = 0; i < 200; ++i) {
        text = request(gw.metricsPort(), "GET", "/metrics").body;
        double total = 0;
        std::istringstream in(text);
        for (std::string line; std::getline(in, line);) {
            if (line.starts_with("istio_requests_total{")) {
                total += std::stod(line.substr(line.rfind(' ') + 1));
            }
        }
        if (total >= requests)
            break;
        std::this_thread::sleep_for(10ms);
    }
    return text;
}

TEST(WaypointGateway, NonStreamedResponseIsRelayedAndUsageCounted) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const auto direct = request(backend.port(), "POST", "/v1/chat/completions", chatBody(false));
    auto via = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
    ASSERT_EQ(via.status, 200u);
    EXPECT_EQ(via.body, direct.body);
    EXPECT_EQ(via.headers["x-backend"], "a");
    EXPECT_EQ(via.headers["x-sluice-route"], "chat;weighted:main");
    const auto usage = json::parse(direct.body)["usage"];
    const auto metrics = metricsOf(*gw, 1);
    EXPECT_EQ(metricValue(metrics, "sluice_gen_ai_tokens_total",
                          {{"gen_ai_token_type", "input"}, {"gen_ai_request_model", "gpt-4o"}}),
              usage["prompt_tokens"].get<double>())
        << metrics;
    EXPECT_EQ(metricValue(metrics, "sluice_gen_ai_tokens_total",
                          {{"gen_ai_token_type", "output"}, {"gen_ai_request_model", "gpt-4o"}}),
              usage["completion_tokens"].get<double>());
    EXPECT_EQ(metricValue(metrics, "istio_requests_total", {{"response_code", "200"}}), 1);
}

TEST(WaypointGateway, StreamWithoutIncludeUsageIsByteExactAndStillCounted) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const auto direct = request(backend.port(), "POST", "/v1/chat/completions", chatBody(true));
    ASSERT_EQ(json::parse(backend.stats())["include_usage_seen"], 0);
    auto via = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(true));
    ASSERT_EQ(via.status, 200u);
    EXPECT_EQ(via.headers["content-type"], "text/event-stream");
    // The waypoint asked the backend for usage, read it, and removed it again.
    EXPECT_EQ(json::parse(backend.stats())["include_usage_seen"], 1);
    EXPECT_EQ(via.body, direct.body);
    EXPECT_EQ(via.body.find("\"usage\""), std::string::npos);
    const auto metrics = metricsOf(*gw, 1);
    EXPECT_EQ(metricValue(metrics, "sluice_gen_ai_tokens_total", {{"gen_ai_token_type", "output"}}),
              5);
    EXPECT_GT(metricValue(metrics, "gen_ai_server_time_to_first_token_seconds_count", {}), 0);
}

TEST(WaypointGateway, StreamWithIncludeUsageKeepsTheUsageChunk) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const auto direct =
        request(backend.port(), "POST", "/v1/chat/completions", chatBody(true, true));
    auto via = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(true, true));
    ASSERT_EQ(via.status, 200u);
    EXPECT_EQ(via.body, direct.body);
    EXPECT_NE(via.body.find("\"usage\":{\"prompt_tokens\""), std::string::npos);
}

TEST(WaypointGateway, TimeToFirstTokenIsPreserved) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 300, "completion_tokens": 4})");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string body = chatBody(true, false, 4);
    const std::string raw =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
        "application/json\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    // Read until the first event arrives; it must not wait for the ~0.9 s rest of the stream.
    asio::io_context io;
    tcp::socket s(io);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), gw->gatewayPort()));
    const auto start = std::chrono::steady_clock::now();
    asio::write(s, asio::buffer(raw));
    std::string got;
    char buf[4096];
    for (int i = 0; i < 100 && got.find("tok0") == std::string::npos; ++i) {
        got.append(buf, s.read_some(asio::buffer(buf)));
    }
    const auto first = std::chrono::steady_clock::now() - start;
    EXPECT_NE(got.find("tok0"), std::string::npos);
    EXPECT_EQ(got.find("tok1"), std::string::npos);
    EXPECT_LT(first, 250ms);
}

TEST(WaypointGateway, MalformedRequestsGetOpenAiShaped400) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    auto bad_json = request(gw->gatewayPort(), "POST", "/v1/chat/completions", "{not json");
    EXPECT_EQ(bad_json.status, 400u);
    auto error = json::parse(bad_json.body)["error"];
    EXPECT_EQ(error["type"], "invalid_request_error");
    EXPECT_TRUE(error.contains("param") && error.contains("code"));

    auto no_model = request(gw->gatewayPort(), "POST", "/v1/chat/completions", R"({"x":1})");
    EXPECT_EQ(no_model.status, 400u);

    auto unknown = request(gw->gatewayPort(), "POST", "/v1/chat/completions",
                           R"({"model":"nope","messages":[]})");
    EXPECT_EQ(unknown.status, 404u);
    EXPECT_EQ(json::parse(unknown.body)["error"]["code"], "model_not_found");

    const std::string garbage = rawExchange(gw->gatewayPort(), "GARBAGE\r\n\r\n");
    EXPECT_TRUE(garbage.starts_with("HTTP/1.1 400")) << garbage;
    EXPECT_NE(garbage.find("invalid_request_error"), std::string::npos);

    const std::string big(70'000, 'x');
    const std::string too_big = rawExchange(
        gw->gatewayPort(), "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                               std::to_string(big.size()) + "\r\n\r\n" + big);
    EXPECT_TRUE(too_big.starts_with("HTTP/1.1 413")) << too_big.substr(0, 80);
    // The server is still serving.
    EXPECT_EQ(request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false)).status,
              200u);
}

TEST(WaypointGateway, KeepAliveAndChunkedRequestBody) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string body = chatBody(false);
    const std::string chunked =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n" +
        (std::ostringstream() << std::hex << body.size()).str() + "\r\n" + body + "\r\n0\r\n\r\n";
    const std::string two = chunked + chunked.substr(0, chunked.find("\r\n\r\n")) +
                            "\r\nConnection: close\r\n\r\n" +
                            chunked.substr(chunked.find("\r\n\r\n") + 4);
    const std::string got = rawExchange(gw->gatewayPort(), two);
    std::size_t responses = 0;
    for (std::size_t at = 0; (at = got.find("HTTP/1.1 200", at)) != std::string::npos; ++at) {
        ++responses;
    }
    EXPECT_EQ(responses, 2u) << got;
}

TEST(WaypointGateway, TokenBudgetReturns429WithHeadersAndOtherTenantIsServed) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\"", R"(---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: tenants}
spec:
  tenantFrom: [{header: x-tenant}]
  limits:
    - {tenant: "*", tokensPerMinute: 400, requestsPerMinute: 100}
)"));
    // Each request reserves its prompt estimate + max_tokens (150) and settles at the emulator's
    // usage (its prompt count + 150): 400 → 2 admitted, the third is over budget.
    backend.configure(R"({"completion_tokens": 150})");
    const std::string body = chatBody(false, false, 150);
    auto first =
        request(gw->gatewayPort(), "POST", "/v1/chat/completions", body, {{"x-tenant", "team-a"}});
    ASSERT_EQ(first.status, 200u);
    EXPECT_EQ(first.headers["x-ratelimit-limit-tokens"], "400");
    EXPECT_EQ(first.headers["x-ratelimit-limit-requests"], "100");
    auto second =
        request(gw->gatewayPort(), "POST", "/v1/chat/completions", body, {{"x-tenant", "team-a"}});
    ASSERT_EQ(second.status, 200u);
    auto third =
        request(gw->gatewayPort(), "POST", "/v1/chat/completions", body, {{"x-tenant", "team-a"}});
    ASSERT_EQ(third.status, 429u) << third.body;
    const auto error = json::parse(third.body)["error"];
    EXPECT_EQ(error["type"], "tokens");
    EXPECT_EQ(error["code"], "rate_limit_exceeded");
    EXPECT_NE(error["message"].get<std::string>().find("tokens per min (TPM): Limit 400"),
              std::string::npos);
    EXPECT_EQ(third.headers["x-ratelimit-limit-tokens"], "400");
    EXPECT_LT(std::stoi(third.headers["x-ratelimit-remaining-tokens"]), 150);
    EXPECT_GE(std::stoi(third.headers["retry-after"]), 1);
    EXPECT_FALSE(third.headers["x-ratelimit-reset-tokens"].empty());

    auto other =
        request(gw->gatewayPort(), "POST", "/v1/chat/completions", body, {{"x-tenant", "team-b"}});
    EXPECT_EQ(other.status, 200u);
    const auto metrics = metricsOf(*gw, 4);
    EXPECT_EQ(metricValue(metrics, "sluice_requests_rejected_total",
                          {{"reason", "tokens per min (TPM)"}, {"tenant", "team-a"}}),
              1);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 3);
}

TEST(WaypointGateway, FallsBackToNextPoolOnBackendFailure) {
    Emulator broken("broken", {"--fail-status", "503"});
    Emulator backup("backup");
    auto gw = startGateway(twoPoolConfig("main", broken, "backup", backup,
                                         "  retries: {attempts: 2, backoff: 1ms}\n"
                                         "  backends: [{pool: main}]\n"
                                         "  fallbacks: [{pool: backup, model: gpt-4o-mini}]\n"));
    auto reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
    ASSERT_EQ(reply.status, 200u) << reply.body;
    EXPECT_EQ(reply.headers["x-backend"], "backup");
    EXPECT_EQ(json::parse(reply.body)["model"], "gpt-4o-mini");  // rewritten for the fallback
    EXPECT_EQ(json::parse(broken.stats())["requests"], 1);
}

TEST(WaypointGateway, LastAttemptRelaysTheBackendError) {
    Emulator broken("broken", {"--fail-status", "500"});
    auto gw = startGateway(baseConfig("\"" + broken.address() + "\""));
    auto reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
    EXPECT_EQ(reply.status, 500u);
    EXPECT_EQ(json::parse(reply.body)["error"]["message"], "emulated failure");
    EXPECT_EQ(json::parse(broken.stats())["requests"], 3);  // first try + 2 retries
}

TEST(WaypointGateway, ClientDisconnectCancelsTheUpstreamStream) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 100, "completion_tokens": 50})");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    {
        const std::string body = chatBody(true, false, 50);
        asio::io_context io;
        tcp::socket s(io);
        s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), gw->gatewayPort()));
        asio::write(s, asio::buffer("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                    "Content-Length: " +
                                    std::to_string(body.size()) + "\r\n\r\n" + body));
        char buf[1024];
        s.read_some(asio::buffer(buf));  // the stream has started
    }                                    // the client closes here, ~5 s before the stream would end
    EXPECT_EQ(backend.streamsAborted(), 1);
}

TEST(WaypointGateway, CanarySplitFollowsWeights) {
    Emulator stable("stable");
    Emulator canary("canary");
    auto gw = startGateway(
        twoPoolConfig("stable", stable, "canary", canary,
                      "  backends: [{pool: stable, weight: 80}, {pool: canary, weight: 20}]\n"));
    constexpr int kRequests = 300;
    int to_canary = 0;
    for (int i = 0; i < kRequests; ++i) {
        auto r = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
        to_canary += r.headers["x-backend"] == "canary";
    }
    // Binomial(300, 0.2): mean 60, sd ≈ 6.9; ±4.5 sd keeps a false failure below 1e-5.
    EXPECT_GT(to_canary, 29);
    EXPECT_LT(to_canary, 91);
}

TEST(WaypointGateway, EmbeddingsAndModelsAndReadiness) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const auto emb = request(gw->gatewayPort(), "POST", "/v1/embeddings",
                             R"({"model":"text-embedding-3-small","input":["a b c","d e"]})");
    ASSERT_EQ(emb.status, 200u);
    const auto metrics = metricsOf(*gw, 2);
    EXPECT_EQ(
        metricValue(metrics, "sluice_gen_ai_tokens_total",
                    {{"gen_ai_token_type", "input"}, {"gen_ai_operation_name", "embeddings"}}),
        5);
    const auto models = json::parse(request(gw->gatewayPort(), "GET", "/v1/models").body);
    EXPECT_EQ(models["object"], "list");
    EXPECT_EQ(models["data"].size(), 3u);
    EXPECT_EQ(request(gw->readyPort(), "GET", "/healthz/ready").status, 200u);
}

}  // namespace
}  // namespace sluice::waypoint::test

namespace sluice::waypoint::test {
namespace {

TEST(WaypointGateway, EmbeddingsCacheHitsPerTenant) {
    Emulator backend("a");
    auto gw = startGateway(R"(
apiVersion: sluice.dev/v1alpha1
kind: Waypoint
spec:
  embeddingsCache: {maxBytes: 1048576, ttl: 60s}
  pools: [{name: main, endpoints: [")" +
                           backend.address() + R"("]}]
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: emb}
spec:
  models: ["*"]
  backends: [{pool: main}]
---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: t}
spec:
  tenantFrom: [{header: x-tenant}]
  limits: [{tenant: "*", tokensPerMinute: 100000}]
)");
    const std::string body = R"({"model":"text-embedding-3-small","input":["same text"]})";
    const std::string reordered = R"({"input":["same text"],"model":"text-embedding-3-small"})";
    auto miss = request(gw->gatewayPort(), "POST", "/v1/embeddings", body, {{"x-tenant", "a"}});
    auto hit = request(gw->gatewayPort(), "POST", "/v1/embeddings", reordered, {{"x-tenant", "a"}});
    auto other = request(gw->gatewayPort(), "POST", "/v1/embeddings", body, {{"x-tenant", "b"}});
    ASSERT_EQ(miss.status, 200u);
    ASSERT_EQ(hit.status, 200u);
    EXPECT_EQ(miss.headers.count("x-sluice-cache"), 0u);
    EXPECT_EQ(hit.headers["x-sluice-cache"], "hit");
    EXPECT_EQ(hit.body, miss.body);
    EXPECT_EQ(other.headers.count("x-sluice-cache"), 0u);  // keys are per tenant
    EXPECT_EQ(nlohmann::json::parse(backend.stats())["requests"], 2);
}

}  // namespace
}  // namespace sluice::waypoint::test

namespace sluice::waypoint::test {
namespace {

// Polls the metrics until `name{labels}` reads `value` (admission gauges change on other
// threads); returns the last reading.
double waitForMetric(Gateway& gw, const std::string& name,
                     const std::map<std::string, std::string>& labels, double value) {
    double seen = -1;
    for (int i = 0; i < 300 && seen != value; ++i) {
        seen = metricValue(request(gw.metricsPort(), "GET", "/metrics").body, name, labels);
        if (seen != value)
            std::this_thread::sleep_for(10ms);
    }
    return seen;
}

TEST(WaypointGateway, SaturatedWaypointShedsSheddableFirstAndServesCritical) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 100, "completion_tokens": 8})");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\"", "", R"(
  admission:
    maxConcurrent: 1
    maxQueued: 1
    priorityFrom: {header: x-sluice-priority}
)"));
    const std::string body = chatBody(true, false, 8);
    auto send = [&](const char* priority) {
        return std::async(std::launch::async, [&, priority] {
            return request(gw->gatewayPort(), "POST", "/v1/chat/completions", body,
                           {{"x-sluice-priority", priority}});
        });
    };
    auto first = send("standard");  // holds the only slot for ~0.8 s (8 tokens × 100 ms)
    ASSERT_EQ(waitForMetric(*gw, "sluice_admission_in_flight", {}, 1), 1);
    auto sheddable = send("sheddable");
    ASSERT_EQ(waitForMetric(*gw, "sluice_admission_queued", {{"class", "sheddable"}}, 1), 1);
    auto critical = send("critical");  // the queue is full: the sheddable waiter goes

    const Reply shed = sheddable.get();
    EXPECT_EQ(shed.status, 503u) << shed.body;
    EXPECT_EQ(shed.headers.at("retry-after"), "1");
    EXPECT_EQ(shed.headers.at("x-sluice-shed"), "preempted");
    const auto error = json::parse(shed.body)["error"];
    EXPECT_EQ(error["type"], "server_error");
    EXPECT_EQ(error["code"], "overloaded");
    EXPECT_EQ(first.get().status, 200u);
    const Reply served = critical.get();
    EXPECT_EQ(served.status, 200u);
    EXPECT_NE(served.body.find("data: [DONE]"), std::string::npos);

    const auto metrics = metricsOf(*gw, 3);
    EXPECT_EQ(metricValue(metrics, "sluice_requests_shed_total",
                          {{"class", "sheddable"}, {"reason", "preempted"}}),
              1);
    EXPECT_EQ(metricValue(metrics, "istio_requests_total", {{"response_code", "503"}}), 1);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2)
        << "the shed request never went upstream";
}

}  // namespace
}  // namespace sluice::waypoint::test
