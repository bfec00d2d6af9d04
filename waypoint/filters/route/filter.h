#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "waypoint/filters/filter.h"
#include "waypoint/filters/route/config.h"
#include "waypoint/lb/pool.h"

namespace sluice::waypoint::route {

// ModelRoute: picks the route for the request's model and fills ctx.targets (weighted backend
// or cost tier first, then the fallbacks in order). The attempts themselves run in the
// gateway's router, which asks retryAllowed() before each retry. The routes form one immutable
// table that reconfigure() replaces whole (policy reload); each request keeps the table it was
// routed with (ctx.route_table) until it completes.
class RouteFilter : public HttpFilter {
  public:
    using Pools = std::map<std::string, std::shared_ptr<BackendPool>>;
    // Throws std::invalid_argument when a route names a pool that `pools` lacks.
    RouteFilter(std::vector<ModelRouteConfig> routes, const Pools& pools);

    // Replaces the routes (same validation as the constructor; on a throw the old table stays).
    void reconfigure(std::vector<ModelRouteConfig> routes, const Pools& pools);
    // Client model names of the current routes ("*" left out), for GET /v1/models.
    std::vector<std::string> models() const;

    std::string_view name() const override { return "route"; }
    std::optional<LocalReply> onRequest(RequestContext& ctx) override;
    void onComplete(RequestContext& ctx) override;

    const ModelRouteConfig* routeFor(const RequestContext& ctx) const;
    // Retry budget (Envoy's): retries in flight stay below budget_percent of active requests.
    bool retryAllowed(const RequestContext& ctx);
    // Whether retryAllowed() would allow one now, taking nothing: an attempt whose retry the
    // budget would refuse relays the backend's own error answer instead of holding it back.
    // `holding`: the request holds a retry already, given back before it asks for the next.
    bool retryAvailable(const RequestContext& ctx, bool holding) const;
    void retryFinished(const RequestContext& ctx);

  private:
    struct Route {
        ModelRouteConfig config;
        std::vector<RouteTarget> backends;
        std::vector<RouteTarget> fallbacks;
        std::vector<RouteTarget> cost_tier;  // empty: no cost tier
        std::uint32_t total_weight = 0;
        std::uint32_t cost_tier_weight = 0;
        std::atomic<std::uint32_t> active{0};
        std::atomic<std::uint32_t> retries{0};
    };
    struct Table {
        std::vector<std::unique_ptr<Route>> routes;
        Pools pools;  // what the targets point into
    };
    static std::shared_ptr<const Table> build(std::vector<ModelRouteConfig> routes,
                                              const Pools& pools);
    std::shared_ptr<const Table> table() const;
    // The table of the request (after onRequest), else the current one.
    std::shared_ptr<const Table> tableOf(const RequestContext& ctx) const;
    static Route* find(const Table& table, const std::string& name);
    static bool underRetryBudget(const Route& route, std::uint32_t held = 0);
    static std::uint32_t retriesAllowed(const Route& route);

    mutable std::mutex mutex_;
    std::shared_ptr<const Table> table_;
};

}  // namespace sluice::waypoint::route
