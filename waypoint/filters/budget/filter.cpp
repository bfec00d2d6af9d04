#include "waypoint/filters/budget/filter.h"

#include <openssl/evp.h>

#include <charconv>
#include <cmath>
#include <cstdio>

namespace sluice::waypoint::budget {
namespace {

// Token counts come from clients (max_tokens): a sum at the top stays there, never wraps.
std::uint64_t saturatingAdd(std::uint64_t a, std::uint64_t b) {
    return b > UINT64_MAX - a ? UINT64_MAX : a + b;
}

}  // namespace

std::string resetString(double seconds) {
    char buf[32];
    seconds = std::ceil(seconds * 1000) / 1000;
    if (std::signbit(seconds)) {  // a bucket over capacity after a refund: "-0.5s", as before
        auto [end, ec] =
            std::to_chars(buf, buf + sizeof buf - 2, seconds, std::chars_format::fixed);
        if (ec != std::errc())
            return "0s";
        *end++ = 's';
        *end = '\0';
    } else if (seconds < 60) {
        // The millisecond-rounded value in its shortest fixed notation ("%g" without printf's
        // cost; it runs for every request, for the x-ratelimit-reset-* headers): whole seconds,
        // then the milliseconds without trailing zeros.
        const auto ms = static_cast<std::uint64_t>(std::llround(seconds * 1000));
        char* end = std::to_chars(buf, buf + 8, ms / 1000).ptr;
        if (unsigned frac = unsigned(ms % 1000); frac != 0) {
            *end++ = '.';
            const char digits[3] = {char('0' + frac / 100), char('0' + frac / 10 % 10),
                                    char('0' + frac % 10)};
            const int keep = digits[2] != '0' ? 3 : digits[1] != '0' ? 2 : 1;
            for (int i = 0; i < keep; ++i)
                *end++ = digits[i];
        }
        *end++ = 's';
        *end = '\0';
    } else {
        std::snprintf(buf, sizeof buf, "%dm%ds", int(seconds) / 60, int(seconds) % 60);
    }
    return buf;
}

namespace {

std::string bearerToken(std::string_view value) {
    if (value.starts_with("Bearer ") || value.starts_with("bearer "))
        value.remove_prefix(7);
    return std::string(value);
}

// The SHA-256 of `text` as 64 lowercase hex digits ("" if OpenSSL fails, which matches no key).
std::string sha256Hex(std::string_view text) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_Digest(text.data(), text.size(), digest, &size, EVP_sha256(), nullptr) != 1)
        return {};
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out(2 * size, '0');
    for (unsigned int i = 0; i < size; ++i) {
        out[2 * i] = kHex[digest[i] >> 4];
        out[2 * i + 1] = kHex[digest[i] & 0xf];
    }
    return out;
}

// "spiffe://<td>/ns/<ns>/sa/<sa>" → "<ns>".
std::string namespaceOf(std::string_view spiffe) {
    const auto at = spiffe.find("/ns/");
    if (at == std::string_view::npos)
        return {};
    spiffe.remove_prefix(at + 4);
    return std::string(spiffe.substr(0, spiffe.find('/')));
}

}  // namespace

BudgetFilter::BudgetFilter(TokenBudgetConfig config, Metrics* metrics,
                           std::function<Clock::time_point()> now,
                           std::function<std::int64_t()> utc_day)
    : metrics_(metrics), now_(std::move(now)), utc_day_(std::move(utc_day)) {
    config_ = std::make_shared<const TokenBudgetConfig>(std::move(config));
}

void BudgetFilter::reconfigure(TokenBudgetConfig config) {
    auto next = std::make_shared<const TokenBudgetConfig>(std::move(config));
    std::lock_guard lock(config_mutex_);
    config_ = std::move(next);
}

BudgetFilter::ConfigPtr BudgetFilter::config() const {
    std::lock_guard lock(config_mutex_);
    return config_;
}

