// CPU cost of the waypoint's per-request JSON work on one core: the usage read of a response
// body and of a final SSE chunk (UsageFilter, as the gateway calls it), and the parse of a small
// chat request followed by the reads the gateway and filters make. Prints ns/op per case;
// json_instructions.sh counts instructions per operation with callgrind (no hardware counters
// in the bench VMs, and CPU time swings with the machine).
//   sluice-bench-waypoint-json [iterations [case number]]   (default 200000, all cases)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>

#include <rapidjson/document.h>
#include <nlohmann/json.hpp>

#include "waypoint/filters/usage/filter.h"
#include "waypoint/json/document.h"
#include "waypoint/json/reader.h"

namespace wp = sluice::waypoint;

namespace {

// A non-streamed chat completion as OpenAI returns it (258 bytes).
constexpr std::string_view kCompletion =
    R"({"id":"chatcmpl-9xYz1AbCdEfGhIjKlMnOpQrStUv","object":"chat.completion","created":1732700000,)"
    R"("model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant",)"
    R"("content":"Hello! How can I help you today?"},"finish_reason":"stop"}],)"
    R"("usage":{"prompt_tokens":9,"completion_tokens":10,"total_tokens":19}})";

// The final usage chunk of a stream with stream_options.include_usage (the SSE data payload).
constexpr std::string_view kFinalChunk =
    R"({"id":"chatcmpl-9xYz1AbCdEfGhIjKlMnOpQrStUv","object":"chat.completion.chunk",)"
    R"("created":1732700000,"model":"gpt-4o-mini-2024-07-18","choices":[],)"
    R"("usage":{"prompt_tokens":9,"completion_tokens":10,"total_tokens":19}})";

// A small chat request (the latency bench's shape).
constexpr std::string_view kRequest =
    R"({"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},)"
    R"({"role":"user","content":"Say hello in one short sentence, please."}],"max_tokens":32,)"
    R"("stream":false})";

// What the gateway and the filters read from a request body: model, stream, the output
// allowance, every message's fields, stream_options. Returns something that depends on all of
// it so the compiler keeps the reads. Of a json::Document, as they are made now, and below of an
// nlohmann::json, as they were.
std::size_t readLikeTheFilters(const wp::json::Value& body) {
    namespace json = wp::json;
    const json::Value* model = json::member(body, "model");
    if (model == nullptr || !model->IsString())
        return 0;
    std::size_t n = json::text(*model).size() + json::flagSet(body, "stream");
    for (const char* key : {"max_completion_tokens", "max_tokens"}) {
        if (const json::Value* v = json::member(body, key); v != nullptr && v->IsUint64()) {
            n += v->GetUint64();
            break;
        }
    }
    if (const json::Value* messages = json::member(body, "messages");
        messages != nullptr && messages->IsArray()) {
        for (const auto& message : messages->GetArray()) {
            if (!message.IsObject())
                continue;
            for (const auto& m : message.GetObject())
                n +=
                    m.name.GetStringLength() + (m.value.IsString() ? m.value.GetStringLength() : 0);
        }
    }
    n += json::member(body, "stream_options") != nullptr;
    return n;
}

std::size_t readLikeTheFilters(const nlohmann::json& body) {
    if (!body.is_object())
        return 0;
    auto model = body.find("model");
    if (model == body.end() || !model->is_string())
        return 0;
    std::size_t n = model->get_ref<const std::string&>().size() + body.value("stream", false);
    for (const char* key : {"max_completion_tokens", "max_tokens"}) {
        if (auto it = body.find(key); it != body.end() && it->is_number_unsigned()) {
            n += it->get<std::uint64_t>();
            break;
        }
    }
    if (auto it = body.find("messages"); it != body.end() && it->is_array()) {
        for (const auto& message : *it) {
            if (!message.is_object())
                continue;
            for (const auto& [key, value] : message.items())
                n += key.size() +
                     (value.is_string() ? value.get_ref<const std::string&>().size() : 0);
        }
    }
    n += body.contains("stream_options");
    return n;
}

// A SAX consumer that builds nothing: what nlohmann's lexer and parser cost on their own.
struct NullSax : nlohmann::json_sax<nlohmann::json> {
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return true; }
    bool end_object() override { return true; }
    bool start_array(std::size_t) override { return true; }
    bool end_array() override { return true; }
    bool key(string_t&) override { return true; }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
        return false;
    }
};

