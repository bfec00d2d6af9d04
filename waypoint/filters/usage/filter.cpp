#include "waypoint/filters/usage/filter.h"

#include <string.h>

#include <optional>

#include "waypoint/json/reader.h"

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
    if (!ctx.body || !ctx.body->root().IsObject())
        return 0;
    const json::Value& body = ctx.body->root();
    const auto& enc = encodingFor(ctx.model);
    auto count_text = [&](const json::Value* v) -> std::uint64_t {
        if (v == nullptr)
            return 0;
        if (v->IsString())
            return enc.count(json::text(*v));
        if (!v->IsArray())
            return 0;
        std::uint64_t n = 0;
        for (const auto& item : v->GetArray()) {
            if (item.IsString()) {
                n += enc.count(json::text(item));
            } else if (const json::Value* part = json::member(item, "text");
                       part != nullptr && part->IsString()) {
                n += enc.count(json::text(*part));
            } else if (item.IsArray()) {
                n += item.Size();  // already token ids
            } else if (item.IsInt64() || item.IsUint64()) {
                n += 1;
            }
        }
        return n;
    };
    if (ctx.api == "chat") {
        std::uint64_t n = 3;
        if (const json::Value* messages = json::member(body, "messages");
            messages != nullptr && messages->IsArray()) {
            for (const auto& message : messages->GetArray()) {
                if (!message.IsObject())
                    continue;
                n += 3;
                // A key the client repeated counts each time: the estimate can only be high
                // (the backend reads one of them), and it stays one pass over the members.
                for (const auto& m : message.GetObject()) {
                    n += count_text(&m.value);
                    if (json::text(m.name) == "name")
                        n += 1;
                }
            }
        }
        return n;
    }
    if (ctx.api == "completions")
        return count_text(json::member(body, "prompt"));
    if (ctx.api == "embeddings")
        return count_text(json::member(body, "input"));
    return 0;
}

std::optional<LocalReply> UsageFilter::onRequest(RequestContext& ctx) {
    if (!ctx.body)
        return std::nullopt;
    json::Value& body = ctx.body->root();
    ctx.estimated_prompt_tokens = estimatePrompt(ctx);
    if (ctx.api == "chat" || ctx.api == "completions") {
        ctx.max_output_tokens = config_.default_max_tokens;
        for (const char* key : {"max_completion_tokens", "max_tokens"}) {
            if (const json::Value* v = json::member(body, key); v != nullptr && v->IsUint64()) {
                ctx.max_output_tokens = v->GetUint64();
                break;
            }
        }
    }
    ctx.usage = {.prompt_tokens = ctx.estimated_prompt_tokens, .completion_tokens = 0};
    if (ctx.stream && (ctx.api == "chat" || ctx.api == "completions")) {
        json::Value* given = json::member(body, "stream_options");
        // The gateway refused a non-boolean include_usage; null counts as absent.
        ctx.client_wants_usage =
            given != nullptr && given->IsObject() && json::flagSet(*given, "include_usage");
        if (!ctx.client_wants_usage) {
            // The document says what is sent (a rewrite of the model writes it out).
            auto& pool = ctx.body->allocator();
            const bool absent = given == nullptr;
            if (absent) {
                body.AddMember("stream_options", json::Value(rapidjson::kObjectType), pool);
                given = &body.MemberEnd()[-1].value;
            } else if (!given->IsObject()) {
                given->SetObject();
            }
            if (json::Value* flag = json::member(*given, "include_usage"))
                flag->SetBool(true);
            else
                given->AddMember("include_usage", true, pool);
            // Without a stream_options of the client's, the member goes in as text; otherwise
            // (one to change, not add) the document is written out again.
            const auto at = absent ? firstMemberOffset(ctx.request.body()) : std::nullopt;
            if (at) {
                ctx.body_insert = R"("stream_options":{"include_usage":true})";
                if (body.MemberCount() > 1)  // the client's members follow
                    ctx.body_insert += ',';
                ctx.body_insert_at = *at;
            } else {
                ctx.body_modified = true;
            }
        }
    }
    return std::nullopt;
}

