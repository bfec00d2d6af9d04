#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sluice::waypoint::tokenizer {

// The character classes the cl100k/o200k pre-tokenization patterns distinguish. Every code point
// has exactly one: White_Space code points are all Zs/Zl/Zp/Cc, never letters, marks or numbers.
enum class CharClass : std::uint8_t {
    kOther = 0,
    kUpper = 1,        // Lu, Lt
    kLower = 2,        // Ll
    kLetterOther = 3,  // Lm, Lo
    kMark = 4,         // Mn, Mc, Me
    kNumber = 5,       // Nd, Nl, No
    kSpace = 6,        // White_Space property (what \s means in the tiktoken regexes)
};

namespace detail {
extern const char* const kUnicodeVersion;
extern const std::uint16_t kClassStage1[0x110000 / 256];
extern const std::uint8_t kClassStage2[];
}  // namespace detail

// The Unicode version the generated table was built from.
inline std::string_view unicodeVersion() {
    return detail::kUnicodeVersion;
}

inline CharClass classOf(char32_t cp) {
    if (cp >= 0x110000)
        return CharClass::kOther;
    return static_cast<CharClass>(
        detail::kClassStage2[detail::kClassStage1[cp >> 8] * 256u + (cp & 0xFF)]);
}

// One decoded code point. Invalid UTF-8 decodes as a one-byte kOther "character" so that every
// byte of the input is still covered by exactly one piece (byte-level BPE accepts any bytes).
struct Decoded {
    char32_t cp;
    std::uint8_t len;
};

inline Decoded decodeUtf8(const unsigned char* p, std::size_t avail) {
    const unsigned b0 = p[0];
    if (b0 < 0x80)
        return {b0, 1};
    auto cont = [&](std::size_t i) { return i < avail && (p[i] & 0xC0) == 0x80; };
    if (b0 >= 0xC2 && b0 < 0xE0 && cont(1))
        return {char32_t(((b0 & 0x1F) << 6) | (p[1] & 0x3F)), 2};
    if (b0 >= 0xE0 && b0 < 0xF0 && cont(1) && cont(2)) {
        const char32_t cp = ((b0 & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        if (cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF))
            return {cp, 3};
    }
    if (b0 >= 0xF0 && b0 < 0xF5 && cont(1) && cont(2) && cont(3)) {
        const char32_t cp =
            ((b0 & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
        if (cp >= 0x10000 && cp < 0x110000)
            return {cp, 4};
    }
    return {0xFFFD, 1};
}

}  // namespace sluice::waypoint::tokenizer