// The same for RapidJSON's reader, with the waypoint's flags and checks (json/reader.h).
struct NullHandler {
    bool Null() { return true; }
    bool Bool(bool) { return true; }
    bool Int64(std::int64_t) { return true; }
    bool Uint64(std::uint64_t) { return true; }
    bool Double(double) { return true; }
    bool String(std::string_view) { return true; }
    bool Key(std::string_view) { return true; }
    bool StartObject() { return true; }
    bool EndObject() { return true; }
    bool StartArray() { return true; }
    bool EndArray() { return true; }
};

volatile std::size_t sink;

// Runs the selected case (all when `only` < 0) `iterations` times after a fixed warm-up, so
// that callgrind's counts at N and 2N iterations differ by exactly N operations.
struct Runner {
    std::size_t iterations;
    int only;
    int index = 0;

    void operator()(const char* name, const std::function<std::size_t()>& op) {
        if (only >= 0 && index++ != only)
            return;
        for (int i = 0; i < 1000; ++i)  // warm caches and the allocator
            sink = sink + op();
        const auto t0 = std::chrono::steady_clock::now();
        for (std::size_t i = 0; i < iterations; ++i)
            sink = sink + op();
        const auto t1 = std::chrono::steady_clock::now();
        std::printf("%-36s %8.1f ns/op\n", name,
                    std::chrono::duration<double, std::nano>(t1 - t0).count() / iterations);
    }
};

}  // namespace

int main(int argc, char** argv) {
    const std::size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200'000;
    Runner run{.iterations = n, .only = argc > 2 ? std::atoi(argv[2]) : -1};
    // The usage read needs no encoding; estimatePrompt (not measured here) would.
    wp::usage::UsageFilter filter({}, nullptr, nullptr);
    wp::Request request{wp::http::verb::post, "/v1/chat/completions", 11};

    if (run.only < 0)
        std::printf("# %zu iterations; completion %zu B, final chunk %zu B, request %zu B\n", n,
                    kCompletion.size(), kFinalChunk.size(), kRequest.size());
    run("usage: completion body", [&] {
        wp::RequestContext ctx(request);
        filter.onResponseBody(ctx, kCompletion);
        return std::size_t(ctx.usage.total());
    });
    run("usage: final SSE chunk", [&] {
        wp::RequestContext ctx(request);
        ctx.client_wants_usage = true;
        std::string raw;  // left alone: the chunk carries a usage object
        filter.onStreamEvent(ctx, kFinalChunk, raw);
        return std::size_t(ctx.usage.total());
    });
    run("request: nlohmann lex only (SAX)", [&] {
        NullSax sax;
        return std::size_t(nlohmann::json::sax_parse(kRequest, &sax));
    });
    run("request: nlohmann::json::parse", [&] {
        auto body = nlohmann::json::parse(kRequest, nullptr, false);
        return body.size();
    });
    run("request: nlohmann parse + reads",
        [&] { return readLikeTheFilters(nlohmann::json::parse(kRequest, nullptr, false)); });
    run("request: RapidJSON lex only (SAX)", [&] {
        NullHandler handler;
        return std::size_t(sluice::waypoint::json::read(kRequest, handler));
    });
    run("request: RapidJSON Document", [&] {
        rapidjson::Document doc;
        doc.Parse<rapidjson::kParseIterativeFlag>(kRequest.data(), kRequest.size());
        return std::size_t(doc.MemberCount());
    });
    run("request: json::Document (in place)", [&] {
        auto body = wp::json::Document::parse(kRequest);
        return body ? std::size_t(body->root().MemberCount()) : 0;
    });
    run("request: json::Document + reads", [&] {
        auto body = wp::json::Document::parse(kRequest);
        return body ? readLikeTheFilters(body->root()) : 0;
    });
    const auto parsed = wp::json::Document::parse(kRequest);
    run("request: reads only", [&] { return readLikeTheFilters(parsed->root()); });
    run("request: write (body rewritten)", [&] { return parsed->write().size(); });
    const auto nl = nlohmann::json::parse(kRequest);
    run("request: nlohmann dump (before)", [&] { return nl.dump().size(); });
    return run.only >= run.index ? 3 : 0;  // 3: no such case
}
