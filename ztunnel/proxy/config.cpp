#include "ztunnel/proxy/config.h"

#include <charconv>

namespace sluice::ztunnel::proxy {

bool split_host_port(const std::string& s, std::string& host, uint16_t& port) {
    const auto colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0)
        return false;
    host = s.substr(0, colon);
    if (host.size() > 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    const char* b = s.data() + colon + 1;
    const char* e = s.data() + s.size();
    auto [ptr, ec] = std::from_chars(b, e, port);
    return ec == std::errc() && ptr == e && b != e;
}

std::vector<std::string> Config::validate() const {
    std::vector<std::string> problems;
    if (workers < 1 || workers > 64)
        problems.push_back("--workers must be 1..64");
    if (busy_poll.count() < 0 || busy_poll > kMaxBusyPoll)
        problems.push_back("--busy-poll-us must be 0..10000");
    if (mode == Mode::Node && zds_socket.empty())
        problems.push_back("node mode needs --zds-socket (the agent's <run>/ztunnel.sock)");
    if (mode == Mode::Sidecar) {
        if (workload_name.empty() || workload_namespace.empty())
            problems.push_back("sidecar mode needs --workload-name and --workload-namespace");
        if (workload_ips.empty())
            problems.push_back("sidecar mode needs --workload-ip");
    }
    if (ca_cert.empty() || ca_key.empty())
        problems.push_back("--ca-cert and --ca-key are required (the signing CA)");
    if (trust_domain.empty())
        problems.push_back("--trust-domain must not be empty");
    if (cert_lifetime < std::chrono::seconds(2))
        problems.push_back("--cert-lifetime must be at least 2 s");
    if (mtls_mode != "STRICT" && mtls_mode != "PERMISSIVE")
        problems.push_back("--mtls-mode must be STRICT or PERMISSIVE");
    std::string host;
    uint16_t port = 0;
    for (const auto& [flag, value] : {std::pair{"--admin-address", admin_address},
                                      std::pair{"--metrics-address", metrics_address},
                                      std::pair{"--readiness-address", readiness_address}}) {
        if (!value.empty() && !split_host_port(value, host, port))
            problems.push_back(std::string(flag) + " must be ip:port, got '" + value + "'");
    }
    return problems;
}

}  // namespace sluice::ztunnel::proxy
