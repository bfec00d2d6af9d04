#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "waypoint/admission/config.h"
#include "waypoint/filters/budget/config.h"
#include "waypoint/filters/cache/config.h"
#include "waypoint/filters/route/config.h"
#include "waypoint/filters/usage/config.h"
#include "waypoint/http/server.h"
#include "waypoint/http/tls_server.h"
#include "waypoint/http/upstream.h"
#include "waypoint/lb/config.h"

namespace sluice::waypoint {

inline constexpr const char* kDefaultListen = "0.0.0.0:8080";
inline constexpr const char* kDefaultMetricsListen = "0.0.0.0:15020";
inline constexpr const char* kDefaultReadyListen = "0.0.0.0:15021";
// The HBONE listener's address when an identity is configured and no address is given: every
// address, dual-stack; 0.0.0.0:15008 where the namespace has no IPv6.
inline constexpr const char* kDefaultHboneListen = "[::]:15008";
inline constexpr const char* kConfigEnv = "SLUICE_WAYPOINT_CONFIG";
inline constexpr const char* kListenEnv = "SLUICE_WAYPOINT_LISTEN";
inline constexpr const char* kPoliciesDirEnv = "SLUICE_WAYPOINT_POLICIES_DIR";

// Everything sluice-waypoint runs with. The --config file is multi-document YAML: one
// `sluice.dev/v1alpha1 Waypoint` document (listeners, limits, pools) plus TokenBudget and
// ModelRoute documents (docs/waypoint.md). Flags override the listeners.
struct Config {
    std::string listen = kDefaultListen;                 // plain HTTP gateway listener
    std::string metrics_listen = kDefaultMetricsListen;  // GET /metrics
    std::string ready_listen = kDefaultReadyListen;      // GET /healthz/ready
    // HBONE (:15008, as an Istio waypoint behind ztunnel): on when `identity` is set. "" with an
    // identity = kDefaultHboneListen.
    std::string hbone_listen;
    std::string identity;         // spiffe://<td>/ns/<ns>/sa/<sa>: the waypoint's own identity
    std::string ca_cert, ca_key;  // signing CA (PEM files): mints our certificate, trust bundle
    GatewayTlsConfig tls;         // the TLS gateway listener (off without tls.listen)
    unsigned workers = 1;         // threads, each with its own listener (SO_REUSEPORT)
    // A worker that ran out of events keeps polling this long before it sleeps: trades CPU
    // for latency where waking a sleeping CPU is slow (VMs). 0 = off (docs/waypoint.md,
    // "Latency").
    std::chrono::microseconds busy_poll{0};
    ServerLimits limits;            // client side: sizes and timeouts
    UpstreamPool::Limits upstream;  // backend side: connect/idle timeouts, idle pool size
    std::string tokenizer_dir;      // rank files; "" = $SLUICE_TOKENIZER_DIR or the build's
    std::string log_level = "info";
    // The policies folder (ConfigMap mount): its TokenBudget and ModelRoute documents are
    // merged into these (waypoint/policy_view.h) and hot-reloaded. "" = none.
    std::string policies_dir;
    std::string registry_dir;  // registry documents the policy compiler reads; "" = none
    bool access_log = true;    // one JSON line per request on stderr
    usage::UsageConfig usage;
    cache::EmbeddingsCacheConfig embeddings_cache;
    admission::AdmissionConfig admission;  // priority classes under saturation
    std::vector<PoolConfig> pools;
    std::vector<route::ModelRouteConfig> routes;
    std::vector<budget::TokenBudgetConfig> budgets;  // at most one

    // Every problem at once; empty when the config can run.
    std::vector<std::string> validate() const;
};

// Parses a config file (throws std::runtime_error with file and problem on a parse error).
// Fields of Waypoint, TokenBudget and ModelRoute documents that --config does not know, each
// as "line:column: unknown field 'name' in <where>".
struct UnknownFields : std::invalid_argument {
    explicit UnknownFields(std::vector<std::string> where_what);
    std::vector<std::string> fields;
};

// Throws UnknownFields (parseConfig; loadConfig as a runtime_error whose lines start with
// `path:`) for a field it does not know, and on any other error of the file.
Config loadConfig(const std::string& path);
Config parseConfig(const std::string& yaml_text);

}  // namespace sluice::waypoint
