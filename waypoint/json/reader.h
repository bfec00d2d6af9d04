#pragma once

#include <string.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <rapidjson/reader.h>

namespace sluice::waypoint::json {

// JSON on the per-request path is read with RapidJSON's SAX Reader: it lexes in place, where
// nlohmann's lexer copies every byte into a token buffer (docs/waypoint.md, "Latency"). The
// waypoint answered with nlohmann's rules before, so read() accepts exactly what
// `nlohmann::json::parse(text)` accepts (tests/waypoint/json_test.cpp compares the two):
// * RFC 8259 only: no comments, trailing commas, NaN/Infinity (RapidJSON's defaults), and
//   invalid UTF-8 rejected (kParseValidateEncodingFlag). Validating costs RapidJSON as much as
//   parsing (~20 instructions a byte), so a text that is all ASCII, which has nothing to
//   validate, is parsed without it.
// * Nesting of any depth without recursion (kParseIterativeFlag): a response body is up to the
//   inspection limit, and the recursive parser would take one stack frame per `[`.
// * Numbers converted as nlohmann converts them (kParseNumbersAsStringsFlag, then from_chars
//   and strtod): RapidJSON rounds some doubles differently (2.4e-324 to 5e-324, not 0), and an
//   infinite one, such as 1.8e308, is nlohmann's "number overflow".
// * A lone low surrogate escape (\uDC00) rejected: RapidJSON 1.1 only checks high surrogates.
// * A leading UTF-8 byte order mark is skipped, as nlohmann does. Both take a NUL byte after the
//   value for the end of the text.
// * Parsed in place (kParseInsituFlag: strings are decoded where they are instead of copied
//   byte by byte onto RapidJSON's stack) in a copy of the text, which also ends in the NUL that
//   RapidJSON's fastest stream stops at. The reader alone on the bench's 195-byte request
//   (callgrind): 6.4k instructions from a MemoryStream, 3.8k in place.
inline constexpr unsigned kReadFlags = rapidjson::kParseIterativeFlag |
                                       rapidjson::kParseNumbersAsStringsFlag |
                                       rapidjson::kParseInsituFlag;

namespace detail {

// The copy a text is parsed in: one per thread, reused, for texts up to kScratchBytes (a request
// or a completion); a larger one gets a copy of its own so a worker does not keep its memory.
inline constexpr std::size_t kScratchBytes = 64 * 1024;
inline std::string& scratch() {
    static thread_local std::string copy;
    return copy;
}

// True when no byte has its high bit set, eight at a time.
inline bool isAscii(std::string_view s) {
    std::uint64_t seen = 0;
    std::size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
        std::uint64_t word;
        ::memcpy(&word, s.data() + i, 8);
        seen |= word;
    }
    for (; i < s.size(); ++i)
        seen |= static_cast<unsigned char>(s[i]);
    return (seen & 0x8080808080808080u) == 0;
}

// True when decoded UTF-8 holds a surrogate code point (ED A0..BF xx). The raw input was
// validated, so only a \uDCxx escape without a high surrogate before it can have put one there.
inline bool hasSurrogate(const char* s, std::size_t n) {
    while (const void* at = ::memchr(s, 0xED, n)) {
        const std::size_t i = std::size_t(static_cast<const char*>(at) - s);
        if (i + 1 < n && static_cast<unsigned char>(s[i + 1]) >= 0xA0)
            return true;
        s += i + 1;
        n -= i + 1;
    }
    return false;
}

// Forwards every event to `Handler` after the checks RapidJSON does not make.
template <class Handler>
struct Strict {
    using Ch = char;
    using SizeType = rapidjson::SizeType;
    Handler& h;

    bool Null() { return h.Null(); }
    bool Bool(bool b) { return h.Bool(b); }
    // Not called: with kParseNumbersAsStringsFlag every number comes to RawNumber.
    bool Int(int) { return false; }
    bool Uint(unsigned) { return false; }
    bool Int64(std::int64_t) { return false; }
    bool Uint64(std::uint64_t) { return false; }
    bool Double(double) { return false; }
    // Numbers come as their text (kParseNumbersAsStringsFlag), already checked against the
    // JSON grammar. As nlohmann's lexer: an integer that fits 64 bits is signed when it has a
    // minus, else unsigned; any other number is strtod's double, and an infinite one an error.
    bool RawNumber(const Ch* s, SizeType n, bool) {
        const char* end = s + n;
        if (std::find_if(s, end, [](char c) { return c == '.' || c == 'e' || c == 'E'; }) == end) {
            if (*s == '-') {
                std::int64_t i = 0;
                if (std::from_chars(s, end, i).ec == std::errc{})
                    return h.Int64(i);
            } else {
                std::uint64_t u = 0;
                if (std::from_chars(s, end, u).ec == std::errc{})
                    return h.Uint64(u);
            }
        }
        const std::string text(s, n);  // strtod needs the NUL RapidJSON does not promise
        const double d = std::strtod(text.c_str(), nullptr);
        return std::isfinite(d) && h.Double(d);
    }
    bool String(const Ch* s, SizeType n, bool) {
        return !hasSurrogate(s, n) && h.String(std::string_view(s, n));
    }
    bool StartObject() { return h.StartObject(); }
    bool Key(const Ch* s, SizeType n, bool) {
        return !hasSurrogate(s, n) && h.Key(std::string_view(s, n));
    }
    // With the count for a handler that wants it (a RapidJSON document).
    bool EndObject(SizeType members) {
        if constexpr (requires { h.EndObject(members); })
            return h.EndObject(members);
        else
            return h.EndObject();
    }
    bool StartArray() { return h.StartArray(); }
    bool EndArray(SizeType elements) {
        if constexpr (requires { h.EndArray(elements); })
            return h.EndArray(elements);
        else
            return h.EndArray();
    }
};

}  // namespace detail

// Parses `text` and calls `handler` for each event: Null(), Bool(bool), Int64(int64_t) for a
// negative integer or -0, Uint64(uint64_t) for a non-negative one, Double(double) for a number
// with a fraction or exponent or one too large for 64 bits, String(string_view),
// Key(string_view), StartObject(), EndObject(), StartArray(), EndArray(); each returns false to
// stop. The views are valid during the call only. False when the text is not JSON (by the rules
// above) or a handler stopped.
//
// readInPlace() parses `text` where it is and decodes its strings there: the views the handler
// gets point into `text` and stay valid while it lives, unchanged (a document can keep them).
template <class Handler>
bool readInPlace(std::string& text, Handler& handler) {
    const std::size_t from = std::string_view(text).starts_with("\xEF\xBB\xBF") ? 3 : 0;
    // text.data()[text.size()] is the NUL the reader stops at.
    rapidjson::InsituStringStream stream(text.data() + from);
    detail::Strict<Handler> strict{handler};
    rapidjson::Reader reader;
    if (detail::isAscii(std::string_view(text).substr(from)))
        return !reader.Parse<kReadFlags>(stream, strict).IsError();
    return !reader.Parse<kReadFlags | rapidjson::kParseValidateEncodingFlag>(stream, strict)
                .IsError();
}

template <class Handler>
bool read(std::string_view text, Handler& handler) {
    std::string large;
    std::string& copy = text.size() <= detail::kScratchBytes ? detail::scratch() : large;
    copy.assign(text);
    return readInPlace(copy, handler);
}

}  // namespace sluice::waypoint::json
