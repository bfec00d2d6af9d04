#include "waypoint/filters/usage/filter.h"

namespace sluice::waypoint::usage {

UsageFilter::UsageFilter(UsageConfig config, std::shared_ptr<const tokenizer::Encoding> cl100k,
                         std::shared_ptr<const tokenizer::Encoding> o200k)
    : config_(config), cl100k_(std::move(cl100k)), o200k_(std::move(o200k)) {}

const tokenizer::Encoding& UsageFilter::encodingFor(const std::string& model) const {
    return tokenizer::encodingForModel(model, config_.default_encoding) ==
                   tokenizer::EncodingName::kCl100kBase
               ? *cl100k_
               : *o200k_;
}

std::uint64_t UsageFilter::estimatePrompt(const RequestContext& ctx) const {
    if (!ctx.body || !ctx.body->is_object())
        return 0;
    const auto& body = *ctx.body;
    const auto& enc = encodingFor(ctx.model);
    auto count_text = [&](const nlohmann::json& v) -> std::uint64_t {
        if (v.is_string())
            return enc.count(v.get_ref<const std::string&>());
        if (v.is_array()) {
            std::uint64_t n = 0;
            for (const auto& item : v) {
                if (item.is_string()) {
                    n += enc.count(item.get_ref<const std::string&>());
                } else if (item.is_object() && item.contains("text") && item["text"].is_string()) {
                    n += enc.count(item["text"].get_ref<const std::string&>());
                } else if (item.is_array()) {
                    n += item.size();  // already token ids
                } else if (item.is_number_integer()) {
                    n += 1;
                }
            }
            return n;
        }
        return 0;
    };
    if (ctx.api == "chat") {
        std::uint64_t n = 3;
        if (auto it = body.find("messages"); it != body.end() && it->is_array()) {
            for (const auto& message : *it) {
                if (!message.is_object())
                    continue;
                n += 3;
                for (const auto& [key, value] : message.items()) {
                    n += count_text(value);
                    if (key == "name")
                        n += 1;
                }
            }
        }
        return n;
    }
    if (ctx.api == "completions")
        return body.contains("prompt") ? count_text(body["prompt"]) : 0;
    if (ctx.api == "embeddings")
        return body.contains("input") ? count_text(body["input"]) : 0;
    return 0;
}

std::optional<LocalReply> UsageFilter::onRequest(RequestContext& ctx) {
    if (!ctx.body)
        return std::nullopt;
    auto& body = *ctx.body;
    ctx.estimated_prompt_tokens = estimatePrompt(ctx);
    if (ctx.api == "chat" || ctx.api == "completions") {
        ctx.max_output_tokens = config_.default_max_tokens;
        for (const char* key : {"max_completion_tokens", "max_tokens"}) {
            if (auto it = body.find(key); it != body.end() && it->is_number_unsigned()) {
                ctx.max_output_tokens = it->get<std::uint64_t>();
                break;
            }
        }
    }
    ctx.usage = {.prompt_tokens = ctx.estimated_prompt_tokens, .completion_tokens = 0};
    if (ctx.stream && (ctx.api == "chat" || ctx.api == "completions")) {
        auto& options = body["stream_options"];
        ctx.client_wants_usage = options.is_object() && options.value("include_usage", false);
        if (!ctx.client_wants_usage) {
            if (!options.is_object())
                options = nlohmann::json::object();
            options["include_usage"] = true;
            ctx.body_modified = true;
        }
    }
    return std::nullopt;
}

bool UsageFilter::readUsage(const nlohmann::json& json, Usage& usage) {
    auto it = json.find("usage");
    if (it == json.end() || !it->is_object())
        return false;
    usage.prompt_tokens = it->value("prompt_tokens", std::uint64_t{0});
    usage.completion_tokens = it->value("completion_tokens", std::uint64_t{0});
    if (!it->contains("completion_tokens") && it->contains("total_tokens")) {
        usage.completion_tokens =
            it->value("total_tokens", usage.prompt_tokens) - usage.prompt_tokens;
    }
    usage.reported = true;
    return true;
}

bool UsageFilter::onStreamEvent(RequestContext& ctx, std::string_view data, std::string& raw) {
    // Only the final chunk carries a usage object (others have none or "usage": null), so skip
    // parsing every token's chunk.
    const auto at = data.find("\"usage\"");
    if (at == std::string_view::npos)
        return true;
    const auto value = data.find_first_not_of(" \t:", at + 7);
    if (value == std::string_view::npos)
        return true;
    if (data[value] != '{') {
        // With include_usage on, every chunk carries "usage":null; a client that did not ask
        // gets the chunks exactly as it would have without our injection.
        if (!ctx.client_wants_usage) {
            static constexpr std::string_view kNullUsage = ",\"usage\":null";
            if (auto pos = raw.find(kNullUsage); pos != std::string::npos) {
                raw.erase(pos, kNullUsage.size());
            }
        }
        return true;
    }
    const auto json = nlohmann::json::parse(data, nullptr, false);
    if (json.is_discarded() || !readUsage(json, ctx.usage))
        return true;
    // The usage chunk we asked for has no choices; drop it unless the client asked too.
    const bool usage_only =
        json.contains("choices") && json["choices"].is_array() && json["choices"].empty();
    return ctx.client_wants_usage || !usage_only;
}

void UsageFilter::onResponseBody(RequestContext& ctx, std::string_view body) {
    const auto json = nlohmann::json::parse(body, nullptr, false);
    if (!json.is_discarded() && json.is_object())
        readUsage(json, ctx.usage);
}

}  // namespace sluice::waypoint::usage
