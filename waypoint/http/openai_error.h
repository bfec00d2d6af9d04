#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "waypoint/http/asio.h"

namespace sluice::waypoint {

// A reply the waypoint produces itself, in the OpenAI error shape clients already parse:
//   {"error": {"message": …, "type": …, "param": null, "code": …}}
struct LocalReply {
    http::status status = http::status::ok;
    std::string type;  // "invalid_request_error", "tokens", "requests", "server_error", …
    std::string code;  // "rate_limit_exceeded", … ("" = null)
    std::string message;
    std::vector<std::pair<std::string, std::string>> headers;
    // A complete JSON body to send instead of the error shape (a cached response).
    std::optional<std::string> raw_body;
};

std::string openaiErrorBody(std::string_view message, std::string_view type, std::string_view code);
http::response<http::string_body> toResponse(const LocalReply& reply, unsigned version,
                                             bool keep_alive);

}  // namespace sluice::waypoint
