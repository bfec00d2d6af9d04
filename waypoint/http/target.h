#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace sluice::waypoint {

// The origin-form (path and query) of an absolute-form request target (RFC 9112 §3.2.2:
// "http://host/v1/models?x" → "/v1/models?x", "http://host" → "/"); nullopt for any other form.
std::optional<std::string> originFormOf(std::string_view target);

// The path a backend's router takes an origin-form target for: percent escapes decoded, dot
// segments removed (RFC 3986 §5.2.4), repeated slashes collapsed, the query (and a fragment)
// dropped. nullopt when the target is not origin-form or holds an invalid escape.
std::optional<std::string> routedPath(std::string_view target);

// A routed path as the most lenient routers compare it: lower case, `;parameters` dropped from
// each segment (Tomcat), no trailing slash (Express).
std::string lenientPath(std::string_view routed);

}  // namespace sluice::waypoint
