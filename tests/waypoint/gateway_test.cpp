// Waypoint integration tests over loopback: real sluice Gateway, real HTTP, emulator backends
// (tests/waypoint/openai_emulator.py, a test fixture). Assertions are on what a client sees:
// status, headers, bytes, timing, and the Prometheus metrics.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <poll.h>
#include <sys/resource.h>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <future>
#include <regex>
#include <set>
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

// baseConfig plus a TokenBudget per x-tenant: `tokens_per_minute`, 100 requests per minute.
std::string budgetConfig(const Emulator& backend, int tokens_per_minute) {
    return baseConfig("\"" + backend.address() + "\"", R"(---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: tenants}
spec:
  tenantFrom: [{header: x-tenant}]
  limits:
    - {tenant: "*", tokensPerMinute: )" + std::to_string(tokens_per_minute) +
                                                           R"(, requestsPerMinute: 100}
)");
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

// A blocking client connection to the gateway on loopback.
tcp::socket connectTo(asio::io_context& io, unsigned short port) {
    tcp::socket s(io);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    return s;
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

// Each request's metrics land in the series of its own tenant, model and status, request after
// request (record() looks their pointers up once per kind of request), and a stream's TTFT
// histogram appears only once a stream had a first token.
TEST(WaypointGateway, MetricsAreCountedPerTenantModelAndStatusRequestAfterRequest) {
    Emulator backend("a");
    auto gw = startGateway(budgetConfig(backend, 1'000'000));
    std::string mini = chatBody(false);
    mini.replace(mini.find("gpt-4o"), 6, "gpt-4o-mini");
    auto chat = [&](const std::string& tenant, const std::string& body) {
        return request(gw->gatewayPort(), "POST", "/v1/chat/completions", body,
                       {{"x-tenant", tenant}})
            .status;
    };
    EXPECT_EQ(chat("a", chatBody(false)), 200u);
    EXPECT_EQ(chat("a", chatBody(false)), 200u);
    EXPECT_EQ(chat("b", chatBody(false)), 200u);
    EXPECT_EQ(chat("a", mini), 200u);
    EXPECT_EQ(request(gw->gatewayPort(), "POST", "/v1/chat/completions", "{}").status, 400u);
    std::string metrics = metricsOf(*gw, 5);
    // The emulator counts 3 + 3 per message + 1 per word (11) and sends 5 tokens.
    auto tokens = [&](const std::string& type, const std::string& tenant,
                      const std::string& model) {
        return metricValue(
            metrics, "sluice_gen_ai_tokens_total",
            {{"gen_ai_token_type", type}, {"tenant", tenant}, {"gen_ai_request_model", model}});
    };
    EXPECT_EQ(tokens("input", "a", "gpt-4o"), 22) << metrics;
    EXPECT_EQ(tokens("output", "a", "gpt-4o"), 10);
    EXPECT_EQ(tokens("input", "b", "gpt-4o"), 11);
    EXPECT_EQ(tokens("output", "a", "gpt-4o-mini"), 5);
    EXPECT_EQ(tokens("input", "b", "gpt-4o-mini"), -1) << "no such series";
    EXPECT_EQ(
        metricValue(
            metrics, "gen_ai_client_token_usage_count",
            {{"gen_ai_token_type", "input"}, {"tenant", "a"}, {"gen_ai_request_model", "gpt-4o"}}),
        2);
    EXPECT_EQ(metricValue(metrics, "istio_requests_total", {{"response_code", "200"}}), 4);
    EXPECT_EQ(metricValue(metrics, "istio_requests_total", {{"response_code", "400"}}), 1);
    EXPECT_EQ(metricValue(metrics, "istio_request_duration_milliseconds_count",
                          {{"response_code", "200"}}),
              4);
    EXPECT_EQ(metricValue(metrics, "gen_ai_client_operation_duration_seconds_count",
                          {{"gen_ai_request_model", "gpt-4o"}}),
              3);
    EXPECT_EQ(metrics.find("gen_ai_server_time_to_first_token_seconds_count"), std::string::npos)
        << "no stream yet";

    auto streamed = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(true),
                            {{"x-tenant", "a"}});
    EXPECT_EQ(streamed.status, 200u);
    metrics = metricsOf(*gw, 6);
    EXPECT_EQ(tokens("output", "a", "gpt-4o"), 15) << metrics;
    EXPECT_EQ(metricValue(metrics, "gen_ai_server_time_to_first_token_seconds_count",
                          {{"gen_ai_request_model", "gpt-4o"}}),
              1);
    EXPECT_EQ(metricValue(metrics, "gen_ai_server_time_per_output_token_seconds_count",
                          {{"gen_ai_request_model", "gpt-4o"}}),
              1);
}

// A valid incoming trace id and its flags are kept with a new span id; anything else starts a
// new trace (sampled).
TEST(WaypointGateway, TraceparentKeepsAValidTraceAndStartsANewOneOtherwise) {
    const std::regex shape("00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}");
    const std::string in = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    const std::string kept = nextTraceparent(in);
    EXPECT_TRUE(std::regex_match(kept, shape)) << kept;
    EXPECT_EQ(kept.substr(0, 36), in.substr(0, 36));
    EXPECT_EQ(kept.substr(52), "-00");
    EXPECT_NE(kept.substr(36, 16), in.substr(36, 16));
    EXPECT_NE(nextTraceparent(in).substr(36, 16), kept.substr(36, 16)) << "a span id per call";
    const std::vector<std::string> bad_ones{
        "", "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", in + "0"};
    for (const std::string& bad : bad_ones) {
        const std::string fresh = nextTraceparent(bad);
        EXPECT_TRUE(std::regex_match(fresh, shape)) << fresh;
        EXPECT_TRUE(fresh.ends_with("-01")) << fresh;
        EXPECT_NE(fresh.substr(3, 32), "0af7651916cd43dd8448eb211c80319c") << bad;
        EXPECT_NE(fresh.substr(3, 32), std::string(32, '0'));
    }
}

// CPU seconds this process (the in-process gateway and the test) used so far.
double processCpuSeconds() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
           double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

TEST(WaypointGateway, BusyPollingWorkerServesAndSleepsOnceIdle) {
    Emulator backend("a");
    // CPU this process spends on 20 requests 2 ms apart: inside a 5 ms spin window the worker
    // keeps polling between them, without one it sleeps.
    auto cpuFor = [&](const std::string& spec_extra) {
        auto gw = startGateway(baseConfig("\"" + backend.address() + "\"", "", spec_extra));
        const double before = processCpuSeconds();
        for (int i = 0; i < 20; ++i) {
            auto via = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
            EXPECT_EQ(via.status, 200u) << i;
            std::this_thread::sleep_for(2ms);
        }
        return std::pair{processCpuSeconds() - before, std::move(gw)};
    };
    const auto [sleeping, plain] = cpuFor("");
    auto [spinning, gw] = cpuFor("  busyPollMicros: 5000\n");
    EXPECT_GT(spinning - sleeping, 0.02) << "a 5 ms window after each of 20 answers 2 ms apart";
    // Idle, it sleeps: half a second costs far less than half a CPU-second.
    std::this_thread::sleep_for(50ms);
    const double idle_from = processCpuSeconds();
    std::this_thread::sleep_for(500ms);
    EXPECT_LT(processCpuSeconds() - idle_from, 0.1);
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

// The backend gets the client's bytes with the member put in, not a re-serialised document
// (whose keys nlohmann would have sorted); a stream_options of the client's is extended.
TEST(WaypointGateway, IncludeUsageGoesIntoTheClientsTextAsSent) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string spaced =
        "\r\n {  \"stream\" : true, \"model\":\"gpt-4o\",\n"
        R"("messages":[{"role":"user","content":"hi"}] })";
    auto via = request(gw->gatewayPort(), "POST", "/v1/chat/completions", spaced);
    ASSERT_EQ(via.status, 200u);
    EXPECT_EQ(json::parse(backend.stats())["last_body"],
              "\r\n {\"stream_options\":{\"include_usage\":true},  \"stream\" : true, "
              "\"model\":\"gpt-4o\",\n"
              R"("messages":[{"role":"user","content":"hi"}] })");
    EXPECT_EQ(via.body.find("\"usage\""), std::string::npos);

    via = request(gw->gatewayPort(), "POST", "/v1/chat/completions",
                  R"({"model":"gpt-4o","stream":true,"stream_options":{},"messages":[]})");
    ASSERT_EQ(via.status, 200u);
    const auto sent = json::parse(std::string(json::parse(backend.stats())["last_body"]));
    EXPECT_EQ(sent["stream_options"], json({{"include_usage", true}}));
    EXPECT_EQ(sent["model"], "gpt-4o");
    EXPECT_EQ(json::parse(backend.stats())["include_usage_seen"], 2);
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
    tcp::socket s = connectTo(io, gw->gatewayPort());
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

// A body that must be written out again (the client's stream_options is changed) may nest as
// deep as the body limit allows: the worker writes it without a stack frame per level, so the
// request is forwarded and the waypoint goes on serving.
TEST(WaypointGateway, ADeeplyNestedBodyIsForwardedNotACrash) {
    Emulator backend("a");
    std::string config = baseConfig("\"" + backend.address() + "\"");
    config.replace(config.find("maxBodyBytes: 65536"), 19, "maxBodyBytes: 4194304");
    auto gw = startGateway(config);
    const std::size_t depth = 1'000'000;
    const std::string deep = R"({"model":"gpt-4o","stream":true,"stream_options":null,"a":)" +
                             std::string(depth, '[') + std::string(depth, ']') + "}";
    const auto reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", deep);
    // The emulator (Python's json) cannot read it; what matters is that it got it whole.
    EXPECT_GE(json::parse(backend.stats())["requests"].get<int>(), 1);
    EXPECT_NE(reply.status, 0u) << reply.body;
    EXPECT_EQ(request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(true)).status,
              200u);
}

// The prompt estimate is one pass over a message's members however many the client sends (a
// check per member for a later one of the same key made 300k members 10^11 comparisons: one
// request held a worker for minutes).
TEST(WaypointGateway, AMessageWithManyMembersIsEstimatedInOnePass) {
    Emulator backend("a");
    std::string config = baseConfig("\"" + backend.address() + "\"");
    config.replace(config.find("maxBodyBytes: 65536"), 19, "maxBodyBytes: 4194304");
    auto gw = startGateway(config);
    std::string body = R"({"model":"gpt-4o","max_tokens":2,"messages":[{"role":"user",)";
    for (int i = 0; i < 300'000; ++i)
        body += "\"k" + std::to_string(i) + "\":0,";
    body += R"("content":"hi"}]})";
    const auto started = std::chrono::steady_clock::now();
    const auto reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", body);
    EXPECT_EQ(reply.status, 200u) << reply.body;
    EXPECT_LT(std::chrono::steady_clock::now() - started, 20s);
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

    // Bodies at the edges waypoint/json/reader.h covers (a trailing comma, a lone low surrogate
    // RapidJSON 1.1 alone accepts, a double that overflows, invalid UTF-8): the same 400 as with
    // nlohmann. A byte order mark is skipped as before.
    for (const std::string body :
         {R"({"model":"a","messages":[],})", R"({"model":"a\uDC00","messages":[]})",
          R"({"model":"a","n":1.8e308})", "{\"model\":\"\xC0\x80\"}"}) {
        auto reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", body);
        EXPECT_EQ(reply.status, 400u) << body;
        EXPECT_EQ(json::parse(reply.body)["error"]["message"],
                  "We could not parse the JSON body of your request.")
            << body;
    }
    // Fields of the wrong type get a 400 naming the field (OpenAI's answer), not an exception.
    for (const auto& [body, field] :
         {std::pair{R"({"model":"gpt-4o","messages":[],"stream":"yes"})", "'stream'"},
          std::pair{R"({"model":"gpt-4o","messages":[],"stream":true,)"
                    R"("stream_options":{"include_usage":1}})",
                    "'stream_options.include_usage'"}}) {
        auto reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", body);
        EXPECT_EQ(reply.status, 400u) << body;
        EXPECT_EQ(json::parse(reply.body)["error"]["message"],
                  std::string(field) + " must be a boolean")
            << body;
    }
    // null is the default, as OpenAI takes it.
    EXPECT_EQ(request(gw->gatewayPort(), "POST", "/v1/chat/completions",
                      R"({"model":"gpt-4o","messages":[],"stream":null,)"
                      R"("stream_options":{"include_usage":null}})")
                  .status,
              200u);
    auto bom = request(gw->gatewayPort(), "POST", "/v1/chat/completions",
                       "\xEF\xBB\xBF"
                       R"({"model":"nope","messages":[]})");
    EXPECT_EQ(bom.status, 404u) << "parsed; the model is unknown";

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

// A Transfer-Encoding that does not end in chunked, or one on HTTP/1.0, is a 400 and the
// connection closes: Beast would read no body and take the body's bytes for a next request,
// which a proxy in front never saw (request smuggling).
TEST(WaypointGateway, TransferEncodingsThatAreNotChunkedAreRefused) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string hidden =
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nx-tenant: someone-else\r\n\r\n";
    for (const std::string te : {"chunked, identity", "xchunked", "identity", "gzip"}) {
        const std::string got = rawExchange(gw->gatewayPort(),
                                            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                            "Transfer-Encoding: " +
                                                te + "\r\n\r\n" + hidden);
        EXPECT_TRUE(got.starts_with("HTTP/1.1 400")) << te << "\n" << got;
        EXPECT_NE(got.find("invalid_request_error"), std::string::npos) << got;
        EXPECT_EQ(got.find("HTTP/1.1 200"), std::string::npos) << te << "\n" << got;
    }
    const std::string body = chatBody(false);
    const std::string old = rawExchange(
        gw->gatewayPort(),
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
            (std::ostringstream() << std::hex << body.size()).str() + "\r\n" + body +
            "\r\n0\r\n\r\n");
    EXPECT_TRUE(old.starts_with("HTTP/1.1 400")) << old;
    EXPECT_EQ(json::parse(backend.stats())["requests"], 0);
}

TEST(WaypointGateway, TokenBudgetReturns429WithHeadersAndOtherTenantIsServed) {
    Emulator backend("a");
    auto gw = startGateway(budgetConfig(backend, 400));
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

// A budgeted endpoint cannot be reached unbudgeted by spelling its path another way that a
// backend's router resolves to it; the absolute form is served, and budgeted, as its path.
TEST(WaypointGateway, BudgetedPathsCannotBeSpelledAround) {
    Emulator backend("a");
    auto gw = startGateway(budgetConfig(backend, 400));
    backend.configure(R"({"completion_tokens": 150})");
    const std::string body = chatBody(false, false, 150);
    for (const std::string path :
         {"/v1/chat/%63ompletions", "/v1//chat/completions", "/x/../v1/chat/completions",
          "/v1/./chat/completions?x=1", "/v1/chat%2Fcompletions", "/v1/models/../embeddings",
          "/V1/Chat/Completions", "/v1/chat/completions/", "/v1/chat/completions;x=1"}) {
        auto reply = request(gw->gatewayPort(), "POST", path, body, {{"x-tenant", "team-a"}});
        EXPECT_EQ(reply.status, 400u) << path;
        EXPECT_EQ(json::parse(reply.body)["error"]["type"], "invalid_request_error") << path;
        EXPECT_NE(reply.body.find("must be written as /v1/"), std::string::npos) << reply.body;
    }
    for (const std::string path : {"/v1/chat/completions#x", "/v1/chat/complet%6"}) {
        auto reply = request(gw->gatewayPort(), "POST", path, body, {{"x-tenant", "team-a"}});
        EXPECT_EQ(reply.status, 400u) << path;
        EXPECT_NE(reply.body.find("target is malformed"), std::string::npos) << reply.body;
    }
    EXPECT_EQ(json::parse(backend.stats())["requests"], 0);
    for (int i = 0; i < 2; ++i) {
        auto served = request(gw->gatewayPort(), "POST", "http://llm.example/v1/chat/completions",
                              body, {{"x-tenant", "team-a"}});
        EXPECT_EQ(served.status, 200u) << served.body;
        EXPECT_EQ(served.headers["x-ratelimit-limit-tokens"], "400") << "budgeted";
    }
    auto third = request(gw->gatewayPort(), "POST", "http://llm.example/v1/chat/completions", body,
                         {{"x-tenant", "team-a"}});
    EXPECT_EQ(third.status, 429u) << third.body;
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2);
    // Other paths pass through as they are written.
    auto other = request(gw->gatewayPort(), "GET", "/health%20check", "");
    EXPECT_NE(other.status, 400u) << other.body;
}

TEST(WaypointGateway, FallsBackToNextPoolOnBackendFailureWithTheModelRewritten) {
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

    // A repeated key is read as its last value, and every backend gets the body with that one
    // only: a parser that keeps the first (some do) is not sent the client's other model, on
    // the first attempt (no rewrite) or on the fallback (rewritten).
    const std::string body = R"({"model":"big-expensive","max_tokens":2,)"
                             R"("messages":[{"role":"user","content":"hi"}],"model":"gpt-4o"})";
    reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", body);
    ASSERT_EQ(reply.status, 200u) << reply.body;
    EXPECT_EQ(reply.headers["x-backend"], "backup");
    EXPECT_EQ(json::parse(broken.stats())["last_body"],
              R"({"max_tokens":2,"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o"})");
    EXPECT_EQ(json::parse(backup.stats())["last_body"],
              R"({"max_tokens":2,"messages":[{"role":"user","content":"hi"}],)"
              R"("model":"gpt-4o-mini"})");
}

TEST(WaypointGateway, LastAttemptRelaysTheBackendError) {
    Emulator broken("broken", {"--fail-status", "500"});
    auto gw = startGateway(baseConfig("\"" + broken.address() + "\""));
    auto reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
    EXPECT_EQ(reply.status, 500u);
    EXPECT_EQ(json::parse(reply.body)["error"]["message"], "emulated failure");
    EXPECT_EQ(json::parse(broken.stats())["requests"], 3);  // first try + 2 retries
}

std::string postRequest(const std::string& body, const std::string& extra_header = "") {
    return "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + extra_header +
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// A connection to the gateway whose streamed chat (`tokens` tokens) has started; what arrived
// so far in `got`.
tcp::socket startStream(asio::io_context& io, unsigned short port, int tokens,
                        std::string* got = nullptr) {
    tcp::socket s = connectTo(io, port);
    asio::write(s, asio::buffer(postRequest(chatBody(true, false, tokens))));
    std::string first(1024, '\0');
    first.resize(s.read_some(asio::buffer(first)));
    if (got)
        *got = first;
    return s;
}

// Streams of 50 tokens 100 ms apart: a client that hangs up is ~5 s early.
struct SlowStreams {
    Emulator backend{"slow"};
    std::unique_ptr<Gateway> gw;
    SlowStreams() {
        backend.configure(R"({"token_delay_ms": 100, "completion_tokens": 50})");
        gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    }
};

TEST(WaypointGateway, ClientDisconnectCancelsTheUpstreamStream) {
    SlowStreams slow;
    {
        asio::io_context io;
        auto s = startStream(io, slow.gw->gatewayPort(), 50);
    }  // the client closes here
    EXPECT_EQ(slow.backend.streamsAborted(), 1);
}

// Clients that hang up mid-stream say nothing about the backend: their attempts are counted as
// the client's (`client_gone`), not as upstream failures that would eject the endpoint after
// `consecutiveFailures` of them (2 here).
TEST(WaypointGateway, ClientsThatHangUpAreNotCountedAsBackendFailures) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 100, "completion_tokens": 50})");
    auto gw = startGateway(R"(
kind: Waypoint
spec:
  pools:
    - name: main
      endpoints: [")" + backend.address() +
                           R"("]
      outlierDetection: {consecutiveFailures: 2}
---
kind: ModelRoute
metadata: {name: chat}
spec: {models: ["*"], backends: [{pool: main}]}
)");
    for (int i = 0; i < 3; ++i) {
        asio::io_context io;
        auto s = startStream(io, gw->gatewayPort(), 50);
    }  // each client hangs up here, mid-stream
    std::string metrics;
    double gone = 0;
    for (int i = 0; i < 100 && gone < 3; ++i) {
        if (i > 0)
            std::this_thread::sleep_for(50ms);
        metrics = request(gw->metricsPort(), "GET", "/metrics").body;
        gone = metricValue(metrics, "sluice_upstream_attempts_total", {{"outcome", "client_gone"}});
    }
    EXPECT_EQ(gone, 3) << metrics;
    EXPECT_EQ(
        metricValue(metrics, "sluice_upstream_attempts_total", {{"outcome", "upstream_failed"}}),
        -1)
        << metrics;
}