std::optional<std::size_t> firstMemberOffset(std::string_view text) {
    std::size_t i = text.starts_with("\xEF\xBB\xBF") ? 3 : 0;  // a byte order mark stays
    i = text.find_first_not_of(" \t\r\n", i);
    if (i == std::string_view::npos || text[i] != '{')
        return std::nullopt;
    return i + 1;
}

namespace {

// What reconciliation needs from a response body or a stream chunk: the top-level `usage`
// object's counts and whether `choices` is an empty array. Read with RapidJSON's SAX reader
// (json/reader.h): the rest of the document (the generated text, mostly) is checked for syntax
// but never built.
class UsageReader {
  public:
    // False on malformed JSON or a top level that is not an object.
    bool read(std::string_view text) { return json::read(text, *this) && top_is_object_; }

    // The counts, when the document has a `usage` object.
    bool usage(Usage& out) const {
        if (!usage_object_)
            return false;
        out.prompt_tokens = prompt_.value_or(0);
        out.completion_tokens = completion_.value_or(0);
        if (!completion_ && total_)
            out.completion_tokens = *total_ > out.prompt_tokens ? *total_ - out.prompt_tokens : 0;
        out.reported = true;
        return true;
    }
    bool choicesEmpty() const { return choices_array_ && choices_items_ == 0; }

    bool Null() { return value(std::nullopt); }
    bool Bool(bool) { return value(std::nullopt); }
    bool Int64(std::int64_t n) {
        return value(n < 0 ? std::nullopt : std::optional<std::uint64_t>(std::uint64_t(n)));
    }
    bool Uint64(std::uint64_t n) { return value(n); }
    bool Double(double f) {
        // A count sent as 14.0 counts; a negative or out-of-range one does not.
        const bool fits = f >= 0 && f < 18446744073709551616.0;
        return value(fits ? std::optional<std::uint64_t>(std::uint64_t(f)) : std::nullopt);
    }
    bool String(std::string_view) { return value(std::nullopt); }
    bool StartObject() { return open(true); }
    bool StartArray() { return open(false); }
    bool EndObject() { return close(); }
    bool EndArray() { return close(); }
    bool Key(std::string_view k) {
        if (depth_ == 1)
            top_key_ = k == "usage" ? Top::Usage : k == "choices" ? Top::Choices : Top::Other;
        else if (depth_ == 2 && top_key_ == Top::Usage && in_usage_)
            usage_key_ = k == "prompt_tokens"       ? &prompt_
                         : k == "completion_tokens" ? &completion_
                         : k == "total_tokens"      ? &total_
                                                    : nullptr;
        return true;
    }

  private:
    enum class Top { Other, Usage, Choices };

    bool value(std::optional<std::uint64_t> n) {
        if (depth_ == 2 && in_usage_ && usage_key_ != nullptr) {
            if (n)
                *usage_key_ = *n;
            usage_key_ = nullptr;
        }
        if (depth_ == 2 && in_choices_)
            ++choices_items_;
        return true;
    }
    bool open(bool object) {
        if (depth_ == 0)
            top_is_object_ = object;
        if (depth_ == 2 && in_choices_)
            ++choices_items_;
        if (depth_ == 1 && top_key_ == Top::Usage && object)
            usage_object_ = in_usage_ = true;
        if (depth_ == 1 && top_key_ == Top::Choices && !object)
            choices_array_ = in_choices_ = true;
        ++depth_;
        return true;
    }
    bool close() {
        if (--depth_ == 1)
            in_usage_ = in_choices_ = false;
        return true;
    }

