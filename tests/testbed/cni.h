#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace sluice::testbed {

// A CNI plugin's error: its error JSON (spec 1.0.0 "Error" object) or why it could not run.
class CniError : public std::runtime_error {
  public:
    CniError(const std::string& what, int code = 0) : std::runtime_error(what), code(code) {}
    int code;  // the plugin's error code; 0 when the plugin did not return one
};

// What a container runtime knows about one attachment (spec 1.0.0, section "Parameters").
struct CniAttachment {
    std::string container_id;
    std::string netns_path;                                 // CNI_NETNS
    std::string ifname = "eth0";                            // CNI_IFNAME
    std::vector<std::pair<std::string, std::string>> args;  // CNI_ARGS, in order
};

// Invokes CNI plugin binaries exactly as a container runtime (containerd via libcni) does:
// environment variables, the network configuration on stdin, and for a plugin list each plugin
// receives the list's name and cniVersion plus the previous plugin's result as `prevResult`.
// DEL runs the list in reverse with the cached ADD result; CHECK runs forward with it.
class CniRuntime {
  public:
    // `cni_path`: directories searched for plugin binaries (CNI_PATH). `host_netns`: the
    // runtime's own network namespace (the simulated node), in which the plugins run; empty
    // runs them in ours.
    CniRuntime(std::vector<std::string> cni_path, std::string host_netns);

    nlohmann::json add(const nlohmann::json& conflist, const CniAttachment& a) const;
    void del(const nlohmann::json& conflist, const CniAttachment& a,
             const std::optional<nlohmann::json>& cached_result) const;
    void check(const nlohmann::json& conflist, const CniAttachment& a,
               const nlohmann::json& cached_result) const;

    // Builds the stdin of one plugin invocation within a list.
    static nlohmann::json plugin_config(const nlohmann::json& conflist,
                                        const nlohmann::json& plugin,
                                        const std::optional<nlohmann::json>& prev_result);
    static std::string cni_args(const CniAttachment& a);

    // Where the plugin binary of `type` is, or a CniError naming the searched directories.
    std::string find_plugin(const std::string& type) const;

  private:
    std::optional<nlohmann::json> exec(const std::string& command, const nlohmann::json& conf,
                                       const CniAttachment& a) const;

    std::vector<std::string> cni_path_;
    std::string host_netns_;
};

}  // namespace sluice::testbed