// A client that leaves while the upstream connection is still being made closes it: the
// attempt ends at once as client_gone (no connect failure held against the endpoint, and no
// request sent to a backend for nobody). The backend here is a listener whose accept queue is
// full, so the kernel drops the waypoint's SYNs and its connect would wait for the 3 s
// connect timeout.
TEST(WaypointGateway, AClientThatLeavesDuringTheUpstreamConnectEndsTheAttempt) {
    asio::io_context io;
    tcp::acceptor full(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    full.listen(0);
    const auto backend = full.local_endpoint();
    tcp::socket queued(io);
    queued.connect(backend);  // the one connection a backlog of 0 queues: the queue is full
    auto gw = startGateway(R"(
kind: Waypoint
spec:
  limits: {connectTimeout: 3s}
  pools: [{name: main, endpoints: ["127.0.0.1:)" +
                           std::to_string(backend.port()) + R"("]}]
---
kind: ModelRoute
metadata: {name: chat}
spec: {models: ["*"], backends: [{pool: main}]}
)");
    const auto left = std::chrono::steady_clock::now();
    {
        tcp::socket s = connectTo(io, gw->gatewayPort());
        asio::write(s, asio::buffer(postRequest(chatBody(false))));
        std::this_thread::sleep_for(200ms);  // the waypoint is connecting upstream
    }
    std::string metrics;
    double gone = 0;
    while (gone < 1 && std::chrono::steady_clock::now() - left < 2500ms) {
        std::this_thread::sleep_for(20ms);
        metrics = request(gw->metricsPort(), "GET", "/metrics").body;
        gone = metricValue(metrics, "sluice_upstream_attempts_total", {{"outcome", "client_gone"}});
    }
    EXPECT_EQ(gone, 1) << metrics;
    EXPECT_LT(std::chrono::steady_clock::now() - left, 1500ms);
    for (const char* outcome : {"connect_failed", "timeout"}) {
        EXPECT_EQ(metricValue(metrics, "sluice_upstream_attempts_total", {{"outcome", outcome}}),
                  -1)
            << outcome << "\n"
            << metrics;
    }
}

// A pool per backend (pool i at addresses[i], named p<i>) and a route from every model to p0,
// falling back to the others in order, with two retries per request and one retry in flight
// on the whole route (minRetries 1, budgetPercent 0).
std::string oneRetryInFlight(const std::vector<std::string>& addresses) {
    std::string pools, fallbacks;
    for (std::size_t i = 0; i < addresses.size(); ++i) {
        const std::string name = "p" + std::to_string(i);
        pools += "    - {name: " + name + ", endpoints: [\"" + addresses[i] + "\"]}\n";
        if (i > 0)
            fallbacks += (fallbacks.empty() ? "" : ", ") + std::string("{pool: ") + name + "}";
    }
    return "kind: Waypoint\nspec:\n  pools:\n" + pools +
           "---\nkind: ModelRoute\nmetadata: {name: chat}\nspec:\n  models: [\"*\"]\n"
           "  backends: [{pool: p0}]\n  fallbacks: [" +
           fallbacks +
           "]\n  retries: {attempts: 2, budgetPercent: 0, minRetries: 1, backoff: 1ms}\n";
}

// The retry budget counts a retry until the attempt it allowed has ended. With one retry in
// flight allowed, a request whose retry still streams from the fallback leaves none for the
// next one, which gets the failing backend's own 500 (its body, not one of ours: no retry
// could follow, so it is not held back); once the stream ended, the next request is retried.
TEST(WaypointGateway, ARetryCountsAgainstTheBudgetUntilItsAttemptEnds) {
    Emulator failing("failing");
    failing.configure(R"({"fail_status": 500})");
    Emulator slow("slow");
    slow.configure(R"({"token_delay_ms": 100, "completion_tokens": 20})");
    auto gw = startGateway(oneRetryInFlight({failing.address(), slow.address()}));
    asio::io_context io;
    std::string first;
    auto streaming = startStream(io, gw->gatewayPort(), 20, &first);  // 2 s from the fallback
    ASSERT_NE(first.find("HTTP/1.1 200"), std::string::npos) << first;
    const auto refused =
        request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
    EXPECT_EQ(refused.status, 500u);
    EXPECT_NE(refused.body.find("emulated failure"), std::string::npos) << refused.body;
    streaming.close();  // the client leaves: the retried attempt ends
    unsigned status = 0;
    for (int i = 0; i < 40 && status != 200; ++i) {
        if (i > 0)
            std::this_thread::sleep_for(50ms);
        status = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false)).status;
    }
    EXPECT_EQ(status, 200u) << "the retry was never given back";
}

