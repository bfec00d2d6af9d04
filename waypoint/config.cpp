#include "waypoint/config.h"

#include <yaml-cpp/yaml.h>

#include "ztunnel/identity/spiffe.h"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

namespace sluice::waypoint {

namespace {

void parseWaypoint(const YAML::Node& spec, Config& c) {
    c.listen = spec["listen"].as<std::string>(c.listen);
    c.metrics_listen = spec["metricsListen"].as<std::string>(c.metrics_listen);
    c.ready_listen = spec["readyListen"].as<std::string>(c.ready_listen);
    c.workers = spec["workers"].as<unsigned>(c.workers);
    c.busy_poll =
        std::chrono::microseconds(spec["busyPollMicros"].as<std::int64_t>(c.busy_poll.count()));
    c.hbone_listen = spec["hboneListen"].as<std::string>(c.hbone_listen);
    c.identity = spec["identity"].as<std::string>(c.identity);
    c.ca_cert = spec["caCert"].as<std::string>(c.ca_cert);
    c.ca_key = spec["caKey"].as<std::string>(c.ca_key);
    if (const auto& t = spec["tls"]) {
        c.tls.listen = t["listen"].as<std::string>(c.tls.listen);
        c.tls.certificate_file = t["certificateFile"].as<std::string>(c.tls.certificate_file);
        c.tls.private_key_file = t["privateKeyFile"].as<std::string>(c.tls.private_key_file);
        c.tls.reload_interval = parseDuration(t["reloadInterval"], c.tls.reload_interval);
        c.tls.client_ca_file = t["clientCaFile"].as<std::string>(c.tls.client_ca_file);
        c.tls.require_client_certificate =
            t["requireClientCertificate"].as<bool>(c.tls.require_client_certificate);
        if (const auto& tds = t["clientTrustDomains"]) {
            // A scalar here would otherwise read as no list at all: every trust domain taken.
            if (!tds.IsSequence())
                throw std::runtime_error("tls.clientTrustDomains must be a list of trust domains");
            for (const auto& td : tds)
                c.tls.client_trust_domains.push_back(td.as<std::string>());
        }
    }
    c.tokenizer_dir = spec["tokenizerDir"].as<std::string>(c.tokenizer_dir);
    c.log_level = spec["logLevel"].as<std::string>(c.log_level);
    c.policies_dir = spec["policiesDir"].as<std::string>(c.policies_dir);
    c.registry_dir = spec["registryDir"].as<std::string>(c.registry_dir);
    c.access_log = spec["accessLog"].as<bool>(c.access_log);
    if (const auto& l = spec["limits"]) {
        c.limits.max_header_bytes = l["maxHeaderBytes"].as<std::size_t>(c.limits.max_header_bytes);
        c.limits.max_body_bytes = l["maxBodyBytes"].as<std::size_t>(c.limits.max_body_bytes);
        c.limits.request_timeout = parseDuration(l["requestTimeout"], c.limits.request_timeout);
        c.limits.idle_timeout = parseDuration(l["idleTimeout"], c.limits.idle_timeout);
        c.limits.max_connection_body_bytes =
            l["maxConnectionBodyBytes"].as<std::size_t>(c.limits.max_connection_body_bytes);
        c.limits.drain_timeout = parseDuration(l["drainTimeout"], c.limits.drain_timeout);
        c.upstream.connect_timeout = parseDuration(l["connectTimeout"], c.upstream.connect_timeout);
        c.upstream.idle_timeout = parseDuration(l["upstreamIdleTimeout"], c.upstream.idle_timeout);
    }
    c.usage = usage::parseUsageConfig(spec["usage"]);
    c.embeddings_cache = cache::parseEmbeddingsCacheConfig(spec["embeddingsCache"]);
    c.admission = admission::parseAdmissionConfig(spec["admission"]);
    for (const auto& pool : spec["pools"])
        c.pools.push_back(parsePoolConfig(pool));
}

// The fields --config knows, map by map, so that a misspelled one is refused with where it is
// written: ignored, `maxBodyByte` would leave the default limit in force without a word.
struct Shape {
    enum class Kind { Any, Map, List } kind = Kind::Any;
    std::vector<std::pair<std::string_view, const Shape*>> fields;  // Map
    const Shape* item = nullptr;                                    // List
};

const Shape kAny;
const Shape kAnyList{Shape::Kind::List, {}, &kAny};
Shape map(std::vector<std::pair<std::string_view, const Shape*>> fields) {
    return {Shape::Kind::Map, std::move(fields), nullptr};
}
Shape scalars(std::initializer_list<std::string_view> names) {
    Shape s{Shape::Kind::Map, {}, nullptr};
    for (auto n : names)
        s.fields.emplace_back(n, &kAny);
    return s;
}
Shape listOf(const Shape& item) {
    return {Shape::Kind::List, {}, &item};
}

const Shape& waypointShape() {
    static const Shape tls = map({{"listen", &kAny},
                                  {"certificateFile", &kAny},
                                  {"privateKeyFile", &kAny},
                                  {"reloadInterval", &kAny},
                                  {"clientCaFile", &kAny},
                                  {"requireClientCertificate", &kAny},
                                  {"clientTrustDomains", &kAnyList}});
    static const Shape limits = scalars({"maxHeaderBytes", "maxBodyBytes", "requestTimeout",
                                         "idleTimeout", "maxConnectionBodyBytes", "drainTimeout",
                                         "connectTimeout", "upstreamIdleTimeout"});
    static const Shape usage = scalars({"defaultEncoding", "defaultMaxTokens"});
    static const Shape cache = scalars({"enabled", "maxBytes", "ttl"});
    static const Shape queue_timeout = scalars({"critical", "standard", "sheddable"});
    static const Shape priority_from = scalars({"header"});
    static const Shape admission = map({{"maxConcurrent", &kAny},
                                        {"maxQueued", &kAny},
                                        {"queueTimeout", &queue_timeout},
                                        {"priorityFrom", &priority_from},
                                        {"defaultClass", &kAny},
                                        {"tenantClasses", &kAny}});
    static const Shape breaker = scalars({"maxRequests"});
    static const Shape outlier = scalars({"consecutiveFailures", "ejectionTime"});
    static const Shape load = scalars({"path", "interval"});
    static const Shape pool = map({{"name", &kAny},
                                   {"loadBalancer", &kAny},
                                   {"endpoints", &kAnyList},
                                   {"prefixBytes", &kAny},
                                   {"circuitBreaker", &breaker},
                                   {"outlierDetection", &outlier},
                                   {"loadMetrics", &load}});
    static const Shape pools = listOf(pool);
    static const Shape spec =
        map({{"listen", &kAny},         {"metricsListen", &kAny},  {"readyListen", &kAny},
             {"workers", &kAny},        {"busyPollMicros", &kAny}, {"hboneListen", &kAny},
             {"identity", &kAny},       {"caCert", &kAny},         {"caKey", &kAny},
             {"tokenizerDir", &kAny},   {"logLevel", &kAny},       {"policiesDir", &kAny},
             {"registryDir", &kAny},    {"accessLog", &kAny},      {"tls", &tls},
             {"limits", &limits},       {"usage", &usage},         {"embeddingsCache", &cache},
             {"admission", &admission}, {"pools", &pools}});
    return spec;
}

const Shape& tokenBudgetShape() {
    static const Shape api_key = scalars({"header"});
    static const Shape source =
        map({{"header", &kAny}, {"apiKey", &api_key}, {"spiffe", &kAny}, {"namespace", &kAny}});
    static const Shape sources = listOf(source);
    static const Shape limit = scalars({"tenant", "model", "tokensPerMinute", "requestsPerMinute",
                                        "tokensPerDay", "maxConcurrent"});
    static const Shape limits = listOf(limit);
    static const Shape spec = map({{"tenantFrom", &sources},
                                   {"apiKeys", &kAny},
                                   {"defaultTenant", &kAny},
                                   {"defaultMaxTokens", &kAny},
                                   {"limits", &limits}});
    return spec;
}

const Shape& modelRouteShape() {
    static const Shape target = scalars({"pool", "model", "weight"});
    static const Shape targets = listOf(target);
    static const Shape tier =
        scalars({"maxPromptTokens", "maxOutputTokens", "pool", "model", "weight"});
    static const Shape retries = scalars({"attempts", "budgetPercent", "minRetries", "backoff"});
    static const Shape spec = map({{"models", &kAnyList},
                                   {"backends", &targets},
                                   {"fallbacks", &targets},
                                   {"costTier", &tier},
                                   {"timeout", &kAny},
                                   {"retries", &retries}});
    return spec;
}

// Each field of `node` that `shape` does not know, as "line:column: unknown field …".
void unknownFields(const YAML::Node& node, const Shape& shape, const std::string& ctx,
                   std::vector<std::string>& out) {
    if (shape.kind == Shape::Kind::List && node.IsSequence()) {
        for (std::size_t i = 0; i < node.size(); ++i)
            unknownFields(node[i], *shape.item, ctx + "[" + std::to_string(i) + "]", out);
        return;
    }
    if (shape.kind != Shape::Kind::Map || !node.IsMap())
        return;  // a wrong type is the field's parser's to report
    for (const auto& kv : node) {
        const std::string key = kv.first.as<std::string>("");
        auto known = std::find_if(shape.fields.begin(), shape.fields.end(),
                                  [&](const auto& f) { return f.first == key; });
        if (known == shape.fields.end()) {
            const YAML::Mark mark = kv.first.Mark();
            out.push_back(std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) +
                          ": unknown field '" + key + "' in " + ctx);
            continue;
        }
        unknownFields(kv.second, *known->second, ctx + "." + key, out);
    }
}

}  // namespace