void BudgetFilter::fit(State& state, const BudgetLimit& limit, Clock::time_point now) {
    auto fit_bucket = [&](std::optional<TokenBucket>& bucket, std::uint64_t per_minute) {
        if (!per_minute) {
            bucket.reset();
        } else if (!bucket) {
            bucket.emplace(per_minute, now);
        } else if (bucket->capacity() != double(per_minute)) {
            bucket->resize(per_minute, now);
        }
    };
    fit_bucket(state.tokens, limit.tokens_per_minute);
    fit_bucket(state.requests, limit.requests_per_minute);
}

bool BudgetFilter::atRest(State& state, Clock::time_point now, std::int64_t today) {
    auto full = [&](std::optional<TokenBucket>& b) { return !b || b->level(now) >= b->capacity(); };
    return state.concurrent == 0 && (state.day != today || state.used_today == 0) &&
           full(state.tokens) && full(state.requests);
}

std::int64_t BudgetFilter::currentUtcDay() {
    using namespace std::chrono;
    return duration_cast<days>(system_clock::now().time_since_epoch()).count();
}

std::string BudgetFilter::tenantOf(const RequestContext& ctx) const {
    return tenantOf(*config(), ctx);
}

std::string BudgetFilter::tenantOf(const TokenBudgetConfig& config, const RequestContext& ctx) {
    for (const auto& source : config.tenant_from) {
        std::string tenant;
        switch (source.kind) {
            case TenantSource::Kind::Header:
                tenant = std::string(sv(ctx.request[source.header]));
                break;
            case TenantSource::Kind::ApiKey: {
                const auto key = bearerToken(sv(ctx.request[source.header]));
                if (auto it = config.api_keys.find(key); it != config.api_keys.end()) {
                    tenant = it->second;
                } else if (!key.empty() && !config.api_key_sha256.empty()) {
                    auto hashed = config.api_key_sha256.find(sha256Hex(key));
                    if (hashed != config.api_key_sha256.end())
                        tenant = hashed->second;
                }
                break;
            }
            case TenantSource::Kind::SpiffeId:
                tenant = ctx.peer_identity;
                break;
            case TenantSource::Kind::Namespace:
                tenant = namespaceOf(ctx.peer_identity);
                break;
        }
        if (!tenant.empty())
            return tenant;
    }
    return config.default_tenant;
}

const BudgetLimit* BudgetFilter::match(const TokenBudgetConfig& config, const std::string& tenant,
                                       const std::string& model) {
    // The most specific entry wins: tenant and model, tenant, model, neither.
    const BudgetLimit* best = nullptr;
    int best_score = -1;
    for (const auto& limit : config.limits) {
        const bool tenant_ok = limit.tenant == "*" || limit.tenant == tenant;
        const bool model_ok = limit.model == "*" || limit.model == model;
        if (!tenant_ok || !model_ok)
            continue;
        const int score = (limit.tenant != "*") * 2 + (limit.model != "*");
        if (score > best_score) {
            best = &limit;
            best_score = score;
        }
    }
    return best;
}

std::string BudgetFilter::keyOf(const BudgetLimit& limit, const std::string& tenant,
                                const std::string& model) {
    return tenant + '\0' + (limit.model == "*" ? std::string("*") : model);
}

