#pragma once

#include <chrono>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>

#include "waypoint/filters/cache/config.h"
#include "waypoint/filters/filter.h"

namespace sluice::waypoint::cache {

// Exact-match response cache for /v1/embeddings: the key is (tenant, model, input, options), so
// tenants never see each other's entries. Bounded in bytes (LRU) and in age (TTL). A hit is
// answered locally, costs the tenant no tokens and carries `x-sluice-cache: hit`. Runs after
// the budget filter (which names the tenant) and before the route.
class EmbeddingsCacheFilter : public HttpFilter {
  public:
    using Clock = std::chrono::steady_clock;
    explicit EmbeddingsCacheFilter(EmbeddingsCacheConfig config,
                                   std::function<Clock::time_point()> now = Clock::now);

    std::string_view name() const override { return "embeddings_cache"; }
    std::optional<LocalReply> onRequest(RequestContext& ctx) override;
    void onResponseBody(RequestContext& ctx, std::string_view body) override;

    std::size_t bytes() const;
    std::size_t entries() const;

  private:
    struct Entry {
        std::string key;
        std::string body;
        Clock::time_point expires;
    };
    static std::string keyOf(const RequestContext& ctx);
    void evictLocked();

    EmbeddingsCacheConfig config_;
    std::function<Clock::time_point()> now_;
    mutable std::mutex mutex_;
    std::list<Entry> lru_;  // front = most recently used
    std::unordered_map<std::string_view, std::list<Entry>::iterator> index_;
    std::size_t bytes_ = 0;
};

}  // namespace sluice::waypoint::cache
