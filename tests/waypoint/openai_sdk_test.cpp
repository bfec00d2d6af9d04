// The waypoint driven by the official `openai` npm SDK (tests/waypoint/openai_sdk_client.cjs),
// pointed at a real Gateway on loopback with the emulator fixture behind it: what an application
// gets from the SDK must be what the backend sent, and a tenant over budget must surface as the
// SDK's own RateLimitError.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/process.h"
#include "tests/waypoint/harness.h"

namespace sluice::waypoint::test {
namespace {

using json = nlohmann::json;

std::string sdkConfig(const Emulator& backend) {
    return R"(
apiVersion: sluice.dev/v1alpha1
kind: Waypoint
metadata: {name: sdk}
spec:
  pools: [{name: main, endpoints: [")" +
           backend.address() + R"("]}]
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: all}
spec:
  models: ["gpt-4o", "text-embedding-3-small"]
  timeout: 5s
  backends: [{pool: main}]
---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: keys}
spec:
  tenantFrom: [{apiKey: {header: authorization}}]
  apiKeys: {sk-big: big, sk-small: small}
  limits:
    - {tenant: big, tokensPerMinute: 1000000}
    - {tenant: small, tokensPerMinute: 400}
)";
}

// The concatenated delta contents of an SSE chat stream, and whether a usage chunk came.
std::pair<std::string, bool> streamContent(const std::string& sse) {
    std::string content;
    bool usage = false;
    std::istringstream in(sse);
    for (std::string line; std::getline(in, line);) {
        if (!line.starts_with("data: {"))
            continue;
        const json chunk = json::parse(line.substr(6));
        for (const auto& c : chunk["choices"])
            content += c["delta"].value("content", "");
        usage |= chunk.contains("usage") && chunk["usage"].is_object();
    }
    return {content, usage};
}

// What the backend answers the SDK's chat, asked directly: the whole reply, and the text of
// the streamed one (which has no usage chunk: the SDK does not ask for one).
struct Direct {
    json chat;
    std::string stream;
};

const std::string kChatBody =
    R"({"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"Say hello to the mesh"}]})";

Direct askDirect(const Emulator& backend) {
    Direct d;
    d.chat = json::parse(request(backend.port(), "POST", "/v1/chat/completions", kChatBody,
                                 {{"authorization", "Bearer sk-big"}})
                             .body);
    json stream_body = json::parse(kChatBody);
    stream_body["stream"] = true;
    const auto [content, usage] = streamContent(
        request(backend.port(), "POST", "/v1/chat/completions", stream_body.dump()).body);
    EXPECT_FALSE(content.empty());
    EXPECT_FALSE(usage);
    d.stream = content;
    return d;
}

// Runs tests/waypoint/openai_sdk_client.cjs against `base_url`; what it printed.
json runSdk(const std::string& base_url, std::map<std::string, std::string> env = {}) {
    ProcessSpec spec;
    spec.argv = {"node", SLUICE_OPENAI_SDK_CLIENT, SLUICE_OPENAI_SDK_DIR, base_url};
    spec.env_overrides = std::move(env);
    const ProcessResult r = run_process(spec, std::chrono::seconds(60));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.exit_code == 0 ? json::parse(r.out) : json::object();
}

