#include "waypoint/filters/budget/config.h"

#include <yaml-cpp/yaml.h>

#include <stdexcept>

#include "waypoint/problems.h"

namespace sluice::waypoint::budget {

TokenBudgetConfig parseTokenBudget(const std::string& name, const YAML::Node& spec) {
    TokenBudgetConfig config;
    config.name = name;
    std::vector<std::string> problems;
    auto where = [&](const std::string& field) { return "TokenBudget " + name + ": " + field; };

    for (const auto& source : spec["tenantFrom"]) {
        TenantSource s;
        if (source["header"]) {
            s = {TenantSource::Kind::Header, source["header"].as<std::string>()};
        } else if (source["apiKey"]) {
            s = {TenantSource::Kind::ApiKey,
                 source["apiKey"]["header"].as<std::string>("authorization")};
        } else if (source["spiffe"]) {
            s.kind = TenantSource::Kind::SpiffeId;
        } else if (source["namespace"]) {
            s.kind = TenantSource::Kind::Namespace;
        } else {
            problems.push_back(
                where("tenantFrom entries need header, apiKey, spiffe or namespace"));
            continue;
        }
        config.tenant_from.push_back(s);
    }
    if (config.tenant_from.empty())
        problems.push_back(where("tenantFrom is empty"));
    for (const auto& key : spec["apiKeys"]) {
        config.api_keys[key.first.as<std::string>()] = key.second.as<std::string>();
    }
    config.default_tenant = spec["defaultTenant"].as<std::string>(config.default_tenant);
    config.default_max_tokens = spec["defaultMaxTokens"].as<std::uint64_t>(1024);
    for (const auto& item : spec["limits"]) {
        BudgetLimit limit;
        limit.tenant = item["tenant"].as<std::string>("*");
        limit.model = item["model"].as<std::string>("*");
        limit.tokens_per_minute = item["tokensPerMinute"].as<std::uint64_t>(0);
        limit.requests_per_minute = item["requestsPerMinute"].as<std::uint64_t>(0);
        limit.tokens_per_day = item["tokensPerDay"].as<std::uint64_t>(0);
        limit.max_concurrent = item["maxConcurrent"].as<std::uint32_t>(0);
        if (!limit.tokens_per_minute && !limit.requests_per_minute && !limit.tokens_per_day &&
            !limit.max_concurrent) {
            problems.push_back(where("limit for tenant " + limit.tenant + " sets no limit"));
        }
        config.limits.push_back(limit);
    }
    if (config.limits.empty())
        problems.push_back(where("limits is empty"));
    throwIfProblems(problems);
    return config;
}

}  // namespace sluice::waypoint::budget
