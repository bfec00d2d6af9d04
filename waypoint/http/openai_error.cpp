#include "waypoint/http/openai_error.h"

#include <nlohmann/json.hpp>

namespace sluice::waypoint {

std::string openaiErrorBody(std::string_view message, std::string_view type,
                            std::string_view code) {
    nlohmann::json error = {{"message", message}, {"type", type}, {"param", nullptr}};
    error["code"] = code.empty() ? nlohmann::json(nullptr) : nlohmann::json(code);
    return nlohmann::json{{"error", error}}.dump();
}

http::response<http::string_body> toResponse(const LocalReply& reply, unsigned version,
                                             bool keep_alive) {
    http::response<http::string_body> res{reply.status, version};
    res.set(http::field::content_type, "application/json");
    for (const auto& [name, value] : reply.headers)
        res.set(name, value);
    res.body() =
        reply.raw_body ? *reply.raw_body : openaiErrorBody(reply.message, reply.type, reply.code);
    res.keep_alive(keep_alive);
    res.prepare_payload();
    return res;
}

}  // namespace sluice::waypoint
