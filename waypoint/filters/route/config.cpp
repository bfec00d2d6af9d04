#include "waypoint/filters/route/config.h"

#include <yaml-cpp/yaml.h>

#include <stdexcept>

#include "waypoint/lb/config.h"
#include "waypoint/problems.h"

namespace sluice::waypoint::route {
namespace {

TargetConfig parseTarget(const YAML::Node& node) {
    return {.pool = node["pool"].as<std::string>(""),
            .model = node["model"].as<std::string>(""),
            .weight = node["weight"].as<std::uint32_t>(1)};
}

}  // namespace

std::optional<std::string> weightProblem(const std::vector<TargetConfig>& targets) {
    std::uint64_t total = 0;
    for (const auto& t : targets)
        total += t.weight;
    if (!targets.empty() && total == 0)
        return "every backend has weight 0";
    if (total > UINT32_MAX)
        return "the backends' weights add up to more than 4294967295";
    return std::nullopt;
}

ModelRouteConfig parseModelRoute(const std::string& name, const YAML::Node& spec) {
    ModelRouteConfig route;
    route.name = name;
    std::vector<std::string> problems;
    for (const auto& m : spec["models"])
        route.models.push_back(m.as<std::string>());
    if (route.models.empty())
        problems.push_back("models is empty");
    for (const auto& b : spec["backends"])
        route.backends.push_back(parseTarget(b));
    if (route.backends.empty())
        problems.push_back("backends is empty");
    if (auto problem = weightProblem(route.backends))
        problems.push_back(std::move(*problem));
    for (const auto& f : spec["fallbacks"])
        route.fallbacks.push_back(parseTarget(f));
    if (const auto& tier = spec["costTier"]) {
        route.cost_tier = CostTierConfig{
            .max_prompt_tokens = tier["maxPromptTokens"].as<std::uint64_t>(0),
            .max_output_tokens = tier["maxOutputTokens"].as<std::uint64_t>(UINT64_MAX),
            .targets = {parseTarget(tier)}};
    }
    route.timeout = parseDuration(spec["timeout"], route.timeout);
    if (route.timeout > std::chrono::minutes(5))
        problems.push_back("timeout above 300s");
    if (const auto& r = spec["retries"]) {
        route.retries.attempts = r["attempts"].as<std::uint32_t>(2);
        route.retries.budget_percent = r["budgetPercent"].as<std::uint32_t>(20);
        route.retries.min_retries = r["minRetries"].as<std::uint32_t>(3);
        route.retries.backoff = parseDuration(r["backoff"], route.retries.backoff);
    }
    for (const auto& t : route.backends) {
        if (t.pool.empty())
            problems.push_back("a backend names no pool");
    }
    throwIfProblems(problems, "ModelRoute " + name + ": ");
    return route;
}

}  // namespace sluice::waypoint::route
