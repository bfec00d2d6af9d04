#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "waypoint/config.h"

namespace sluice::waypoint {

// The tenant header a folder TokenBudget's `tenant.header` refers to when the config has no
// TokenBudget of its own that says where tenants come from.
inline constexpr const char* kDefaultTenantHeader = "x-tenant";

// What the waypoint runs with after merging the policies folder (the ConfigMap mount, read by
// the policies library) into its own --config.
struct PolicyView {
    budget::TokenBudgetConfig budget;             // the config's TokenBudget + the folder's limits
    std::vector<route::ModelRouteConfig> routes;  // the folder's routes first, then the config's
    std::vector<PoolConfig> pools;  // the config's pools + one per backend address/service port
};

// The config's TokenBudget, or (none) one that reads tenants from kDefaultTenantHeader, then the
// peer's SPIFFE namespace, with no limits: what the folder's limits are added to.
budget::TokenBudgetConfig baseBudget(const Config& base);

// Translates the TokenBudget and ModelRoute documents of the policies library's schema
// (docs/policies.md; `view` is CompiledPolicy::waypoint: {"tokenBudgets": [...],
// "modelRoutes": [...]}) into the waypoint's structs, on top of `base`:
//  * TokenBudget `spec.tenant` {namespace | header | principal} names the tenant (a principal
//    becomes its SPIFFE id), `spec.model` the model, `spec.limits` the per-minute/day limits. A
//    folder limit replaces a config limit of the same (tenant, model).
//  * ModelRoute `spec.model` → one route; each backend `host` is a pool of the config's
//    Waypoint document, an IP address (its own pool `host:port`), or a Service the compiler
//    resolved (the route's `services`: one pool per Service port, of its ready endpoints,
//    possibly none); `spec.fallbacks` are model names whose folder routes' backends are tried
//    next, with the model rewritten; `spec.timeoutSeconds` is the per-attempt timeout.
// Pure; throws std::invalid_argument naming every problem (the caller keeps the last good view).
PolicyView makePolicyView(const Config& base, const nlohmann::json& view);

}  // namespace sluice::waypoint