UnknownFields::UnknownFields(std::vector<std::string> where_what)
    : std::invalid_argument([&] {
          std::string all;
          for (const auto& w : where_what)
              all += (all.empty() ? "" : "; ") + w;
          return all;
      }()),
      fields(std::move(where_what)) {}

Config parseConfig(const std::string& yaml_text) {
    Config config;
    const std::vector<YAML::Node> docs = YAML::LoadAll(yaml_text);
    std::vector<std::string> unknown;
    for (const auto& doc : docs) {
        if (!doc || !doc.IsMap())
            continue;
        const auto kind = doc["kind"].as<std::string>("");
        const Shape* shape = kind == "Waypoint"      ? &waypointShape()
                             : kind == "TokenBudget" ? &tokenBudgetShape()
                             : kind == "ModelRoute"  ? &modelRouteShape()
                                                     : nullptr;
        if (shape) {
            // `spec` is checked next, by kind.
            static const Shape document = scalars({"apiVersion", "kind", "metadata", "spec"});
            unknownFields(doc, document, kind, unknown);
            unknownFields(doc["spec"], *shape, kind + " spec", unknown);
        }
    }
    if (!unknown.empty())
        throw UnknownFields(std::move(unknown));
    for (const auto& doc : docs) {
        if (!doc || doc.IsNull())
            continue;
        const auto kind = doc["kind"].as<std::string>("");
        const auto name = doc["metadata"] ? doc["metadata"]["name"].as<std::string>("") : "";
        const auto& spec = doc["spec"];
        if (kind == "Waypoint") {
            parseWaypoint(spec, config);
        } else if (kind == "TokenBudget") {
            config.budgets.push_back(budget::parseTokenBudget(name, spec));
        } else if (kind == "ModelRoute") {
            config.routes.push_back(route::parseModelRoute(name, spec));
        } else {
            // Other kinds (AuthorizationPolicy, …) belong to other components' views of the
            // same policy folder.
            continue;
        }
    }
    return config;
}

