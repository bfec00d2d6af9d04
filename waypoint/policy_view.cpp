#include "waypoint/policy_view.h"

#include <arpa/inet.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "waypoint/filters/route/config.h"
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
    if (tenant.contains("apiKey"))
        return tenant["apiKey"].at("name").get<std::string>();
    std::string principal = tenant.value("principal", "");
    return principal.starts_with("spiffe://") ? principal : "spiffe://" + principal;
}

// A folder TokenBudget's `tenant.apiKey`: its digests name the tenant, and the request header it
// reads becomes the first tenant source (a key proves more than a self-declared x-tenant).
void addApiKeyTenant(budget::TokenBudgetConfig& budget, const json& api_key, const std::string& ref,
                     std::vector<std::string>& problems) {
    const std::string tenant = api_key.at("name");
    for (const auto& item : api_key.at("sha256")) {
        const std::string digest = item;
        auto [it, fresh] = budget.api_key_sha256.emplace(digest, tenant);
        if (!fresh && it->second != tenant)
            problems.push_back("TokenBudget " + ref + ": API key sha256 " + digest.substr(0, 12) +
                               "… already names tenant " + it->second);
    }
    const std::string header = api_key.value("header", "authorization");
    const bool listed = std::any_of(
        budget.tenant_from.begin(), budget.tenant_from.end(), [&](const budget::TenantSource& s) {
            return s.kind == budget::TenantSource::Kind::ApiKey && s.header == header;
        });
    if (!listed)
        budget.tenant_from.insert(budget.tenant_from.begin(),
                                  {budget::TenantSource::Kind::ApiKey, header});
}

