#include "policies/yaml_reader.h"

#include <cctype>
#include <charconv>

#include "policies/source.h"

namespace sluice::policies {
namespace {

// Bounds list lengths so a hostile document cannot make one rule enormous.
constexpr std::size_t kMaxListItems = 65536;

const char* type_name(const YAML::Node& node) {
    switch (node.Type()) {
        case YAML::NodeType::Null:
            return "nothing";
        case YAML::NodeType::Scalar:
            return "a scalar";
        case YAML::NodeType::Sequence:
            return "a list";
        case YAML::NodeType::Map:
            return "a map";
        default:
            return "an undefined value";
    }
}

}  // namespace

SourcePosition YamlReader::position(const YAML::Node& node) const {
    return position_of(file_, node);
}

void YamlReader::error(const YAML::Node& node, const std::string& message) {
    diagnostics_.push_back({Severity::Error, position(node), message});
}

void YamlReader::warning(const YAML::Node& node, const std::string& message) {
    diagnostics_.push_back({Severity::Warning, position(node), message});
}

void YamlReader::unknown_field(const YAML::Node& key, const std::string& ctx,
                               const std::string& name) {
    if (strict_)
        error(key, "unknown field '" + name + "' in " + ctx);
    else
        warning(key, "unknown field '" + name + "' in " + ctx + " (ignored)");
}

void YamlReader::unknown_rule_field(const YAML::Node& key, const std::string& ctx,
                                    const std::string& name) {
    warning(key, "unknown field '" + name + "' in " + ctx +
                     ": an ALLOW rule with it matches nothing, a DENY rule is enforced without it");
}

void YamlReader::unknown_security_field(const YAML::Node& key, const std::string& ctx,
                                        const std::string& name) {
    error(key, "unknown field '" + name + "' in " + ctx +
                   ": refused, since ignoring it could change what the policy allows or denies");
}

bool YamlReader::expect_map(const YAML::Node& node, const std::string& ctx) {
    if (node && node.IsMap())
        return true;
    error(node, ctx + ": expected a map, found " + type_name(node));
    return false;
}

bool YamlReader::expect_sequence(const YAML::Node& node, const std::string& ctx) {
    if (node && node.IsSequence() && node.size() <= kMaxListItems)
        return true;
    if (node && node.IsSequence())
        error(node, ctx + ": more than " + std::to_string(kMaxListItems) + " items");
    else
        error(node, ctx + ": expected a list, found " + type_name(node));
    return false;
}

std::optional<std::string> YamlReader::string(const YAML::Node& node, const std::string& ctx) {
    if (node && node.IsScalar())
        return node.Scalar();
    error(node, ctx + ": expected a string, found " + type_name(node));
    return std::nullopt;
}

std::optional<bool> YamlReader::boolean(const YAML::Node& node, const std::string& ctx) {
    if (node && node.IsScalar() && (node.Scalar() == "true" || node.Scalar() == "false"))
        return node.Scalar() == "true";
    error(node, ctx + ": expected true or false, found " + type_name(node));
    return std::nullopt;
}

std::optional<std::string> YamlReader::required_string(const YAML::Node& parent, const char* key,
                                                       const std::string& ctx) {
    const YAML::Node n = parent[key];
    if (!n) {
        error(parent, ctx + ": '" + key + "' is required");
        return std::nullopt;
    }
    auto s = string(n, ctx + "." + key);
    if (s && s->empty()) {
        error(n, ctx + "." + key + " is empty");
        return std::nullopt;
    }
    return s;
}

std::optional<std::vector<std::string>> YamlReader::string_list(const YAML::Node& node,
                                                                const std::string& ctx) {
    if (!expect_sequence(node, ctx))
        return std::nullopt;
    std::vector<std::string> out;
    bool ok = true;
    for (std::size_t i = 0; i < node.size(); ++i) {
        auto s = string(node[i], ctx + "[" + std::to_string(i) + "]");
        if (s)
            out.push_back(*s);
        ok = ok && s.has_value();
    }
    if (!ok)
        return std::nullopt;
    return out;
}

std::optional<std::map<std::string, std::string>> YamlReader::string_map(const YAML::Node& node,
                                                                         const std::string& ctx) {
    if (!expect_map(node, ctx))
        return std::nullopt;
    std::map<std::string, std::string> out;
    bool ok = true;
    for (const auto& kv : node) {
        auto k = string(kv.first, ctx + " key");
        auto v = string(kv.second, ctx + "." + kv.first.as<std::string>("?"));
        if (k && v)
            out[*k] = *v;
        ok = ok && k && v;
    }
    if (!ok)
        return std::nullopt;
    return out;
}

std::optional<long long> YamlReader::integer(const YAML::Node& node, const std::string& ctx,
                                             long long min, long long max) {
    auto s = string(node, ctx);
    if (!s)
        return std::nullopt;
    long long v = 0;
    auto [p, ec] = std::from_chars(s->data(), s->data() + s->size(), v);
    if (ec != std::errc() || p != s->data() + s->size() || s->empty()) {
        error(node, ctx + ": '" + *s + "' is not an integer");
        return std::nullopt;
    }
    if (v < min || v > max) {
        error(node,
              ctx + ": " + *s + " is outside " + std::to_string(min) + ".." + std::to_string(max));
        return std::nullopt;
    }
    return v;
}

std::optional<uint16_t> YamlReader::port(const YAML::Node& node, const std::string& ctx) {
    auto s = string(node, ctx);
    if (!s)
        return std::nullopt;
    if (s->find('-') != std::string::npos &&
        s->find_first_not_of("0123456789-") == std::string::npos && s->front() != '-') {
        error(node, ctx + ": '" + *s +
                        "' is a port range; list each port instead (ranges are "
                        "not part of the Istio API)");
        return std::nullopt;
    }
    unsigned v = 0;
    auto [p, ec] = std::from_chars(s->data(), s->data() + s->size(), v);
    if (ec != std::errc() || p != s->data() + s->size() || s->empty()) {
        error(node, ctx + ": '" + *s + "' is not a port number");
        return std::nullopt;
    }
    if (v == 0 || v > 65535) {
        error(node, ctx + ": port " + *s + " is outside 1..65535");
        return std::nullopt;
    }
    return static_cast<uint16_t>(v);
}

std::optional<std::vector<uint16_t>> YamlReader::port_list(const YAML::Node& node,
                                                           const std::string& ctx) {
    if (!expect_sequence(node, ctx))
        return std::nullopt;
    std::vector<uint16_t> out;
    bool ok = true;
    for (std::size_t i = 0; i < node.size(); ++i) {
        auto p = port(node[i], ctx + "[" + std::to_string(i) + "]");
        if (p)
            out.push_back(*p);
        ok = ok && p.has_value();
    }
    if (!ok)
        return std::nullopt;
    return out;
}

bool is_dns_label(const std::string& name, std::size_t max_len) {
    if (name.empty() || name.size() > max_len)
        return false;
    auto alnum = [](char c) {
        return std::isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'z');
    };
    if (!alnum(name.front()) || !alnum(name.back()))
        return false;
    for (char c : name) {
        if (!alnum(c) && c != '-' && c != '.')
            return false;
    }
    return true;
}

}  // namespace sluice::policies