// The one retry a request holds is given back before it asks for the next: with one retry in
// flight allowed, a retried attempt that fails too is held back and retried again (to the
// second fallback), not relayed as the answer.
TEST(WaypointGateway, ARetriedAttemptThatFailsIsRetriedAgainWithinTheBudget) {
    Emulator failing("failing");
    failing.configure(R"({"fail_status": 500})");
    Emulator busy("busy");
    busy.configure(R"({"fail_status": 503})");
    Emulator ok("ok");
    auto gw = startGateway(oneRetryInFlight({failing.address(), busy.address(), ok.address()}));
    const auto reply = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
    EXPECT_EQ(reply.status, 200u) << reply.body;
}

// A request pipelined behind a stream, sent once the stream runs: the watch reads it aside
// (waiting on a socket that holds unread bytes would wake at once, again and again) and it is
// served after the stream.
TEST(WaypointGateway, APipelinedRequestWaitsForTheStreamWithoutSpinning) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 100, "completion_tokens": 6})");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    asio::io_context io;
    std::string got;
    auto s = startStream(io, gw->gatewayPort(), 6, &got);
    const double cpu_before = processCpuSeconds();
    const auto started = std::chrono::steady_clock::now();
    asio::write(s, asio::buffer(postRequest(chatBody(false), "Connection: close\r\n")));
    error_code ec;
    for (char buf[4096]; !ec;)
        got.append(buf, s.read_some(asio::buffer(buf), ec));
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const auto done = got.find("data: [DONE]");
    ASSERT_NE(done, std::string::npos) << got;
    EXPECT_NE(got.find("\"object\":\"chat.completion\"", done), std::string::npos) << got;
    EXPECT_GT(elapsed, 0.3);  // the stream took its time …
    EXPECT_LT(processCpuSeconds() - cpu_before, 0.3 * elapsed) << "… and the worker slept";
}

