#include "agent/config.h"

#include "agent/datapath/address.h"

namespace sluice::agent {

std::vector<std::string> AgentConfig::validate() const {
    std::vector<std::string> problems = datapath.validate();
    if (node_name.empty())
        problems.push_back("--node-name (SLUICE_NODE_NAME) is required");
    if (run_dir.empty())
        problems.push_back("--run-dir must not be empty");
    if (ztunnel_timeout.count() <= 0)
        problems.push_back("--ztunnel-timeout-ms must be positive");
    for (const auto& c : excluded_cidrs) {
        if (!datapath::parse_cidr(c))
            problems.push_back("--exclude-cidr '" + c + "' is not a CIDR");
    }
    if (cni_socket().size() >= 108)
        problems.push_back("--run-dir is too long for a unix socket path");
    return problems;
}

}  // namespace sluice::agent