    int depth_ = 0;
    bool top_is_object_ = false;
    Top top_key_ = Top::Other;
    bool in_usage_ = false, usage_object_ = false;
    bool in_choices_ = false, choices_array_ = false;
    std::size_t choices_items_ = 0;
    std::optional<std::uint64_t>* usage_key_ = nullptr;
    std::optional<std::uint64_t> prompt_, completion_, total_;
};

// string_view::find, with glibc's memmem (two-way, vectorised) instead of a memchr per
// candidate first byte: a stream chunk has a quote every few bytes.
std::size_t find(std::string_view haystack, std::string_view needle) {
    const void* at = ::memmem(haystack.data(), haystack.size(), needle.data(), needle.size());
    return at == nullptr ? std::string_view::npos
                         : std::size_t(static_cast<const char*>(at) - haystack.data());
}

constexpr std::string_view kJsonSpace = " \t\r\n";

// A `"usage"` key in an event's bytes and where its value starts.
struct UsageKey {
    std::size_t key = std::string_view::npos;
    std::size_t value = std::string_view::npos;
};

// The first `"usage"` key at or after `from`. A quote cannot stand unescaped in a JSON string,
// so the bytes `"usage"` are a key or a whole string value (`"content":"usage"`); only a key
// is followed by a colon.
UsageKey nextUsageKey(std::string_view text, std::size_t from) {
    while (from < text.size()) {
        std::size_t key = find(text.substr(from), "\"usage\"");
        if (key == std::string_view::npos)
            break;
        key += from;
        from = key + 1;
        std::size_t at = text.find_first_not_of(kJsonSpace, key + 7);
        if (at == std::string_view::npos || text[at] != ':')
            continue;
        at = text.find_first_not_of(kJsonSpace, at + 1);
        if (at != std::string_view::npos)
            return {key, at};
    }
    return {};
}

// Removes the member `"usage": null` (any JSON whitespace around its colon) from the event's
// bytes, with the comma that joined it to its neighbour: `{"a":1, "usage" : null}` becomes
// `{"a":1}` and `{"usage":null,"a":1}` becomes `{"a":1}`.
void eraseNullUsage(std::string& raw) {
    const std::string_view text = raw;
    for (UsageKey k = nextUsageKey(text, 0); k.key != std::string_view::npos;
         k = nextUsageKey(text, k.key + 1)) {
        if (text.compare(k.value, 4, "null") != 0)
            continue;
        std::size_t begin = k.key, end = k.value + 4;
        const std::size_t before = begin > 0 ? text.find_last_not_of(kJsonSpace, begin - 1) : begin;
        const std::size_t after = text.find_first_not_of(kJsonSpace, end);
        if (before == std::string_view::npos || after == std::string_view::npos)
            return;
        if (text[before] == ',' && (text[after] == ',' || text[after] == '}')) {
            begin = before;  // `, "usage": null` after another member
        } else if (text[before] == '{' && text[after] == ',') {
            end = text.find_first_not_of(kJsonSpace, after + 1);  // the first member
            if (end == std::string_view::npos)
                return;
        } else if (!(text[before] == '{' && text[after] == '}')) {
            return;  // not a member this can take out whole (JSON split over `data:` lines)
        }
        raw.erase(begin, end - begin);
        return;
    }
}

// The first byte of a `"usage"` key's value in the event: '{' if any of them is an object
// (a chunk may carry usage after a choice whose text is "usage"), '\0' if there is none.
char usageValue(std::string_view data) {
    char first = '\0';
    for (UsageKey k = nextUsageKey(data, 0); k.key != std::string_view::npos;
         k = nextUsageKey(data, k.key + 1)) {
        if (data[k.value] == '{')
            return '{';
        if (first == '\0')
            first = data[k.value];
    }
    return first;
}

}  // namespace

bool UsageFilter::onStreamEvent(RequestContext& ctx, std::string_view data, std::string& raw) {
    // Only the final chunk carries a usage object (others have none or "usage": null), so skip
    // parsing every token's chunk.
    const char value = usageValue(data);
    if (value == '\0')
        return true;
    if (value != '{') {
        // With include_usage on, every chunk carries "usage":null; a client that did not ask
        // gets the chunks exactly as it would have without our injection.
        if (!ctx.client_wants_usage)
            eraseNullUsage(raw);
        return true;
    }
    UsageReader reader;
    if (!reader.read(data) || !reader.usage(ctx.usage))
        return true;
    // The usage chunk we asked for has no choices; drop it unless the client asked too.
    return ctx.client_wants_usage || !reader.choicesEmpty();
}

void UsageFilter::onResponseBody(RequestContext& ctx, std::string_view body) {
    UsageReader reader;
    if (reader.read(body))
        reader.usage(ctx.usage);
}

}  // namespace sluice::waypoint::usage
