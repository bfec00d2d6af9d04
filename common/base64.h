#pragma once

// Base64 decoding (RFC 4648), header-only: the tokenizer's rank files use the standard
// alphabet, HTTP/2's HTTP2-Settings header (RFC 7540 §3.2.1) the URL-safe one.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice {

enum class Base64Alphabet {
    Standard,  // RFC 4648 §4: A–Z a–z 0–9 + /
    Url,       // RFC 4648 §5: A–Z a–z 0–9 - _
};

namespace detail {
inline constexpr std::array<std::int8_t, 256> base64Table(Base64Alphabet alphabet) {
    std::array<std::int8_t, 256> t{};
    t.fill(-1);
    const char* chars = alphabet == Base64Alphabet::Standard
                            ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                            : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int i = 0; i < 64; ++i)
        t[static_cast<unsigned char>(chars[i])] = std::int8_t(i);
    return t;
}
}  // namespace detail

// The bytes `in` encodes; trailing '=' padding is optional. nullopt for a character outside
// the alphabet, or a length no encoding has (one character left over after the last group).
inline std::optional<std::string> decodeBase64(std::string_view in,
                                               Base64Alphabet alphabet = Base64Alphabet::Standard) {
    static constexpr auto kStandard = detail::base64Table(Base64Alphabet::Standard);
    static constexpr auto kUrl = detail::base64Table(Base64Alphabet::Url);
    const auto& table = alphabet == Base64Alphabet::Standard ? kStandard : kUrl;
    while (!in.empty() && in.back() == '=')
        in.remove_suffix(1);
    if (in.size() % 4 == 1)
        return std::nullopt;
    std::string out;
    out.reserve(in.size() * 3 / 4);
    std::uint32_t acc = 0;
    int bits = 0;
    for (unsigned char c : in) {
        const int v = table[c];
        if (v < 0)
            return std::nullopt;
        acc = (acc << 6) | std::uint32_t(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(char((acc >> bits) & 0xFF));
        }
    }
    return out;
}

}  // namespace sluice
