#include "tests/testbed/cni.h"

#include <unistd.h>

#include <spdlog/spdlog.h>

#include "common/process.h"

namespace sluice::testbed {

using nlohmann::json;

CniRuntime::CniRuntime(std::vector<std::string> cni_path, std::string host_netns)
    : cni_path_(std::move(cni_path)), host_netns_(std::move(host_netns)) {}

std::string CniRuntime::cni_args(const CniAttachment& a) {
    std::string s;
    for (const auto& [k, v] : a.args) {
        if (!s.empty())
            s += ';';
        s += k + "=" + v;
    }
    return s;
}

json CniRuntime::plugin_config(const json& conflist, const json& plugin,
                               const std::optional<json>& prev_result) {
    json conf = plugin;
    conf["cniVersion"] = conflist.at("cniVersion");
    conf["name"] = conflist.at("name");
    if (prev_result)
        conf["prevResult"] = *prev_result;
    return conf;
}

std::string CniRuntime::find_plugin(const std::string& type) const {
    std::string searched;
    for (const auto& dir : cni_path_) {
        std::string candidate = dir + "/" + type;
        if (::access(candidate.c_str(), X_OK) == 0)
            return candidate;
        searched += (searched.empty() ? "" : ":") + dir;
    }
    throw CniError("CNI plugin '" + type + "' not found in CNI_PATH=" + searched +
                   " (install containernetworking-plugins: scripts/install-deps.sh)");
}

std::optional<json> CniRuntime::exec(const std::string& command, const json& conf,
                                     const CniAttachment& a) const {
    const std::string type = conf.at("type").get<std::string>();
    std::string path_env;
    for (const auto& dir : cni_path_)
        path_env += (path_env.empty() ? "" : ":") + dir;
    ProcessSpec spec;
    spec.argv = {find_plugin(type)};
    if (!host_netns_.empty())
        spec.netns = host_netns_;
    spec.stdin_data = conf.dump();
    spec.env_overrides = {{"CNI_COMMAND", command},    {"CNI_CONTAINERID", a.container_id},
                          {"CNI_NETNS", a.netns_path}, {"CNI_IFNAME", a.ifname},
                          {"CNI_ARGS", cni_args(a)},   {"CNI_PATH", path_env}};
    const auto started = std::chrono::steady_clock::now();
    ProcessResult r = run_process(spec, std::chrono::seconds(60));
    const auto took = std::chrono::steady_clock::now() - started;
    if (took > std::chrono::seconds(1)) {
        spdlog::warn("CNI {} of plugin {} for {} took {} ms", command, type,
                     a.container_id.substr(0, 12),
                     std::chrono::duration_cast<std::chrono::milliseconds>(took).count());
    }
    if (r.timed_out)
        throw CniError("CNI " + command + " of plugin " + type + " timed out");
    if (r.exit_code != 0) {
        // Spec: on failure the plugin prints an Error object on stdout.
        std::string msg = "CNI " + command + " of plugin " + type + " failed (exit " +
                          std::to_string(r.exit_code) + ")";
        int code = 0;
        try {
            json err = json::parse(r.out);
            code = err.value("code", 0);
            msg += ": " + err.value("msg", std::string()) +
                   (err.contains("details") ? " (" + err["details"].get<std::string>() + ")" : "");
        } catch (const json::exception&) {
            msg += ": " + r.out + r.err;
        }
        throw CniError(msg, code);
    }
    if (command != "ADD")
        return std::nullopt;
    try {
        return json::parse(r.out);
    } catch (const json::exception& e) {
        throw CniError("CNI ADD of plugin " + type + " printed no valid result: " + e.what());
    }
}

json CniRuntime::add(const json& conflist, const CniAttachment& a) const {
    std::optional<json> prev;
    for (const auto& plugin : conflist.at("plugins")) {
        prev = exec("ADD", plugin_config(conflist, plugin, prev), a);
    }
    if (!prev)
        throw CniError("CNI conflist " + conflist.value("name", "") + " has no plugins");
    return *prev;
}

void CniRuntime::del(const json& conflist, const CniAttachment& a,
                     const std::optional<json>& cached_result) const {
    // DEL must be attempted for every plugin even if one fails, so IPAM leases are released.
    std::optional<CniError> first_error;
    const json& plugins = conflist.at("plugins");
    for (size_t i = plugins.size(); i-- > 0;) {
        try {
            exec("DEL", plugin_config(conflist, plugins[i], cached_result), a);
        } catch (const CniError& e) {
            if (!first_error)
                first_error = e;
        }
    }
    if (first_error)
        throw *first_error;
}

void CniRuntime::check(const json& conflist, const CniAttachment& a,
                       const json& cached_result) const {
    for (const auto& plugin : conflist.at("plugins")) {
        exec("CHECK", plugin_config(conflist, plugin, cached_result), a);
    }
}

}  // namespace sluice::testbed