// The same client hanging up mid-stream is still noticed: the watch reads its pipelined bytes
// and then the end of the stream.
TEST(WaypointGateway, APipeliningClientThatHangsUpCancelsTheStream) {
    SlowStreams slow;
    {
        asio::io_context io;
        auto s = startStream(io, slow.gw->gatewayPort(), 50);
        asio::write(s, asio::buffer(std::string("POST /v1/chat/completions HTTP/1.1\r\n")));
        std::this_thread::sleep_for(50ms);  // the watch has read them aside
    }
    EXPECT_EQ(slow.backend.streamsAborted(), 1);
}

// read_some that gives up (timed_out) when nothing came within `limit`: a test that fails must
// not hang.
std::size_t readWithin(tcp::socket& s, asio::mutable_buffer buf, std::chrono::milliseconds limit,
                       error_code& ec) {
    pollfd p{.fd = s.native_handle(), .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) {
        ec = asio::error::timed_out;
        return 0;
    }
    return s.read_some(buf, ec);
}

// Everything that arrives until the connection ends (`ec`: eof, a reset, or timed_out after 5 s
// of silence).
std::string readUntilEnd(tcp::socket& s, error_code& ec) {
    std::string got;
    char buf[65536];
    for (std::size_t n; !ec && (n = readWithin(s, asio::buffer(buf), 5000ms, ec)) > 0;)
        got.append(buf, n);
    return got;
}

// A graceful stop: an HTTP/1.1 stream in flight finishes whole, a kept-alive connection that
// waits for its next request is closed at once, and stop() returns once the stream is done.
TEST(WaypointGateway, StopFinishesTheHttp1StreamInFlightAndClosesIdleConnections) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 200, "completion_tokens": 5})");
    auto gw = startGateway(
        "kind: Waypoint\nspec:\n  limits: {drainTimeout: 5s}\n  pools: [{name: "
        "main, endpoints: [\"" +
        backend.address() +
        "\"]}]\n---\nkind: ModelRoute\nmetadata: {name: chat}\nspec:\n  "
        "models: [\"*\"]\n  timeout: 10s\n  backends: [{pool: main}]\n");
    asio::io_context io;
    tcp::socket idle = connectTo(io, gw->gatewayPort());
    asio::write(idle, asio::buffer(std::string("GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")));
    beast::flat_buffer idle_buffer;
    http::response<http::string_body> models;
    http::read(idle, idle_buffer, models);
    ASSERT_EQ(models.result_int(), 200u);
    ASSERT_TRUE(models.keep_alive());

    std::string got;
    auto s = startStream(io, gw->gatewayPort(), 5, &got);
    const auto started = std::chrono::steady_clock::now();
    std::thread stopper([&] { gw->stop(); });
    error_code ec;
    char buf[4096];
    readWithin(idle, asio::buffer(buf), 500ms, ec);
    EXPECT_EQ(ec, asio::error::eof) << "the idle connection is closed at once, not left open";
    for (ec = {}; !ec;)
        got.append(buf, readWithin(s, asio::buffer(buf), 3000ms, ec));
    stopper.join();
    const auto took = std::chrono::steady_clock::now() - started;
    EXPECT_EQ(ec, asio::error::eof) << "the connection closes once the stream is done";
    EXPECT_NE(got.find("data: [DONE]"), std::string::npos) << got;
    EXPECT_TRUE(got.ends_with("\r\n0\r\n\r\n")) << "the chunked body ends whole: " << got;
    EXPECT_GT(took, 300ms) << "stop() waited for the stream";
    EXPECT_LT(took, 4000ms);
    EXPECT_EQ(backend.streamsAborted(0ms), 0);
}

// A request that has begun to arrive when a graceful stop starts is read whole and answered
// (with Connection: close), not cut off: only a connection with nothing of its next request
// there is closed at once.
TEST(WaypointGateway, StopAnswersARequestThatHadBegunToArrive) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    asio::io_context io;
    tcp::socket s = connectTo(io, gw->gatewayPort());
    const std::string request = postRequest(chatBody(false));
    const size_t half = request.find("\r\n") + 2;  // the request line only
    asio::write(s, asio::buffer(request.substr(0, half)));
    std::this_thread::sleep_for(50ms);  // the gateway has read it
    std::thread stopper([&] { gw->stop(); });
    std::this_thread::sleep_for(100ms);  // the GOAWAY has reached the connection
    asio::write(s, asio::buffer(request.substr(half)));
    std::string got;
    char buf[4096];
    error_code ec;
    for (; !ec;)
        got.append(buf, readWithin(s, asio::buffer(buf), 3000ms, ec));
    stopper.join();
    EXPECT_EQ(ec, asio::error::eof) << ec.message();
    EXPECT_TRUE(got.starts_with("HTTP/1.1 200")) << got;
    EXPECT_NE(got.find("Connection: close"), std::string::npos) << got;
    EXPECT_NE(got.find("\"usage\""), std::string::npos) << got;
}

// Answers without a body keep a kept-alive connection in step: a HEAD's Content-Length is the
// GET's (no body follows), a 204/304 gets no chunked framing of ours.
// A waypoint with one pool (the backend) and one route for `models` (a YAML list).
std::unique_ptr<Gateway> onePoolGateway(const Emulator& backend, const std::string& models) {
    return startGateway("kind: Waypoint\nspec:\n  pools:\n    - {name: main, endpoints: [\"" +
                        backend.address() +
                        "\"]}\n---\nkind: ModelRoute\nmetadata: {name: route}\nspec:\n"
                        "  models: " +
                        models + "\n  backends: [{pool: main}]\n");
}

TEST(WaypointGateway, BodilessAnswersKeepTheConnectionInStep) {
    Emulator backend("a");
    auto gw = onePoolGateway(backend, "[\"*\"]");
    const std::string got = rawExchange(gw->gatewayPort(),
                                        "HEAD /v1/files HTTP/1.1\r\nHost: x\r\n\r\n"
                                        "GET /emulator/status/204 HTTP/1.1\r\nHost: x\r\n\r\n"
                                        "GET /emulator/status/304 HTTP/1.1\r\nHost: x\r\n\r\n" +
                                            postRequest(chatBody(false), "Connection: close\r\n"));
    const auto head = got.find("HTTP/1.1 200");
    const auto no_content = got.find("HTTP/1.1 204");
    const auto not_modified = got.find("HTTP/1.1 304");
    const auto chat = got.find("HTTP/1.1 200", head + 1);
    ASSERT_NE(head, std::string::npos) << got;
    ASSERT_NE(no_content, std::string::npos) << got;
    ASSERT_NE(not_modified, std::string::npos) << got;
    ASSERT_NE(chat, std::string::npos) << got;
    EXPECT_TRUE(head < no_content && no_content < not_modified && not_modified < chat) << got;
    const std::string head_reply = got.substr(head, no_content - head);
    EXPECT_NE(head_reply.find("Content-Length: 42\r\n"), std::string::npos) << head_reply;
    EXPECT_TRUE(head_reply.ends_with("\r\n\r\n")) << "no body after the HEAD answer";
    for (const auto& reply : {got.substr(no_content, not_modified - no_content),
                              got.substr(not_modified, chat - not_modified)}) {
        EXPECT_EQ(reply.find("Transfer-Encoding"), std::string::npos) << reply;
        EXPECT_TRUE(reply.ends_with("\r\n\r\n")) << reply;
    }
    EXPECT_NE(got.find("\"object\":\"chat.completion\"", chat), std::string::npos) << got;
}

