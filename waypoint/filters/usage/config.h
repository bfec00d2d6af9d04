#pragma once

#include <cstdint>

#include "waypoint/tokenizer/encoding.h"

namespace YAML {
class Node;
}

namespace sluice::waypoint::usage {

struct UsageConfig {
    // Encoding for models tiktoken's table does not know (open models behind vLLM, …).
    tokenizer::EncodingName default_encoding = tokenizer::EncodingName::kO200kBase;
    // Output tokens assumed when a request sets no max_tokens / max_completion_tokens.
    std::uint64_t default_max_tokens = 1024;
};

// Parses the `usage:` section of the Waypoint document (absent → defaults). Throws
// std::invalid_argument on a bad value.
UsageConfig parseUsageConfig(const YAML::Node& node);

}  // namespace sluice::waypoint::usage
