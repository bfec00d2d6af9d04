#include "waypoint/filters/usage/config.h"

#include <yaml-cpp/yaml.h>

#include <stdexcept>

namespace sluice::waypoint::usage {

UsageConfig parseUsageConfig(const YAML::Node& node) {
    UsageConfig config;
    if (!node)
        return config;
    if (node["defaultEncoding"]) {
        auto name = tokenizer::parseEncodingName(node["defaultEncoding"].as<std::string>());
        if (!name)
            throw std::invalid_argument("usage.defaultEncoding: " +
                                        std::string(tokenizer::toString(name.error())));
        config.default_encoding = *name;
    }
    config.default_max_tokens = node["defaultMaxTokens"].as<std::uint64_t>(1024);
    return config;
}

}  // namespace sluice::waypoint::usage