// The waypoint's own answers to HEAD (here: no route for the path) carry the length and no body:
// a body after the head would be read as the start of the next response on the connection.
TEST(WaypointGateway, AnOwnAnswerToHeadHasNoBody) {
    Emulator backend("a");
    auto gw = onePoolGateway(backend, "[gpt-4o]");
    const std::string got =
        rawExchange(gw->gatewayPort(),
                    "HEAD /v1/files HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    ASSERT_TRUE(got.starts_with("HTTP/1.1 4")) << got;
    const auto models = got.find("HTTP/1.1 200");
    ASSERT_NE(models, std::string::npos) << got;
    const std::string head_reply = got.substr(0, models);
    EXPECT_TRUE(head_reply.ends_with("\r\n\r\n")) << "a body after the HEAD answer: " << got;
    EXPECT_NE(head_reply.find("Content-Length: "), std::string::npos) << head_reply;
    EXPECT_EQ(head_reply.find("Content-Length: 0\r\n"), std::string::npos) << head_reply;
    EXPECT_NE(got.find("\"object\":\"list\"", models), std::string::npos) << got;
}

// A client that sends `Expect: 100-continue` gets the waypoint's own interim 100 at once and
// sends its body then (curl waits 1 s for it otherwise). The Expect is not passed on: the
// backend's interim 100 would be relayed as the answer, and the one the client sees is ours.
TEST(WaypointGateway, ExpectContinueIsAnsweredHereAndNotPassedToTheBackend) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    asio::io_context io;
    tcp::socket s = connectTo(io, gw->gatewayPort());
    const std::string request =
        postRequest(chatBody(false), "Expect: 100-continue\r\nConnection: close\r\n");
    const size_t head_end = request.find("\r\n\r\n") + 4;
    asio::write(s, asio::buffer(request.substr(0, head_end)));
    char buf[4096];
    error_code ec;
    const std::string interim(buf, readWithin(s, asio::buffer(buf), 500ms, ec));
    EXPECT_EQ(interim, "HTTP/1.1 100 Continue\r\n\r\n") << ec.message();
    asio::write(s, asio::buffer(request.substr(head_end)));
    std::string got;
    for (ec = {}; !ec;)
        got.append(buf, readWithin(s, asio::buffer(buf), 3000ms, ec));
    EXPECT_EQ(ec, asio::error::eof);
    EXPECT_TRUE(got.starts_with("HTTP/1.1 200")) << got;
    EXPECT_EQ(got.find("HTTP/1.1 100"), std::string::npos) << "one interim 100 only: " << got;
    EXPECT_NE(got.find("\"usage\""), std::string::npos) << got;
}

// A backend's interim answers (103 Early Hints) are read past, not taken for the answer: the
// client gets the final 200, and the pooled backend connection stays in step for the next one.
TEST(WaypointGateway, InterimAnswersFromTheBackendAreSkipped) {
    Emulator backend("a");
    backend.configure(R"({"early_hints": 2})");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string got =
        rawExchange(gw->gatewayPort(), postRequest(chatBody(false)) +
                                           postRequest(chatBody(false), "Connection: close\r\n"));
    EXPECT_EQ(got.find("HTTP/1.1 103"), std::string::npos) << got;
    EXPECT_TRUE(got.starts_with("HTTP/1.1 200")) << got;
    const size_t second = got.find("HTTP/1.1 200", 1);
    ASSERT_NE(second, std::string::npos) << got;
    EXPECT_NE(got.find("\"usage\"", second), std::string::npos) << got;
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2);
}

// The bytes both ways are the client's and the backend's, framed by the waypoint: the backend
// gets the client's fields in their order without the hop-by-hop ones, the client's trace id in a
// traceparent of ours, Accept-Encoding: identity (the API's answers are read) and the body's
// length; the client gets the backend's status line in its
// own HTTP version, the backend's fields with the route's header in place of the backend's
// field of that name, the length, and Connection as its version needs it (HTTP/1.0 keep-alive,
// HTTP/1.1 close). Both requests go over one backend connection.
TEST(WaypointGateway, HeadersAreRelayedInOrderWithOurFraming) {
    RawBackend backend(
        "HTTP/1.1 201 Made\r\nX-B: 1\r\nX-Sluice-Route: fake\r\nConnection: keep-alive\r\n"
        "Keep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
        2);
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string body = chatBody(false);
    const std::string trace_id = "0af7651916cd43dd8448eb211c80319c";
    const std::string first =
        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        "X-Custom: a\r\nTraceparent: 00-" +
        trace_id + "-b7ad6b7169203331-01\r\nContent-Type: application/json\r\nContent-Length: " +
        std::to_string(body.size()) + "\r\n\r\n" + body;
    const std::string got =
        rawExchange(gw->gatewayPort(), first + postRequest(body, "Connection: close\r\n"));
    EXPECT_EQ(got,
              "HTTP/1.0 201 Made\r\nX-B: 1\r\nx-sluice-route: chat;weighted:main\r\n"
              "Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
              "HTTP/1.1 201 Made\r\nX-B: 1\r\nx-sluice-route: chat;weighted:main\r\n"
              "Content-Length: 2\r\nConnection: close\r\n\r\nok");
    const auto requests = backend.requests();
    ASSERT_EQ(requests.size(), 2u);
    const std::string length = "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    const std::regex upstream_first(
        "POST /v1/chat/completions HTTP/1\\.1\r\nHost: x\r\nX-Custom: a\r\n"
        "Content-Type: application/json\r\ntraceparent: 00-" +
        trace_id + "-[0-9a-f]{16}-01\r\nAccept-Encoding: identity\r\n" + length);
    const std::regex upstream_second(
        "POST /v1/chat/completions HTTP/1\\.1\r\nHost: x\r\n"
        "traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-01\r\nAccept-Encoding: identity\r\n" +
        length);
    EXPECT_TRUE(
        std::regex_match(requests[0].substr(0, requests[0].size() - body.size()), upstream_first))
        << requests[0];
    EXPECT_TRUE(requests[0].ends_with(body));
    EXPECT_TRUE(
        std::regex_match(requests[1].substr(0, requests[1].size() - body.size()), upstream_second))
        << requests[1];
    EXPECT_EQ(requests[0].find("b7ad6b7169203331"), std::string::npos) << "a span id of ours";
    EXPECT_EQ(backend.connections(), 1u);
}

// An HTTP/1.0 client knows no chunked coding (RFC 9112 §6.1: a server must not send it
// Transfer-Encoding): a body of unknown length, or a stream, reaches it as raw bytes that the
// end of the connection delimits, even when it asked to keep the connection alive.
TEST(WaypointGateway, AnHttp10ClientGetsUnknownLengthBodiesDelimitedByTheClose) {
    RawBackend backend(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        "no length here",
        1);
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string body = chatBody(false);
    const std::string got = rawExchange(gw->gatewayPort(),
                                        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\n"
                                        "Connection: keep-alive\r\nContent-Length: " +
                                            std::to_string(body.size()) + "\r\n\r\n" + body);
    EXPECT_EQ(got,
              "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
              "x-sluice-route: chat;weighted:main\r\n\r\nno length here");
}

TEST(WaypointGateway, AnHttp10ClientGetsAStreamUnchunked) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string body = chatBody(true, false, 3);
    const std::string got = rawExchange(gw->gatewayPort(),
                                        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\n"
                                        "Content-Length: " +
                                            std::to_string(body.size()) + "\r\n\r\n" + body);
    ASSERT_TRUE(got.starts_with("HTTP/1.0 200")) << got;
    const auto head_end = got.find("\r\n\r\n");
    ASSERT_NE(head_end, std::string::npos) << got;
    const std::string head = got.substr(0, head_end);
    EXPECT_EQ(head.find("Transfer-Encoding"), std::string::npos) << head;
    EXPECT_EQ(head.find("Connection: keep-alive"), std::string::npos) << head;
    const std::string events = got.substr(head_end + 4);
    EXPECT_TRUE(events.starts_with("data: {")) << events;
    EXPECT_TRUE(events.ends_with("data: [DONE]\n\n")) << events;
    EXPECT_EQ(events.find("\"usage\""), std::string::npos) << "the injected usage chunk leaked";
}

