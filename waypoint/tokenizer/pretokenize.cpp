#include "waypoint/tokenizer/pretokenize.h"

#include "waypoint/tokenizer/unicode_classes.h"

namespace sluice::waypoint::tokenizer {
namespace {

// Bit sets over CharClass, so each pattern class is one mask test.
constexpr unsigned bit(CharClass c) {
    return 1u << static_cast<unsigned>(c);
}
constexpr unsigned kLetter =
    bit(CharClass::kUpper) | bit(CharClass::kLower) | bit(CharClass::kLetterOther);
constexpr unsigned kNumber = bit(CharClass::kNumber);
constexpr unsigned kSpace = bit(CharClass::kSpace);
// o200k's [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and [\p{Ll}\p{Lm}\p{Lo}\p{M}].
constexpr unsigned kUpperish =
    bit(CharClass::kUpper) | bit(CharClass::kLetterOther) | bit(CharClass::kMark);
constexpr unsigned kLowerish =
    bit(CharClass::kLower) | bit(CharClass::kLetterOther) | bit(CharClass::kMark);

// A cursor over the text that decodes one code point at a time; ASCII is classified by table.
struct Text {
    const unsigned char* data;
    std::size_t size;

    struct Char {
        char32_t cp;
        unsigned mask;  // bit(class)
        std::size_t len;
    };

    Char at(std::size_t pos) const {
        const unsigned b = data[pos];
        if (b < 0x80)
            return {b, asciiMask(b), 1};
        const Decoded d = decodeUtf8(data + pos, size - pos);
        return {d.cp, bit(classOf(d.cp)), d.len};
    }

    static unsigned asciiMask(unsigned b) {
        static constexpr auto table = [] {
            struct T {
                unsigned m[128];
            } t{};
            for (unsigned c = 0; c < 128; ++c) {
                CharClass cls = CharClass::kOther;
                if (c >= 'A' && c <= 'Z')
                    cls = CharClass::kUpper;
                if (c >= 'a' && c <= 'z')
                    cls = CharClass::kLower;
                if (c >= '0' && c <= '9')
                    cls = CharClass::kNumber;
                if ((c >= 0x09 && c <= 0x0D) || c == ' ')
                    cls = CharClass::kSpace;
                t.m[c] = bit(cls);
            }
            return t;
        }();
        return table.m[b];
    }

