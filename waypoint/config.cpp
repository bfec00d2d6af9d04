#include "waypoint/config.h"

#include <yaml-cpp/yaml.h>

#include "ztunnel/identity/spiffe.h"

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

}  // namespace

Config parseConfig(const std::string& yaml_text) {
    Config config;
    for (const auto& doc : YAML::LoadAll(yaml_text)) {
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
