#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <vector>

#include "waypoint/filters/filter.h"
#include "waypoint/filters/route/config.h"
#include "waypoint/lb/pool.h"

namespace sluice::waypoint::route {

// ModelRoute: picks the route for the request's model and fills ctx.targets (weighted backend
// or cost tier first, then the fallbacks in order). The attempts themselves run in the
// gateway's router, which asks retryAllowed() before each retry.
class RouteFilter : public HttpFilter {
  public:
    RouteFilter(std::vector<ModelRouteConfig> routes,
                const std::map<std::string, std::shared_ptr<BackendPool>>& pools);

    std::string_view name() const override { return "route"; }
    std::optional<LocalReply> onRequest(RequestContext& ctx) override;
    void onComplete(RequestContext& ctx) override;

    const ModelRouteConfig* routeFor(const RequestContext& ctx) const;
    // Retry budget (Envoy's): retries in flight stay below budget_percent of active requests.
    bool retryAllowed(const RequestContext& ctx);
    void retryFinished(const RequestContext& ctx);

  private:
    struct Route {
        ModelRouteConfig config;
        std::vector<RouteTarget> backends;
        std::vector<RouteTarget> fallbacks;
        std::optional<RouteTarget> cost_tier;
        std::uint32_t total_weight = 0;
        std::atomic<std::uint32_t> active{0};
        std::atomic<std::uint32_t> retries{0};
    };
    Route* find(const std::string& name);
    std::vector<std::unique_ptr<Route>> routes_;
};

}  // namespace sluice::waypoint::route
