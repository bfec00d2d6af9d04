#include "waypoint/json/parse.h"

#include <vector>

#include "waypoint/json/reader.h"

namespace sluice::waypoint::json {

namespace {

// Builds an nlohmann::json from reader events as nlohmann's own SAX-to-DOM parser does: the
// same number kinds (unsigned, integer, float) and, for a repeated key, the last value.
class Builder {
  public:
    nlohmann::json root;

    bool Null() { return add(nullptr); }
    bool Bool(bool b) { return add(b); }
    bool Int64(std::int64_t i) { return add(i); }
    bool Uint64(std::uint64_t u) { return add(u); }
    bool Double(double d) { return add(d); }
    bool String(std::string_view s) { return add(nlohmann::json(nlohmann::json::string_t(s))); }
    bool Key(std::string_view k) {
        key_.assign(k);
        return true;
    }
    bool StartObject() { return open(nlohmann::json::value_t::object); }
    bool StartArray() { return open(nlohmann::json::value_t::array); }
    bool EndObject() { return close(); }
    bool EndArray() { return close(); }

  private:
    // Open containers, innermost last. A pointer into a parent array stays valid: the parent
    // only grows after this child is closed.
    std::vector<nlohmann::json*> open_;
    std::string key_;

    nlohmann::json& slot() {
        if (open_.empty())
            return root;
        auto& parent = *open_.back();
        if (parent.is_array()) {
            auto& items = parent.get_ref<nlohmann::json::array_t&>();
            return items.emplace_back();
        }
        return parent.get_ref<nlohmann::json::object_t&>()[key_];
    }
    bool add(nlohmann::json&& value) {
        slot() = std::move(value);
        return true;
    }
    bool open(nlohmann::json::value_t kind) {
        auto& container = slot();
        container = nlohmann::json(kind);
        open_.push_back(&container);
        return true;
    }
    bool close() {
        open_.pop_back();
        return true;
    }
};

}  // namespace

std::optional<nlohmann::json> parse(std::string_view text) {
    Builder builder;
    if (!read(text, builder))
        return std::nullopt;
    return std::move(builder.root);
}

}  // namespace sluice::waypoint::json
