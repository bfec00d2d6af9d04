// Unit tests of the waypoint filters and building blocks, without sockets.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <map>
#include <thread>

#include <yaml-cpp/yaml.h>

#include "waypoint/config.h"
#include "waypoint/filters/budget/filter.h"
#include "waypoint/filters/route/filter.h"
#include "waypoint/filters/usage/filter.h"
#include "waypoint/http/sse.h"
#include "waypoint/lb/config.h"
#include "waypoint/lb/pool.h"
#include "waypoint/policy_view.h"

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

// A filter with `limit` that reads the time and the UTC day from `clock`.
budget::BudgetFilter clockedFilter(const FakeClock& clock, budget::BudgetLimit limit) {
    return budget::BudgetFilter(
        budgetConfig(limit), nullptr, [&clock] { return clock.now; },
        [&clock] { return clock.day; });
}

TEST(BudgetFilter, TokensPerMinuteRejectsThenRecoversAfterTheWindow) {
    FakeClock clock;
    budget::BudgetFilter filter = clockedFilter(clock, {.tokens_per_minute = 1000});
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
    EXPECT_EQ(h["retry-after"], "15");                 // 250 tokens at 1000/min
    EXPECT_EQ(h["x-ratelimit-reset-tokens"], "1m0s");  // the whole bucket refills in a minute
    EXPECT_NE(reply->message.find("Please try again in 15s."), std::string::npos) << reply->message;
    Call other("b", 50, 201);
    EXPECT_FALSE(filter.onRequest(other.ctx));
    std::map<std::string, std::string> admitted(other.ctx.response_headers.begin(),
                                                other.ctx.response_headers.end());
    EXPECT_EQ(admitted["x-ratelimit-reset-tokens"], "15.06s");  // 251 tokens at 1000/min
    clock.now += 15s;
    Call later("a", 50, 200);
    EXPECT_FALSE(filter.onRequest(later.ctx));
}

// The reset headers' format, for every millisecond of the first minute and some odd values:
// the millisecond-rounded value in its shortest fixed notation (what std::to_chars gives).
TEST(BudgetFilter, ResetStringIsTheShortestMillisecondValue) {
    auto reference = [](double seconds) {
        char buf[64];
        const double rounded = std::ceil(seconds * 1000) / 1000;
        auto end = std::to_chars(buf, buf + sizeof buf, rounded, std::chars_format::fixed).ptr;
        return std::string(buf, end) + "s";
    };
    for (int ms = 0; ms < 60'000; ++ms) {
        const double seconds = ms / 1000.0;
        ASSERT_EQ(budget::resetString(seconds), reference(seconds)) << ms;
        ASSERT_EQ(budget::resetString(seconds - 0.0004), reference(seconds - 0.0004)) << ms;
    }
    EXPECT_EQ(budget::resetString(15.0591), "15.06s");
    EXPECT_EQ(budget::resetString(0.0000001), "0.001s");
    EXPECT_EQ(budget::resetString(59.9999), "1m0s");
    EXPECT_EQ(budget::resetString(360), "6m0s");
}

