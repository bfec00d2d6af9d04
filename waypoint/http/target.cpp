#include "waypoint/http/target.h"

#include <cctype>
#include <vector>

namespace sluice::waypoint {
namespace {

int hexValue(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

std::optional<std::string> percentDecoded(std::string_view path) {
    std::string out;
    out.reserve(path.size());
    for (std::size_t i = 0; i < path.size(); ++i) {
        if (path[i] != '%') {
            out += path[i];
            continue;
        }
        if (i + 2 >= path.size())
            return std::nullopt;
        const int high = hexValue(path[i + 1]);
        const int low = hexValue(path[i + 2]);
        if (high < 0 || low < 0)
            return std::nullopt;
        out += static_cast<char>(high * 16 + low);
        i += 2;
    }
    return out;
}

}  // namespace

std::optional<std::string> originFormOf(std::string_view target) {
    const std::size_t scheme_end = target.find("://");
    if (scheme_end == std::string_view::npos || scheme_end == 0)
        return std::nullopt;
    for (char c : target.substr(0, scheme_end)) {
        if (!std::isalpha(static_cast<unsigned char>(c)))
            return std::nullopt;
    }
    const std::string_view rest = target.substr(scheme_end + 3);
    const std::size_t path = rest.find_first_of("/?");
    if (path == std::string_view::npos)
        return std::string("/");
    if (rest[path] == '?')
        return "/" + std::string(rest.substr(path));
    return std::string(rest.substr(path));
}

std::optional<std::string> routedPath(std::string_view target) {
    if (target.empty() || target.front() != '/')
        return std::nullopt;
    auto decoded = percentDecoded(target.substr(0, target.find_first_of("?#")));
    if (!decoded)
        return std::nullopt;
    // Segments between slashes; empty ones (a repeated slash) and "." go, ".." takes one back.
    std::vector<std::string_view> kept;
    const std::string_view path = *decoded;
    for (std::size_t at = 1; at <= path.size();) {
        std::size_t end = path.find('/', at);
        if (end == std::string_view::npos)
            end = path.size();
        const std::string_view segment = path.substr(at, end - at);
        if (segment == "..") {
            if (!kept.empty())
                kept.pop_back();
        } else if (!segment.empty() && segment != ".") {
            kept.push_back(segment);
        }
        at = end + 1;
    }
    std::string out;
    for (const auto& segment : kept)
        out.append("/").append(segment);
    const bool trailing = path.size() > 1 && path.back() == '/';
    if (out.empty() || trailing)
        out += '/';
    return out;
}

std::string lenientPath(std::string_view routed) {
    std::string out;
    out.reserve(routed.size());
    bool in_parameters = false;
    for (char c : routed) {
        if (c == '/')
            in_parameters = false;
        else if (c == ';')
            in_parameters = true;
        if (!in_parameters)
            out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    while (out.size() > 1 && out.back() == '/')
        out.pop_back();
    return out;
}

}  // namespace sluice::waypoint
