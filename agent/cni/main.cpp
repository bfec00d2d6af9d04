// sluice-cni: a chained CNI plugin (spec 1.0.0). Runs after the primary network plugin, passes
// its prevResult through, and asks the node's sluice-agent to enroll the pod, blocking until the
// pod's traffic is captured (or failing the pod start: fail closed unless "failOpen": true).
//
// Network configuration keys (all optional):
//   "agentSocket":    "/var/run/sluice/cni.sock"
//   "timeoutSeconds": 30
//   "failOpen":       false
#include <cstdlib>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "agent/cni/protocol.h"

namespace {

using nlohmann::json;

// CNI spec error codes (1-99 reserved by the spec; ours start at 100).
constexpr int kErrIncompatibleVersion = 1;
constexpr int kErrInvalidEnv = 4;
constexpr int kErrDecode = 6;
constexpr int kErrInvalidConfig = 7;
constexpr int kErrTryAgainLater = 11;
constexpr int kErrEnrollmentFailed = 100;

constexpr const char* kDefaultSocket = "/var/run/sluice/cni.sock";
constexpr int kDefaultTimeoutSeconds = 30;

std::string cni_version = "1.0.0";

int fail(int code, const std::string& msg, const std::string& details = "") {
    json err{{"cniVersion", cni_version}, {"code", code}, {"msg", msg}};
    if (!details.empty())
        err["details"] = details;
    std::cout << err.dump() << "\n";
    return 1;
}

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v == nullptr ? std::string() : std::string(v);
}

// CNI_ARGS is "K1=V1;K2=V2".
std::string cni_arg(const std::string& args, const std::string& key) {
    size_t pos = 0;
    while (pos <= args.size()) {
        size_t end = args.find(';', pos);
        if (end == std::string::npos)
            end = args.size();
        std::string kv = args.substr(pos, end - pos);
        size_t eq = kv.find('=');
        if (eq != std::string::npos && kv.substr(0, eq) == key)
            return kv.substr(eq + 1);
        pos = end + 1;
    }
    return {};
}

constexpr const char* kSupportedVersions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};

int run() {
    const std::string command = env("CNI_COMMAND");
    if (command == "VERSION") {
        std::cout << json{{"cniVersion", "1.0.0"}, {"supportedVersions", kSupportedVersions}}.dump()
                  << "\n";
        return 0;
    }
    std::string input(std::istreambuf_iterator<char>(std::cin), {});
    json conf = json::parse(input, nullptr, false);
    if (conf.is_discarded() || !conf.is_object())
        return fail(kErrDecode, "network configuration on stdin is not JSON");
    if (conf.contains("cniVersion") && !conf["cniVersion"].is_string())
        return fail(kErrInvalidConfig, "cniVersion must be a string");
    cni_version = conf.value("cniVersion", "1.0.0");
    if (command != "ADD" && command != "DEL" && command != "CHECK") {
        return fail(kErrInvalidEnv,
                    "CNI_COMMAND '" + command + "' is not ADD, DEL, CHECK or VERSION");
    }
    // Versions before 0.3.0 have another result format; later ones than this plugin knows keep
    // the fields it reads, so they pass (a conflist moving to 1.1.0 must not stop every pod).
    // A DEL is never refused for its version: that would block the sandbox's teardown.
    if (command != "DEL" &&
        (cni_version.rfind("0.1", 0) == 0 || cni_version.rfind("0.2", 0) == 0)) {
        return fail(kErrIncompatibleVersion, "cniVersion " + cni_version + " is not supported");
    }
    if (command == "CHECK" && (cni_version == "0.3.0" || cni_version == "0.3.1"))
        return fail(kErrIncompatibleVersion, "CHECK needs cniVersion 0.4.0 or later");
    const std::string socket = conf.value("agentSocket", kDefaultSocket);
    const bool fail_open = conf.value("failOpen", false);
    int timeout_s = kDefaultTimeoutSeconds;
    if (conf.contains("timeoutSeconds")) {
        if (!conf["timeoutSeconds"].is_number_integer() || conf["timeoutSeconds"].get<int>() <= 0) {
            return fail(kErrInvalidConfig, "timeoutSeconds must be a positive integer");
        }
        timeout_s = conf["timeoutSeconds"].get<int>();
    }

    const std::string args = env("CNI_ARGS");
    sluice::cni::Request req;
    req.command = command;
    req.container_id = env("CNI_CONTAINERID");
    req.netns = env("CNI_NETNS");
    req.ifname = env("CNI_IFNAME");
    req.pod_namespace = cni_arg(args, "K8S_POD_NAMESPACE");
    req.pod_name = cni_arg(args, "K8S_POD_NAME");
    req.pod_uid = cni_arg(args, "K8S_POD_UID");
    if (req.pod_namespace.empty() || req.pod_name.empty()) {
        return fail(kErrInvalidEnv, "CNI_ARGS lacks K8S_POD_NAMESPACE/K8S_POD_NAME", args);
    }
    const json prev = conf.value("prevResult", json());
    if (command == "ADD" && !prev.is_object()) {
        return fail(kErrInvalidConfig, "sluice-cni is a chained plugin: ADD needs a prevResult");
    }
    if (prev.is_object()) {
        for (const auto& ip : prev.value("ips", json::array())) {
            std::string a = ip.value("address", "");
            req.ips.push_back(a.substr(0, a.find('/')));
        }
    }

    auto reply = sluice::cni::call_agent(socket, req, std::chrono::seconds(timeout_s));
    std::string problem;
    if (!reply) {
        problem = reply.error();
    } else if (!reply->ok) {
        problem = reply->error;
    }
    if (!problem.empty()) {
        if (command == "DEL") {
            // DEL must succeed when there is nothing left to do; the agent removes what it
            // still holds for vanished pods when it reconciles after a restart.
            std::cerr << "sluice-cni: DEL of " << req.pod_namespace << "/" << req.pod_name << ": "
                      << problem << "\n";
            return 0;
        }
        if (fail_open && command == "ADD") {
            std::cerr << "sluice-cni: pod " << req.pod_namespace << "/" << req.pod_name
                      << " starts WITHOUT the mesh (failOpen): " << problem << "\n";
            std::cout << prev.dump() << "\n";
            return 0;
        }
        return fail(
            reply ? kErrEnrollmentFailed : kErrTryAgainLater,
            "sluice: pod " + req.pod_namespace + "/" + req.pod_name + " could not be enrolled",
            problem);
    }
    if (command == "ADD")
        std::cout << prev.dump() << "\n";
    return 0;
}

}  // namespace

int main() {
    try {
        return run();
    } catch (const json::exception& e) {
        // A field of the configuration with the wrong type (`"ips": [1]`, `"agentSocket": 5`).
        return fail(kErrInvalidConfig, std::string("network configuration: ") + e.what());
    }
}