TEST(BudgetFilter, ReservationIsSettledWithRealUsageIncludingOvershoot) {
    FakeClock clock;
    budget::BudgetFilter filter = clockedFilter(clock, {.tokens_per_minute = 1000});
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
    budget::BudgetFilter filter =
        clockedFilter(clock, {.tokens_per_minute = 100, .max_concurrent = 1});
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

// The gateway holds a FilterSettlement for every request: a handler that leaves by an
// exception after admission still gives the tenant's concurrency slot and reservation back,
// and only the filters that let the request through are settled, newest first, once.
TEST(FilterSettlement, SettlesTheAdmittingFiltersOnceEvenWhenUnwound) {
    FakeClock clock;
    budget::BudgetFilter filter =
        clockedFilter(clock, {.tokens_per_minute = 100, .max_concurrent = 1});
    struct Recorder : HttpFilter {
        std::string_view name() const override { return "recorder"; }
        void onComplete(RequestContext&) override { ++completions; }
        int completions = 0;
    } recorder, never;
    const std::vector<HttpFilter*> chain = {&filter, &recorder, &never};
    Call first("a", 10, 80);
    try {
        FilterSettlement settlement(chain, first.ctx);
        ASSERT_FALSE(filter.onRequest(first.ctx));
        settlement.admitted();
        settlement.admitted();  // the recorder; `never` answered locally
        Call second("a", 1, 1);
        ASSERT_TRUE(filter.onRequest(second.ctx));  // the slot is taken
        throw std::runtime_error("handler bug");
    } catch (const std::runtime_error&) {
    }
    EXPECT_EQ(recorder.completions, 1);
    EXPECT_EQ(never.completions, 0);
    Call third("a", 10, 80);
    EXPECT_FALSE(filter.onRequest(third.ctx));  // slot and reservation given back
    {
        FilterSettlement settlement(chain, third.ctx);
        settlement.admitted();
        settlement.admitted();
        settlement.settle();
    }
    EXPECT_EQ(recorder.completions, 2);  // settle() and the destructor: once

    // A filter whose onComplete throws, while the handler's exception unwinds: no terminate,
    // and the filters admitted before it are settled still.
    struct Thrower : HttpFilter {
        std::string_view name() const override { return "thrower"; }
        void onComplete(RequestContext&) override { throw std::logic_error("settle bug"); }
    } thrower;
    const std::vector<HttpFilter*> throwing = {&filter, &thrower};
    Call fourth("a", 10, 80);
    try {
        FilterSettlement settlement(throwing, fourth.ctx);
        ASSERT_FALSE(filter.onRequest(fourth.ctx));
        settlement.admitted();
        settlement.admitted();
        throw std::runtime_error("handler bug");
    } catch (const std::runtime_error&) {
    }
    Call fifth("a", 10, 80);
    EXPECT_FALSE(filter.onRequest(fifth.ctx)) << "the budget filter's slot was not given back";
    FilterSettlement(throwing, fifth.ctx).admitted();
}

// Tenant names a client chooses (x-tenant) cannot grow the budget state without bound: states
// at rest are swept as the map grows, one in flight or with usage today is kept, and past the
// cap new tenants share one overflow state (and its budget).
TEST(BudgetFilter, StatesOfClientChosenTenantsAreBounded) {
    FakeClock clock;
    budget::BudgetFilter filter =
        clockedFilter(clock, {.tokens_per_minute = 1000, .tokens_per_day = 1'000'000});
    auto once = [&](const std::string& tenant, bool complete = true) {
        auto c = std::make_unique<Call>(tenant, 10, 240);  // reserves 250
        const bool admitted = !filter.onRequest(c->ctx);
        if (admitted && complete)
            settle(filter, *c, 10, 240);
        return std::pair{admitted, std::move(c)};
    };
    auto held = once("in-flight", false);
    ASSERT_TRUE(held.first);
    for (int i = 0; i < 5000; ++i)
        ASSERT_TRUE(once("day-one-" + std::to_string(i)).first);
    EXPECT_EQ(filter.states(), 5001u) << "used today: none is at rest";
    // The next day, buckets full again: yesterday's tenants are at rest and go at the next
    // sweep; the request still in flight keeps its state.
    clock.day += 1;
    clock.now += 2min;
    for (int i = 0; i < 4000; ++i)
        ASSERT_TRUE(once("day-two-" + std::to_string(i)).first);
    EXPECT_LT(filter.states(), 4100u);
    settle(filter, *held.second, 10, 240);  // settles against the state it reserved from

    // Past the cap: one shared state for every new tenant, with one tenant's budget.
    for (int i = 0; filter.states() < budget::BudgetFilter::kMaxStates; ++i)
        ASSERT_TRUE(once("day-two-fill-" + std::to_string(i)).first);
    EXPECT_EQ(filter.states(), budget::BudgetFilter::kMaxStates);
    for (int i = 0; i < 4; ++i)
        EXPECT_TRUE(once("past-cap-" + std::to_string(i)).first) << i;
    EXPECT_FALSE(once("past-cap-4").first) << "the overflow state's 1000 tokens are used";
    EXPECT_EQ(filter.states(), budget::BudgetFilter::kMaxStates + 1);
    EXPECT_TRUE(once("day-two-0").first) << "a tenant with a state of its own keeps it";
    // The next day the states at the cap are at rest again: the next new tenant sweeps them
    // and has a state, and a budget, of its own.
    clock.day += 1;
    clock.now += 2min;
    for (int i = 0; i < 4; ++i)
        EXPECT_TRUE(once("day-three").first) << i;
    EXPECT_LT(filter.states(), 10u);
}

TEST(BudgetFilter, TokensPerDayAndRequestsPerMinute) {
    FakeClock clock;
    budget::BudgetFilter filter =
        clockedFilter(clock, {.requests_per_minute = 2, .tokens_per_day = 300});
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

// A reservation above the per-minute capacity takes the whole bucket; settling gives back
// what the bucket gave minus what was used, not the reservation minus what was used (which
// would refill a bucket the request had emptied).
TEST(BudgetFilter, ARequestLargerThanTheMinuteBucketIsChargedItsUsage) {
    FakeClock clock;
    budget::BudgetFilter filter = clockedFilter(clock, {.tokens_per_minute = 10'000});
    Call big("a", 500, 16'000);  // 16 500 wanted, the bucket holds 10 000: it may pass, full
    ASSERT_FALSE(filter.onRequest(big.ctx));
    settle(filter, big, 500, 1'500);  // used 2 000: 8 000 left
    Call over("a", 0, 8'001);
    EXPECT_TRUE(filter.onRequest(over.ctx));
    Call fits("a", 0, 8'000);
    EXPECT_FALSE(filter.onRequest(fits.ctx));
    settle(filter, fits, 0, 8'000);
    Call stream("a", 0, 20'000);  // a stream past the capacity leaves a debt
    clock.now += 60s;
    ASSERT_FALSE(filter.onRequest(stream.ctx));
    settle(filter, stream, 0, 12'000);
    clock.now += 12s;  // 2 000 refilled: still 0 after the 2 000 debt
    Call in_debt("a", 0, 1);
    EXPECT_TRUE(filter.onRequest(in_debt.ctx));
    // Without a reported usage (the client left before the usage chunk) the bucket keeps what
    // it gave: a max_tokens of 10^12 is no debt of 10^12 tokens.
    clock.now += 60s;
    Call unreported("a", 0, 1'000'000'000'000);
    ASSERT_FALSE(filter.onRequest(unreported.ctx));
    unreported.ctx.backend = "b";
    unreported.ctx.status = 200;
    filter.onComplete(unreported.ctx);
    clock.now += 60s;
    Call refilled("a", 0, 10'000);
    EXPECT_FALSE(filter.onRequest(refilled.ctx));
}

// max_tokens is the client's number: a sum that would wrap around 2^64 must not pass the daily
// quota, nor wrap the day's count back to (near) zero.
TEST(BudgetFilter, AHugeMaxTokensNeitherPassesNorResetsTheDailyQuota) {
    FakeClock clock;
    budget::BudgetFilter filter = clockedFilter(clock, {.tokens_per_day = 1'000'000});
    Call used("a", 900'000, 0);
    ASSERT_FALSE(filter.onRequest(used.ctx));
    settle(filter, used, 900'000, 0);
    for (std::uint64_t max_tokens : {UINT64_MAX - 899'999, UINT64_MAX - 5, UINT64_MAX}) {
        Call wrap("a", 10, max_tokens);
        auto reply = filter.onRequest(wrap.ctx);
        ASSERT_TRUE(reply) << max_tokens;
        EXPECT_NE(reply->message.find("tokens per day"), std::string::npos) << reply->message;
        // Larger than the whole day: no retry-after, since waiting would not help.
        EXPECT_NE(reply->message.find("Request too large"), std::string::npos) << reply->message;
        for (const auto& [name, value] : reply->headers)
            EXPECT_NE(name, "retry-after") << value;
    }
    Call over("a", 0, 100'001);
    auto later = filter.onRequest(over.ctx);
    ASSERT_TRUE(later);
    EXPECT_NE(later->message.find("Please try again in"), std::string::npos) << later->message;
    EXPECT_TRUE(std::any_of(later->headers.begin(), later->headers.end(), [](const auto& h) {
        return h.first == "retry-after";
    })) << "fits tomorrow: a retry-after";
    Call fits("a", 0, 100'000);
    EXPECT_FALSE(filter.onRequest(fits.ctx));
}

// A request reserved before midnight (UTC) and settled after it leaves the new day's count
// alone: the new day started from zero without that reservation.
TEST(BudgetFilter, AReservationFromYesterdaySettlesNothingOnToday) {
    FakeClock clock;
    budget::BudgetFilter filter = clockedFilter(clock, {.tokens_per_day = 20'000});
    Call before("a", 0, 10'000);
    ASSERT_FALSE(filter.onRequest(before.ctx));
    clock.day += 1;
    Call after("a", 0, 15'000);
    ASSERT_FALSE(filter.onRequest(after.ctx));
    settle(filter, before, 0, 100);  // a refund of 9 900, but to yesterday
    Call over("a", 0, 5'001);
    EXPECT_TRUE(filter.onRequest(over.ctx));
    Call fits("a", 0, 5'000);
    EXPECT_FALSE(filter.onRequest(fits.ctx));
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

    // Keys the policies folder names by their SHA-256 only (sha256("sk-b"), from sha256sum).
    c.api_key_sha256 = {
        {"3ffc1ec5e9ba8e8a8e2be56e3bf2a67dfd3f2f3f8ea9cb1b1d3ac1f8dbd5ef13", "wrong"},
        {"c4b3ba1b7b1a6ad19ad0ed8e6f1e4cb7ea0e4c7b5b1f8df8c04b1fa09d0e51c6", "wrong-too"}};
    c.api_key_sha256["18519d64d0d18b0e84e43301547425933dc0394576666e8da1ef1790fb64ca9f"] = "team-b";
    budget::BudgetFilter hashed(c, nullptr);
    Call b("", 1, 1);
    b.request.set("authorization", "Bearer sk-b");
    EXPECT_EQ(hashed.tenantOf(b.ctx), "team-b");
    Call a("", 1, 1);
    a.request.set("authorization", "Bearer sk-a");
    EXPECT_EQ(hashed.tenantOf(a.ctx), "team-a") << "a key in api_keys is not hashed";
    Call unknown("", 1, 1);
    unknown.request.set("authorization", "Bearer sk-c");
    unknown.ctx.peer_identity = "spiffe://cluster.local/ns/rag/sa/default";
    EXPECT_EQ(hashed.tenantOf(unknown.ctx), "rag") << "an unknown key falls through";
}

TEST(BudgetFilter, ReconfiguredLimitKeepsWhatWasUsedInTheWindow) {
    FakeClock clock;
    budget::BudgetFilter filter = clockedFilter(clock, {.tokens_per_minute = 1000});
    Call first("a", 100, 500);  // reserves 600, settles 600
    ASSERT_FALSE(filter.onRequest(first.ctx));
    settle(filter, first, 100, 500);

    filter.reconfigure(budgetConfig({.tokens_per_minute = 500}));
    Call refused("a", 50, 50);  // 600 of 500 used: nothing left
    auto reply = filter.onRequest(refused.ctx);
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->status, http::status::too_many_requests);
    auto header = [&](const std::string& name) {
        for (const auto& [n, v] : reply->headers) {
            if (n == name)
                return v;
        }
        return std::string();
    };
    EXPECT_EQ(header("x-ratelimit-limit-tokens"), "500");
    EXPECT_EQ(header("x-ratelimit-remaining-tokens"), "0");

    filter.reconfigure(budgetConfig({.tokens_per_minute = 2000}));
    Call admitted("a", 50, 50);  // 600 of 2000 used
    ASSERT_FALSE(filter.onRequest(admitted.ctx));
    settle(filter, admitted, 50, 50);
    EXPECT_EQ(admitted.ctx.reserved_tokens, 100u);
}

TEST(BudgetFilter, ARequestSettlesWithTheStateItReservedFromAcrossAReconfigure) {
    FakeClock clock;
    const auto one_at_a_time = budgetConfig({.max_concurrent = 1});
    budget::BudgetFilter filter(
        one_at_a_time, nullptr, [&] { return clock.now; }, [&] { return clock.day; });
    Call in_flight("a", 10, 10);
    ASSERT_FALSE(filter.onRequest(in_flight.ctx));
    // While it runs, a more specific limit for the tenant and model appears (another state).
    auto specific = one_at_a_time;
    specific.limits.push_back({.tenant = "a", .model = "gpt-4o", .max_concurrent = 5});
    filter.reconfigure(specific);
    settle(filter, in_flight, 10, 10);
    // Back to the first shape: its concurrency slot must have been given back.
    filter.reconfigure(one_at_a_time);
    Call next("a", 10, 10);
    EXPECT_FALSE(filter.onRequest(next.ctx)) << "the slot leaked: the tenant is locked out";
    Call second("a", 10, 10);
    auto reply = filter.onRequest(second.ctx);
    ASSERT_TRUE(reply) << "max_concurrent 1 still holds";
    EXPECT_EQ(reply->status, http::status::too_many_requests);
    filter.onComplete(second.ctx);  // a refused request holds nothing
    settle(filter, next, 10, 10);
    Call third("a", 10, 10);
    EXPECT_FALSE(filter.onRequest(third.ctx));
}

// A gateway config with one pool and a catch-all route, for the policies folder to add to.
const std::string kOnePoolConfig = R"(
kind: Waypoint
spec:
  pools: [{name: llm, endpoints: ["127.0.0.1:1"]}]
---
kind: ModelRoute
metadata: {name: default}
spec: {models: ["*"], backends: [{pool: llm}]}
---
)";

TEST(PolicyView, FolderBudgetsAndRoutesAreMergedIntoTheConfig) {
    const auto base = parseConfig(kOnePoolConfig + R"(
kind: TokenBudget
metadata: {name: base}
spec:
  tenantFrom: [{header: x-team}]
  limits: [{tenant: "*", tokensPerMinute: 1000}, {tenant: a, tokensPerMinute: 5}]
)");
    const auto view = nlohmann::json::parse(R"({
      "tokenBudgets": [
        {"name": "a", "namespace": "ai", "spec": {"tenant": {"header": "a"}, "model": "*",
         "limits": {"tokensPerMinute": 300, "requestsPerMinute": 6, "maxConcurrent": 2}}},
        {"name": "ns", "namespace": "ai", "spec": {"tenant": {"namespace": "rag"},
         "model": "gpt-4o", "limits": {"tokensPerDay": 9}}},
        {"name": "p", "namespace": "ai", "spec": {"tenant": {"principal":
         "cluster.local/ns/rag/sa/x"}, "model": "*", "limits": {"tokensPerMinute": 7}}}],
      "modelRoutes": [
        {"name": "chat", "namespace": "ai", "spec": {"model": "big", "timeoutSeconds": 120,
         "backends": [{"host": "llm", "port": 1, "weight": 3},
                      {"host": "198.18.0.9", "port": 8000, "weight": 1}],
         "fallbacks": ["small"]}},
        {"name": "small", "namespace": "ai", "spec": {"model": "small", "timeoutSeconds": 60,
         "backends": [{"host": "2001:db8::9", "port": 8000, "weight": 1}]}}]})");
    const PolicyView v = makePolicyView(base, view);

    ASSERT_EQ(v.budget.tenant_from.size(), 1u);
    EXPECT_EQ(v.budget.tenant_from[0].header, "x-team");
    ASSERT_EQ(v.budget.limits.size(), 4u);  // "*", then the folder's a (replacing 5), rag, p
    EXPECT_EQ(v.budget.limits[0].tenant, "*");
    EXPECT_EQ(v.budget.limits[1].tenant, "a");
    EXPECT_EQ(v.budget.limits[1].tokens_per_minute, 300u);
    EXPECT_EQ(v.budget.limits[1].requests_per_minute, 6u);
    EXPECT_EQ(v.budget.limits[1].max_concurrent, 2u);
    EXPECT_EQ(v.budget.limits[2].max_concurrent, 0u) << "unset: unlimited";
    EXPECT_EQ(v.budget.limits[2].tenant, "rag");
    EXPECT_EQ(v.budget.limits[2].model, "gpt-4o");
    EXPECT_EQ(v.budget.limits[2].tokens_per_day, 9u);
    EXPECT_EQ(v.budget.limits[3].tenant, "spiffe://cluster.local/ns/rag/sa/x");

    ASSERT_EQ(v.routes.size(), 3u);  // the folder's first, the config's catch-all last
    EXPECT_EQ(v.routes[0].models, std::vector<std::string>{"big"});
    EXPECT_EQ(v.routes[0].timeout, std::chrono::seconds(120));
    ASSERT_EQ(v.routes[0].backends.size(), 2u);
    EXPECT_EQ(v.routes[0].backends[0].pool, "llm");
    EXPECT_EQ(v.routes[0].backends[0].weight, 3u);
    EXPECT_EQ(v.routes[0].backends[1].pool, "198.18.0.9:8000");
    ASSERT_EQ(v.routes[0].fallbacks.size(), 1u);
    EXPECT_EQ(v.routes[0].fallbacks[0].pool, "[2001:db8::9]:8000");
    EXPECT_EQ(v.routes[0].fallbacks[0].model, "small");
    EXPECT_EQ(v.routes[2].name, "default");
    ASSERT_EQ(v.pools.size(), 3u);
    EXPECT_EQ(v.pools[2].endpoints, std::vector<std::string>{"[2001:db8::9]:8000"});

    // Without a TokenBudget in the config: tenants from x-tenant, then the SPIFFE namespace.
    Config bare = base;
    bare.budgets.clear();
    const PolicyView d = makePolicyView(bare, nlohmann::json::object());
    ASSERT_EQ(d.budget.tenant_from.size(), 2u);
    EXPECT_EQ(d.budget.tenant_from[0].header, kDefaultTenantHeader);
    EXPECT_EQ(d.budget.tenant_from[1].kind, budget::TenantSource::Kind::Namespace);
    EXPECT_TRUE(d.budget.limits.empty());

    // A backend that is neither a pool nor an address, and an unknown fallback: both named.
    const auto bad = nlohmann::json::parse(R"({"modelRoutes": [{"name": "r", "spec": {
        "model": "m", "backends": [{"host": "llm.svc", "port": 80}], "fallbacks": ["nope"]}}]})");
    try {
        makePolicyView(base, bad);
        ADD_FAILURE() << "accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("llm.svc"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("nope"), std::string::npos) << e.what();
    }
}

TEST(PolicyView, FolderRoutesCarryRewritesCostTiersRetriesPoolSettingsAndApiKeys) {
    const auto base = parseConfig(kOnePoolConfig);
    const std::string key_a(64, 'a'), key_b(64, 'b');
    const auto view = nlohmann::json::parse(R"({
      "tokenBudgets": [
        {"name": "a", "namespace": "ai", "spec": {"model": "*", "limits": {"tokensPerMinute": 9},
         "tenant": {"apiKey": {"name": "team-a", "header": "authorization",
                               "sha256": [")" +
                                            key_a + R"(", ")" + key_b + R"("]}}}}],
      "modelRoutes": [
        {"name": "big", "namespace": "ai", "spec": {"model": "big", "timeoutSeconds": 60,
         "backends": [{"host": "198.18.0.1", "port": 80, "weight": 1, "model": "big-v2"},
                      {"host": "llm", "port": 1, "weight": 1}],
         "fallbacks": ["small"],
         "costTier": {"maxPromptTokens": 200, "model": "small"},
         "retries": {"attempts": 0, "backoffMilliseconds": 7},
         "loadBalancer": {"policy": "prefix-affinity", "prefixBytes": 64, "maxRequests": 3,
                          "outlierDetection": {"consecutiveFailures": 2, "ejectionSeconds": 4},
                          "loadMetrics": {"path": "/load", "intervalMilliseconds": 250}}}},
        {"name": "small", "namespace": "ai", "spec": {"model": "small", "timeoutSeconds": 60,
         "backends": [{"host": "198.18.0.3", "port": 80, "weight": 1, "model": "small-q4"},
                      {"host": "198.18.0.2", "port": 80, "weight": 3},
                      {"host": "198.18.0.4", "port": 80, "weight": 0}]}}]})");
    const PolicyView v = makePolicyView(base, view);

    ASSERT_EQ(v.budget.tenant_from.size(), 3u) << "the API key comes first";
    EXPECT_EQ(v.budget.tenant_from[0].kind, budget::TenantSource::Kind::ApiKey);
    EXPECT_EQ(v.budget.tenant_from[0].header, "authorization");
    EXPECT_EQ(v.budget.api_key_sha256.at(key_b), "team-a");
    ASSERT_EQ(v.budget.limits.size(), 1u);
    EXPECT_EQ(v.budget.limits[0].tenant, "team-a");

    ASSERT_EQ(v.routes.size(), 3u);
    const route::ModelRouteConfig& big = v.routes[0];
    EXPECT_EQ(big.backends[0].model, "big-v2");
    EXPECT_EQ(big.backends[1].model, "") << "no rewrite";
    ASSERT_TRUE(big.cost_tier);
    EXPECT_EQ(big.cost_tier->max_prompt_tokens, 200u);
    EXPECT_EQ(big.cost_tier->max_output_tokens, UINT64_MAX);
    ASSERT_EQ(big.cost_tier->targets.size(), 3u) << "all of small's backends, weights kept";
    EXPECT_EQ(big.cost_tier->targets[1].pool, "198.18.0.2:80");
    EXPECT_EQ(big.cost_tier->targets[1].weight, 3u);
    EXPECT_EQ(big.cost_tier->targets[1].model, "small");
    EXPECT_EQ(big.cost_tier->targets[0].model, "small-q4") << "the backend's own rewrite stays";
    EXPECT_EQ(big.cost_tier->targets[2].weight, 0u);
    // Fallbacks are tried in turn: the heaviest first, the drained (weight 0) one never.
    ASSERT_EQ(big.fallbacks.size(), 2u);
    EXPECT_EQ(big.fallbacks[0].pool, "198.18.0.2:80");
    EXPECT_EQ(big.fallbacks[1].pool, "198.18.0.3:80");
    EXPECT_EQ(big.fallbacks[1].model, "small-q4");
    EXPECT_EQ(big.retries.attempts, 0u);
    EXPECT_EQ(big.retries.backoff, std::chrono::milliseconds(7));
    EXPECT_EQ(big.retries.budget_percent, 20u) << "unset fields keep their defaults";
    EXPECT_FALSE(v.routes[1].cost_tier);

    auto pool = [&](const std::string& name) {
        auto it = std::find_if(v.pools.begin(), v.pools.end(),
                               [&](const PoolConfig& p) { return p.name == name; });
        EXPECT_NE(it, v.pools.end()) << name;
        return it == v.pools.end() ? PoolConfig{} : *it;
    };
    const PoolConfig tuned = pool("198.18.0.1:80");
    EXPECT_EQ(tuned.policy, LbPolicy::PrefixAffinity);
    EXPECT_EQ(tuned.prefix_bytes, 64u);
    EXPECT_EQ(tuned.max_requests, 3u);
    EXPECT_EQ(tuned.consecutive_failures, 2u);
    EXPECT_EQ(tuned.ejection_time, std::chrono::seconds(4));
    EXPECT_TRUE(tuned.load_metrics);
    EXPECT_EQ(tuned.metrics_path, "/load");
    EXPECT_EQ(tuned.metrics_interval, std::chrono::milliseconds(250));
    EXPECT_EQ(pool("llm").policy, LbPolicy::LeastRequest) << "the config's pool keeps its own";
    EXPECT_EQ(pool("198.18.0.2:80").policy, LbPolicy::LeastRequest) << "small sets none";

    // Two routes that tune one pool differently, a digest naming two tenants, a cost tier to a
    // model without a route: each named.
    auto bad = view;
    bad["modelRoutes"][1]["spec"]["backends"][0] = {{"host", "198.18.0.1"}, {"port", 80}};
    bad["modelRoutes"][1]["spec"]["loadBalancer"] = {{"policy", "peak-ewma"}};
    bad["modelRoutes"][0]["spec"]["costTier"]["model"] = "tiny";
    auto other = bad["tokenBudgets"][0];
    other["spec"]["tenant"]["apiKey"]["name"] = "team-b";
    bad["tokenBudgets"].push_back(other);
    try {
        makePolicyView(base, bad);
        ADD_FAILURE() << "accepted";
    } catch (const std::invalid_argument& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("ModelRoute ai/small: loadBalancer for 198.18.0.1:80 differs from the "
                            "one ModelRoute ai/big gives it"),
                  std::string::npos)
            << what;
        EXPECT_NE(what.find("costTier model tiny has no ModelRoute"), std::string::npos) << what;
        EXPECT_NE(what.find("API key sha256 aaaaaaaaaaaa… already names tenant team-a"),
                  std::string::npos)
            << what;
    }
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
    // Several data lines join with '\n'; other fields and comments are not data.
    s.feed(": keep-alive\nevent: x\ndata: a\ndata:b\r\ndata:  c\n\ndata: d\n\n", sink);
    ASSERT_EQ(data.size(), 5u);
    EXPECT_EQ(data[3], "a\nb\n c");
    EXPECT_EQ(data[4], "d");
    s.feed(": only a comment\n\n", sink);
    EXPECT_EQ(data.back(), "");
}

// A usage filter with both encodings from the test tokenizer data.
std::unique_ptr<usage::UsageFilter> usageFilter() {
    auto cl =
        tokenizer::Encoding::load(tokenizer::EncodingName::kCl100kBase, SLUICE_TEST_TOKENIZER_DIR);
    auto o2 =
        tokenizer::Encoding::load(tokenizer::EncodingName::kO200kBase, SLUICE_TEST_TOKENIZER_DIR);
    if (!cl || !o2)
        throw std::runtime_error("tokenizer data missing in " SLUICE_TEST_TOKENIZER_DIR);
    return std::make_unique<usage::UsageFilter>(usage::UsageConfig{}, *cl, *o2);
}

// What the filter reads from a non-streamed response body.
Usage usageOf(usage::UsageFilter& filter, std::string_view body) {
    Call c("a", 0, 0);
    filter.onResponseBody(c.ctx, body);
    return c.ctx.usage;
}

TEST(UsageFilter, InjectsIncludeUsageAndStripsTheUsageChunk) {
    auto filter = usageFilter();
    Call c("a", 0, 0);
    c.ctx.stream = true;
    c.request.body() =
        R"({"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hello world"}]})";
    c.ctx.body = json::Document::parse(c.request.body());
    ASSERT_FALSE(filter->onRequest(c.ctx));
    // The member goes into the client's text; the document says the same.
    EXPECT_FALSE(c.ctx.body_modified);
    EXPECT_EQ(c.ctx.body_insert, R"("stream_options":{"include_usage":true},)");
    EXPECT_EQ(c.ctx.body_insert_at, 1u);
    EXPECT_TRUE(
        json::flagSet(*json::member(c.ctx.body->root(), "stream_options"), "include_usage"));
    // 3 (reply) + 3 (message) + "user" (1) + "hello world" (2)
    EXPECT_EQ(c.ctx.estimated_prompt_tokens, 9u);
    EXPECT_EQ(c.ctx.max_output_tokens, 1024u);
    std::string raw = "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n";
    EXPECT_TRUE(filter->onStreamEvent(c.ctx, raw.substr(6, raw.size() - 8), raw));
    EXPECT_EQ(raw, "data: {\"choices\":[{\"delta\":{}}]}\n\n");
    // However the backend spaces it, and wherever it stands among the members.
    for (const auto& [sent, relayed] : std::vector<std::pair<std::string, std::string>>{
             {R"({"id":"x", "usage" : null, "choices":[]})", R"({"id":"x", "choices":[]})"},
             {R"({"usage":null,"id":"x"})", R"({"id":"x"})"},
             {"{\"id\":\"x\",\n \"usage\":\tnull\n}", "{\"id\":\"x\"\n}"},
             {R"({"id":"say \"usage\": null","usage":null})", R"({"id":"say \"usage\": null"})"},
             {R"({"id":"x","usage":nullx})", R"({"id":"x","usage":nullx})"},
             {R"({"usage":null})", R"({})"},
             // One JSON text over two `data:` lines: left as it is, not made invalid.
             {"{\"id\":\"x\",\ndata: \"usage\":null}", "{\"id\":\"x\",\ndata: \"usage\":null}"}}) {
        std::string event = "data: " + sent + "\n\n";
        EXPECT_TRUE(filter->onStreamEvent(c.ctx, sent, event));
        EXPECT_EQ(event, "data: " + relayed + "\n\n") << sent;
    }
    std::string usage = R"({"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}})";
    std::string usage_raw = "data: " + usage + "\n\n";
    EXPECT_FALSE(filter->onStreamEvent(c.ctx, usage, usage_raw));
    EXPECT_TRUE(c.ctx.usage.reported);
    EXPECT_EQ(c.ctx.usage.total(), 10u);

    // A backend that reports usage in every chunk (vLLM's continuous_usage_stats): a token whose
    // text is "usage" comes before the key and does not hide it; the chunk has a choice, so it
    // is relayed.
    Call d("a", 0, 0);
    d.ctx.stream = true;
    std::string both =
        R"({"choices":[{"delta":{"content":"usage"}}],"usage":{"prompt_tokens":4,"completion_tokens":1}})";
    std::string both_raw = "data: " + both + "\n\n";
    EXPECT_TRUE(filter->onStreamEvent(d.ctx, both, both_raw));
    EXPECT_TRUE(d.ctx.usage.reported);
    EXPECT_EQ(d.ctx.usage.total(), 5u);
    // And one whose usage is null: the key is taken out, the token is not.
    std::string token = R"({"choices":[{"delta":{"content":"usage"}}],"usage":null})";
    std::string token_raw = "data: " + token + "\n\n";
    EXPECT_TRUE(filter->onStreamEvent(d.ctx, token, token_raw));
    EXPECT_EQ(token_raw, "data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}]}\n\n");
}

// A stream_options of the client's is changed in the document, which is then written out.
TEST(UsageFilter, ChangesTheClientsStreamOptionsInTheDocument) {
    auto filter = usageFilter();
    for (const std::string text :
         {R"({"model":"gpt-4o","stream":true,"messages":[],"stream_options":{}})",
          R"({"model":"gpt-4o","stream":true,"messages":[],"stream_options":null})",
          R"({"model":"gpt-4o","stream":true,"messages":[],)"
          R"("stream_options":{"include_usage":false,"x":1}})"}) {
        Call c("a", 0, 0);
        c.ctx.stream = true;
        c.request.body() = text;
        c.ctx.body = json::Document::parse(text);
        ASSERT_FALSE(filter->onRequest(c.ctx));
        EXPECT_TRUE(c.ctx.body_modified) << text;
        EXPECT_EQ(c.ctx.body_insert, "") << text;
        // What is sent: the client's document with include_usage set, its other options kept.
        auto expected = nlohmann::json::parse(text);
        auto& options = expected["stream_options"];
        if (!options.is_object())
            options = nlohmann::json::object();
        options["include_usage"] = true;
        EXPECT_EQ(nlohmann::json::parse(c.ctx.body->write()), expected) << text;
        EXPECT_FALSE(c.ctx.client_wants_usage) << text;
    }
    Call asked("a", 0, 0);
    asked.ctx.stream = true;
    asked.request.body() =
        R"({"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}})";
    asked.ctx.body = json::Document::parse(asked.request.body());
    ASSERT_FALSE(filter->onRequest(asked.ctx));
    EXPECT_TRUE(asked.ctx.client_wants_usage);
    EXPECT_FALSE(asked.ctx.body_modified);
    EXPECT_EQ(asked.ctx.body_insert, "");
}

TEST(UsageFilter, FirstMemberOffsetIsPastTheOpeningBrace) {
    EXPECT_EQ(usage::firstMemberOffset(R"({"a":1})"), 1u);
    EXPECT_EQ(usage::firstMemberOffset(" \r\n\t{ \"a\":1}"), 5u);
    EXPECT_EQ(usage::firstMemberOffset("\xEF\xBB\xBF {}"), 5u);
    EXPECT_EQ(usage::firstMemberOffset(""), std::nullopt);
    EXPECT_EQ(usage::firstMemberOffset("  "), std::nullopt);
    EXPECT_EQ(usage::firstMemberOffset("[1]"), std::nullopt);
    EXPECT_EQ(usage::firstMemberOffset("\v{}"), std::nullopt);  // not JSON whitespace
}

// The reconciliation reads only the top-level `usage` object, whatever else the body carries.
TEST(UsageFilter, ReadsTheTopLevelUsageOfAResponseBody) {
    auto filter = usageFilter();
    auto read = [&](std::string_view body) { return usageOf(*filter, body); };
    Usage u = read(R"({"choices":[{"message":{"content":"{\"usage\":{\"prompt_tokens\":99}}",)"
                   R"("usage":{"prompt_tokens":98}}}],"usage":{"prompt_tokens":12,)"
                   R"("prompt_tokens_details":{"prompt_tokens":97,"cached_tokens":4},)"
                   R"("completion_tokens":5,"total_tokens":17}})");
    EXPECT_TRUE(u.reported);
    EXPECT_EQ(u.prompt_tokens, 12u) << "not the nested or quoted ones";
    EXPECT_EQ(u.completion_tokens, 5u);

    u = read(
        R"({"usage":{"prompt_tokens":8,"total_tokens":20},"data":[{"embedding":[0.1,-2e3]}]})");
    EXPECT_TRUE(u.reported);
    EXPECT_EQ(u.completion_tokens, 12u) << "total minus prompt without completion_tokens";

    u = read(R"({"usage":{"prompt_tokens":14.0,"completion_tokens":1e30}})");
    EXPECT_EQ(u.prompt_tokens, 14u);
    EXPECT_EQ(u.completion_tokens, 0u) << "out of range: not a count";

    EXPECT_FALSE(read(R"({"usage":null,"choices":[]})").reported);
    EXPECT_FALSE(read(R"([{"usage":{"prompt_tokens":1}}])").reported) << "not an object";
    EXPECT_FALSE(read(R"({"usage":{"prompt_tokens":1}} trailing)").reported) << "malformed";
    EXPECT_FALSE(read(R"({"usage":{"prompt_tokens":1})").reported) << "truncated";
}

// Counts at the edges of 64 bits and of what a count is; repeated keys keep what the reader saw
// last for each count (a later `usage` that is not an object does not undo an earlier one).
TEST(UsageFilter, CountsAtTheEdgesAndRepeatedKeys) {
    auto filter = usageFilter();
    auto read = [&](std::string_view body) { return usageOf(*filter, body); };
    Usage u = read(R"({"usage":{"prompt_tokens":18446744073709551615,)"
                   R"("completion_tokens":18446744073709551616}})");
    EXPECT_TRUE(u.reported);
    EXPECT_EQ(u.prompt_tokens, 18446744073709551615u);
    EXPECT_EQ(u.completion_tokens, 0u) << "2^64 does not fit";

    u = read(R"({"usage":{"prompt_tokens":-1,"completion_tokens":2.9}})");
    EXPECT_EQ(u.prompt_tokens, 0u) << "negative: not a count";
    EXPECT_EQ(u.completion_tokens, 2u);
    u = read(R"({"usage":{"prompt_tokens":-0.0,"total_tokens":10}})");
    EXPECT_EQ(u.prompt_tokens, 0u);
    EXPECT_EQ(u.completion_tokens, 10u);
    u = read(R"({"usage":{"prompt_tokens":-9223372036854775809,"completion_tokens":1e-400}})");
    EXPECT_TRUE(u.reported);
    EXPECT_EQ(u.prompt_tokens, 0u);
    EXPECT_EQ(u.completion_tokens, 0u);

    u = read(R"({"usage":{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens":5},)"
             R"("usage":{"completion_tokens":7}})");
    EXPECT_EQ(u.prompt_tokens, 5u);
    EXPECT_EQ(u.completion_tokens, 7u);
    u = read(R"({"usage":{"prompt_tokens":4},"usage":null})");
    EXPECT_TRUE(u.reported);
    EXPECT_EQ(u.prompt_tokens, 4u);
    u = read(R"({"usage":{"prompt_tokens":"4","details":{"prompt_tokens":6},"total_tokens":[9]}})");
    EXPECT_TRUE(u.reported);
    EXPECT_EQ(u.total(), 0u) << "a string, a nested object, an array: none is a count";
    EXPECT_FALSE(read(R"({"data":{"usage":{"prompt_tokens":5}}})").reported);
    EXPECT_FALSE(read(R"({"usage":[{"prompt_tokens":5}]})").reported);
}

// A body nlohmann::json::parse would reject gives no usage, whatever part of it is wrong; one
// it accepts does, however deep or odd.
TEST(UsageFilter, ReadsUsageOnlyFromValidJson) {
    auto filter = usageFilter();
    auto reported = [&](std::string_view before) {
        const std::string body = std::string(before) + R"("usage":{"prompt_tokens":3}})";
        EXPECT_EQ(nlohmann::json::accept(body), true) << "precondition: " << body;
        const Usage u = usageOf(*filter, body);
        return u.reported && u.prompt_tokens == 3;
    };
    auto rejected = [&](std::string_view body) {
        EXPECT_EQ(nlohmann::json::accept(body), false) << "precondition: " << body;
        return !usageOf(*filter, body).reported;
    };
    EXPECT_TRUE(reported("{"));
    EXPECT_TRUE(reported("\xEF\xBB\xBF{")) << "byte order mark";
    EXPECT_TRUE(reported(R"({"id":"\u00e9\uD83D\uDE00\u0000","x":1e-400,)"));
    EXPECT_TRUE(
        usageOf(*filter, std::string(R"({"usage":{"prompt_tokens":3}})") + '\0' + "x").reported)
        << "a NUL ends the text, for nlohmann too";
    EXPECT_TRUE(nlohmann::json::accept(std::string(R"({"usage":{}})") + '\0' + "x"));
    EXPECT_TRUE(reported("{\"x\":" + std::string(100'000, '[') + std::string(100'000, ']') + ","))
        << "nesting deeper than any stack";
    EXPECT_TRUE(rejected(R"({"usage":{"prompt_tokens":NaN}})"));
    EXPECT_TRUE(rejected(R"({"usage":{"prompt_tokens":Infinity}})"));
    EXPECT_TRUE(rejected(R"({"usage":{"prompt_tokens":3,}})")) << "trailing comma";
    EXPECT_TRUE(rejected(R"({"usage":{"prompt_tokens":3}/* c */})")) << "comment";
    EXPECT_TRUE(rejected(R"({"usage":{"prompt_tokens":3}} // c)")) << "comment";
    EXPECT_TRUE(rejected(R"({"x":1e999,"usage":{"prompt_tokens":3}})")) << "number overflow";
    EXPECT_TRUE(rejected(R"({"x":01,"usage":{"prompt_tokens":3}})"));
    EXPECT_TRUE(rejected("{\"x\":\"\xC0\x80\",\"usage\":{\"prompt_tokens\":3}}")) << "overlong";
    EXPECT_TRUE(rejected("{\"x\":\"\xED\xA0\x80\",\"usage\":{\"prompt_tokens\":3}}"))
        << "UTF-8 surrogate";
    EXPECT_TRUE(rejected(R"({"x":"\uDC00","usage":{"prompt_tokens":3}})")) << "lone low surrogate";
    EXPECT_TRUE(rejected(R"({"x":"\uD800","usage":{"prompt_tokens":3}})")) << "lone high surrogate";
    EXPECT_TRUE(rejected("{\"x\":\"\t\",\"usage\":{\"prompt_tokens\":3}}")) << "raw tab";

    // The same rules for the final chunk of a stream: an invalid one is relayed, not read.
    Call c("a", 0, 0);
    c.ctx.stream = true;
    std::string bad = R"({"choices":[],"usage":{"prompt_tokens":3},})";
    EXPECT_TRUE(filter->onStreamEvent(c.ctx, bad, bad));
    EXPECT_FALSE(c.ctx.usage.reported);
    std::string good = R"({"choices":[],"usage":{"prompt_tokens":3}})";
    EXPECT_FALSE(filter->onStreamEvent(c.ctx, good, good)) << "ours: dropped";
    EXPECT_TRUE(c.ctx.usage.reported);
}

PoolConfig poolOf(LbPolicy policy, int endpoints) {
    PoolConfig p{.name = "p", .policy = policy};
    for (int i = 0; i < endpoints; ++i)
        p.endpoints.push_back("127.0.0.1:" + std::to_string(9000 + i));
    p.consecutive_failures = 3;
    p.ejection_time = 200ms;
    return p;
}

// Workers that ask for a retry at the same moment cannot all pass the budget's last slot.
TEST(RouteFilter, TheRetryBudgetIsTakenAtomicallyAcrossWorkers) {
    const route::RouteFilter::Pools pools{
        {"p", std::make_shared<BackendPool>(poolOf(LbPolicy::LeastRequest, 1))}};
    route::ModelRouteConfig config{.name = "r", .models = {"*"}, .backends = {{.pool = "p"}}};
    config.retries.min_retries = 3;
    config.retries.budget_percent = 0;
    route::RouteFilter filter({config}, pools);
    Call c("a", 1, 1);
    ASSERT_FALSE(filter.onRequest(c.ctx));
    std::atomic<int> allowed{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < 8; ++t) {
        workers.emplace_back([&] {
            for (int i = 0; i < 2000; ++i)
                allowed += filter.retryAllowed(c.ctx) ? 1 : 0;
        });
    }
    for (auto& w : workers)
        w.join();
    EXPECT_EQ(allowed.load(), 3);
    filter.retryFinished(c.ctx);
    EXPECT_TRUE(filter.retryAllowed(c.ctx)) << "a finished retry gives its slot back";
    EXPECT_FALSE(filter.retryAllowed(c.ctx));
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

// An attempt the client abandoned is neither a failure nor a success of the endpoint: it
// frees the in-flight slot and leaves the failure count where it was.
TEST(BackendPool, AnAbandonedAttemptIsNeitherFailureNorSuccess) {
    BackendPool pool(poolOf(LbPolicy::LeastRequest, 1));
    Call c("a", 1, 1);
    Endpoint& only = pool.endpoint(0);
    for (int i = 0; i < 20; ++i) {
        Endpoint* ep = pool.pick(c.ctx);
        ASSERT_EQ(ep, &only);
        pool.abandon(*ep);
    }
    EXPECT_FALSE(pool.ejected(only));
    EXPECT_EQ(pool.inFlight(), 0u);
    EXPECT_EQ(only.in_flight.load(), 0u);
    // Two failures, abandoned attempts between them, then a third: ejected (3 in a row).
    for (int i = 0; i < 3; ++i) {
        pool.finish(*pool.pick(c.ctx), false, std::nullopt);
        if (i < 2)
            pool.abandon(*pool.pick(c.ctx));
    }
    EXPECT_TRUE(pool.ejected(only));
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

// Workers picking at once never take more than maxRequests between them: the check and the
// count are one step (before, each could pass a check of the same count).
TEST(BackendPool, TheCircuitHoldsUnderConcurrentPicks) {
    auto config = poolOf(LbPolicy::LeastRequest, 4);
    config.max_requests = 64;
    BackendPool pool(config);
    std::atomic<int> taken{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> workers;
    for (int t = 0; t < 8; ++t) {
        workers.emplace_back([&] {
            Call c("a", 1, 1);
            while (!go.load()) {
            }
            for (int i = 0; i < 200; ++i) {
                if (pool.pick(c.ctx))
                    ++taken;
            }
        });
    }
    go = true;
    for (auto& w : workers)
        w.join();
    EXPECT_EQ(taken.load(), 64);
    EXPECT_EQ(pool.inFlight(), 64u);
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
            c.ctx.body = json::Document::parse(nlohmann::json{
                {"messages",
                 {{{"role", "system"}, {"content", "Context document " + std::to_string(doc)}},
                  {{"role", "user"}, {"content", "question " + std::to_string(q)}}}}}
                                                   .dump());
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

// A field --config does not know is refused with where it is written, every one of them:
// ignored, a misspelled limit would leave the default in force without a word.
TEST(Config, UnknownFieldsAreRefusedWithTheirPlace) {
    try {
        parseConfig(R"(kind: Waypoint
spec:
  limits: {maxBodyByte: 10}
  pools:
    - {name: main, endpoints: ["127.0.0.1:1"], circuitBreaker: {maxRequest: 1}}
---
kind: ModelRoute
metadata: {name: r}
spec: {models: ["*"], backends: [{pool: main, wieght: 2}]}
sepc: {}
---
kind: TokenBudget
metadata: {name: b}
spec:
  tenantFrom: [{header: x-tenant}]
  limits: [{tenant: "*", tokensPerMinut: 5}]
---
kind: SomethingElse
spec: {anything: goes}
)");
        FAIL() << "no error";
    } catch (const UnknownFields& e) {
        EXPECT_EQ(e.fields,
                  (std::vector<std::string>{
                      "3:12: unknown field 'maxBodyByte' in Waypoint spec.limits",
                      "5:65: unknown field 'maxRequest' in Waypoint spec.pools[0].circuitBreaker",
                      "10:1: unknown field 'sepc' in ModelRoute",
                      "9:47: unknown field 'wieght' in ModelRoute spec.backends[0]",
                      "16:26: unknown field 'tokensPerMinut' in TokenBudget spec.limits[0]"}));
    }
    // Every field the parsers read is known.
    const Config c = parseConfig(R"(kind: Waypoint
spec:
  listen: 127.0.0.1:0
  metricsListen: 127.0.0.1:0
  readyListen: 127.0.0.1:0
  workers: 1
  busyPollMicros: 0
  tokenizerDir: /x
  logLevel: info
  accessLog: false
  tls: {listen: "", reloadInterval: 1s, requireClientCertificate: false, clientTrustDomains: []}
  limits: {maxHeaderBytes: 1, maxBodyBytes: 1, requestTimeout: 1s, idleTimeout: 1s,
           maxConnectionBodyBytes: 1, drainTimeout: 1s, connectTimeout: 1s,
           upstreamIdleTimeout: 1s}
  usage: {defaultEncoding: cl100k_base, defaultMaxTokens: 5}
  embeddingsCache: {enabled: true, maxBytes: 10, ttl: 1s}
  admission: {maxConcurrent: 1, maxQueued: 1, queueTimeout: {critical: 1s, standard: 1s,
              sheddable: 1s}, priorityFrom: {header: x-p}, defaultClass: standard,
              tenantClasses: {a: critical}}
  pools:
    - {name: main, loadBalancer: peak-ewma, endpoints: ["127.0.0.1:1"], prefixBytes: 8,
       circuitBreaker: {maxRequests: 1}, outlierDetection: {consecutiveFailures: 1,
       ejectionTime: 1s}, loadMetrics: {path: /metrics, interval: 1s}}
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: r}
spec: {models: ["*"], backends: [{pool: main, model: m, weight: 2}], fallbacks: [{pool: main}],
       costTier: {maxPromptTokens: 1, maxOutputTokens: 1, pool: main, model: m, weight: 1},
       timeout: 1s, retries: {attempts: 1, budgetPercent: 1, minRetries: 1, backoff: 1ms}}
---
kind: TokenBudget
metadata: {name: b}
spec:
  tenantFrom: [{header: x-tenant}, {apiKey: {header: authorization}}, {spiffe: {}},
               {namespace: {}}]
  apiKeys: {k: a}
  defaultTenant: a
  defaultMaxTokens: 1
  limits: [{tenant: "*", model: "*", tokensPerMinute: 5, requestsPerMinute: 1, tokensPerDay: 9,
            maxConcurrent: 1}]
)");
    EXPECT_EQ(c.pools.size(), 1u);
    EXPECT_EQ(c.upstream.idle_timeout, std::chrono::seconds(1));
}

TEST(Config, ValidateReportsEveryProblem) {
    const auto config = parseConfig(R"(
kind: Waypoint
spec:
  workers: 0
  busyPollMicros: 20000
  pools: [{name: a, endpoints: ["127.0.0.1:1"]}]
---
kind: ModelRoute
metadata: {name: r}
spec:
  models: ["*"]
  backends: [{pool: missing}]
)");
    const auto problems = config.validate();
    ASSERT_EQ(problems.size(), 3u);
    EXPECT_NE(problems[0].find("workers"), std::string::npos);
    EXPECT_NE(problems[1].find("busyPollMicros must be 0..10000"), std::string::npos);
    EXPECT_NE(problems[2].find("unknown pool missing"), std::string::npos);
    EXPECT_THROW(parseConfig("kind: TokenBudget\nspec: {limits: []}\n"), std::invalid_argument);
    // A route whose backends all weigh 0 would pick no target at all; nor may the weights add
    // up past 32 bits (2 × 2^31 would wrap to 0).
    auto refusedWeights = [](const std::string& backends, const std::string& problem) {
        try {
            parseConfig("kind: ModelRoute\nmetadata: {name: r}\nspec: {models: [m], backends: " +
                        backends + "}\n");
            ADD_FAILURE() << "accepted: " << backends;
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find(problem), std::string::npos) << e.what();
        }
    };
    refusedWeights("[{pool: a, weight: 0}, {pool: b, weight: 0}]", "every backend has weight 0");
    refusedWeights("[{pool: a, weight: 2147483648}, {pool: b, weight: 2147483648}]",
                   "add up to more than 4294967295");
    // Durations: a negative backoff divided by zero on the first retry (SIGFPE).
    for (const std::string bad : {"-2ms", "nan", "inf", "1e30s", "5h"}) {
        try {
            parseConfig(
                "kind: ModelRoute\nmetadata: {name: r}\nspec: {models: [m], backends: "
                "[{pool: a}], retries: {attempts: 2, backoff: " +
                bad + "}}\n");
            ADD_FAILURE() << "accepted: " << bad;
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("bad duration '" + bad + "'"), std::string::npos)
                << e.what();
        }
    }
    EXPECT_EQ(parseDuration(YAML::Load("0"), std::chrono::milliseconds(7)),
              std::chrono::milliseconds(0));
    EXPECT_EQ(parseDuration(YAML::Load("1.5m"), std::chrono::milliseconds(7)),
              std::chrono::milliseconds(90'000));
}

}  // namespace
}  // namespace sluice::waypoint
