#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <rapidjson/document.h>

namespace sluice::waypoint::json {

using Value = rapidjson::Value;
using Allocator = rapidjson::MemoryPoolAllocator<>;

// The JSON body of an OpenAI request as the gateway and filters read it: parsed by the rules of
// read() (json/reader.h: what nlohmann::json::parse accepts) into a RapidJSON document. Its
// strings stay where they are in the document's own copy of the text (decoded in place), and
// its values come from one memory pool that is freed at once: no allocation per value and none
// per string (docs/waypoint.md, "Latency").
//
// A key the client repeated is kept as often as it came; member() reads the last one, which is
// what nlohmann and Python's json keep, and write() writes that one only, so that a backend
// that keeps the first reads the same.
class Document {
  public:
    static std::optional<Document> parse(std::string_view text);

    const Value& root() const { return state_->doc; }
    Value& root() { return state_->doc; }
    // For values a filter adds; a string it adds must outlive the document or be copied.
    Allocator& allocator() { return state_->doc.GetAllocator(); }
    // The document as compact JSON text, members in their order, each key once (its last
    // value). Without recursion, as the parse: a body nests as deep as its size allows.
    std::string write() const;
    // A text that is the same for documents that are equal as JSON objects: members sorted by
    // key, a repeated key once with its last value, and the top-level member `drop` left out
    // ("" = none). For cache keys.
    std::string canonical(std::string_view drop = {}) const;

  private:
    Document() = default;
    // Never moves: the values point into its text and pool.
    struct State {
        static constexpr std::size_t kPoolBytes = 2048;  // a chat request's values fit
        std::string text;
        alignas(std::max_align_t) char pool_buffer[kPoolBytes];
        Allocator pool{pool_buffer, sizeof pool_buffer, 4096};
        rapidjson::Document doc{&pool};
    };
    std::unique_ptr<State> state_;
};

// The value of `name` in `object`, the last one when the key repeats; nullptr when there is
// none or `object` is not an object.
const Value* member(const Value& object, std::string_view name);
Value* member(Value& object, std::string_view name);

// A string value's text (the value must be a string).
inline std::string_view text(const Value& v) {
    return {v.GetString(), v.GetStringLength()};
}

// Whether `object` has a key more than once.
bool repeatsKey(const Value& object);

// An OpenAI request flag (`stream`, `include_usage`) of `object`: true only when present and
// true; absent or null means false.
inline bool flagSet(const Value& object, std::string_view name) {
    const Value* v = member(object, name);
    return v != nullptr && v->IsBool() && v->GetBool();
}

}  // namespace sluice::waypoint::json