Config loadConfig(const std::string& path) {
    std::ifstream in(path);
    if (!in)
        throw std::runtime_error(path + ": cannot open");
    std::stringstream text;
    text << in.rdbuf();
    try {
        return parseConfig(text.str());
    } catch (const UnknownFields& e) {
        std::string all;
        for (const auto& f : e.fields)
            all += (all.empty() ? "" : "\n") + path + ":" + f;
        throw std::runtime_error(all);
    } catch (const YAML::Exception& e) {
        throw std::runtime_error(path + ":" + std::to_string(e.mark.line + 1) + ":" +
                                 std::to_string(e.mark.column + 1) + ": " + e.msg);
    } catch (const std::exception& e) {
        throw std::runtime_error(path + ": " + e.what());
    }
}

std::vector<std::string> Config::validate() const {
    std::vector<std::string> problems;
    if (workers == 0 || workers > 64)
        problems.push_back("workers must be 1..64");
    if (busy_poll.count() < 0 || busy_poll > std::chrono::milliseconds(10))
        problems.push_back("busyPollMicros must be 0..10000");
    if (!identity.empty()) {
        if (auto id = ztunnel::identity::Identity::parse(identity); !id)
            problems.push_back("identity: " + id.error());
        if (ca_cert.empty() || ca_key.empty())
            problems.push_back("identity needs caCert and caKey (the signing CA)");
    } else if (!hbone_listen.empty()) {
        problems.push_back("hboneListen needs an identity (the waypoint's SPIFFE id)");
    }
    if (!tls.listen.empty() && (tls.certificate_file.empty() || tls.private_key_file.empty()))
        problems.push_back("tls.listen needs tls.certificateFile and tls.privateKeyFile");
    if (tls.listen.empty() && (!tls.certificate_file.empty() || !tls.private_key_file.empty() ||
                               !tls.client_ca_file.empty()))
        problems.push_back("tls.certificateFile/privateKeyFile/clientCaFile need tls.listen");
    if (!tls.client_trust_domains.empty() && tls.client_ca_file.empty())
        problems.push_back("tls.clientTrustDomains needs tls.clientCaFile");
    if (tls.reload_interval < std::chrono::milliseconds(100))
        problems.push_back("tls.reloadInterval must be at least 100ms");
    if (budgets.size() > 1)
        problems.push_back("only one TokenBudget document is supported");
    std::set<std::string> pool_names;
    for (const auto& p : pools) {
        if (!pool_names.insert(p.name).second)
            problems.push_back("duplicate pool " + p.name);
    }
    auto check_target = [&](const std::string& route, const route::TargetConfig& t) {
        if (!pool_names.count(t.pool)) {
            problems.push_back("ModelRoute " + route + ": unknown pool " + t.pool);
        }
    };
    for (const auto& r : routes) {
        for (const auto& t : r.backends)
            check_target(r.name, t);
        for (const auto& t : r.fallbacks)
            check_target(r.name, t);
        if (r.cost_tier) {
            for (const auto& t : r.cost_tier->targets)
                check_target(r.name, t);
        }
    }
    if (admission.enabled() && admission.max_queued == 0)
        problems.push_back("admission: maxQueued must be at least 1 (0 would shed every wait)");
    if (routes.empty() && policies_dir.empty())
        problems.push_back("no ModelRoute: nothing to route to");
    return problems;
}

}  // namespace sluice::waypoint
