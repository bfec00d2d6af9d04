#include "ztunnel/identity/spiffe.h"

#include <vector>

namespace sluice::ztunnel::identity {
namespace {

constexpr std::string_view kScheme = "spiffe://";

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> parts;
    size_t start = 0;
    for (size_t i = 0; i <= s.size(); ++i) {
        if (i == s.size() || s[i] == sep) {
            parts.push_back(s.substr(start, i - start));
            start = i + 1;
        }
    }
    return parts;
}

}  // namespace

std::string Identity::uri() const {
    return std::string(kScheme) + trust_domain + "/ns/" + namespace_name + "/sa/" + service_account;
}

std::expected<Identity, std::string> Identity::parse(std::string_view uri) {
    if (!uri.starts_with(kScheme))
        return std::unexpected("not a spiffe:// URI: " + std::string(uri));
    auto parts = split(uri.substr(kScheme.size()), '/');
    if (parts.size() != 5 || parts[1] != "ns" || parts[3] != "sa")
        return std::unexpected("not of the form spiffe://<td>/ns/<ns>/sa/<sa>: " +
                               std::string(uri));
    for (auto p : parts) {
        if (p.empty())
            return std::unexpected("empty segment in " + std::string(uri));
    }
    return Identity{std::string(parts[0]), std::string(parts[2]), std::string(parts[4])};
}

}  // namespace sluice::ztunnel::identity
