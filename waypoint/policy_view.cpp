#include "waypoint/policy_view.h"

#include <arpa/inet.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "waypoint/problems.h"

namespace sluice::waypoint {
namespace {

using nlohmann::json;

bool isIpAddress(const std::string& host) {
    unsigned char buf[16];
    return ::inet_pton(AF_INET, host.c_str(), buf) == 1 ||
           ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string endpointOf(const std::string& host, int port) {
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// "ns/name" of a folder document ("name" when it has no namespace), for messages.
std::string refOf(const json& doc) {
    const std::string name = doc.at("name");
    const std::string ns = doc.value("namespace", "");
    return ns.empty() ? name : ns + "/" + name;
}

// The tenant a folder TokenBudget's `spec.tenant` names, in the budget filter's terms.
std::string tenantOf(const json& tenant) {
    if (tenant.contains("namespace"))
        return tenant["namespace"].get<std::string>();
    if (tenant.contains("header"))
        return tenant["header"].get<std::string>();
    std::string principal = tenant.value("principal", "");
    return principal.starts_with("spiffe://") ? principal : "spiffe://" + principal;
}

}  // namespace

budget::TokenBudgetConfig baseBudget(const Config& base) {
    if (!base.budgets.empty())
        return base.budgets.front();
    budget::TokenBudgetConfig b;
    b.name = "policies";
    b.tenant_from = {{budget::TenantSource::Kind::Header, kDefaultTenantHeader},
                     {budget::TenantSource::Kind::Namespace, ""}};
    return b;
}

PolicyView makePolicyView(const Config& base, const json& view) {
    PolicyView out;
    std::vector<std::string> problems;

    out.budget = baseBudget(base);
    for (const auto& doc : view.value("tokenBudgets", json::array())) {
        const json& spec = doc.at("spec");
        const json& limits = spec.at("limits");
        budget::BudgetLimit limit{
            .tenant = tenantOf(spec.at("tenant")),
            .model = spec.value("model", "*"),
            .tokens_per_minute = limits.value("tokensPerMinute", std::uint64_t{0}),
            .requests_per_minute = limits.value("requestsPerMinute", std::uint64_t{0}),
            .tokens_per_day = limits.value("tokensPerDay", std::uint64_t{0}),
            .max_concurrent = limits.value("maxConcurrent", std::uint32_t{0}),
        };
        auto& all = out.budget.limits;
        std::erase_if(all, [&](const budget::BudgetLimit& l) {
            return l.tenant == limit.tenant && l.model == limit.model;
        });
        all.push_back(limit);
    }

    out.pools = base.pools;
    std::set<std::string> pool_names;
    for (const auto& p : base.pools)
        pool_names.insert(p.name);
    const json routes = view.value("modelRoutes", json::array());
    // Backends of each folder route's model, for other routes' fallbacks.
    std::map<std::string, std::vector<route::TargetConfig>> targets_by_model;
    // A pool the folder brings (an address's, a service port's), with the defaults of PoolConfig.
    auto addPool = [&](const std::string& pool, std::vector<std::string> endpoints) {
        if (pool_names.insert(pool).second)
            out.pools.push_back(PoolConfig{.name = pool, .endpoints = std::move(endpoints)});
    };
    for (const auto& doc : routes) {
        const std::string name = refOf(doc);
        const json& spec = doc.at("spec");
        const json services = doc.value("services", json::object());
        std::vector<route::TargetConfig> targets;
        std::uint32_t total_weight = 0;
        for (const auto& b : spec.at("backends")) {
            const std::string host = b.at("host");
            const int port = b.at("port");
            const std::string host_port = host + ":" + std::to_string(port);
            route::TargetConfig t{.weight = b.value("weight", 1u)};
            if (pool_names.count(host)) {  // the Waypoint config's pools win over a Service
                t.pool = host;
            } else if (isIpAddress(host)) {
                t.pool = endpointOf(host, port);
                addPool(t.pool, {t.pool});
            } else if (auto it = services.find(host_port);
                       it != services.end() && it->contains("pool")) {
                t.pool = it->at("pool").get<std::string>();
                addPool(t.pool, it->value("endpoints", std::vector<std::string>{}));
            } else if (it != services.end()) {
                problems.push_back("ModelRoute " + name + ": backend host " + host + ": " +
                                   it->value("error", std::string("unusable")));
                continue;
            } else {
                problems.push_back("ModelRoute " + name + ": backend host " + host +
                                   " is neither a pool of the Waypoint config, an IP address nor "
                                   "a Service of the registry");
                continue;
            }
            total_weight += t.weight;
            targets.push_back(t);
        }
        if (!targets.empty() && total_weight == 0)
            problems.push_back("ModelRoute " + name + ": every backend has weight 0");
        targets_by_model[spec.at("model").get<std::string>()] = targets;
    }
    for (const auto& doc : routes) {
        const json& spec = doc.at("spec");
        route::ModelRouteConfig r;
        r.name = doc.at("name").get<std::string>();
        r.models = {spec.at("model").get<std::string>()};
        r.backends = targets_by_model[r.models.front()];
        r.timeout = std::chrono::seconds(spec.value("timeoutSeconds", 60));
        for (const auto& item : spec.value("fallbacks", json::array())) {
            const std::string fallback = item.get<std::string>();
            auto it = targets_by_model.find(fallback);
            if (it == targets_by_model.end()) {
                problems.push_back("ModelRoute " + r.name + ": fallback model " + fallback +
                                   " has no ModelRoute");
                continue;
            }
            for (auto t : it->second) {
                t.model = fallback;
                r.fallbacks.push_back(t);
            }
        }
        out.routes.push_back(std::move(r));
    }
    out.routes.insert(out.routes.end(), base.routes.begin(), base.routes.end());
    if (out.routes.empty())
        problems.push_back("no ModelRoute: nothing to route to");
    throwIfProblems(problems);
    return out;
}

}  // namespace sluice::waypoint
