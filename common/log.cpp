#include "common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <string>

namespace sluice {

void init_logging(std::string_view component, std::string_view level) {
    auto logger = spdlog::stderr_color_mt(std::string(component));
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %n: %v");
    auto parsed = spdlog::level::from_str(std::string(level));
    // from_str maps unknown names to "off"; an operator typo must not silence the logs.
    logger->set_level(parsed == spdlog::level::off && level != "off" ? spdlog::level::info
                                                                     : parsed);
    spdlog::set_default_logger(std::move(logger));
}

}  // namespace sluice