// A ModelRoute's `loadBalancer` on one of the pools its address or Service backends make.
void applyLoadBalancer(PoolConfig& pool, const json& lb) {
    if (auto policy = lbPolicyNamed(lb.value("policy", "least-request")))
        pool.policy = *policy;
    pool.prefix_bytes = lb.value("prefixBytes", pool.prefix_bytes);
    pool.max_requests = lb.value("maxRequests", pool.max_requests);
    const json outlier = lb.value("outlierDetection", json::object());
    pool.consecutive_failures = outlier.value("consecutiveFailures", pool.consecutive_failures);
    if (outlier.contains("ejectionSeconds"))
        pool.ejection_time = std::chrono::seconds(outlier["ejectionSeconds"].get<int>());
    if (lb.contains("loadMetrics")) {
        const json& m = lb["loadMetrics"];
        pool.load_metrics = true;
        pool.metrics_path = m.value("path", pool.metrics_path);
        pool.metrics_interval = std::chrono::milliseconds(m.value("intervalMilliseconds", 1000));
    }
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
        if (spec.at("tenant").contains("apiKey"))
            addApiKeyTenant(out.budget, spec["tenant"]["apiKey"], refOf(doc), problems);
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
    // A pool the folder brings (an address's, a service port's), with the defaults of PoolConfig
    // or the `loadBalancer` of a route that uses it; two routes may not set it differently.
    std::map<std::string, std::pair<std::string, json>> lb_of_pool;  // pool → (route, settings)
    auto addPool = [&](const std::string& pool, std::vector<std::string> endpoints,
                       const std::string& route, const json* lb) {
        if (pool_names.insert(pool).second)
            out.pools.push_back(PoolConfig{.name = pool, .endpoints = std::move(endpoints)});
        if (lb == nullptr || std::any_of(base.pools.begin(), base.pools.end(),
                                         [&](const PoolConfig& p) { return p.name == pool; }))
            return;  // the Waypoint config's own pools keep their settings
        auto [it, fresh] = lb_of_pool.emplace(pool, std::make_pair(route, *lb));
        if (!fresh && it->second.second != *lb)
            problems.push_back("ModelRoute " + route + ": loadBalancer for " + pool +
                               " differs from the one ModelRoute " + it->second.first +
                               " gives it");
    };
    for (const auto& doc : routes) {
        const std::string name = refOf(doc);
        const json& spec = doc.at("spec");
        const json services = doc.value("services", json::object());
        const json* lb = spec.contains("loadBalancer") ? &spec["loadBalancer"] : nullptr;
        std::vector<route::TargetConfig> targets;
        for (const auto& b : spec.at("backends")) {
            const std::string host = b.at("host");
            const int port = b.at("port");
            const std::string host_port = host + ":" + std::to_string(port);
            route::TargetConfig t{.model = b.value("model", ""), .weight = b.value("weight", 1u)};
            if (pool_names.count(host)) {  // the Waypoint config's pools win over a Service
                t.pool = host;
            } else if (isIpAddress(host)) {
                t.pool = endpointOf(host, port);
                addPool(t.pool, {t.pool}, name, lb);
            } else if (auto it = services.find(host_port);
                       it != services.end() && it->contains("pool")) {
                t.pool = it->at("pool").get<std::string>();
                addPool(t.pool, it->value("endpoints", std::vector<std::string>{}), name, lb);
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
            targets.push_back(t);
        }
        if (auto problem = route::weightProblem(targets))
            problems.push_back("ModelRoute " + name + ": " + *problem);
        targets_by_model[spec.at("model").get<std::string>()] = targets;
    }
    for (const auto& doc : routes) {
        const json& spec = doc.at("spec");
        route::ModelRouteConfig r;
        r.name = doc.at("name").get<std::string>();
        r.models = {spec.at("model").get<std::string>()};
        r.backends = targets_by_model[r.models.front()];
        r.timeout = std::chrono::seconds(spec.value("timeoutSeconds", 60));
        // Another model's backends, sent that model's name unless a backend rewrites it itself.
        auto targetsOf = [&](const std::string& model, const char* what) {
            std::vector<route::TargetConfig> targets;
            auto it = targets_by_model.find(model);
            if (it == targets_by_model.end()) {
                problems.push_back("ModelRoute " + refOf(doc) + ": " + what + " model " + model +
                                   " has no ModelRoute");
                return targets;
            }
            for (auto t : it->second) {
                if (t.model.empty())
                    t.model = model;
                targets.push_back(t);
            }
            return targets;
        };
        for (const auto& item : spec.value("fallbacks", json::array())) {
            // Tried one after the other: the heaviest backend first, a drained one (weight 0)
            // never.
            auto targets = targetsOf(item.get<std::string>(), "fallback");
            std::erase_if(targets, [](const route::TargetConfig& t) { return t.weight == 0; });
            std::stable_sort(targets.begin(), targets.end(),
                             [](const auto& a, const auto& b) { return a.weight > b.weight; });
            r.fallbacks.insert(r.fallbacks.end(), targets.begin(), targets.end());
        }
        if (spec.contains("costTier")) {
            const json& tier = spec["costTier"];
            r.cost_tier = route::CostTierConfig{
                .max_prompt_tokens = tier.at("maxPromptTokens").get<std::uint64_t>(),
                .max_output_tokens = tier.value("maxOutputTokens", UINT64_MAX),
                .targets = targetsOf(tier.at("model").get<std::string>(), "costTier")};
        }
        if (spec.contains("retries")) {
            const json& retries = spec["retries"];
            r.retries.attempts = retries.value("attempts", r.retries.attempts);
            r.retries.budget_percent = retries.value("budgetPercent", r.retries.budget_percent);
            r.retries.min_retries = retries.value("minRetries", r.retries.min_retries);
            r.retries.backoff = std::chrono::milliseconds(retries.value("backoffMilliseconds", 25));
        }
        out.routes.push_back(std::move(r));
    }
    for (auto& pool : out.pools) {
        if (auto it = lb_of_pool.find(pool.name); it != lb_of_pool.end())
            applyLoadBalancer(pool, it->second.second);
    }
    out.routes.insert(out.routes.end(), base.routes.begin(), base.routes.end());
    if (out.routes.empty())
        problems.push_back("no ModelRoute: nothing to route to");
    throwIfProblems(problems);
    return out;
}

}  // namespace sluice::waypoint
