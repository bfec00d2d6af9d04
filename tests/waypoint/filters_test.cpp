// Unit tests of the waypoint filters and building blocks, without sockets.
#include <gtest/gtest.h>

#include <map>

#include "waypoint/config.h"
#include "waypoint/filters/budget/filter.h"
#include "waypoint/filters/route/filter.h"
#include "waypoint/filters/usage/filter.h"
#include "waypoint/http/sse.h"
#include "waypoint/lb/pool.h"

namespace sluice::waypoint {
namespace {

using namespace std::chrono_literals;

struct FakeClock {
    std::chrono::steady_clock::time_point now = std::chrono::steady_clock::time_point{} + 1h;
    std::int64_t day = 20'000;
};

struct Call {
    Request request{http::verb::post, "/v1/chat/completions", 11};
    RequestContext ctx{request};
    Call(const std::string& tenant, std::uint64_t prompt, std::uint64_t max_tokens) {
        request.set("x-tenant", tenant);
        ctx.api = "chat";
        ctx.model = "gpt-4o";
        ctx.estimated_prompt_tokens = prompt;
        ctx.max_output_tokens = max_tokens;
    }
};

// Completes a call as a backend that reported `prompt` + `completion` tokens.
void settle(budget::BudgetFilter& filter, Call& c, std::uint64_t prompt, std::uint64_t completion) {
    c.ctx.backend = "b";
    c.ctx.status = 200;
    c.ctx.usage = {.prompt_tokens = prompt, .completion_tokens = completion, .reported = true};
    filter.onComplete(c.ctx);
}

budget::TokenBudgetConfig budgetConfig(budget::BudgetLimit limit) {
    budget::TokenBudgetConfig c;
    c.tenant_from = {{budget::TenantSource::Kind::Header, "x-tenant"}};
    c.limits = {limit};
    return c;
}

TEST(BudgetFilter, TokensPerMinuteRejectsThenRecoversAfterTheWindow) {
    FakeClock clock;
    budget::BudgetFilter filter(
        budgetConfig({.tokens_per_minute = 1000}), nullptr, [&] { return clock.now; },
        [&] { return clock.day; });
    for (int i = 0; i < 4; ++i) {
        Call c("a", 50, 200);  // reserves 250
        ASSERT_FALSE(filter.onRequest(c.ctx)) << i;
        settle(filter, c, 50, 200);
    }
    Call over("a", 50, 200);
    auto reply = filter.onRequest(over.ctx);
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, http::status::too_many_requests);
    EXPECT_EQ(reply->type, "tokens");
    std::map<std::string, std::string> h(reply->headers.begin(), reply->headers.end());
    EXPECT_EQ(h["x-ratelimit-remaining-tokens"], "0");
    EXPECT_EQ(h["retry-after"], "15");  // 250 tokens at 1000/min
    Call other("b", 50, 200);
    EXPECT_FALSE(filter.onRequest(other.ctx));
    clock.now += 15s;
    Call later("a", 50, 200);
    EXPECT_FALSE(filter.onRequest(later.ctx));
}

TEST(BudgetFilter, ReservationIsSettledWithRealUsageIncludingOvershoot) {
    FakeClock clock;
    budget::BudgetFilter filter(
        budgetConfig({.tokens_per_minute = 1000}), nullptr, [&] { return clock.now; },
        [&] { return clock.day; });
    Call small("a", 10, 90);  // reserves 100, uses 20 → 980 left
    ASSERT_FALSE(filter.onRequest(small.ctx));
    settle(filter, small, 10, 10);
    Call big("a", 10, 90);  // reserves 100, but the stream used 1500: debt
    ASSERT_FALSE(filter.onRequest(big.ctx));
    settle(filter, big, 10, 1490);
    Call next("a", 1, 1);
    EXPECT_TRUE(filter.onRequest(next.ctx));  // in debt: no overshoot carried into later calls
    clock.now += 60s;
    Call after("a", 1, 1);
    EXPECT_FALSE(filter.onRequest(after.ctx));
}

TEST(BudgetFilter, FailedRequestsAreRefundedAndConcurrencyIsBounded) {
    FakeClock clock;
    budget::BudgetFilter filter(
        budgetConfig({.tokens_per_minute = 100, .max_concurrent = 1}), nullptr,
        [&] { return clock.now; }, [&] { return clock.day; });
    Call first("a", 10, 80);
    ASSERT_FALSE(filter.onRequest(first.ctx));
    Call second("a", 1, 1);
    auto busy = filter.onRequest(second.ctx);
    ASSERT_TRUE(busy);
    EXPECT_EQ(busy->type, "requests");
    first.ctx.status = 502;  // no usage, no backend answer
    filter.onComplete(first.ctx);
    Call third("a", 10, 80);
    EXPECT_FALSE(filter.onRequest(third.ctx));  // refunded and the slot is free again
}

TEST(BudgetFilter, TokensPerDayAndRequestsPerMinute) {
    FakeClock clock;
    budget::BudgetFilter filter(
        budgetConfig({.requests_per_minute = 2, .tokens_per_day = 300}), nullptr,
        [&] { return clock.now; }, [&] { return clock.day; });
    auto run = [&](std::uint64_t tokens) {
        Call c("a", tokens, 0);
        auto r = filter.onRequest(c.ctx);
        if (!r) {
            c.ctx.backend = "b";
            c.ctx.status = 200;
            filter.onComplete(c.ctx);
        }
        return r;
    };
    EXPECT_FALSE(run(100));
    EXPECT_FALSE(run(100));
    auto rpm = run(1);
    ASSERT_TRUE(rpm);
    EXPECT_EQ(rpm->type, "requests");
    clock.now += 60s;
    EXPECT_FALSE(run(100));
    auto tpd = run(100);
    ASSERT_TRUE(tpd);
    EXPECT_NE(tpd->message.find("tokens per day"), std::string::npos);
    clock.day += 1;
    clock.now += 60s;
    EXPECT_FALSE(run(100));
}

TEST(BudgetFilter, TenantFromApiKeyAndSpiffeNamespace) {
    budget::TokenBudgetConfig c;
    c.tenant_from = {{budget::TenantSource::Kind::ApiKey, "authorization"},
                     {budget::TenantSource::Kind::Namespace, ""}};
    c.api_keys = {{"sk-a", "team-a"}};
    c.limits = {{.tokens_per_minute = 10}};
    budget::BudgetFilter filter(c, nullptr);
    Call key("", 1, 1);
    key.request.set("authorization", "Bearer sk-a");
    EXPECT_EQ(filter.tenantOf(key.ctx), "team-a");
    Call spiffe("", 1, 1);
    spiffe.ctx.peer_identity = "spiffe://cluster.local/ns/rag/sa/default";
    EXPECT_EQ(filter.tenantOf(spiffe.ctx), "rag");
    Call none("", 1, 1);
    EXPECT_EQ(filter.tenantOf(none.ctx), "anonymous");
}

TEST(SseSplitter, EventsCompleteAcrossReadsAndBothLineEndings) {
    SseSplitter s;
    std::vector<std::string> data;
    auto sink = [&](std::string_view, std::string_view d) { data.emplace_back(d); };
    s.feed("data: {\"a\":1}\n", sink);
    EXPECT_TRUE(data.empty());
    s.feed("\ndata: x\r\n\r\ndata: [DO", sink);
    EXPECT_EQ(data, (std::vector<std::string>{"{\"a\":1}", "x"}));
    s.feed("NE]\n\n", sink);
    EXPECT_EQ(data.back(), "[DONE]");
    EXPECT_TRUE(s.pending().empty());
}

TEST(UsageFilter, InjectsIncludeUsageAndStripsTheUsageChunk) {
    auto cl =
        tokenizer::Encoding::load(tokenizer::EncodingName::kCl100kBase, SLUICE_TEST_TOKENIZER_DIR);
    auto o2 =
        tokenizer::Encoding::load(tokenizer::EncodingName::kO200kBase, SLUICE_TEST_TOKENIZER_DIR);
    ASSERT_TRUE(cl && o2);
    usage::UsageFilter filter({}, *cl, *o2);
    Call c("a", 0, 0);
    c.ctx.stream = true;
    c.ctx.body = nlohmann::json::parse(
        R"({"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hello world"}]})");
    ASSERT_FALSE(filter.onRequest(c.ctx));
    EXPECT_TRUE(c.ctx.body_modified);
    EXPECT_EQ((*c.ctx.body)["stream_options"]["include_usage"], true);
    // 3 (reply) + 3 (message) + "user" (1) + "hello world" (2)
    EXPECT_EQ(c.ctx.estimated_prompt_tokens, 9u);
    EXPECT_EQ(c.ctx.max_output_tokens, 1024u);
    std::string raw = "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n";
    EXPECT_TRUE(filter.onStreamEvent(c.ctx, raw.substr(6, raw.size() - 8), raw));
    EXPECT_EQ(raw, "data: {\"choices\":[{\"delta\":{}}]}\n\n");
    std::string usage = R"({"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}})";
    std::string usage_raw = "data: " + usage + "\n\n";
    EXPECT_FALSE(filter.onStreamEvent(c.ctx, usage, usage_raw));
    EXPECT_TRUE(c.ctx.usage.reported);
    EXPECT_EQ(c.ctx.usage.total(), 10u);
}

