#pragma once

#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

namespace sluice::waypoint::json {

// The document `text` holds, as nlohmann::json::parse(text) builds it, or nullopt where that
// would fail. RapidJSON reads (json/reader.h) and the events build the nlohmann values, so the
// filters keep their nlohmann::json body without nlohmann's lexer on the request path.
std::optional<nlohmann::json> parse(std::string_view text);

}  // namespace sluice::waypoint::json
