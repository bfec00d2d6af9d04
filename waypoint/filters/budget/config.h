#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace sluice::waypoint::budget {

// Where the tenant of a request comes from; the first source that yields a value wins.
struct TenantSource {
    enum class Kind {
        Header,     // the value of `header`
        ApiKey,     // `header` (default authorization, "Bearer " stripped) looked up in api_keys
        SpiffeId,   // the peer's SPIFFE id (HBONE)
        Namespace,  // the namespace part of the peer's SPIFFE id
    };
    Kind kind = Kind::Header;
    std::string header;
};

// Limits for a tenant ("*" = each tenant separately) and model ("*" = all models together).
// Zero means unlimited.
struct BudgetLimit {
    std::string tenant = "*";
    std::string model = "*";
    std::uint64_t tokens_per_minute = 0;
    std::uint64_t requests_per_minute = 0;
    std::uint64_t tokens_per_day = 0;
    std::uint32_t max_concurrent = 0;
};

// The waypoint's view of one `sluice.dev/v1alpha1 TokenBudget` document. Kept small and flat so
// the policies library's parser can fill it instead of parseTokenBudget once it lands.
struct TokenBudgetConfig {
    std::string name;
    std::vector<TenantSource> tenant_from;
    std::map<std::string, std::string> api_keys;  // API key → tenant
    // SHA-256 of an API key (64 lowercase hex digits) → tenant: the policies folder's form, so
    // that keys never sit in a ConfigMap. Looked up when api_keys has no entry for the key.
    std::map<std::string, std::string> api_key_sha256;
    std::string default_tenant = "anonymous";  // when no source yields a tenant
    std::uint64_t default_max_tokens = 1024;   // reservation when a request sets no max_tokens
    std::vector<BudgetLimit> limits;
};

// Parses the `spec` of a TokenBudget document. Throws std::invalid_argument listing every
// problem found.
TokenBudgetConfig parseTokenBudget(const std::string& name, const YAML::Node& spec);

}  // namespace sluice::waypoint::budget
