#include "waypoint/json/document.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "waypoint/json/reader.h"

namespace sluice::waypoint::json {
namespace {

using rapidjson::SizeType;

// read()'s events into the document's own SAX handler; strings by reference (they are in the
// document's text, which lives as long as it does).
struct ToDocument {
    rapidjson::Document& doc;

    bool Null() { return doc.Null(); }
    bool Bool(bool b) { return doc.Bool(b); }
    bool Int64(std::int64_t i) { return doc.Int64(i); }
    bool Uint64(std::uint64_t u) { return doc.Uint64(u); }
    bool Double(double d) { return doc.Double(d); }
    bool String(std::string_view s) { return doc.String(s.data(), SizeType(s.size()), false); }
    bool Key(std::string_view k) { return doc.Key(k.data(), SizeType(k.size()), false); }
    bool StartObject() { return doc.StartObject(); }
    bool EndObject(SizeType members) { return doc.EndObject(members); }
    bool StartArray() { return doc.StartArray(); }
    bool EndArray(SizeType elements) { return doc.EndArray(elements); }
};

template <class V>
V* lastMember(V& object, std::string_view name) {
    if (!object.IsObject())
        return nullptr;
    for (auto m = object.MemberEnd(); m != object.MemberBegin();) {
        --m;
        if (text(m->name) == name)
            return &m->value;
    }
    return nullptr;
}

}  // namespace

std::optional<Document> Document::parse(std::string_view text) {
    Document d;
    d.state_ = std::make_unique<State>();
    State& s = *d.state_;
    s.text.assign(text);
    bool ok = false;
    auto events = [&](rapidjson::Document& handler) {
        ToDocument to{handler};
        ok = readInPlace(s.text, to);
        return ok;
    };
    s.doc.Populate(events);
    if (!ok)
        return std::nullopt;
    return d;
}

namespace {

// The members of `object` to write, by index: each key once, its last member (what a parser
// that keeps the last, as nlohmann and Python's json, read), `drop` left out; in the order of
// the document, or by key when `by_key`. O(n log n): the members are the client's to multiply.
std::vector<std::uint32_t> membersToWrite(const Value& object, bool by_key, std::string_view drop) {
    const auto members = object.MemberBegin();
    std::vector<std::uint32_t> order;
    order.reserve(object.MemberCount());
    for (std::uint32_t i = 0; i < object.MemberCount(); ++i) {
        if (drop.empty() || text(members[i].name) != drop)
            order.push_back(i);
    }
    if (order.size() < 2)
        return order;
    // By key, the last of a repeated key first, which unique() keeps.
    std::sort(order.begin(), order.end(), [&](auto a, auto b) {
        const auto ka = text(members[a].name), kb = text(members[b].name);
        return ka != kb ? ka < kb : a > b;
    });
    order.erase(
        std::unique(order.begin(), order.end(),
                    [&](auto a, auto b) { return text(members[a].name) == text(members[b].name); }),
        order.end());
    if (!by_key)
        std::sort(order.begin(), order.end());
    return order;
}

// Writes `root` as compact JSON with an explicit stack instead of RapidJSON's recursive
// Accept(). Each key of an object once (its last value); `canonical`: members sorted by key,
// and the top-level member `drop` left out.
std::string writeValue(const Value& root, bool canonical, std::string_view drop) {
    rapidjson::StringBuffer out;
    rapidjson::Writer<rapidjson::StringBuffer> writer(out);
    struct Open {
        const Value* container;
        std::size_t next = 0;              // index into `order` (objects) or the elements
        std::vector<std::uint32_t> order;  // members to write, in order (objects)
    };
    std::vector<Open> open;
    auto start = [&](const Value& v) {
        if (v.IsObject()) {
            writer.StartObject();
            open.push_back(Open{
                &v, 0, membersToWrite(v, canonical, open.empty() ? drop : std::string_view{})});
        } else if (v.IsArray()) {
            writer.StartArray();
            open.push_back(Open{&v});
        } else if (v.IsString()) {
            writer.String(v.GetString(), v.GetStringLength());
        } else if (v.IsBool()) {
            writer.Bool(v.GetBool());
        } else if (v.IsUint64()) {
            writer.Uint64(v.GetUint64());
        } else if (v.IsInt64()) {
            writer.Int64(v.GetInt64());
        } else if (v.IsDouble()) {
            writer.Double(v.GetDouble());
        } else {
            writer.Null();
        }
    };
    start(root);
    while (!open.empty()) {
        Open& o = open.back();
        const Value& c = *o.container;
        if (c.IsObject()) {
            if (o.next == o.order.size()) {
                writer.EndObject();
                open.pop_back();
                continue;
            }
            const auto& m = c.MemberBegin()[o.order[o.next++]];
            writer.Key(m.name.GetString(), m.name.GetStringLength());
            start(m.value);  // may grow `open`: `o` is not used after this
        } else {
            if (o.next == c.Size()) {
                writer.EndArray();
                open.pop_back();
                continue;
            }
            start(c[rapidjson::SizeType(o.next++)]);
        }
    }
    return {out.GetString(), out.GetSize()};
}

}  // namespace

std::string Document::write() const {
    return writeValue(state_->doc, false, {});
}

std::string Document::canonical(std::string_view drop) const {
    return writeValue(state_->doc, true, drop);
}

const Value* member(const Value& object, std::string_view name) {
    return lastMember(object, name);
}

Value* member(Value& object, std::string_view name) {
    return lastMember(object, name);
}

bool repeatsKey(const Value& object) {
    if (!object.IsObject() || object.MemberCount() < 2)
        return false;
    const auto members = object.MemberBegin();
    const std::size_t n = object.MemberCount();
    if (n <= 16) {  // a request's top level: pairs, no allocation
        for (std::size_t i = 1; i < n; ++i) {
            for (std::size_t j = 0; j < i; ++j) {
                if (text(members[i].name) == text(members[j].name))
                    return true;
            }
        }
        return false;
    }
    std::vector<std::string_view> keys;
    keys.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
        keys.push_back(text(members[i].name));
    std::sort(keys.begin(), keys.end());
    return std::adjacent_find(keys.begin(), keys.end()) != keys.end();
}

}  // namespace sluice::waypoint::json
