#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "policies/diagnostic.h"

namespace sluice::policies {

// Typed, positioned access to YAML nodes for the parsers: every accessor that fails records one
// diagnostic naming the field (`ctx`) and returns nullopt; none throws.
class YamlReader {
  public:
    YamlReader(std::string file, std::vector<Diagnostic>& diagnostics)
        : file_(std::move(file)), diagnostics_(diagnostics) {}

    SourcePosition position(const YAML::Node& node) const;
    void error(const YAML::Node& node, const std::string& message);
    void warning(const YAML::Node& node, const std::string& message);
    // Unknown fields are warnings: a newer Istio field must not take a whole config down. In
    // sluice's own kinds (strict), whose every field this build knows, they are errors: a
    // misspelled `tokensPerMinut` would otherwise leave a tenant without that limit.
    void unknown_field(const YAML::Node& key, const std::string& ctx, const std::string& name);
    void set_strict(bool strict) { strict_ = strict; }
    // An unknown field inside an authorization rule: still a warning, but not ignored (the
    // rule keeps its name: an ALLOW rule with it matches nothing, a DENY rule ignores it).
    void unknown_rule_field(const YAML::Node& key, const std::string& ctx, const std::string& name);
    // An unknown field outside the rules of a security kind (AuthorizationPolicy,
    // PeerAuthentication, IsolationBoundary): an error, so the last good set stays in force.
    // Ignoring it could reverse the policy: a misspelled `action: DENY` would read as ALLOW, a
    // misspelled `rules` of a DENY policy would deny nothing, a misspelled `selector` would widen
    // the policy to the whole namespace.
    void unknown_security_field(const YAML::Node& key, const std::string& ctx,
                                const std::string& name);

    bool expect_map(const YAML::Node& node, const std::string& ctx);
    bool expect_sequence(const YAML::Node& node, const std::string& ctx);
    std::optional<std::string> string(const YAML::Node& node, const std::string& ctx);
    std::optional<bool> boolean(const YAML::Node& node, const std::string& ctx);  // true/false
    std::optional<std::string> required_string(const YAML::Node& parent, const char* key,
                                               const std::string& ctx);
    std::optional<std::vector<std::string>> string_list(const YAML::Node& node,
                                                        const std::string& ctx);
    std::optional<std::map<std::string, std::string>> string_map(const YAML::Node& node,
                                                                 const std::string& ctx);
    std::optional<long long> integer(const YAML::Node& node, const std::string& ctx, long long min,
                                     long long max);
    // A port "8080" or 8080 in 1..65535. Ranges ("8000-8080") are refused with that reason.
    std::optional<uint16_t> port(const YAML::Node& node, const std::string& ctx);
    std::optional<std::vector<uint16_t>> port_list(const YAML::Node& node, const std::string& ctx);

  private:
    bool strict_ = false;
    std::string file_;
    std::vector<Diagnostic>& diagnostics_;
};

// Stores a parsed value into `dst` when there is one and says whether there was, so a parser can
// write `ok &= take(r.string_list(node, ctx), dst);` and go on to report every other problem.
template <typename T, typename D>
bool take(std::optional<T> value, D& dst) {
    if (!value)
        return false;
    dst = std::move(*value);
    return true;
}

// RFC 1123 names as Kubernetes uses them: lowercase alphanumerics, '-' and '.', starting and
// ending alphanumeric, at most `max_len` characters.
bool is_dns_label(const std::string& name, std::size_t max_len);

}  // namespace sluice::policies
