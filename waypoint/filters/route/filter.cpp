#include "waypoint/filters/route/filter.h"

#include <random>
#include <stdexcept>

namespace sluice::waypoint::route {
namespace {
thread_local std::minstd_rand rng{std::random_device{}()};

// The index of a weighted pick among `configs` (total weight `total`, > 0).
std::size_t pickWeighted(const std::vector<TargetConfig>& configs, std::uint32_t total) {
    std::uniform_int_distribution<std::uint32_t> dist(0, total - 1);
    std::uint32_t roll = dist(rng);
    for (std::size_t i = 0; i < configs.size(); ++i) {
        if (roll < configs[i].weight)
            return i;
        roll -= configs[i].weight;
    }
    return configs.size() - 1;  // unreachable while total is the sum of the weights
}
}  // namespace

RouteFilter::RouteFilter(std::vector<ModelRouteConfig> routes, const Pools& pools)
    : table_(build(std::move(routes), pools)) {}

void RouteFilter::reconfigure(std::vector<ModelRouteConfig> routes, const Pools& pools) {
    auto next = build(std::move(routes), pools);
    std::lock_guard lock(mutex_);
    table_ = std::move(next);
}

std::shared_ptr<const RouteFilter::Table> RouteFilter::table() const {
    std::lock_guard lock(mutex_);
    return table_;
}

std::shared_ptr<const RouteFilter::Table> RouteFilter::tableOf(const RequestContext& ctx) const {
    if (ctx.route_table)
        return std::static_pointer_cast<const Table>(ctx.route_table);
    return table();
}

std::vector<std::string> RouteFilter::models() const {
    std::vector<std::string> out;
    const auto current = table();
    for (const auto& route : current->routes) {
        for (const auto& m : route->config.models) {
            if (m != "*")
                out.push_back(m);
        }
    }
    return out;
}

std::shared_ptr<const RouteFilter::Table> RouteFilter::build(std::vector<ModelRouteConfig> routes,
                                                             const Pools& pools) {
    auto table = std::make_shared<Table>();
    table->pools = pools;
    for (auto& config : routes) {
        auto route = std::make_unique<Route>();
        auto target = [&](const TargetConfig& t) {
            auto it = pools.find(t.pool);
            if (it == pools.end()) {
                throw std::invalid_argument("ModelRoute " + config.name + ": unknown pool " +
                                            t.pool);
            }
            return RouteTarget{
                .pool = it->second.get(), .model = t.model, .timeout = config.timeout};
        };
        for (const auto& b : config.backends) {
            route->backends.push_back(target(b));
            route->total_weight += b.weight;
        }
        for (const auto& f : config.fallbacks)
            route->fallbacks.push_back(target(f));
        if (config.cost_tier) {
            for (const auto& t : config.cost_tier->targets) {
                route->cost_tier.push_back(target(t));
                route->cost_tier_weight += t.weight;
            }
        }
        route->config = std::move(config);
        table->routes.push_back(std::move(route));
    }
    return table;
}

const ModelRouteConfig* RouteFilter::routeFor(const RequestContext& ctx) const {
    // Before onRequest the pointer is only valid until the next reload; the gateway asks after.
    const auto table = tableOf(ctx);
    for (const auto& route : table->routes) {
        for (const auto& m : route->config.models) {
            if (m == "*" || m == ctx.model)
                return &route->config;
        }
    }
    return nullptr;
}

RouteFilter::Route* RouteFilter::find(const Table& table, const std::string& name) {
    for (const auto& route : table.routes) {
        if (route->config.name == name)
            return route.get();
    }
    return nullptr;
}

std::optional<LocalReply> RouteFilter::onRequest(RequestContext& ctx) {
    ctx.route_table = table();
    const ModelRouteConfig* config = routeFor(ctx);
    if (!config) {
        ctx.result = "no_route";
        return LocalReply{.status = http::status::not_found,
                          .type = "invalid_request_error",
                          .code = "model_not_found",
                          .message = "The model `" + ctx.model +
                                     "` does not exist or is not "
                                     "routed by this gateway."};
    }
    Route& route = *find(*tableOf(ctx), config->name);
    ctx.route = config->name;
    ++route.active;
    const auto& tier = config->cost_tier;
    if (tier && route.cost_tier_weight > 0 &&
        ctx.estimated_prompt_tokens <= tier->max_prompt_tokens &&
        ctx.max_output_tokens <= tier->max_output_tokens) {
        ctx.targets.push_back(route.cost_tier[pickWeighted(tier->targets, route.cost_tier_weight)]);
        ctx.route_decision = "cost-tier:prompt<=" + std::to_string(tier->max_prompt_tokens);
    } else if (route.total_weight > 0) {
        const std::size_t i = pickWeighted(config->backends, route.total_weight);
        ctx.targets.push_back(route.backends[i]);
        ctx.route_decision = "weighted:" + config->backends[i].pool;
    }
    for (const auto& f : route.fallbacks)
        ctx.targets.push_back(f);
    ctx.response_headers.emplace_back("x-sluice-route", config->name + ";" + ctx.route_decision);
    return std::nullopt;
}

void RouteFilter::onComplete(RequestContext& ctx) {
    if (Route* route = find(*tableOf(ctx), ctx.route))
        --route->active;
}

std::uint32_t RouteFilter::retriesAllowed(const Route& route) {
    const auto& r = route.config.retries;
    return std::max(r.min_retries, route.active.load() * r.budget_percent / 100);
}

bool RouteFilter::underRetryBudget(const Route& route, std::uint32_t held) {
    const std::uint32_t in_flight = route.retries.load();
    return in_flight - std::min(in_flight, held) < retriesAllowed(route);
}

bool RouteFilter::retryAllowed(const RequestContext& ctx) {
    Route* route = find(*tableOf(ctx), ctx.route);
    if (!route)
        return false;
    // Check and take in one step: workers that retry at once cannot all pass one last slot.
    std::uint32_t in_flight = route->retries.load();
    do {
        if (in_flight >= retriesAllowed(*route))
            return false;
    } while (!route->retries.compare_exchange_weak(in_flight, in_flight + 1));
    return true;
}

bool RouteFilter::retryAvailable(const RequestContext& ctx, bool holding) const {
    const Route* route = find(*tableOf(ctx), ctx.route);
    return route && underRetryBudget(*route, holding ? 1 : 0);
}

void RouteFilter::retryFinished(const RequestContext& ctx) {
    if (Route* route = find(*tableOf(ctx), ctx.route))
        --route->retries;
}

}  // namespace sluice::waypoint::route