// Trailer fields of a chunked request are dropped (RFC 9110 §6.5.1: a recipient must not merge
// them into the header section): they never reach the backend as fields, so a field a proxy in
// front checked in the header (a tenant's) cannot be given again after the body. Beast files a
// trailer next to the header field of its name, not at the end: the fields after it stay.
TEST(WaypointGateway, RequestTrailersAreDroppedNotMergedIntoTheHeader) {
    RawBackend backend("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 1);
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string body = chatBody(false);
    std::ostringstream chunked;
    chunked << std::hex << body.size() << "\r\n"
            << body << "\r\n0\r\nX-Tenant: mallory\r\nX-Trailing: yes\r\n\r\n";
    const std::string got =
        rawExchange(gw->gatewayPort(),
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Tenant: alice\r\n"
                    "Connection: close\r\nTransfer-Encoding: chunked\r\n"
                    "Content-Type: application/json\r\n\r\n" +
                        chunked.str());
    EXPECT_TRUE(got.starts_with("HTTP/1.1 200")) << got;
    const auto requests = backend.requests();
    ASSERT_EQ(requests.size(), 1u);
    EXPECT_TRUE(
        requests[0].starts_with("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                "X-Tenant: alice\r\nContent-Type: application/json\r\n"))
        << requests[0];
    EXPECT_EQ(requests[0].find("mallory"), std::string::npos) << requests[0];
    EXPECT_EQ(requests[0].find("X-Trailing"), std::string::npos) << requests[0];
    EXPECT_TRUE(requests[0].ends_with(body)) << requests[0];
}

// A stream is never sent to an HTTP/1.0 client with the backend's Content-Length: the filters
// may drop events (here the usage chunk the waypoint asked for and the client did not), so the
// close delimits it.
TEST(WaypointGateway, AnHttp10ClientGetsAStreamWithoutTheBackendsLength) {
    const std::string token =
        R"(data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]})"
        "\n\n";
    const std::string usage =
        R"(data: {"object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,)"
        R"("completion_tokens":1,"total_tokens":10}})"
        "\n\n";
    const std::string events = token + usage + "data: [DONE]\n\n";
    RawBackend backend("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: " +
                           std::to_string(events.size()) + "\r\n\r\n" + events,
                       1);
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string body = chatBody(true, false, 1);
    const std::string got = rawExchange(gw->gatewayPort(),
                                        "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\n"
                                        "Content-Length: " +
                                            std::to_string(body.size()) + "\r\n\r\n" + body);
    const auto head_end = got.find("\r\n\r\n");
    ASSERT_NE(head_end, std::string::npos) << got;
    EXPECT_EQ(got.substr(0, head_end).find("Content-Length"), std::string::npos) << got;
    EXPECT_EQ(got.substr(head_end + 4), token + "data: [DONE]\n\n");
}

// A response larger than the socket buffers reaches a client that reads late whole and in
// order: what a send does not take at once is written when the client has room again.
TEST(WaypointGateway, ALargeResponseReachesASlowReaderWhole) {
    const std::string payload = patternedBytes(24u << 20);
    RawBackend backend(okWithBody(payload), 1);
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    asio::io_context io;
    tcp::socket s = connectWithSmallWindow(io, gw->gatewayPort());
    asio::write(s, asio::buffer(postRequest(chatBody(false), "Connection: close\r\n")));
    std::this_thread::sleep_for(300ms);  // the socket buffers on the way fill up meanwhile
    error_code ec;
    const std::string got = readUntilEnd(s, ec);
    EXPECT_EQ(ec, asio::error::eof) << ec.message();
    EXPECT_TRUE(isOkWithBody(got, payload));
}

// A client that stops reading is cut off once its zero window has held the waypoint's writes for
// the idle timeout, and its upstream stream is abandoned (without the bound: never).
TEST(WaypointGateway, AClientThatStopsReadingIsCutOffAfterTheIdleTimeout) {
    Emulator backend("a");
    backend.configure(R"({"completion_tokens": 200000})");  // ~25 MB of events, no delay
    auto gw = startGateway(limitsConfig(backend, "idleTimeout: 1s"));
    asio::io_context io;
    tcp::socket s = connectWithSmallWindow(io, gw->gatewayPort());
    const auto sent = std::chrono::steady_clock::now();
    asio::write(s, asio::buffer(postRequest(chatBody(true, false, 200000))));
    while (backend.streamsAborted() == 0 && std::chrono::steady_clock::now() - sent < 20s)
        std::this_thread::sleep_for(50ms);
    const auto after = std::chrono::steady_clock::now() - sent;
    ASSERT_EQ(backend.streamsAborted(), 1) << "the stream was not abandoned within 20 s";
    EXPECT_GE(after, 1s);
    // What the socket buffers held still arrives, then the connection is gone: the waypoint's
    // end no longer exists (a reset), and the stream never ended.
    error_code ec;
    const std::string got = readUntilEnd(s, ec);
    EXPECT_EQ(ec, asio::error::connection_reset) << ec.message();
    EXPECT_TRUE(got.starts_with("HTTP/1.1 200")) << got.substr(0, 200);
    EXPECT_EQ(got.find("[DONE]"), std::string::npos);
    EXPECT_LT(got.size(), 8u << 20);
}

// Bytes that are not UTF-8 in a tenant header reach the access log as U+FFFD; the line is
// written and the request served (JSON text must be UTF-8, and a strict dump throws on them).
TEST(WaypointGateway, AccessLogTakesHeaderBytesThatAreNotUtf8) {
    Emulator backend("a");
    LogCapture log;
    {
        auto gw = startGateway(budgetConfig(backend, 100000), true);
        const std::string got = rawExchange(
            gw->gatewayPort(),
            postRequest(chatBody(false), "Connection: close\r\nx-tenant: t\xfe\xff\r\n"));
        EXPECT_TRUE(got.starts_with("HTTP/1.1 200")) << got.substr(0, 200);
        gw->stop();
    }
    const auto entries = accessEntries(log.text());
    ASSERT_EQ(entries.size(), 1u) << log.text();
    EXPECT_EQ(entries[0]["tenant"], "t\xEF\xBF\xBD\xEF\xBF\xBD");
    EXPECT_EQ(entries[0]["status"], 200);
}

// An error reply ends its connection with one lingering close: our FIN at once, then the
// client's bytes are read and dropped for at most 1 s while it says nothing more (twice, with
// the connection's own end lingering again, before).
TEST(WaypointServer, AnErrorReplyLingersOnceBeforeTheClose) {
    auto gw = startGateway(baseConfig("\"127.0.0.1:9\""));
    asio::io_context io;
    tcp::socket s = connectTo(io, gw->gatewayPort());
    asio::write(s, asio::buffer(std::string("NOT HTTP AT ALL\r\n\r\n")));
    error_code ec;
    std::string got;
    char buf[4096];
    while (!ec && got.find("\r\n\r\n") == std::string::npos)
        got.append(buf, readWithin(s, asio::buffer(buf), 5000ms, ec));
    ASSERT_TRUE(got.starts_with("HTTP/1.1 400")) << got;
    const auto replied = std::chrono::steady_clock::now();
    while (!ec)
        readWithin(s, asio::buffer(buf), 5000ms, ec);  // the rest of the reply, then our FIN
    EXPECT_EQ(ec, asio::error::eof) << ec.message();
    // Our FIN came; the connection is closed once the linger gave up on the client's.
    s.set_option(asio::socket_base::linger(false, 0));
    const int fd = s.native_handle();
    bool closed = false;
    while (!closed && std::chrono::steady_clock::now() - replied < 5s) {
        // A send to a connection the waypoint has closed fails (RST back); before, it succeeds.
        if (::send(fd, "x", 1, MSG_NOSIGNAL) < 0)
            closed = true;
        else
            std::this_thread::sleep_for(20ms);
    }
    const auto after = std::chrono::steady_clock::now() - replied;
    ASSERT_TRUE(closed) << "the waypoint never closed the connection";
    EXPECT_GE(after, 900ms);
    EXPECT_LT(after, 1700ms) << "lingered more than once";
}

// A handler that throws (a bug) costs its connection, not the worker: the error is logged with
// the request line, the connection ends with a FIN, and the next connection is served.
TEST(WaypointServer, AHandlerThatThrowsEndsItsConnectionAndIsLogged) {
    asio::io_context io;
    tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    const ServerLimits limits;
    std::atomic<int> calls{0};
    const Handler handler = [&calls](Exchange& ex) -> awaitable<void> {
        if (++calls == 1)
            throw std::runtime_error("boom");
        http::response<http::string_body> res{http::status::ok, 11};
        res.body() = "ok";
        res.prepare_payload();
        error_code ec;
        co_await http::async_write(ex.stream, res, noThrow(ec));
    };
    LogCapture log;
    asio::co_spawn(io, acceptLoop(acceptor, limits, handler, nullptr), asio::detached);
    std::thread loop([&io] { io.run(); });
    const auto port = acceptor.local_endpoint().port();
    const std::string first = rawExchange(port, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n");
    const std::string second =
        rawExchange(port, "GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    asio::post(io, [&] { acceptor.close(); });
    loop.join();
    EXPECT_EQ(first, "") << "closed without an answer";
    EXPECT_TRUE(second.starts_with("HTTP/1.1 200")) << second;
    EXPECT_EQ(calls, 2);
    EXPECT_NE(log.text().find("request handler failed on GET /first: boom"), std::string::npos)
        << log.text();
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

// The waypoint reads the API's answers (usage, the cache), so it asks backends for them
// uncompressed, whatever the client accepts; an answer a backend compresses anyway is relayed
// as it came (with its Content-Encoding) but neither read nor cached: a hit would hand gzip
// bytes to clients that never accepted gzip.
TEST(WaypointGateway, ApiAnswersAreAskedUncompressedAndACodedOneIsNotCached) {
    const std::string coded = "\x1f\x8b coded bytes";
    RawBackend backend(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: "
        "gzip\r\nContent-Length: " +
            std::to_string(coded.size()) + "\r\n\r\n" + coded,
        2);
    auto gw = startGateway(
        backendConfig(backend.address(), "  embeddingsCache: {maxBytes: 1048576, ttl: 60s}\n"));
    const std::string body = R"({"model":"text-embedding-3-small","input":["same text"]})";
    for (int i = 0; i < 2; ++i) {
        auto reply = request(gw->gatewayPort(), "POST", "/v1/embeddings", body,
                             {{"Accept-Encoding", "gzip, br"}});
        EXPECT_EQ(reply.status, 200u);
        EXPECT_EQ(reply.body, coded);
        EXPECT_EQ(reply.headers["content-encoding"], "gzip");
        EXPECT_EQ(reply.headers.count("x-sluice-cache"), 0u) << "request " << i;
    }
    const auto seen = backend.requests();
    ASSERT_EQ(seen.size(), 2u);
    for (const auto& r : seen) {
        EXPECT_NE(r.find("Accept-Encoding: identity\r\n"), std::string::npos) << r;
        EXPECT_EQ(r.find("gzip"), std::string::npos) << r;
    }
}

// An answer from a fallback target that rewrote the model is another model's: it is relayed
// but not cached under the model the client asked for.
TEST(WaypointGateway, AFallbackModelsEmbeddingsAreNotCachedForTheModelAsked) {
    Emulator failing("failing");
    failing.configure(R"({"fail_status": 503})");
    Emulator other("other");
    auto gw = startGateway(R"(
kind: Waypoint
spec:
  embeddingsCache: {maxBytes: 1048576, ttl: 60s}
  pools:
    - {name: main, endpoints: [")" +
                           failing.address() + R"("]}
    - {name: other, endpoints: [")" +
                           other.address() + R"("]}
---
kind: ModelRoute
metadata: {name: emb}
spec:
  models: ["*"]
  backends: [{pool: main}]
  fallbacks: [{pool: other, model: other-embedding}]
  retries: {attempts: 1, backoff: 1ms}
)");
    const std::string body = R"({"model":"text-embedding-3-small","input":["same text"]})";
    for (int i = 0; i < 2; ++i) {
        auto reply = request(gw->gatewayPort(), "POST", "/v1/embeddings", body);
        EXPECT_EQ(reply.status, 200u) << reply.body;
        EXPECT_EQ(reply.headers.count("x-sluice-cache"), 0u) << "request " << i;
    }
    EXPECT_EQ(nlohmann::json::parse(other.stats())["requests"], 2);
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

// A gateway that admits one request at a time (`admission` adds to its admission block) in front
// of a backend that streams 8 tokens 100 ms apart: one streamed chat holds the slot ~0.8 s.
std::unique_ptr<Gateway> oneSlotGateway(Emulator& backend, const std::string& admission) {
    backend.configure(R"({"token_delay_ms": 100, "completion_tokens": 8})");
    return startGateway(baseConfig("\"" + backend.address() + "\"", "",
                                   "\n  admission:\n    maxConcurrent: 1" + admission));
}

TEST(WaypointGateway, SaturatedWaypointShedsSheddableFirstAndServesCritical) {
    Emulator backend("slow");
    auto gw = oneSlotGateway(backend, R"(
    maxQueued: 1
    priorityFrom: {header: x-sluice-priority}
)");
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

// A queued client that hangs up gives its queue place back at once, not when the request would
// have been admitted, and its request never goes upstream.
TEST(WaypointGateway, AClientThatHangsUpWhileQueuedLeavesTheQueue) {
    Emulator backend("slow");
    auto gw = oneSlotGateway(backend, "\n    maxQueued: 4\n");
    const std::string body = chatBody(true, false, 8);
    auto first = std::async(std::launch::async, [&] {
        return request(gw->gatewayPort(), "POST", "/v1/chat/completions", body);
    });  // holds the only slot for ~0.8 s
    ASSERT_EQ(waitForMetric(*gw, "sluice_admission_in_flight", {}, 1), 1);

    asio::io_context io;
    tcp::socket client(io);
    client.connect({asio::ip::make_address("127.0.0.1"), gw->gatewayPort()});
    asio::write(client, asio::buffer("POST /v1/chat/completions HTTP/1.1\r\nHost: w\r\n"
                                     "Content-Type: application/json\r\nContent-Length: " +
                                     std::to_string(body.size()) + "\r\n\r\n" + body));
    ASSERT_EQ(waitForMetric(*gw, "sluice_admission_queued", {{"class", "standard"}}, 1), 1);
    const auto hung_up = std::chrono::steady_clock::now();
    client.close();
    EXPECT_EQ(waitForMetric(*gw, "sluice_admission_queued", {{"class", "standard"}}, 0), 0);
    EXPECT_EQ(first.wait_until(hung_up + 100ms), std::future_status::timeout)
        << "the place was given back while the slot was still held, not when it came free";

    EXPECT_EQ(first.get().status, 200u);
    const Reply after = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
    EXPECT_EQ(after.status, 200u);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2) << "the withdrawn request never went";
    const auto metrics = metricsOf(*gw, 3);  // the withdrawn request is recorded too
    EXPECT_EQ(metricValue(metrics, "sluice_requests_shed_total", {}), -1) << "nothing was shed";
    EXPECT_EQ(metricValue(metrics, "istio_requests_total", {{"response_code", "200"}}), 2);
}

// ---- HTTP/2 (h2c with prior knowledge) on the plain listener ------------------------------

// A request body in a file for the command-line HTTP/2 clients.
struct BodyFile {
    explicit BodyFile(const std::string& body) { std::ofstream(path()) << body; }
    std::string path() const { return (dir.path / "body.json").string(); }
    TempDir dir;
};

// `curl --http2-prior-knowledge -i` POSTing `body`: the reply as curl saw it.
Reply curlH2(unsigned short port, const std::string& body, const std::string& extra = "") {
    BodyFile file(body);
    const auto [rc, out] = runCommand(
        "curl -sS --http2-prior-knowledge -i -m 10 -H 'content-type: application/json' " + extra +
        " --data-binary @" + file.path() + " http://127.0.0.1:" + std::to_string(port) +
        "/v1/chat/completions");
    EXPECT_EQ(rc, 0) << out;
    Reply reply;
    const auto end = out.find("\r\n\r\n");
    if (!out.starts_with("HTTP/2 ") || end == std::string::npos)
        return reply;
    reply.status = unsigned(std::stoi(out.substr(7, 3)));
    reply.body = out.substr(end + 4);
    std::istringstream head(out.substr(0, end));
    std::string line;
    std::getline(head, line);
    while (std::getline(head, line)) {
        const auto colon = line.find(": ");
        if (colon != std::string::npos && line.ends_with('\r'))
            reply.headers[line.substr(0, colon)] = line.substr(colon + 2, line.size() - colon - 3);
    }
    return reply;
}

// `nghttp -v` POSTing `body` (`multiply` times, concurrently on one connection): its frame log.
std::string nghttpLog(unsigned short port, const std::string& body, int multiply = 1) {
    BodyFile file(body);
    const auto [rc, out] =
        runCommand("nghttp -v -n -t 10 -m " + std::to_string(multiply) + " -d " + file.path() +
                   " -H 'content-type: application/json' http://127.0.0.1:" + std::to_string(port) +
                   "/v1/chat/completions");
    EXPECT_EQ(rc, 0) << out;
    return out;
}

// Seconds (nghttp's timestamps) of every non-empty DATA frame received on `stream_id`.
std::vector<double> dataFrameTimes(const std::string& log, int stream_id) {
    std::vector<double> times;
    std::istringstream in(log);
    const std::string tail = "stream_id=" + std::to_string(stream_id) + ">";
    for (std::string line; std::getline(in, line);) {
        if (line.find("] recv DATA frame <length=") == std::string::npos ||
            line.find(tail) == std::string::npos || line.find("<length=0,") != std::string::npos) {
            continue;
        }
        times.push_back(std::stod(line.substr(line.find('[') + 1)));
    }
    return times;
}

// An h2 client's Expect: 100-continue is dropped when the stream becomes a request (its body is
// whole by then): the answer is the real one, not a 100 the HTTP/1.1 side would write.
TEST(WaypointH2, ExpectOverH2GetsTheRealAnswer) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    auto via = curlH2(gw->gatewayPort(), chatBody(false), "-H 'Expect: 100-continue'");
    ASSERT_EQ(via.status, 200u) << via.body;
    EXPECT_TRUE(json::parse(via.body)["usage"].is_object()) << via.body;
}

TEST(WaypointH2, NonStreamedChatOverH2cAndHttp11OnTheSamePort) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const auto direct = request(backend.port(), "POST", "/v1/chat/completions", chatBody(false));
    auto via = curlH2(gw->gatewayPort(), chatBody(false));
    ASSERT_EQ(via.status, 200u) << via.body;
    EXPECT_EQ(via.body, direct.body);
    EXPECT_TRUE(json::parse(via.body)["usage"].is_object());
    EXPECT_EQ(via.headers["x-backend"], "a");
    EXPECT_EQ(via.headers["x-sluice-route"], "chat;weighted:main");
    EXPECT_EQ(via.headers.count("connection"), 0u);
    EXPECT_EQ(via.headers.count("transfer-encoding"), 0u);
    auto http1 = request(gw->gatewayPort(), "POST", "/v1/chat/completions", chatBody(false));
    EXPECT_EQ(http1.status, 200u);
    EXPECT_EQ(http1.body, direct.body);
    const auto metrics = metricsOf(*gw, 2);
    EXPECT_EQ(metricValue(metrics, "istio_requests_total", {{"response_code", "200"}}), 2);
}

TEST(WaypointH2, StreamedEventsLeaveAsSeparateDataFramesWithoutDelay) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 200, "completion_tokens": 4})");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const auto log = nghttpLog(gw->gatewayPort(), chatBody(true, false, 4));
    // nghttp's request stream (after its PRIORITY-only streams).
    const auto status = log.find(") :status: 200");
    ASSERT_NE(status, std::string::npos) << log;
    const auto id_at = log.rfind("stream_id=", status) + 10;
    const int id = std::stoi(log.substr(id_at, status - id_at));
    EXPECT_NE(
        log.find("recv (stream_id=" + std::to_string(id) + ") content-type: text/event-stream"),
        std::string::npos);
    const auto times = dataFrameTimes(log, id);
    // 4 token events, the final chunk and [DONE], spread over ~0.8 s: each its own DATA frame.
    ASSERT_GE(times.size(), 5u) << log;
    EXPECT_LT(times.front() + 0.5, times.back()) << log;
    EXPECT_NE(log.find("flags=0x01, stream_id=" + std::to_string(id) + ">\n          ; END_STREAM"),
              std::string::npos)
        << log;
}

TEST(WaypointH2, ConcurrentStreamsOnOneConnectionAreAllAnswered) {
    Emulator backend("a");
    backend.configure(R"({"token_delay_ms": 50, "completion_tokens": 4})");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const auto log = nghttpLog(gw->gatewayPort(), chatBody(true, false, 4), 6);
    std::set<std::string> answered;
    std::istringstream in(log);
    for (std::string line; std::getline(in, line);) {
        const auto at = line.find("recv (stream_id=");
        if (at != std::string::npos && line.ends_with(":status: 200"))
            answered.insert(line.substr(at, line.find(')') - at));
    }
    EXPECT_EQ(answered.size(), 6u) << log;
    EXPECT_EQ(json::parse(backend.stats())["requests"], 6);
}

TEST(WaypointH2, OverBudgetIs429WithRetryAfterOverH2) {
    Emulator backend("a");
    auto gw = startGateway(budgetConfig(backend, 200));
    backend.configure(R"({"completion_tokens": 150})");
    const std::string body = chatBody(false, false, 150);
    auto first = curlH2(gw->gatewayPort(), body, "-H 'x-tenant: team-a'");
    ASSERT_EQ(first.status, 200u) << first.body;
    EXPECT_EQ(first.headers["x-ratelimit-limit-tokens"], "200");
    EXPECT_EQ(first.headers["x-ratelimit-limit-requests"], "100");
    auto over = curlH2(gw->gatewayPort(), body, "-H 'x-tenant: team-a'");
    ASSERT_EQ(over.status, 429u) << over.body;
    EXPECT_EQ(json::parse(over.body)["error"]["code"], "rate_limit_exceeded");
    EXPECT_GE(std::stoi(over.headers["retry-after"]), 1);
    EXPECT_EQ(over.headers["x-ratelimit-limit-tokens"], "200");
}

TEST(WaypointH2, OversizedBodyIsOpenAiShaped413) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    auto reply = curlH2(gw->gatewayPort(), std::string(70000, 'x'));  // limit: 65536
    ASSERT_EQ(reply.status, 413u) << reply.body;
    EXPECT_EQ(json::parse(reply.body)["error"]["type"], "invalid_request_error");
    EXPECT_EQ(json::parse(backend.stats())["requests"], 0);
}

