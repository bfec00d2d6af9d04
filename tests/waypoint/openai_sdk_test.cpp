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

TEST(WaypointOpenAiSdk, ChatStreamsEmbeddingsModelsAndRateLimitErrorAsTheSdkSeesThem) {
    Emulator backend("a");
    // 150 completion tokens per answer: the small tenant's 400 tokens/min admit two requests
    // with max_tokens 150 (prompt estimate + 150 reserved, prompt + 150 settled), not three.
    backend.configure(R"({"completion_tokens": 150})");
    auto gw = startGateway(sdkConfig(backend));
    const std::string chat_body =
        R"({"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"Say hello to the mesh"}]})";
    const json direct = json::parse(request(backend.port(), "POST", "/v1/chat/completions",
                                            chat_body, {{"authorization", "Bearer sk-big"}})
                                        .body);
    json stream_body = json::parse(chat_body);
    stream_body["stream"] = true;
    const auto [direct_stream, direct_stream_usage] = streamContent(
        request(backend.port(), "POST", "/v1/chat/completions", stream_body.dump()).body);
    ASSERT_FALSE(direct_stream.empty());
    ASSERT_FALSE(direct_stream_usage);

    ProcessSpec spec;
    spec.argv = {"node", SLUICE_OPENAI_SDK_CLIENT, SLUICE_OPENAI_SDK_DIR,
                 "http://127.0.0.1:" + std::to_string(gw->gatewayPort()) + "/v1"};
    const ProcessResult r = run_process(spec, std::chrono::seconds(60));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const json out = json::parse(r.out);

    EXPECT_EQ(out["chat"]["content"], direct["choices"][0]["message"]["content"]);
    EXPECT_EQ(out["chat"]["usage"], direct["usage"]) << "usage reaches the SDK untouched";
    EXPECT_EQ(out["chat"]["finish_reason"], direct["choices"][0]["finish_reason"]);

    // Streamed: the same text chunk by chunk; no usage chunk unless the client asked for one
    // (the waypoint asks the backend for it anyway and strips it again).
    EXPECT_EQ(out["stream"]["content"], direct_stream);
    EXPECT_TRUE(out["stream"]["usage"].is_null()) << out["stream"].dump();
    EXPECT_GT(out["stream"]["chunks"].get<int>(), 1);
    EXPECT_EQ(out["stream_with_usage"]["content"], direct_stream);
    ASSERT_TRUE(out["stream_with_usage"]["usage"].is_object()) << out.dump();
    EXPECT_EQ(out["stream_with_usage"]["usage"]["completion_tokens"],
              direct["usage"]["completion_tokens"]);

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

}  // namespace
}  // namespace sluice::waypoint::test
