#include "waypoint/http/h2c_upgrade.h"

#include <cstdint>

#include "common/base64.h"

namespace sluice::waypoint {
namespace {

constexpr std::size_t kSettingEntry = 6;  // 16-bit identifier, 32-bit value

// Whether a comma-separated field (every line of it) lists `token`, case-insensitively.
bool listsToken(const Request& request, http::field field, std::string_view token) {
    for (auto [it, end] = request.equal_range(field); it != end; ++it) {
        std::string_view rest = sv(it->value());
        while (!rest.empty()) {
            const auto comma = rest.find(',');
            std::string_view item = rest.substr(0, comma);
            rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
            while (!item.empty() && (item.front() == ' ' || item.front() == '\t'))
                item.remove_prefix(1);
            while (!item.empty() && (item.back() == ' ' || item.back() == '\t'))
                item.remove_suffix(1);
            if (beast::iequals(beast::string_view(item.data(), item.size()),
                               beast::string_view(token.data(), token.size())))
                return true;
        }
    }
    return false;
}

// RFC 7540 §6.5.2 (and RFC 8441 §3 for ENABLE_CONNECT_PROTOCOL): the values a SETTINGS frame
// may not carry. Unknown identifiers are ignored, as the receiver of a SETTINGS frame must.
std::string settingsProblem(std::string_view payload) {
    if (payload.size() % kSettingEntry != 0)
        return "its length " + std::to_string(payload.size()) + " is not a multiple of 6";
    for (std::size_t at = 0; at < payload.size(); at += kSettingEntry) {
        auto byte = [&](std::size_t i) { return std::uint32_t(std::uint8_t(payload[at + i])); };
        const std::uint32_t id = byte(0) << 8 | byte(1);
        const std::uint32_t value = byte(2) << 24 | byte(3) << 16 | byte(4) << 8 | byte(5);
        const bool valid = [&] {
            switch (id) {
                case 0x2:  // ENABLE_PUSH
                case 0x8:  // ENABLE_CONNECT_PROTOCOL
                    return value <= 1;
                case 0x4:  // INITIAL_WINDOW_SIZE
                    return value <= 0x7fffffffu;
                case 0x5:  // MAX_FRAME_SIZE
                    return value >= 16384 && value <= 0xffffffu;
                default:
                    return true;
            }
        }();
        if (!valid)
            return "setting " + std::to_string(id) + " has the invalid value " +
                   std::to_string(value);
    }
    return {};
}

}  // namespace

H2cUpgradeOffer h2cUpgradeOffer(const Request& request) {
    using Verdict = H2cUpgradeOffer::Verdict;
    if (request.version() != 11 || !listsToken(request, http::field::upgrade, "h2c"))
        return {};
    if (!listsToken(request, http::field::connection, "upgrade") ||
        !listsToken(request, http::field::connection, "http2-settings") ||
        request.count(http::field::http2_settings) != 1) {
        return {};
    }
    const auto value = sv(request[http::field::http2_settings]);
    auto payload = decodeBase64(value, Base64Alphabet::Url);
    if (!payload)
        return {.verdict = Verdict::Malformed, .problem = "HTTP2-Settings is not base64url"};
    if (auto problem = settingsProblem(*payload); !problem.empty())
        return {.verdict = Verdict::Malformed, .problem = "HTTP2-Settings: " + problem};
    return {.verdict = Verdict::Upgrade, .settings = std::move(*payload)};
}

}  // namespace sluice::waypoint
