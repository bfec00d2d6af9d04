#pragma once

#include <chrono>
#include <cstddef>

namespace YAML {
class Node;
}

namespace sluice::waypoint::cache {

// The Waypoint document's `embeddingsCache:` section; absent = cache off.
struct EmbeddingsCacheConfig {
    bool enabled = false;
    std::size_t max_bytes = 64 << 20;  // keys + bodies; least recently used entries go first
    std::chrono::milliseconds ttl{300'000};
};

EmbeddingsCacheConfig parseEmbeddingsCacheConfig(const YAML::Node& node);

}  // namespace sluice::waypoint::cache