PoolConfig poolOf(LbPolicy policy, int endpoints) {
    PoolConfig p{.name = "p", .policy = policy};
    for (int i = 0; i < endpoints; ++i)
        p.endpoints.push_back("127.0.0.1:" + std::to_string(9000 + i));
    p.consecutive_failures = 3;
    p.ejection_time = 200ms;
    return p;
}

TEST(BackendPool, OutlierEjectionAndRecovery) {
    BackendPool pool(poolOf(LbPolicy::LeastRequest, 2));
    Call c("a", 1, 1);
    Endpoint& bad = pool.endpoint(0);
    // Endpoint 0 fails every request; after 3 consecutive failures it is ejected.
    for (int i = 0; i < 100 && !pool.ejected(bad); ++i) {
        Endpoint* ep = pool.pick(c.ctx);
        ASSERT_NE(ep, nullptr);
        pool.finish(*ep, ep != &bad, 1ms);
    }
    ASSERT_TRUE(pool.ejected(bad));
    for (int i = 0; i < 50; ++i) {
        Endpoint* ep = pool.pick(c.ctx);
        ASSERT_EQ(ep, &pool.endpoint(1));
        pool.finish(*ep, true, 1ms);
    }
    std::this_thread::sleep_for(250ms);
    EXPECT_FALSE(pool.ejected(bad));
}