std::optional<LocalReply> BudgetFilter::onRequest(RequestContext& ctx) {
    if (ctx.api.empty() || ctx.api == "models")
        return std::nullopt;
    const ConfigPtr config = this->config();  // keeps `limit` valid through a reconfigure
    ctx.tenant = tenantOf(*config, ctx);
    const BudgetLimit* limit = match(*config, ctx.tenant, ctx.model);
    if (!limit)
        return std::nullopt;

    // max_tokens is the client's number: the sum saturates instead of wrapping to a small one.
    const std::uint64_t want = saturatingAdd(ctx.estimated_prompt_tokens, ctx.max_output_tokens);
    const auto now = now_();
    const std::int64_t today = utc_day_();
    std::string key = keyOf(*limit, ctx.tenant, ctx.model);
    std::lock_guard lock(mutex_);
    auto found = states_.find(key);  // one lookup for a tenant seen before: the common case
    if (found == states_.end()) {
        if (states_.size() >= sweep_at_ &&
            (states_.size() < kMaxStates || now - last_full_sweep_ >= std::chrono::minutes(1))) {
            // At the cap, at most once a minute: the states there are all in use.
            for (auto it = states_.begin(); it != states_.end();)
                it = atRest(it->second, now, today) ? states_.erase(it) : std::next(it);
            sweep_at_ = std::clamp<std::size_t>(2 * states_.size(), 1024, kMaxStates);
            if (states_.size() >= kMaxStates)
                last_full_sweep_ = now;
        }
        if (states_.size() >= kMaxStates) {
            // Shared by every new key past the cap that matched this limit (one per limit, so
            // that tenants of different limits do not resize each other's buckets).
            key = std::string(kOverflowKey) + '\0' + keyOf(*limit, limit->tenant, ctx.model);
        }
        found = states_.try_emplace(key).first;
    }
    State& state = found->second;
    fit(state, *limit, now);
    if (state.day != today) {
        state.day = today;
        state.used_today = 0;
    }

    // Headers on every answer, as OpenAI sends them.
    auto add_headers = [&](std::vector<std::pair<std::string, std::string>>& out) {
        out.reserve(out.size() + 8);  // these six, the route's, one more
        if (state.requests) {
            out.emplace_back("x-ratelimit-limit-requests",
                             std::to_string(limit->requests_per_minute));
            out.emplace_back(
                "x-ratelimit-remaining-requests",
                std::to_string(std::int64_t(std::max(0.0, state.requests->level(now)))));
            out.emplace_back("x-ratelimit-reset-requests",
                             resetString(state.requests->secondsUntilFull(now)));
        }
        if (state.tokens) {
            out.emplace_back("x-ratelimit-limit-tokens", std::to_string(limit->tokens_per_minute));
            out.emplace_back("x-ratelimit-remaining-tokens",
                             std::to_string(std::int64_t(std::max(0.0, state.tokens->level(now)))));
            out.emplace_back("x-ratelimit-reset-tokens",
                             resetString(state.tokens->secondsUntilFull(now)));
        }
    };
    // `retry_after` nullopt: the request can never fit the limit; waiting does not help.
    auto reject = [&](std::string type, std::string what, std::uint64_t limit_value, double used,
                      std::uint64_t requested, std::optional<double> retry_after) {
        LocalReply reply{
            .status = http::status::too_many_requests, .type = type, .code = "rate_limit_exceeded"};
        char msg[512];
        const char* model = ctx.model.empty() ? "this model" : ctx.model.c_str();
        if (retry_after) {
            std::snprintf(msg, sizeof msg,
                          "Rate limit reached for %s in tenant %s on %s: Limit %llu, Used %.0f, "
                          "Requested %llu. Please try again in %s.",
                          model, ctx.tenant.c_str(), what.c_str(), (unsigned long long)limit_value,
                          used, (unsigned long long)requested, resetString(*retry_after).c_str());
        } else {
            std::snprintf(msg, sizeof msg,
                          "Request too large for %s in tenant %s on %s: Limit %llu, Requested "
                          "%llu. The input or output tokens must be reduced in order to run "
                          "successfully.",
                          model, ctx.tenant.c_str(), what.c_str(), (unsigned long long)limit_value,
                          (unsigned long long)requested);
        }
        reply.message = msg;
        add_headers(reply.headers);
        if (retry_after) {
            reply.headers.emplace_back(
                "retry-after",
                std::to_string(std::max<std::int64_t>(1, std::llround(std::ceil(*retry_after)))));
        }
        if (metrics_)
            metrics_->rejected.at({{"reason", what}, {"tenant", ctx.tenant}}).Increment();
        ctx.result = "rate_limited";
        return reply;
    };

    if (limit->max_concurrent && state.concurrent >= limit->max_concurrent) {
        return reject("requests", "concurrent requests", limit->max_concurrent, state.concurrent, 1,
                      1.0);
    }
    if (state.requests && state.requests->secondsUntil(1, now) > 0) {
        return reject("requests", "requests per min (RPM)", limit->requests_per_minute,
                      limit->requests_per_minute - state.requests->level(now), 1,
                      state.requests->secondsUntil(1, now));
    }
    if (state.tokens && state.tokens->secondsUntil(want, now) > 0) {
        return reject("tokens", "tokens per min (TPM)", limit->tokens_per_minute,
                      limit->tokens_per_minute - state.tokens->level(now), want,
                      state.tokens->secondsUntil(want, now));
    }
    if (limit->tokens_per_day && (state.used_today >= limit->tokens_per_day ||
                                  want > limit->tokens_per_day - state.used_today)) {
        using namespace std::chrono;
        const auto since_midnight = system_clock::now().time_since_epoch() % days(1);
        const bool never = want > limit->tokens_per_day;  // not even tomorrow
        return reject("tokens", "tokens per day (TPD)", limit->tokens_per_day,
                      double(state.used_today), want,
                      never ? std::nullopt
                            : std::optional(duration<double>(days(1) - since_midnight).count()));
    }
    if (state.requests)
        state.requests->try_take(1, now);
    ctx.reserved_minute_tokens = state.tokens ? state.tokens->try_take(want, now).value_or(0) : 0;
    state.used_today = saturatingAdd(state.used_today, want);
    ++state.concurrent;
    ctx.reserved_tokens = want;
    ctx.reserved_day = today;
    // Settled against this same state, whatever a reconfigure does meanwhile.
    ctx.budget_state = key;
    ctx.budget_model_label = limit->model == "*" ? "*" : ctx.model;
    add_headers(ctx.response_headers);
    if (metrics_ && state.tokens) {
        metrics_->budget_remaining
            .at({{"tenant", ctx.tenant}, {"model", limit->model == "*" ? "*" : ctx.model}})
            .Set(state.tokens->level(now));
    }
    return std::nullopt;
}

