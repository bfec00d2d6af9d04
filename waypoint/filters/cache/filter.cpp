#include "waypoint/filters/cache/filter.h"

namespace sluice::waypoint::cache {

EmbeddingsCacheFilter::EmbeddingsCacheFilter(EmbeddingsCacheConfig config,
                                             std::function<Clock::time_point()> now)
    : config_(config), now_(std::move(now)) {}

std::string EmbeddingsCacheFilter::keyOf(const RequestContext& ctx) {
    // The whole body but `user` (a per-call tag that does not change the embedding) in a
    // sorted-key form, so key order in the client's JSON does not matter.
    return ctx.tenant + '\0' + ctx.body->canonical("user");
}

std::optional<LocalReply> EmbeddingsCacheFilter::onRequest(RequestContext& ctx) {
    if (ctx.api != "embeddings" || !ctx.body)
        return std::nullopt;
    const std::string key = keyOf(ctx);
    std::lock_guard lock(mutex_);
    auto it = index_.find(key);
    if (it == index_.end())
        return std::nullopt;
    if (now_() >= it->second->expires) {
        bytes_ -= it->second->key.size() + it->second->body.size();
        lru_.erase(it->second);
        index_.erase(it);
        return std::nullopt;
    }
    lru_.splice(lru_.begin(), lru_, it->second);
    ctx.usage = {.reported = true};  // a hit uses no backend tokens
    ctx.result = "cache_hit";
    return LocalReply{.status = http::status::ok,
                      .headers = {{"x-sluice-cache", "hit"}},
                      .raw_body = it->second->body};
}

void EmbeddingsCacheFilter::onResponseBody(RequestContext& ctx, std::string_view body) {
    // Not an answer of a fallback target that rewrote the model: its vectors are another
    // model's (another space, maybe other dimensions) and must not answer for the one asked.
    if (ctx.api != "embeddings" || !ctx.body || ctx.status != 200 || !ctx.sent_model.empty())
        return;
    std::string key = keyOf(ctx);
    const std::size_t size = key.size() + body.size();
    if (size > config_.max_bytes / 4)
        return;  // one entry never crowds out the cache
    std::lock_guard lock(mutex_);
    if (index_.count(key))
        return;
    lru_.push_front(Entry{std::move(key), std::string(body), now_() + config_.ttl});
    index_.emplace(lru_.front().key, lru_.begin());
    bytes_ += size;
    evictLocked();
}

void EmbeddingsCacheFilter::evictLocked() {
    while (bytes_ > config_.max_bytes && !lru_.empty()) {
        const Entry& last = lru_.back();
        bytes_ -= last.key.size() + last.body.size();
        index_.erase(last.key);
        lru_.pop_back();
    }
}

std::size_t EmbeddingsCacheFilter::bytes() const {
    std::lock_guard lock(mutex_);
    return bytes_;
}

std::size_t EmbeddingsCacheFilter::entries() const {
    std::lock_guard lock(mutex_);
    return lru_.size();
}

}  // namespace sluice::waypoint::cache