TEST(BackendPool, CircuitOpensAtMaxRequests) {
    auto config = poolOf(LbPolicy::LeastRequest, 2);
    config.max_requests = 2;
    BackendPool pool(config);
    Call c("a", 1, 1);
    Endpoint* a = pool.pick(c.ctx);
    Endpoint* b = pool.pick(c.ctx);
    ASSERT_TRUE(a && b);
    EXPECT_NE(a, b);  // least-request spreads
    EXPECT_EQ(pool.pick(c.ctx), nullptr);
    pool.finish(*a, true, 1ms);
    EXPECT_NE(pool.pick(c.ctx), nullptr);
}

TEST(BackendPool, PrefixAffinityKeepsSharedPrefixesTogether) {
    std::map<Endpoint*, int> spread;
    // With a prefix window covering only the shared document, every question of a document
    // lands on one endpoint, and documents spread over all endpoints.
    auto config = poolOf(LbPolicy::PrefixAffinity, 4);
    config.prefix_bytes = 20;
    BackendPool narrow(config);
    int hits = 0, total = 0;
    for (int doc = 0; doc < 40; ++doc) {
        Endpoint* first = nullptr;
        for (int q = 0; q < 5; ++q) {
            Call c("a", 1, 1);
            c.ctx.body = nlohmann::json{
                {"messages",
                 {{{"role", "system"}, {"content", "Context document " + std::to_string(doc)}},
                  {{"role", "user"}, {"content", "question " + std::to_string(q)}}}}};
            Endpoint* ep = narrow.pick(c.ctx);
            narrow.finish(*ep, true, 1ms);
            if (!first) {
                first = ep;
                spread[ep]++;
            } else {
                ++total;
                hits += ep == first;
            }
        }
    }
    EXPECT_EQ(hits, total);
    EXPECT_EQ(spread.size(), 4u);
}

TEST(Config, ValidateReportsEveryProblem) {
    const auto config = parseConfig(R"(
kind: Waypoint
spec:
  workers: 0
  pools: [{name: a, endpoints: ["127.0.0.1:1"]}]
---
kind: ModelRoute
metadata: {name: r}
spec:
  models: ["*"]
  backends: [{pool: missing}]
)");
    const auto problems = config.validate();
    ASSERT_EQ(problems.size(), 2u);
    EXPECT_NE(problems[0].find("workers"), std::string::npos);
    EXPECT_NE(problems[1].find("unknown pool missing"), std::string::npos);
    EXPECT_THROW(parseConfig("kind: TokenBudget\nspec: {limits: []}\n"), std::invalid_argument);
}

}  // namespace
}  // namespace sluice::waypoint
