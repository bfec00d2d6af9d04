#pragma once

#include <string_view>

namespace sluice {

// Sets up the process-wide spdlog logger on stderr: "<time> <level> <component>: message".
// `level` is an spdlog level name (trace, debug, info, warn, error); unknown names mean info.
void init_logging(std::string_view component, std::string_view level = "info");

}  // namespace sluice