    // End of the run of characters whose class is in `mask`, starting at `pos`.
    std::size_t runEnd(std::size_t pos, unsigned mask) const {
        while (pos < size) {
            const Char c = at(pos);
            if (!(c.mask & mask))
                break;
            pos += c.len;
        }
        return pos;
    }
};

bool isNewline(char32_t cp) {
    return cp == '\r' || cp == '\n';
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d) at `pos`: the match length or 0. Under Unicode case folding
// 's' also matches U+017F LATIN SMALL LETTER LONG S; no other letter here has a non-ASCII fold.
std::size_t contraction(const Text& t, std::size_t pos) {
    if (pos + 1 >= t.size || t.data[pos] != '\'')
        return 0;
    auto lower = [&](std::size_t i) -> int { return i < t.size ? (t.data[i] | 0x20) : 0; };
    const int c1 = lower(pos + 1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
        return 2;
    if (t.data[pos + 1] == 0xC5 && pos + 2 < t.size && t.data[pos + 2] == 0xBF)
        return 3;  // ſ
    const int c2 = lower(pos + 2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
        return 3;
    return 0;
}

// Whitespace alternatives shared by both patterns; `pos` starts a White_Space character:
//   \s*[\r\n]+  then  \s+(?!\S)  then  \s+
std::size_t whitespace(const Text& t, std::size_t pos) {
    std::size_t end = pos;
    std::size_t after_last_newline = 0;
    std::size_t last_char_start = pos;
    while (end < t.size) {
        const Text::Char c = t.at(end);
        if (!(c.mask & kSpace))
            break;
        last_char_start = end;
        end += c.len;
        if (isNewline(c.cp))
            after_last_newline = end;
    }
    if (after_last_newline != 0)
        return after_last_newline - pos;
    if (end == t.size || last_char_start == pos)
        return end - pos;
    return last_char_start - pos;  // leave the last space to prefix the next word
}

// ' ?[^\s\p{L}\p{N}]+' followed by a run of `trailing` bytes; 0 when it does not match.
std::size_t punctuation(const Text& t, std::size_t pos, bool slash_trails) {
    std::size_t p = pos;
    if (t.data[p] == ' ')
        ++p;
    if (p >= t.size)
        return 0;
    const unsigned not_punct = kSpace | kLetter | kNumber;
    if (t.at(p).mask & not_punct)
        return 0;
    p = t.runEnd(p, ~not_punct);
    while (p < t.size &&
           (t.data[p] == '\r' || t.data[p] == '\n' || (slash_trails && t.data[p] == '/'))) {
        ++p;
    }
    return p - pos;
}

std::size_t numbers(const Text& t, std::size_t pos) {
    std::size_t p = pos;
    for (int i = 0; i < 3 && p < t.size; ++i) {
        const Text::Char c = t.at(p);
        if (!(c.mask & kNumber))
            break;
        p += c.len;
    }
    return p - pos;
}

std::size_t cl100k(const Text& t, std::size_t pos) {
    if (std::size_t n = contraction(t, pos))
        return n;
    const Text::Char c0 = t.at(pos);
    if (c0.mask & kLetter)
        return t.runEnd(pos, kLetter) - pos;
    const bool prefixable = !(c0.mask & (kLetter | kNumber)) && !isNewline(c0.cp);
    if (prefixable && pos + c0.len < t.size && (t.at(pos + c0.len).mask & kLetter)) {
        return t.runEnd(pos + c0.len, kLetter) - pos;
    }
    if (c0.mask & kNumber)
        return numbers(t, pos);
    if (std::size_t n = punctuation(t, pos, false))
        return n;
    return whitespace(t, pos);
}

// [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+ from `pos`: end or 0. The greedy
// star gives characters back until the plus can start; only the last lower-ish character of
// the upper-ish run, or a lower letter right after the run, can start it.
std::size_t upperThenLower(const Text& t, std::size_t pos) {
    std::size_t p = pos;
    std::size_t after_last_lowerish = 0;
    while (p < t.size) {
        const Text::Char c = t.at(p);
        if (!(c.mask & kUpperish))
            break;
        p += c.len;
        if (c.mask & kLowerish)
            after_last_lowerish = p;
    }
    if (p < t.size && (t.at(p).mask & bit(CharClass::kLower)))
        return t.runEnd(p, kLowerish);
    return after_last_lowerish;
}

// [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]* from `pos`: end or 0.
std::size_t upperRunThenLower(const Text& t, std::size_t pos) {
    if (pos >= t.size || !(t.at(pos).mask & kUpperish))
        return 0;
    return t.runEnd(t.runEnd(pos, kUpperish), kLowerish);
}

std::size_t o200k(const Text& t, std::size_t pos) {
    const Text::Char c0 = t.at(pos);
    const bool prefixable = !(c0.mask & (kLetter | kNumber)) && !isNewline(c0.cp);
    const bool wordish = c0.mask & (kLetter | bit(CharClass::kMark));
    // Alternatives 1 and 2, each first with the optional prefix character, then without it.
    std::size_t end = 0;
    for (auto word : {upperThenLower, upperRunThenLower}) {
        if (prefixable && pos + c0.len < t.size)
            end = word(t, pos + c0.len);
        if (!end && wordish)
            end = word(t, pos);
        if (end)
            return end + contraction(t, end) - pos;
    }
    if (c0.mask & kNumber)
        return numbers(t, pos);
    if (std::size_t n = punctuation(t, pos, true))
        return n;
    return whitespace(t, pos);
}

}  // namespace

std::size_t nextPiece(Pattern pattern, std::string_view text, std::size_t pos) {
    const Text t{reinterpret_cast<const unsigned char*>(text.data()), text.size()};
    return pattern == Pattern::kCl100k ? cl100k(t, pos) : o200k(t, pos);
}

}  // namespace sluice::waypoint::tokenizer
