#include "waypoint/filters/cache/config.h"

#include <yaml-cpp/yaml.h>

#include "waypoint/lb/config.h"

namespace sluice::waypoint::cache {

EmbeddingsCacheConfig parseEmbeddingsCacheConfig(const YAML::Node& node) {
    EmbeddingsCacheConfig config;
    if (!node)
        return config;
    config.enabled = node["enabled"].as<bool>(true);
    config.max_bytes = node["maxBytes"].as<std::size_t>(config.max_bytes);
    config.ttl = parseDuration(node["ttl"], config.ttl);
    return config;
}

}  // namespace sluice::waypoint::cache
