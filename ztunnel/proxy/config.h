#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace sluice::ztunnel::proxy {

enum class Mode {
    Node,     // one per node; pods arrive over the agent's ZDS socket with their netns
    Sidecar,  // inside one pod's netns, serving only that pod (iptables REDIRECT capture)
};

inline constexpr int kDefaultWorkers = 2;
inline constexpr const char* kDefaultRunDir = "/var/run/sluice";
inline constexpr const char* kDefaultAdminAddress = "127.0.0.1:15000";
inline constexpr const char* kDefaultMetricsAddress = "0.0.0.0:15020";
inline constexpr const char* kDefaultReadinessAddress = "0.0.0.0:15021";
inline constexpr uint16_t kDefaultOutboundPort = 15001;
inline constexpr uint16_t kDefaultInboundPlaintextPort = 15006;
inline constexpr uint16_t kDefaultHbonePort = 15008;
inline constexpr std::chrono::seconds kDefaultDrainTimeout{30};
inline constexpr std::chrono::microseconds kMaxBusyPoll{10'000};
// The environment variable behind each flag: SLUICE_ + upper-case flag name, '-' → '_'.
inline constexpr const char* kEnvPrefix = "SLUICE_";

// sluice-ztunnel's whole configuration; every field is a flag (and SLUICE_* variable).
struct Config {
    Mode mode = Mode::Node;
    int workers = kDefaultWorkers;  // data-path threads, each with its own io_context
    // A worker that ran out of events keeps polling this long before it sleeps (0 = off); see
    // docs/ztunnel.md "Busy polling".
    std::chrono::microseconds busy_poll{0};
    std::string node_name;   // Kubernetes node name (for logs and config_dump)
    std::string zds_socket;  // node mode: the agent's SEQPACKET socket

    // Sidecar mode: the one workload this ztunnel serves (it runs in that pod's netns).
    std::string workload_name, workload_namespace, workload_uid;
    std::string service_account = "default";
    std::vector<std::string> workload_ips;

    std::string registry_dir;              // Pod/Service/EndpointSlice YAML (DESIGN.md §5)
    std::string policies_dir;              // AuthorizationPolicy/PeerAuthentication YAML
    std::string mtls_mode = "PERMISSIVE";  // default PeerAuthentication when no policy says

    std::string ca_cert, ca_key;             // signing CA (files; a Secret in a cluster)
    std::vector<std::string> trust_bundles;  // extra roots (CA rotation), PEM files
    std::string trust_domain = "cluster.local";
    std::chrono::seconds cert_lifetime{24 * 3600};

    std::string admin_address = kDefaultAdminAddress;
    std::string metrics_address = kDefaultMetricsAddress;
    std::string readiness_address = kDefaultReadinessAddress;
    uint16_t outbound_port = kDefaultOutboundPort;
    uint16_t inbound_plaintext_port = kDefaultInboundPlaintextPort;
    uint16_t hbone_port = kDefaultHbonePort;

    std::chrono::seconds pool_idle_timeout{300};
    std::chrono::seconds drain_timeout = kDefaultDrainTimeout;
    // Inbound connections to the app keep the client's address (IP_TRANSPARENT); needs the
    // pod's routing rules (the testbed's sidecar mode installs them).
    bool transparent_inbound = false;
    // Node mode: a connection between two pods enrolled on this node skips HBONE (TLS, HTTP/2 and
    // a TCP hop through the pod netns): ztunnel hands it from its outbound side to its inbound
    // side in memory, with the same authorization, metrics and access log (docs/ztunnel.md).
    bool same_node_fast_path = true;
    std::string access_log = "-";  // "-" = stdout, else a file
    std::string log_level = "info";

    // Every problem at once, empty when the config is usable.
    std::vector<std::string> validate() const;
};

// "ip:port" → parts; false when malformed.
bool split_host_port(const std::string& s, std::string& host, uint16_t& port);

}  // namespace sluice::ztunnel::proxy
