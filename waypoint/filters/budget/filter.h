#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "waypoint/filters/budget/config.h"
#include "waypoint/filters/budget/token_bucket.h"
#include "waypoint/filters/filter.h"
#include "waypoint/metrics.h"

namespace sluice::waypoint::budget {

// How long until `seconds` from now, in OpenAI's x-ratelimit-reset-* format: "1s", "0.5s",
// "15.06s" (rounded up to the millisecond, shortest fixed notation), "6m0s" from a minute on.
std::string resetString(double seconds);

// TokenBudget admission: identifies the tenant, reserves the estimated prompt tokens plus the
// request's max output tokens against the matching limit's buckets, and settles the reservation
// with the real usage on completion. Over budget → 429 in OpenAI's shape with x-ratelimit-*
// and retry-after. One instance serves all worker threads; its state is behind one mutex (two
// short critical sections per request).
class BudgetFilter : public HttpFilter {
  public:
    using Clock = TokenBucket::Clock;
    // `now` is injectable so tests can move time; `metrics` may be null.
    BudgetFilter(TokenBudgetConfig config, Metrics* metrics,
                 std::function<Clock::time_point()> now = Clock::now,
                 std::function<std::int64_t()> utc_day = currentUtcDay);

    std::string_view name() const override { return "budget"; }
    std::optional<LocalReply> onRequest(RequestContext& ctx) override;
    void onComplete(RequestContext& ctx) override;

    // Replaces the tenant sources and limits (policy reload). Buckets keep what was used in
    // the current window and take the new capacity at the tenant's next request.
    void reconfigure(TokenBudgetConfig config);

    std::string tenantOf(const RequestContext& ctx) const;
    static std::int64_t currentUtcDay();

    // Tenant names can come from clients (an x-tenant header), so the states are bounded:
    // those at rest are dropped whenever the map has doubled since the last sweep, and past
    // kMaxStates every new (tenant, model) shares one overflow state per limit (swept again
    // at most once a minute there).
    static constexpr std::size_t kMaxStates = 100'000;
    static constexpr std::string_view kOverflowKey{"\0overflow", 9};
    std::size_t states() {
        std::lock_guard lock(mutex_);
        return states_.size();
    }

  private:
    struct State {
        std::optional<TokenBucket> tokens;
        std::optional<TokenBucket> requests;
        std::int64_t day = 0;
        std::uint64_t used_today = 0;
        std::uint32_t concurrent = 0;
    };
    using ConfigPtr = std::shared_ptr<const TokenBudgetConfig>;
    ConfigPtr config() const;
    static std::string tenantOf(const TokenBudgetConfig& config, const RequestContext& ctx);
    static const BudgetLimit* match(const TokenBudgetConfig& config, const std::string& tenant,
                                    const std::string& model);
    static std::string keyOf(const BudgetLimit& limit, const std::string& tenant,
                             const std::string& model);
    // Brings the state's buckets to the limit's current capacities (after a reconfigure).
    static void fit(State& state, const BudgetLimit& limit, Clock::time_point now);
    // Full buckets, nothing in flight, nothing used today: the same as no state at all.
    static bool atRest(State& state, Clock::time_point now, std::int64_t today);
    mutable std::mutex config_mutex_;
    ConfigPtr config_;  // swapped whole by reconfigure(); a request keeps the one it started with
    Metrics* metrics_;
    std::function<Clock::time_point()> now_;
    std::function<std::int64_t()> utc_day_;
    std::mutex mutex_;
    std::unordered_map<std::string, State> states_;
    std::size_t sweep_at_ = 1024;          // states_.size() that starts the next sweep
    Clock::time_point last_full_sweep_{};  // the last sweep that left the map at the cap
};

}  // namespace sluice::waypoint::budget
