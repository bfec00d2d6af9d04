#include "policies/parser.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <initializer_list>
#include <set>
#include <string_view>

#include "policies/yaml_reader.h"

namespace sluice::policies {
namespace {

constexpr const char* kIstioSecurityV1 = "security.istio.io/v1";
constexpr const char* kIstioSecurityV1beta1 = "security.istio.io/v1beta1";
constexpr const char* kSluiceV1alpha1 = "sluice.dev/v1alpha1";

// Fields of Istio's Source and Operation that need a waypoint (L7) or that this build does not
// evaluate at L4. Listed so the message names them as "requires a waypoint", not as unknown.
const std::set<std::string> kSourceL7 = {"requestPrincipals", "notRequestPrincipals",
                                         "remoteIpBlocks", "notRemoteIpBlocks"};
const std::set<std::string> kOperationL7 = {"hosts",      "notHosts", "methods",
                                            "notMethods", "paths",    "notPaths"};

std::optional<std::vector<Cidr>> read_cidrs(YamlReader& r, const YAML::Node& node,
                                            const std::string& what) {
    auto texts = r.string_list(node, what);
    if (!texts)
        return std::nullopt;
    std::vector<Cidr> out;
    bool ok = true;
    std::size_t i = 0;
    for (const auto& text : *texts) {
        const YAML::Node item = node[i++];
        auto cidr = datapath::parse_cidr(text);
        if (!cidr) {
            r.error(item, what + ": '" + text + "' is not an IP address or CIDR");
            ok = false;
            continue;
        }
        out.push_back(*cidr);
    }
    if (!ok)
        return std::nullopt;
    return out;
}

std::optional<Source> read_source(YamlReader& r, const YAML::Node& node, const std::string& ctx) {
    if (!r.expect_map(node, ctx))
        return std::nullopt;
    Source s;
    bool ok = true;
    for (const auto& kv : node) {
        const std::string key = kv.first.as<std::string>("");
        const std::string where = ctx + "." + key;
        const YAML::Node& v = kv.second;
        auto strings = [&](std::vector<std::string>& dst) {
            ok &= take(r.string_list(v, where), dst);
        };
        auto cidrs = [&](std::vector<Cidr>& dst) { ok &= take(read_cidrs(r, v, where), dst); };
        if (key == "principals") {
            strings(s.principals);
        } else if (key == "notPrincipals") {
            strings(s.not_principals);
        } else if (key == "namespaces") {
            strings(s.namespaces);
        } else if (key == "notNamespaces") {
            strings(s.not_namespaces);
        } else if (key == "ipBlocks") {
            cidrs(s.ip_blocks);
        } else if (key == "notIpBlocks") {
            cidrs(s.not_ip_blocks);
        } else if (kSourceL7.contains(key)) {
            s.l7_fields.push_back("from.source." + key);
        } else {
            r.unknown_rule_field(kv.first, ctx, key);
            s.unknown_fields.push_back("from.source." + key);
        }
    }
    if (!ok)
        return std::nullopt;
    return s;
}

std::optional<Operation> read_operation(YamlReader& r, const YAML::Node& node,
                                        const std::string& ctx) {
    if (!r.expect_map(node, ctx))
        return std::nullopt;
    Operation op;
    bool ok = true;
    for (const auto& kv : node) {
        const std::string key = kv.first.as<std::string>("");
        const std::string where = ctx + "." + key;
        if (key == "ports" || key == "notPorts") {
            ok &= take(r.port_list(kv.second, where), (key == "ports" ? op.ports : op.not_ports));
        } else if (kOperationL7.contains(key)) {
            op.l7_fields.push_back("to.operation." + key);
        } else {
            r.unknown_rule_field(kv.first, ctx, key);
            op.unknown_fields.push_back("to.operation." + key);
        }
    }
    if (!ok)
        return std::nullopt;
    return op;
}

bool matches_anything(const Source& s) {
    return s.principals.empty() && s.not_principals.empty() && s.namespaces.empty() &&
           s.not_namespaces.empty() && s.ip_blocks.empty() && s.not_ip_blocks.empty() &&
           s.l7_fields.empty() && s.unknown_fields.empty();
}

bool matches_anything(const Operation& op) {
    return op.ports.empty() && op.not_ports.empty() && op.l7_fields.empty() &&
           op.unknown_fields.empty();
}

// One `when[]` condition into `rule`: an L4 key (see Rule::when_sources) as a condition, any
// other key as an L7 field. Istio requires a key and at least one of values, notValues.
bool read_condition(YamlReader& r, const YAML::Node& node, const std::string& ctx, Rule& rule) {
    if (!r.expect_map(node, ctx))
        return false;
    const YAML::Node key_node = node["key"];
    if (!key_node) {
        r.error(node, ctx + ": missing 'key'");
        return false;
    }
    auto key = r.string(key_node, ctx + ".key");
    if (!key)
        return false;
    const YAML::Node values = node["values"];
    const YAML::Node not_values = node["notValues"];
    bool ok = true;
    for (const auto& kv : node) {
        const std::string field = kv.first.as<std::string>("");
        if (field != "key" && field != "values" && field != "notValues") {
            r.unknown_rule_field(kv.first, ctx, field);
            rule.unknown_fields.push_back("when." + field);
        }
    }
    auto listed = [](const YAML::Node& n) { return n && !(n.IsSequence() && n.size() == 0); };
    if (!listed(values) && !listed(not_values)) {
        r.error(node, ctx + ": condition '" + *key + "' needs values or notValues");
        return false;
    }
    auto strings = [&](const YAML::Node& n, const std::string& w) { return r.string_list(n, w); };
    auto cidrs = [&](const YAML::Node& n, const std::string& w) { return read_cidrs(r, n, w); };
    auto ports = [&](const YAML::Node& n, const std::string& w) { return r.port_list(n, w); };
    // One more entry of `list`, its members `in` and `not_in` read with `read` from values and
    // notValues (each when present).
    auto add = [&](auto& list, auto read, auto in, auto not_in) {
        auto& condition = list.emplace_back();
        if (values)
            ok &= take(read(values, ctx + ".values"), condition.*in);
        if (not_values)
            ok &= take(read(not_values, ctx + ".notValues"), condition.*not_in);
    };
    if (*key == "source.ip") {
        add(rule.when_sources, cidrs, &Source::ip_blocks, &Source::not_ip_blocks);
    } else if (*key == "source.namespace") {
        add(rule.when_sources, strings, &Source::namespaces, &Source::not_namespaces);
    } else if (*key == "source.principal") {
        add(rule.when_sources, strings, &Source::principals, &Source::not_principals);
    } else if (*key == "destination.port") {
        add(rule.when_operations, ports, &Operation::ports, &Operation::not_ports);
    } else if (*key == "destination.ip") {
        add(rule.when_destination_ips, cidrs, &DestinationIpCondition::cidrs,
            &DestinationIpCondition::not_cidrs);
    } else {
        // request.headers[…], request.auth.*, …: only a waypoint sees them.
        rule.l7_fields.push_back("when." + *key);
    }
    return ok;
}

std::optional<Rule> read_rule(YamlReader& r, const YAML::Node& node, const std::string& ctx) {
    if (!r.expect_map(node, ctx))
        return std::nullopt;
    Rule rule;
    rule.where = r.position(node);
    bool ok = true;
    for (const auto& kv : node) {
        const std::string key = kv.first.as<std::string>("");
        const std::string where = ctx + "." + key;
        const YAML::Node& v = kv.second;
        if (key == "from" || key == "to") {
            if (!r.expect_sequence(v, where)) {
                ok = false;
                continue;
            }
            for (std::size_t i = 0; i < v.size(); ++i) {
                const std::string item_ctx = where + "[" + std::to_string(i) + "]";
                const YAML::Node item = v[i];
                if (!r.expect_map(item, item_ctx)) {
                    ok = false;
                    continue;
                }
                const char* inner = key == "from" ? "source" : "operation";
                for (const auto& ikv : item) {
                    const std::string ikey = ikv.first.as<std::string>("");
                    if (ikey != inner) {
                        r.unknown_rule_field(ikv.first, item_ctx, ikey);
                        rule.unknown_fields.push_back(key + "." + ikey);
                    }
                }
                const YAML::Node body = item[inner];
                if (!body) {
                    r.error(item, item_ctx + ": missing '" + inner + "'");
                    ok = false;
                    continue;
                }
                // As Istio refuses them: an empty source or operation (`{}`, or only empty
                // lists) would match anything.
                const std::string empty = item_ctx + "." + inner + " must not be empty";
                if (key == "from") {
                    auto s = read_source(r, body, item_ctx + ".source");
                    if (s && matches_anything(*s)) {
                        r.error(body, empty);
                        s.reset();
                    }
                    if (!s) {
                        ok = false;
                        continue;
                    }
                    for (const auto& f : s->l7_fields)
                        rule.l7_fields.push_back(f);
                    for (const auto& f : s->unknown_fields)
                        rule.unknown_fields.push_back(f);
                    rule.from.push_back(std::move(*s));
                } else {
                    auto op = read_operation(r, body, item_ctx + ".operation");
                    if (op && matches_anything(*op)) {
                        r.error(body, empty);
                        op.reset();
                    }
                    if (!op) {
                        ok = false;
                        continue;
                    }
                    for (const auto& f : op->l7_fields)
                        rule.l7_fields.push_back(f);
                    for (const auto& f : op->unknown_fields)
                        rule.unknown_fields.push_back(f);
                    rule.to.push_back(std::move(*op));
                }
            }
        } else if (key == "when") {
            if (!r.expect_sequence(v, where)) {
                ok = false;
                continue;
            }
            for (std::size_t i = 0; i < v.size(); ++i)
                ok &= read_condition(r, v[i], where + "[" + std::to_string(i) + "]", rule);
        } else {
            r.unknown_rule_field(kv.first, ctx, key);
            rule.unknown_fields.push_back(key);
        }
    }
    if (!ok)
        return std::nullopt;
    return rule;
}

std::optional<Labels> read_selector(YamlReader& r, const YAML::Node& node, const std::string& ctx) {
    if (!r.expect_map(node, ctx))
        return std::nullopt;
    Labels labels;
    for (const auto& kv : node) {
        const std::string key = kv.first.as<std::string>("");
        if (key == "matchLabels") {
            auto m = r.string_map(kv.second, ctx + ".matchLabels");
            if (!m)
                return std::nullopt;
            labels = *m;
        } else {
            r.unknown_security_field(kv.first, ctx, key);
            return std::nullopt;
        }
    }
    return labels;
}

void parse_authorization(YamlReader& r, const ObjectMeta& meta, const YAML::Node& spec,
                         PolicySet& out) {
    AuthorizationPolicy p;
    p.meta = meta;
    p.raw_spec = yaml_to_json(spec);
    bool audit = false;
    if (spec && !spec.IsNull()) {
        if (!r.expect_map(spec, "spec"))
            return;
        bool ok = true;
        for (const auto& kv : spec) {
            const std::string key = kv.first.as<std::string>("");
            const YAML::Node& v = kv.second;
            if (key == "selector") {
                ok &= take(read_selector(r, v, "spec.selector"), p.selector);
            } else if (key == "action") {
                auto a = r.string(v, "spec.action");
                if (!a) {
                    ok = false;
                } else if (*a == "ALLOW") {
                    p.action = Action::Allow;
                } else if (*a == "DENY") {
                    p.action = Action::Deny;
                } else if (*a == "AUDIT") {
                    // Audit logging decides nothing; Istio's ztunnel leaves such policies out
                    // too. Refusing it would refuse every later change of the whole set.
                    r.warning(v, "spec.action: AUDIT policies allow and deny nothing; " +
                                     meta.ref() + " is left out");
                    audit = true;
                } else if (*a == "CUSTOM") {
                    r.error(v,
                            "spec.action: CUSTOM is not supported (ALLOW and DENY are; CUSTOM "
                            "needs an external authorizer)");
                    ok = false;
                } else {
                    r.error(v, "spec.action: '" + *a + "' is not one of ALLOW, DENY");
                    ok = false;
                }
            } else if (key == "rules") {
                if (!r.expect_sequence(v, "spec.rules")) {
                    ok = false;
                    continue;
                }
                for (std::size_t i = 0; i < v.size(); ++i) {
                    auto rule = read_rule(r, v[i], "spec.rules[" + std::to_string(i) + "]");
                    if (!rule) {
                        ok = false;
                        continue;
                    }
                    p.rules.push_back(std::move(*rule));
                }
            } else if (key == "targetRef" || key == "targetRefs") {
                p.waypoint_targeted = true;
            } else if (key == "provider") {
                r.error(v, "spec.provider: CUSTOM providers are not supported");
                ok = false;
            } else {
                r.unknown_security_field(kv.first, "spec", key);
                ok = false;
            }
        }
        if (!ok)
            return;
    }
    if (p.waypoint_targeted && p.selector) {
        r.error(spec, "spec: selector and targetRef(s) are mutually exclusive");
        return;
    }
    if (!audit)
        out.authorization.push_back(std::move(p));
}

std::optional<MtlsMode> read_mode(YamlReader& r, const YAML::Node& node, const std::string& ctx) {
    if (!r.expect_map(node, ctx))
        return std::nullopt;
    MtlsMode mode = MtlsMode::Unset;
    for (const auto& kv : node) {
        const std::string key = kv.first.as<std::string>("");
        if (key != "mode") {
            r.unknown_security_field(kv.first, ctx, key);
            return std::nullopt;
        }
        auto m = r.string(kv.second, ctx + ".mode");
        if (!m)
            return std::nullopt;
        if (*m == "STRICT")
            mode = MtlsMode::Strict;
        else if (*m == "PERMISSIVE")
            mode = MtlsMode::Permissive;
        else if (*m == "DISABLE")
            mode = MtlsMode::Disable;
        else if (*m == "UNSET")
            mode = MtlsMode::Unset;
        else {
            r.error(kv.second,
                    ctx + ".mode: '" + *m + "' is not one of STRICT, PERMISSIVE, DISABLE, UNSET");
            return std::nullopt;
        }
    }
    return mode;
}

void parse_peer_authentication(YamlReader& r, const ObjectMeta& meta, const YAML::Node& spec,
                               PolicySet& out) {
    PeerAuthentication p;
    p.meta = meta;
    p.raw_spec = yaml_to_json(spec);
    if (spec && !spec.IsNull()) {
        if (!r.expect_map(spec, "spec"))
            return;
        bool ok = true;
        for (const auto& kv : spec) {
            const std::string key = kv.first.as<std::string>("");
            const YAML::Node& v = kv.second;
            if (key == "selector") {
                ok &= take(read_selector(r, v, "spec.selector"), p.selector);
            } else if (key == "mtls") {
                ok &= take(read_mode(r, v, "spec.mtls"), p.mode);
            } else if (key == "portLevelMtls") {
                if (!r.expect_map(v, "spec.portLevelMtls")) {
                    ok = false;
                    continue;
                }
                for (const auto& pkv : v) {
                    auto port = r.port(pkv.first, "spec.portLevelMtls key");
                    auto m = read_mode(r, pkv.second,
                                       "spec.portLevelMtls." + pkv.first.as<std::string>(""));
                    if (!port || !m) {
                        ok = false;
                        continue;
                    }
                    p.port_modes[*port] = *m;
                }
            } else {
                r.unknown_security_field(kv.first, "spec", key);
                ok = false;
            }
        }
        if (!ok)
            return;
    }
    if (!p.port_modes.empty() && (!p.selector || p.selector->empty())) {
        // Istio only honours port-level mTLS on workload-scoped policies.
        r.error(spec, "spec.portLevelMtls needs a non-empty spec.selector (workload scope)");
        return;
    }
    out.peer_authentication.push_back(std::move(p));
}

std::optional<std::vector<BoundaryPeer>> read_peers(YamlReader& r, const YAML::Node& node,
                                                    const std::string& ctx) {
    if (!r.expect_sequence(node, ctx))
        return std::nullopt;
    std::vector<BoundaryPeer> peers;
    bool ok = true;
    for (std::size_t i = 0; i < node.size(); ++i) {
        const std::string item_ctx = ctx + "[" + std::to_string(i) + "]";
        const YAML::Node item = node[i];
        if (!r.expect_map(item, item_ctx)) {
            ok = false;
            continue;
        }
        BoundaryPeer peer;
        for (const auto& kv : item) {
            const std::string key = kv.first.as<std::string>("");
            const std::string where = item_ctx + "." + key;
            if (key == "namespaces" || key == "boundaries") {
                auto list = r.string_list(kv.second, where);
                if (!list) {
                    ok = false;
                    continue;
                }
                (key == "namespaces" ? peer.namespaces : peer.boundaries) = *list;
            } else if (key == "ports") {
                auto ports = r.port_list(kv.second, where);
                if (!ports) {
                    ok = false;
                    continue;
                }
                peer.ports = *ports;
            } else {
                r.unknown_security_field(kv.first, item_ctx, key);
                ok = false;
            }
        }
        if (peer.namespaces.empty() && peer.boundaries.empty()) {
            r.error(item, item_ctx + ": name at least one of namespaces, boundaries");
            ok = false;
        }
        peers.push_back(std::move(peer));
    }
    if (!ok)
        return std::nullopt;
    return peers;
}

void parse_boundary(YamlReader& r, const ObjectMeta& meta, const YAML::Node& spec, PolicySet& out) {
    IsolationBoundary b;
    b.meta = meta;
    b.raw_spec = yaml_to_json(spec);
    if (!r.expect_map(spec, "spec"))
        return;
    bool ok = true;
    for (const auto& kv : spec) {
        const std::string key = kv.first.as<std::string>("");
        const YAML::Node& v = kv.second;
        if (key == "namespaces") {
            ok &= take(r.string_list(v, "spec.namespaces"), b.namespaces);
        } else if (key == "namespaceSelector") {
            ok &= take(read_selector(r, v, "spec.namespaceSelector"), b.namespace_selector);
        } else if (key == "allowFrom" || key == "allowTo") {
            ok &= take(read_peers(r, v, "spec." + key),
                       (key == "allowFrom" ? b.allow_from : b.allow_to));
        } else {
            r.unknown_security_field(kv.first, "spec", key);
            ok = false;
        }
    }
    if (!ok)
        return;
    if (b.namespaces.empty() && (!b.namespace_selector || b.namespace_selector->empty())) {
        r.error(spec,
                "spec: a boundary needs members: spec.namespaces or a non-empty "
                "spec.namespaceSelector.matchLabels");
        return;
    }
    out.boundaries.push_back(std::move(b));
}

// What a field reader made of one field of a map.
enum class Field { Valid, Invalid, Unknown };

// Reads the map `node` (at `ctx`) into `out` (made an object), one `field(key, value, where)`
// per entry; unknown fields warn. Says whether `node` is a map and every field it knows was valid.
template <typename FieldReader>
bool read_fields(YamlReader& r, const YAML::Node& node, const std::string& ctx, nlohmann::json& out,
                 FieldReader field) {
    if (!r.expect_map(node, ctx))
        return false;
    out = nlohmann::json::object();
    bool ok = true;
    for (const auto& kv : node) {
        const std::string key = kv.first.as<std::string>("");
        const Field f = field(key, kv.second, ctx + "." + key);
        if (f == Field::Unknown)
            r.unknown_field(kv.first, ctx, key);
        ok &= f != Field::Invalid;
    }
    return ok;
}

Field valid_if(bool ok) {
    return ok ? Field::Valid : Field::Invalid;
}

// An integer field of a waypoint kind's map: its name and accepted range.
struct IntField {
    const char* name;
    long long min;
    long long max;
};

// Reads a map whose fields are all integers of `fields` into `out`; `any` counts the known
// fields present.
bool read_int_fields(YamlReader& r, const YAML::Node& node, const std::string& ctx,
                     std::initializer_list<IntField> fields, nlohmann::json& out,
                     std::size_t* any = nullptr) {
    return read_fields(r, node, ctx, out,
                       [&](const std::string& key, const YAML::Node& v, const std::string& where) {
                           auto f = std::find_if(fields.begin(), fields.end(),
                                                 [&](const IntField& x) { return key == x.name; });
                           if (f == fields.end())
                               return Field::Unknown;
                           if (any != nullptr)
                               ++*any;
                           return valid_if(take(r.integer(v, where, f->min, f->max), out[key]));
                       });
}

bool is_sha256_hex(const std::string& s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

// spec.tenant.apiKey: {name, sha256: [hex digests of the keys], header (default
// authorization)}. Keys themselves never sit in a ConfigMap, only their SHA-256.
bool read_api_key_tenant(YamlReader& r, const YAML::Node& node, nlohmann::json& out) {
    const std::string ctx = "spec.tenant.apiKey";
    bool ok =
        read_fields(r, node, ctx, out,
                    [&](const std::string& key, const YAML::Node& v, const std::string& where) {
                        if (key == "name" || key == "header")
                            return valid_if(take(r.string(v, where), out[key]));
                        if (key != "sha256")
                            return Field::Unknown;
                        std::vector<std::string> digests;
                        if (!take(r.string_list(v, where), digests))
                            return Field::Invalid;
                        bool all_valid = true;
                        for (std::size_t i = 0; i < digests.size(); ++i) {
                            std::string& d = digests[i];
                            std::transform(d.begin(), d.end(), d.begin(),
                                           [](unsigned char c) { return char(std::tolower(c)); });
                            if (!is_sha256_hex(d)) {
                                r.error(v[i], where + "[" + std::to_string(i) +
                                                  "]: not a SHA-256 digest (64 hex digits)");
                                all_valid = false;
                            }
                        }
                        out["sha256"] = digests;
                        return valid_if(all_valid);
                    });
    if (ok &&
        (out.value("name", "").empty() || out.value("sha256", nlohmann::json::array()).empty())) {
        r.error(node, ctx + ": name and at least one sha256 digest are required");
        ok = false;
    }
    if (!out.contains("header"))
        out["header"] = "authorization";
    return ok;
}

// TokenBudget: spec.tenant (one of namespace, principal, header, apiKey), spec.model (optional,
// "*" default), spec.limits with at least one of tokensPerMinute, requestsPerMinute,
// tokensPerDay, maxConcurrent.
void parse_token_budget(YamlReader& r, const ObjectMeta& meta, const YAML::Node& spec,
                        PolicySet& out) {
    if (!r.expect_map(spec, "spec"))
        return;
    bool ok = true;
    nlohmann::json j = nlohmann::json::object();
    for (const auto& kv : spec) {
        const std::string key = kv.first.as<std::string>("");
        const YAML::Node& v = kv.second;
        if (key == "tenant") {
            if (!r.expect_map(v, "spec.tenant")) {
                ok = false;
                continue;
            }
            nlohmann::json t = nlohmann::json::object();
            for (const auto& tkv : v) {
                const std::string tkey = tkv.first.as<std::string>("");
                if (tkey == "apiKey") {
                    ok &= read_api_key_tenant(r, tkv.second, t[tkey]);
                } else if (tkey == "namespace" || tkey == "principal" || tkey == "header") {
                    ok &= take(r.string(tkv.second, "spec.tenant." + tkey), t[tkey]);
                } else {
                    r.unknown_field(tkv.first, "spec.tenant", tkey);
                }
            }
            if (t.size() != 1) {
                r.error(v, "spec.tenant: give exactly one of namespace, principal, header, apiKey");
                ok = false;
            }
            j["tenant"] = t;
        } else if (key == "model") {
            ok &= take(r.string(v, "spec.model"), j["model"]);
        } else if (key == "limits") {
            std::size_t any_limit = 0;
            nlohmann::json l = nlohmann::json::object();
            ok &= read_int_fields(r, v, "spec.limits",
                                  {{"tokensPerMinute", 1, 1'000'000'000'000LL},
                                   {"requestsPerMinute", 1, 1'000'000'000'000LL},
                                   {"tokensPerDay", 1, 1'000'000'000'000LL},
                                   {"maxConcurrent", 1, 1'000'000LL}},
                                  l, &any_limit);
            if (v.IsMap() && any_limit == 0) {
                r.error(v,
                        "spec.limits: set at least one of tokensPerMinute, requestsPerMinute, "
                        "tokensPerDay, maxConcurrent");
                ok = false;
            }
            j["limits"] = l;
        } else {
            r.unknown_field(kv.first, "spec", key);
        }
    }
    if (ok && !j.contains("tenant")) {
        r.error(spec, "spec.tenant is required");
        ok = false;
    }
    if (ok && !j.contains("limits")) {
        r.error(spec, "spec.limits is required");
        ok = false;
    }
    if (!ok)
        return;
    if (!j.contains("model"))
        j["model"] = "*";
    out.token_budgets.push_back({meta, j});
}

// ModelRoute spec.costTier: {maxPromptTokens, maxOutputTokens (optional), model}: requests that
// small go to that model's ModelRoute, with the model rewritten.
bool read_cost_tier(YamlReader& r, const YAML::Node& node, nlohmann::json& out) {
    const std::string ctx = "spec.costTier";
    bool ok =
        read_fields(r, node, ctx, out,
                    [&](const std::string& key, const YAML::Node& v, const std::string& where) {
                        if (key == "model")
                            return valid_if(take(r.string(v, where), out[key]));
                        if (key == "maxPromptTokens" || key == "maxOutputTokens")
                            return valid_if(take(r.integer(v, where, 1, 10'000'000), out[key]));
                        return Field::Unknown;
                    });
    if (ok && (!out.contains("model") || !out.contains("maxPromptTokens"))) {
        r.error(node, ctx + ": model and maxPromptTokens are required");
        ok = false;
    }
    return ok;
}

// ModelRoute spec.loadBalancer: the settings of the pools this route's address and Service
// backends make (docs/policies.md).
bool read_load_balancer(YamlReader& r, const YAML::Node& node, nlohmann::json& out) {
    return read_fields(
        r, node, "spec.loadBalancer", out,
        [&](const std::string& key, const YAML::Node& v, const std::string& where) {
            if (key == "policy") {
                std::string policy;
                if (!take(r.string(v, where), policy))
                    return Field::Invalid;
                out[key] = policy;
                if (policy == "least-request" || policy == "peak-ewma" ||
                    policy == "prefix-affinity")
                    return Field::Valid;
                r.error(v, where + ": '" + policy +
                               "' is not one of least-request, peak-ewma, prefix-affinity");
                return Field::Invalid;
            }
            if (key == "prefixBytes")
                return valid_if(take(r.integer(v, where, 1, 1 << 20), out[key]));
            if (key == "maxRequests")
                return valid_if(take(r.integer(v, where, 1, 1'000'000), out[key]));
            if (key == "outlierDetection")
                return valid_if(read_int_fields(
                    r, v, where, {{"consecutiveFailures", 1, 1000}, {"ejectionSeconds", 1, 3600}},
                    out[key]));
            if (key != "loadMetrics")
                return Field::Unknown;
            nlohmann::json& m = out[key];
            const bool metrics_ok = read_fields(
                r, v, where, m,
                [&](const std::string& mkey, const YAML::Node& mv, const std::string& mwhere) {
                    if (mkey == "intervalMilliseconds")
                        return valid_if(take(r.integer(mv, mwhere, 10, 3'600'000), m[mkey]));
                    if (mkey != "path")
                        return Field::Unknown;
                    std::string path;
                    if (!take(r.string(mv, mwhere), path))
                        return Field::Invalid;
                    m[mkey] = path;
                    if (path.starts_with("/"))
                        return Field::Valid;
                    r.error(mv, mwhere + ": must start with '/'");
                    return Field::Invalid;
                });
            if (!m.contains("path"))
                m["path"] = "/metrics";
            if (!m.contains("intervalMilliseconds"))
                m["intervalMilliseconds"] = 1000;
            return valid_if(metrics_ok);
        });
}

// ModelRoute: spec.model, spec.backends[] {host, port, weight (default 1), model}, optional
// spec.timeoutSeconds (30..300, default 60), spec.fallbacks (model names), spec.costTier,
// spec.retries, spec.loadBalancer.
void parse_model_route(YamlReader& r, const ObjectMeta& meta, const YAML::Node& spec,
                       PolicySet& out) {
    if (!r.expect_map(spec, "spec"))
        return;
    bool ok = true;
    nlohmann::json j = nlohmann::json::object();
    for (const auto& kv : spec) {
        const std::string key = kv.first.as<std::string>("");
        const YAML::Node& v = kv.second;
        if (key == "model") {
            ok &= take(r.string(v, "spec.model"), j["model"]);
        } else if (key == "timeoutSeconds") {
            ok &= take(r.integer(v, "spec.timeoutSeconds", 30, 300), j["timeoutSeconds"]);
        } else if (key == "fallbacks") {
            ok &= take(r.string_list(v, "spec.fallbacks"), j["fallbacks"]);
        } else if (key == "costTier") {
            ok &= read_cost_tier(r, v, j["costTier"]);
        } else if (key == "loadBalancer") {
            ok &= read_load_balancer(r, v, j["loadBalancer"]);
        } else if (key == "retries") {
            ok &= read_int_fields(r, v, "spec.retries",
                                  {{"attempts", 0, 10},
                                   {"budgetPercent", 0, 100},
                                   {"minRetries", 0, 1000},
                                   {"backoffMilliseconds", 1, 10'000}},
                                  j["retries"]);
        } else if (key == "backends") {
            if (!r.expect_sequence(v, "spec.backends") || v.size() == 0) {
                if (v.IsSequence())
                    r.error(v, "spec.backends: at least one backend is required");
                ok = false;
                continue;
            }
            nlohmann::json backends = nlohmann::json::array();
            for (std::size_t i = 0; i < v.size(); ++i) {
                const std::string ctx = "spec.backends[" + std::to_string(i) + "]";
                const YAML::Node b = v[i];
                if (!r.expect_map(b, ctx)) {
                    ok = false;
                    continue;
                }
                nlohmann::json be = {{"weight", 1}};
                for (const auto& bkv : b) {
                    const std::string bkey = bkv.first.as<std::string>("");
                    if (bkey == "host" || bkey == "model") {
                        ok &= take(r.string(bkv.second, ctx + "." + bkey), be[bkey]);
                    } else if (bkey == "port") {
                        ok &= take(r.port(bkv.second, ctx + ".port"), be["port"]);
                    } else if (bkey == "weight") {
                        ok &= take(r.integer(bkv.second, ctx + ".weight", 0, 1000), be["weight"]);
                    } else {
                        r.unknown_field(bkv.first, ctx, bkey);
                    }
                }
                if (!be.contains("host") || !be.contains("port")) {
                    r.error(b, ctx + ": host and port are required");
                    ok = false;
                }
                backends.push_back(be);
            }
            j["backends"] = backends;
        } else {
            r.unknown_field(kv.first, "spec", key);
        }
    }
    if (ok && (!j.contains("model") || !j.contains("backends"))) {
        r.error(spec, "spec.model and spec.backends are required");
        ok = false;
    }
    if (!ok)
        return;
    if (!j.contains("timeoutSeconds"))
        j["timeoutSeconds"] = 60;
    out.model_routes.push_back({meta, j});
}

struct KindInfo {
    const char* kind;
    std::vector<const char*> api_versions;
    bool namespaced;
    void (*parse)(YamlReader&, const ObjectMeta&, const YAML::Node&, PolicySet&);
};

const std::vector<KindInfo>& kinds() {
    static const std::vector<KindInfo> k = {
        {"AuthorizationPolicy",
         {kIstioSecurityV1, kIstioSecurityV1beta1},
         true,
         parse_authorization},
        {"PeerAuthentication",
         {kIstioSecurityV1, kIstioSecurityV1beta1},
         true,
         parse_peer_authentication},
        {"IsolationBoundary", {kSluiceV1alpha1}, false, parse_boundary},
        {"TokenBudget", {kSluiceV1alpha1}, true, parse_token_budget},
        {"ModelRoute", {kSluiceV1alpha1}, true, parse_model_route},
    };
    return k;
}

void parse_document(const SourceDocument& doc, PolicySet& out,
                    std::vector<Diagnostic>& diagnostics) {
    YamlReader r(doc.file, diagnostics);
    const YAML::Node& n = doc.node;
    if (!r.expect_map(n, "document"))
        return;
    auto api_version = r.required_string(n, "apiVersion", "document");
    auto kind = r.required_string(n, "kind", "document");
    if (!api_version || !kind)
        return;
    const KindInfo* info = nullptr;
    for (const auto& k : kinds()) {
        if (*kind == k.kind)
            info = &k;
    }
    if (!info) {
        r.warning(n["kind"], "unknown kind '" + *kind + "' (apiVersion " + *api_version +
                                 "): document ignored");
        return;
    }
    if (std::none_of(info->api_versions.begin(), info->api_versions.end(),
                     [&](const char* v) { return *api_version == v; })) {
        std::string expected;
        for (const char* v : info->api_versions)
            expected += (expected.empty() ? "" : ", ") + std::string(v);
        r.error(n["apiVersion"], "apiVersion '" + *api_version + "' is not supported for " + *kind +
                                     " (use " + expected + ")");
        return;
    }
    // Every kind this parser reads decides what is allowed or spent: a misspelled `spec` or
    // `metadata.namespace` would silently apply another policy (an allow-nothing, a mode
    // UNSET, the `default` namespace). Kubernetes' own metadata fields pass.
    static const std::set<std::string> kMetadataFields = {"name",
                                                          "namespace",
                                                          "labels",
                                                          "annotations",
                                                          "uid",
                                                          "resourceVersion",
                                                          "generation",
                                                          "creationTimestamp",
                                                          "generateName",
                                                          "deletionTimestamp",
                                                          "managedFields",
                                                          "ownerReferences",
                                                          "finalizers",
                                                          "selfLink",
                                                          "deletionGracePeriodSeconds"};
    for (const auto& kv : n) {
        const std::string key = kv.first.as<std::string>("");
        if (key != "apiVersion" && key != "kind" && key != "metadata" && key != "spec" &&
            key != "status")
            r.unknown_security_field(kv.first, "the document", key);
    }
    const YAML::Node metadata = n["metadata"];
    if (!metadata) {
        r.error(n, *kind + ": metadata is required");
        return;
    }
    if (!r.expect_map(metadata, "metadata"))
        return;
    for (const auto& kv : metadata) {
        const std::string key = kv.first.as<std::string>("");
        if (!kMetadataFields.contains(key))
            r.unknown_security_field(kv.first, "metadata", key);
    }
    ObjectMeta meta;
    meta.kind = *kind;
    meta.where = r.position(n);
    auto name = r.required_string(metadata, "name", "metadata");
    if (!name)
        return;
    meta.name = *name;
    if (!is_dns_label(meta.name, 253)) {
        r.error(metadata["name"], "metadata.name '" + meta.name +
                                      "' is not a valid name (lowercase letters, digits, '-', "
                                      "'.'; at most 253)");
        return;
    }
    if (const YAML::Node ns = metadata["namespace"]; ns) {
        auto s = r.string(ns, "metadata.namespace");
        if (!s)
            return;
        if (!info->namespaced) {
            r.warning(ns, *kind + " is cluster-scoped: metadata.namespace ignored");
        } else if (!is_dns_label(*s, 63)) {
            r.error(ns, "metadata.namespace '" + *s + "' is not a valid namespace name");
            return;
        } else {
            meta.namespace_name = *s;
        }
    } else if (info->namespaced) {
        meta.namespace_name = "default";
    }
    const YAML::Node spec = n["spec"];
    r.set_strict(*api_version == kSluiceV1alpha1);  // the spec of one of sluice's own kinds
    info->parse(r, meta, spec, out);
}

}  // namespace

nlohmann::json yaml_to_json(const YAML::Node& node, int depth) {
    if (!node || node.IsNull() || depth > kMaxNestingDepth)
        return nullptr;
    if (node.IsScalar()) {
        const std::string& s = node.Scalar();
        if (node.Tag() == "!" || node.Tag() == "tag:yaml.org,2002:str")
            return s;  // quoted: always a string
        if (s == "true")
            return true;
        if (s == "false")
            return false;
        long long v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc() && p == s.data() + s.size() && !s.empty())
            return v;
        return s;
    }
    if (node.IsSequence()) {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& item : node)
            a.push_back(yaml_to_json(item, depth + 1));
        return a;
    }
    nlohmann::json o = nlohmann::json::object();
    for (const auto& kv : node) {
        if (!kv.first.IsScalar())
            continue;
        o[kv.first.Scalar()] = yaml_to_json(kv.second, depth + 1);
    }
    return o;
}

PolicySet parse_policies(const std::vector<SourceDocument>& documents,
                         std::vector<Diagnostic>& diagnostics) {
    PolicySet out;
    for (const auto& doc : documents) {
        try {
            parse_document(doc, out, diagnostics);
        } catch (const YAML::Exception& e) {
            // Defensive: yaml-cpp conversions we did not guard. Never let input crash a reload.
            diagnostics.push_back(yaml_error(doc.file, e, "malformed document"));
        }
    }
    return out;
}

PolicySet parse_policy_files(const std::vector<SourceFile>& files,
                             std::vector<Diagnostic>& diagnostics) {
    std::vector<SourceDocument> docs;
    for (const auto& f : files) {
        auto d = parse_yaml(f, diagnostics);
        docs.insert(docs.end(), d.begin(), d.end());
    }
    return parse_policies(docs, diagnostics);
}

}  // namespace sluice::policies
