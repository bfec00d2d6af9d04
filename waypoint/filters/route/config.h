#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace sluice::waypoint::route {

// One upstream choice of a route: a pool and, optionally, the model name to send it.
struct TargetConfig {
    std::string pool;
    std::string model;  // "" = keep the client's model
    std::uint32_t weight = 1;
};

struct RetryConfig {
    std::uint32_t attempts = 2;         // retries after the first try (before anything was relayed)
    std::uint32_t budget_percent = 20;  // retries in flight ≤ this share of active requests
    std::uint32_t min_retries = 3;      // … or at least this many
    std::chrono::milliseconds backoff{25};  // base of the exponential backoff (with jitter)
};

// Short requests may go to a cheaper target ("cost tier"); the rule shows in x-sluice-route.
struct CostTierConfig {
    std::uint64_t max_prompt_tokens = 0;
    std::uint64_t max_output_tokens = UINT64_MAX;
    std::vector<TargetConfig> targets;  // weighted split, like a route's backends
};

// The waypoint's view of one `sluice.dev/v1alpha1 ModelRoute` document (kept flat so the
// policies library's parser can fill it later).
struct ModelRouteConfig {
    std::string name;
    std::vector<std::string> models;      // client model names this route takes; "*" = any
    std::vector<TargetConfig> backends;   // weighted split
    std::vector<TargetConfig> fallbacks;  // in order, after the chosen backend failed
    std::optional<CostTierConfig> cost_tier;
    std::chrono::milliseconds timeout{30'000};  // per attempt, to the response header
    RetryConfig retries;
};

// What is wrong with a route's backend weights, if anything: their sum must be 1..UINT32_MAX
// (the route filter adds them up in 32 bits and picks below the total).
std::optional<std::string> weightProblem(const std::vector<TargetConfig>& targets);
// Parses a ModelRoute `spec`. Throws std::invalid_argument listing the problems.
ModelRouteConfig parseModelRoute(const std::string& name, const YAML::Node& spec);

}  // namespace sluice::waypoint::route