// Only the exact preface switches: other HTTP/2.0 request lines stay HTTP/1.1 400s, and a
// preface with a broken rest is closed by nghttp2 without an HTTP/1.1 reply.
TEST(WaypointH2, OnlyTheExactPrefaceSwitches) {
    Emulator backend("a");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    const std::string get20 = rawExchange(gw->gatewayPort(), "GET / HTTP/2.0\r\n\r\n");
    EXPECT_TRUE(get20.starts_with("HTTP/1.1 400")) << get20;
    EXPECT_NE(get20.find("invalid_request_error"), std::string::npos);
    const std::string broken = rawExchange(gw->gatewayPort(), "PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n");
    EXPECT_EQ(broken.find("HTTP/1.1"), std::string::npos) << broken;
    // A valid preface, an empty SETTINGS and a GOAWAY: the server answers with its SETTINGS
    // frame (type 4 on stream 0) and closes once no stream is left.
    const std::string settings("\0\0\0\x04\0\0\0\0\0", 9);
    const std::string goaway("\0\0\x08\x07\0\0\0\0\0\0\0\0\0\0\0\0\0", 17);
    const std::string good =
        rawExchange(gw->gatewayPort(), "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings + goaway);
    ASSERT_GE(good.size(), 9u) << good;
    EXPECT_EQ(good[3], '\x04');
    EXPECT_EQ(good.find("HTTP/1.1"), std::string::npos);
}

TEST(WaypointH2, RstStreamCancelsTheUpstreamStreamAndTheConnectionLives) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 100, "completion_tokens": 50})");
    auto gw = startGateway(baseConfig("\"" + backend.address() + "\""));
    BodyFile streamed(chatBody(true, false, 50));
    BodyFile plain(chatBody(false));
    const std::string cmd = "/usr/bin/python3 " SLUICE_H2_RESET_CLIENT " --hold 4 --port " +
                            std::to_string(gw->gatewayPort()) + " --streamed " + streamed.path() +
                            " --plain " + plain.path();
    FILE* client = ::popen(cmd.c_str(), "r");
    ASSERT_NE(client, nullptr);
    std::string lines;
    char line[256];
    while (lines.find("second") == std::string::npos && std::fgets(line, sizeof line, client))
        lines += line;
    EXPECT_NE(lines.find("reset\n"), std::string::npos) << lines;
    EXPECT_NE(lines.find("second 200\n"), std::string::npos) << lines;
    // The client still holds the connection (4 s) and the stream would run ~5 s: only the
    // RST_STREAM can have ended it this early.
    EXPECT_EQ(backend.streamsAborted(2500ms), 1);
    EXPECT_EQ(::pclose(client), 0);
}

}  // namespace
}  // namespace sluice::waypoint::test