// The SDK's view of every call matches what the backend sent, and the small tenant's third
// request surfaced as the SDK's RateLimitError.
void expectTheSdkSawTheBackend(const json& out, const Direct& direct) {
    ASSERT_TRUE(out.contains("chat")) << out.dump();
    EXPECT_EQ(out["chat"]["content"], direct.chat["choices"][0]["message"]["content"]);
    EXPECT_EQ(out["chat"]["usage"], direct.chat["usage"]) << "usage reaches the SDK untouched";
    EXPECT_EQ(out["chat"]["finish_reason"], direct.chat["choices"][0]["finish_reason"]);

    // Streamed: the same text chunk by chunk; no usage chunk unless the client asked for one
    // (the waypoint asks the backend for it anyway and strips it again).
    EXPECT_EQ(out["stream"]["content"], direct.stream);
    EXPECT_TRUE(out["stream"]["usage"].is_null()) << out["stream"].dump();
    EXPECT_GT(out["stream"]["chunks"].get<int>(), 1);
    EXPECT_EQ(out["stream_with_usage"]["content"], direct.stream);
    ASSERT_TRUE(out["stream_with_usage"]["usage"].is_object()) << out.dump();
    EXPECT_EQ(out["stream_with_usage"]["usage"]["completion_tokens"],
              direct.chat["usage"]["completion_tokens"]);

    EXPECT_EQ(out["embeddings"]["count"], 2);
    // The SDK asks for base64 and decodes it: 3 float32s per vector, the first 0.1 × (index+1).
    EXPECT_EQ(out["embeddings"]["dimensions"], 3);
    EXPECT_NEAR(out["embeddings"]["first"].get<double>(), 0.2, 1e-6);
    EXPECT_EQ(out["embeddings"]["usage"]["prompt_tokens"], 5);
    EXPECT_EQ(out["models"], json::array({"gpt-4o", "text-embedding-3-small"}));

    ASSERT_EQ(out["small"].size(), 3u) << out["small"].dump();
    EXPECT_EQ(out["small"][0]["status"], 200);
    EXPECT_EQ(out["small"][1]["status"], 200);
    const json& limited = out["small"][2];
    EXPECT_EQ(limited["status"], 429);
    EXPECT_EQ(limited["rate_limit_error"], true);
    EXPECT_EQ(limited["code"], "rate_limit_exceeded");
    EXPECT_EQ(limited["type"], "tokens");
    EXPECT_EQ(limited["limit_tokens"], "400");
    EXPECT_GE(std::stoi(limited["retry_after"].get<std::string>()), 1);
}

TEST(WaypointOpenAiSdk, ChatStreamsEmbeddingsModelsAndRateLimitErrorAsTheSdkSeesThem) {
    Emulator backend("a");
    // 150 completion tokens per answer: the small tenant's 400 tokens/min admit two requests
    // with max_tokens 150 (prompt estimate + 150 reserved, prompt + 150 settled), not three.
    backend.configure(R"({"completion_tokens": 150})");
    auto gw = startGateway(sdkConfig(backend));
    const Direct direct = askDirect(backend);
    expectTheSdkSawTheBackend(
        runSdk("http://127.0.0.1:" + std::to_string(gw->gatewayPort()) + "/v1"), direct);
}

// The same through the TLS listener, the SDK trusting the test CA as an application would
// (NODE_EXTRA_CA_CERTS) and checking the name it connects to.
TEST(WaypointOpenAiSdk, TheSameOverTheTlsListener) {
    TestPki pki;
    pki.issue("gateway", "localhost");
    Emulator backend("a");
    backend.configure(R"({"completion_tokens": 150})");
    auto gw = startGateway(sdkConfig(backend), false, [&pki](Config& c) {
        c.tls.listen = "127.0.0.1:0";
        c.tls.certificate_file = (pki.dir() / "gateway.pem").string();
        c.tls.private_key_file = (pki.dir() / "gateway.key").string();
    });
    const Direct direct = askDirect(backend);
    const std::string base = "https://localhost:" + std::to_string(gw->tlsPort()) + "/v1";
    expectTheSdkSawTheBackend(runSdk(base, {{"NODE_EXTRA_CA_CERTS", pki.ca()}}), direct);
    const std::string metrics = request(gw->metricsPort(), "GET", "/metrics").body;
    EXPECT_GE(metricValue(metrics, "sluice_gateway_tls_handshakes_total", {{"result", "http/1.1"}}),
              1);
    // Without the CA the SDK refuses the server: the certificate is what it checks.
    ProcessSpec spec;
    spec.argv = {"node", SLUICE_OPENAI_SDK_CLIENT, SLUICE_OPENAI_SDK_DIR, base};
    const ProcessResult untrusted = run_process(spec, std::chrono::seconds(60));
    EXPECT_NE(untrusted.exit_code, 0);
    EXPECT_NE(untrusted.err.find("UNABLE_TO_VERIFY_LEAF_SIGNATURE"), std::string::npos)
        << untrusted.err;
}

}  // namespace
}  // namespace sluice::waypoint::test
