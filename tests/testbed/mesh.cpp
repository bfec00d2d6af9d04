#include "tests/testbed/mesh.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <thread>

#include "common/netns.h"
#include "tests/testbed/testbed.h"

#include <filesystem>

namespace sluice::testbed {

// mesh_sidecarless.cpp
void start_sidecarless_node(ClusterState& state, const NodeState& node,
                            const TestbedOptions& options);
nlohmann::json sidecarless_cni_plugins(const NodeState& node);

std::string sluice_bin_dir(const TestbedOptions& options) {
    if (!options.bin_dir.empty())
        return options.bin_dir;
    // The binaries are built side by side (build/bin/), as is every test binary.
    return std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
}

constexpr int kZtunnelAdminPort = 15000;  // 127.0.0.1 in the node (or sidecar's pod) netns

std::optional<std::string> local_http_get(const std::string& netns, int port,
                                          const std::string& path) {
    const std::string request =
        "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    std::optional<std::string> body;
    run_in_netns(netns, [&] {
        int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            return;
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(static_cast<uint16_t>(port));
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        timeval tv{1, 0};
        ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        std::string reply;
        if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
            ::send(s, request.data(), request.size(), MSG_NOSIGNAL) ==
                static_cast<ssize_t>(request.size())) {
            char buf[16384];
            for (ssize_t r; (r = ::recv(s, buf, sizeof buf, 0)) > 0 && reply.size() < (8u << 20);)
                reply.append(buf, static_cast<size_t>(r));
        }
        ::close(s);
        const auto end = reply.find("\r\n\r\n");
        if (reply.starts_with("HTTP/1.1 200") && end != std::string::npos)
            body = reply.substr(end + 4);
    });
    return body;
}

bool wait_http_ready(const std::string& netns, int port, const std::string& path,
                     std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
        if (local_http_get(netns, port, path))
            return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
}

void wait_registry_loaded(const ClusterState& state, std::chrono::milliseconds timeout) {
    std::vector<std::pair<std::string, std::string>> admins;  // what, netns
    if (state.mesh == MeshMode::Sidecarless) {
        for (const auto& n : state.nodes)
            admins.emplace_back("the ztunnel of " + n.name, n.netns);
    } else if (state.mesh == MeshMode::Sidecar) {
        for (const auto& p : state.pods)
            admins.emplace_back("the sidecar of " + p.namespace_name + "/" + p.name, p.netns);
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (const auto& [what, netns] : admins) {
        for (;;) {
            auto dump = local_http_get(netns, kZtunnelAdminPort, "/config_dump");
            auto j = nlohmann::json::parse(dump.value_or(""), nullptr, false);
            if (j.is_object() &&
                j.value("workloads", nlohmann::json::array()).size() >= state.pods.size() &&
                j.value("services", nlohmann::json::array()).size() >= state.services.size())
                break;
            if (std::chrono::steady_clock::now() >= deadline) {
                throw TestbedError(what + " did not load the cluster's registry (" +
                                   std::to_string(state.pods.size()) + " pods, " +
                                   std::to_string(state.services.size()) + " services) within " +
                                   std::to_string(timeout.count()) + " ms");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }
}

pid_t start_pod_daemon(ClusterState& state, const PodState& pod, const std::string& name,
                       std::vector<std::string> argv, const std::string& log, int ready_port,
                       const std::string& ready_path, std::chrono::milliseconds timeout) {
    const pid_t pid = spawn_process(pod_process(pod, std::move(argv)), log);
    state.daemons.push_back({.node = pod.node,
                             .pod = pod.namespace_name + "/" + pod.name,
                             .name = name,
                             .pid = pid,
                             .log = log});
    if (!wait_http_ready(pod.netns, ready_port, ready_path, timeout)) {
        throw TestbedError(name + " in pod " + pod.namespace_name + "/" + pod.name +
                           " did not become ready; see " + log);
    }
    return pid;
}

pid_t start_node_daemon(ClusterState& state, const NodeState& node, const std::string& name,
                        std::vector<std::string> argv, const std::string& log, int ready_port,
                        std::chrono::milliseconds timeout) {
    if (!std::filesystem::exists(argv.at(0)))
        throw TestbedError("the mesh needs " + argv[0] + " (build it: scripts/build.sh)");
    const pid_t pid = spawn_process(node_process(node, std::move(argv)), log);
    state.daemons.push_back({.node = node.index, .name = name, .pid = pid, .log = log});
    if (!wait_http_ready(node.netns, ready_port, "/healthz/ready", timeout))
        throw TestbedError(name + " on " + node.name + " did not become ready; see " + log);
    spdlog::info("{} ready on {} (pid {})", name, node.name, pid);
    return pid;
}

void start_node_mesh(ClusterState& state, const NodeState& node, const TestbedOptions& options) {
    switch (state.mesh) {
        case MeshMode::None:
        case MeshMode::Sidecar:  // sidecars start per pod
            break;
        case MeshMode::Sidecarless:
            start_sidecarless_node(state, node, options);
            break;
    }
    if (options.after_node_mesh)
        options.after_node_mesh(state, node);
}

nlohmann::json mesh_cni_plugins(const ClusterState& state, const NodeState& node,
                                const TestbedOptions&) {
    if (state.mesh == MeshMode::Sidecarless)
        return sidecarless_cni_plugins(node);
    return nlohmann::json::array();
}

void start_pod_mesh(ClusterState& state, const PodState& pod, const TestbedOptions& options) {
    switch (state.mesh) {
        case MeshMode::None:
        case MeshMode::Sidecarless:  // the node's ztunnel serves every pod
            return;
        case MeshMode::Sidecar:
            start_sidecar(state, pod, options);
            return;
    }
}

}  // namespace sluice::testbed