void BudgetFilter::onComplete(RequestContext& ctx) {
    if (ctx.api.empty() || ctx.api == "models")
        return;
    // Only requests this filter admitted hold a reservation (a 429 never took one); they settle
    // with the state they reserved from, even if a reconfigure changed the limits since.
    if (ctx.budget_state.empty())
        return;
    // Charge what was used: the reported usage; without one, nothing for a request no backend
    // answered successfully, else the whole reservation (the conservative choice).
    std::uint64_t used = ctx.reserved_tokens;
    if (ctx.usage.reported) {
        used = ctx.usage.total();
    } else if (ctx.backend.empty() || ctx.status == 0 || ctx.status >= 400) {
        used = 0;
    }
    const auto now = now_();
    std::lock_guard lock(mutex_);
    State& state = states_[ctx.budget_state];
    // The bucket gets back what it gave (or is charged beyond it); the daily count is settled
    // only on the day it was charged: a new day started from zero without this reservation.
    // Without a reported usage the bucket keeps what it gave, no more: the reservation is the
    // client's max_tokens, and charging it all would put the tenant in a debt of its choosing.
    const double bucket_used =
        ctx.usage.reported ? double(used) : std::min(double(used), ctx.reserved_minute_tokens);
    if (state.tokens)
        state.tokens->adjust(ctx.reserved_minute_tokens - bucket_used, now);
    if (state.day == ctx.reserved_day) {
        if (used <= ctx.reserved_tokens) {
            state.used_today -= std::min(state.used_today, ctx.reserved_tokens - used);
        } else {
            state.used_today = saturatingAdd(state.used_today, used - ctx.reserved_tokens);
        }
    }
    if (state.concurrent > 0)
        --state.concurrent;
    if (metrics_ && state.tokens) {
        metrics_->budget_remaining.at({{"tenant", ctx.tenant}, {"model", ctx.budget_model_label}})
            .Set(state.tokens->level(now));
    }
}

}  // namespace sluice::waypoint::budget
