#include "tests/testbed/testbed.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "common/mountinfo.h"
#include "common/netns.h"
#include "tests/testbed/cni.h"
#include "tests/testbed/mesh.h"
#include "tests/testbed/registry.h"
#include "tests/testbed/waypoint.h"

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr auto kCommandTimeout = std::chrono::seconds(30);
constexpr auto kProcessExitWait = std::chrono::seconds(5);

// Runs a host command (iproute2) and throws TestbedError with its stderr on failure.
void must_run(std::vector<std::string> argv) {
    ProcessSpec spec;
    spec.argv = std::move(argv);
    ProcessResult r = run_process(spec, kCommandTimeout);
    if (r.exit_code != 0 || r.timed_out) {
        throw TestbedError(fmt::format("`{}` failed (exit {}{}): {}", join_argv(spec.argv),
                                       r.exit_code, r.timed_out ? ", timed out" : "", r.err));
    }
}

void ip(const std::string& netns, std::vector<std::string> args) {
    std::vector<std::string> argv = {"ip"};
    if (!netns.empty()) {
        argv.push_back("-n");
        argv.push_back(netns);
    }
    argv.insert(argv.end(), args.begin(), args.end());
    must_run(std::move(argv));
}

// Writes /proc/sys/<key> as seen from inside the namespace: /proc/sys/net is per network
// namespace of the writing thread.
void set_sysctl(const std::string& netns_name, const std::string& key, const std::string& value) {
    std::string path = "/proc/sys/" + key;
    std::replace(path.begin() + 10, path.end(), '.', '/');
    run_in_netns(netns_path(netns_name), [&] {
        std::ofstream f(path);
        f << value;
        f.flush();
        if (!f)
            throw TestbedError("cannot set sysctl " + key + "=" + value + " in " + netns_name);
    });
}

void new_netns(const std::string& name) {
    ip("", {"netns", "add", name});
    ip(name, {"link", "set", "lo", "up"});
    // DAD would hold IPv6 addresses "tentative" for seconds; nothing else uses these ranges.
    set_sysctl(name, "net.ipv6.conf.all.accept_dad", "0");
    set_sysctl(name, "net.ipv6.conf.default.accept_dad", "0");
}

std::string random_hex(size_t n) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    std::string s;
    while (s.size() < n)
        s += fmt::format("{:016x}", rng());
    return s.substr(0, n);
}

std::string random_uid() {
    std::string h = random_hex(32);
    return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
           "-" + h.substr(20, 12);
}

std::string detect_cgroup2(const TestbedOptions& options) {
    if (!options.cgroup2_mount.empty())
        return options.cgroup2_mount;
    auto mount = find_cgroup2_mount(read_mountinfo());
    if (!mount) {
        throw TestbedError(
            "no cgroup2 filesystem is mounted; mount one (mount -t cgroup2 none /sys/fs/cgroup) "
            "or pass --cgroup2");
    }
    return *mount;
}

json node_conflist(const NodeState& node, const json& mesh_plugins) {
    // bridge + host-local, as a kubeadm cluster with the reference plugins would configure. No
    // ipMasq: nothing leaves the fabric, and the pods' traffic must keep its real addresses.
    json ranges = json::array(
        {json::array({{{"subnet", node.pod_cidr}}}), json::array({{{"subnet", node.pod_cidr6}}})});
    json bridge{
        {"type", "bridge"},
        {"bridge", "cni0"},
        {"isGateway", true},
        {"isDefaultGateway", true},
        {"ipMasq", false},
        {"hairpinMode", true},
        {"ipam",
         {{"type", "host-local"}, {"dataDir", node.run_dir + "/ipam"}, {"ranges", ranges}}}};
    json conflist{{"cniVersion", "1.0.0"}, {"name", "sluice-testbed"}, {"plugins", {bridge}}};
    // The mesh's plugins chain after the primary network, as sluice-cni is meant to.
    for (const auto& p : mesh_plugins)
        conflist["plugins"].push_back(p);
    return conflist;
}

json loopback_conflist() {
    return json{{"cniVersion", "1.0.0"},
                {"name", "cni-loopback"},
                {"plugins", json::array({json{{"type", "loopback"}}})}};
}

CniAttachment attachment_for(const PodState& p, const std::string& ifname) {
    CniAttachment a;
    a.container_id = p.container_id;
    a.netns_path = p.netns;
    a.ifname = ifname;
    // What kubelet/containerd pass; sluice-cni reads the K8S_* keys.
    a.args = {{"IgnoreUnknown", "1"},
              {"K8S_POD_NAMESPACE", p.namespace_name},
              {"K8S_POD_NAME", p.name},
              {"K8S_POD_INFRA_CONTAINER_ID", p.container_id},
              {"K8S_POD_UID", p.uid}};
    return a;
}

// The pod's addresses from a CNI result ("198.18.0.2/24" → "198.18.0.2").
void take_ips(PodState& p, const json& result) {
    for (const auto& ipc : result.value("ips", json::array())) {
        std::string addr = ipc.at("address");
        addr = addr.substr(0, addr.find('/'));
        if (addr.find(':') != std::string::npos) {
            if (p.ip6.empty())
                p.ip6 = addr;
        } else if (p.ip.empty()) {
            p.ip = addr;
        }
    }
    if (p.ip.empty())
        throw TestbedError("CNI result for pod " + p.name + " has no IPv4 address");
}

void write_file(const fs::path& path, const std::string& text) {
    const fs::path tmp = path.string() + ".tmp";
    {
        std::ofstream f(tmp, std::ios::trunc);
        f << text;
        if (!f)
            throw TestbedError("cannot write " + tmp.string());
    }
    fs::rename(tmp, path);
}

std::vector<std::string> netns_with_prefix(const std::string& prefix) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/var/run/netns", ec)) {
        const std::string name = e.path().filename().string();
        if (name.rfind(prefix, 0) == 0)
            out.push_back(name);
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<pid_t> cgroup_pids(const std::string& root) {
    std::vector<pid_t> pids;
    std::error_code ec;
    if (!fs::exists(root, ec))
        return pids;
    auto read_procs = [&](const fs::path& dir) {
        std::ifstream f(dir / "cgroup.procs");
        for (pid_t pid; f >> pid;)
            pids.push_back(pid);
    };
    read_procs(root);
    for (const auto& e : fs::recursive_directory_iterator(root, ec)) {
        if (e.is_directory(ec))
            read_procs(e.path());
    }
    return pids;
}

void kill_cgroup_tree(const std::string& root) {
    std::error_code ec;
    if (!fs::exists(root, ec))
        return;
    // cgroup.kill (Linux 5.14) kills the whole subtree atomically, including processes forked
    // while we iterate; fall back to SIGKILL per pid.
    {
        std::ofstream k(root + "/cgroup.kill");
        if (k)
            k << "1";
    }
    auto deadline = std::chrono::steady_clock::now() + kProcessExitWait;
    // Daemons `up` started are our children when `down` runs in the same process (tests): reap
    // them, since an unreaped zombie keeps its cgroup busy and rmdir fails with EBUSY.
    auto reap = [](const std::vector<pid_t>& pids) {
        for (pid_t pid : pids)
            ::waitpid(pid, nullptr, WNOHANG);
    };
    std::vector<pid_t> seen;
    for (;;) {
        auto pids = cgroup_pids(root);
        seen.insert(seen.end(), pids.begin(), pids.end());
        reap(seen);
        if (pids.empty()) {
            // Give killed children a moment to turn into zombies we can reap.
            for (int i = 0; i < 50 && !seen.empty(); ++i) {
                bool any = false;
                for (pid_t pid : seen)
                    any |= ::waitpid(pid, nullptr, WNOHANG) == 0;
                if (!any)
                    break;
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
            return;
        }
        for (pid_t pid : pids)
            ::kill(pid, SIGKILL);
        if (std::chrono::steady_clock::now() > deadline) {
            throw TestbedError(
                fmt::format("{} processes in {} did not exit after SIGKILL", pids.size(), root));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

void remove_cgroup_tree(const std::string& root) {
    std::error_code ec;
    if (!fs::exists(root, ec))
        return;
    std::vector<fs::path> dirs;
    for (const auto& e : fs::recursive_directory_iterator(root, ec)) {
        if (e.is_directory(ec))
            dirs.push_back(e.path());
    }
    // Deepest first: a cgroup can only be removed once it has no children.
    std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
        return std::distance(a.begin(), a.end()) > std::distance(b.begin(), b.end());
    });
    dirs.push_back(root);
    for (const auto& d : dirs) {
        // A process that just died may still be leaving the cgroup: retry EBUSY briefly.
        for (int i = 0; i < 100 && ::rmdir(d.c_str()) != 0 && errno == EBUSY; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        if (fs::exists(d, ec) && ::rmdir(d.c_str()) != 0 && errno != ENOENT) {
            throw TestbedError(
                fmt::format("cannot remove cgroup {}: {}", d.string(), strerror(errno)));
        }
    }
}

void best_effort_cni_del(const std::string& cluster, const TestbedOptions& options) {
    ClusterState state;
    try {
        state = load_state(cluster, options);
    } catch (const std::exception&) {
        return;  // no state: nothing to tell the plugins; resources go by prefix below
    }
    for (const auto& p : state.pods) {
        const auto& node = state.nodes.at(p.node);
        if (!fs::exists(node.netns))
            continue;
        try {
            CniRuntime cni(state.cni_path, node.netns);
            cni.del(state.conflist.at("nodes").at(p.node), attachment_for(p, "eth0"), p.cni_result);
        } catch (const std::exception& e) {
            spdlog::warn("CNI DEL of pod {}/{}: {}", p.namespace_name, p.name, e.what());
        }
    }
}

}  // namespace

void cni_del(const ClusterState& state, const PodState& pod) {
    CniRuntime cni(state.cni_path, state.nodes.at(pod.node).netns);
    cni.del(state.conflist.at("nodes").at(pod.node), attachment_for(pod, "eth0"), pod.cni_result);
}

void cni_check(const ClusterState& state, const PodState& pod) {
    CniRuntime cni(state.cni_path, state.nodes.at(pod.node).netns);
    cni.check(state.conflist.at("nodes").at(pod.node), attachment_for(pod, "eth0"), pod.cni_result);
}

ClusterLayout layout_for(const std::string& cluster, const TestbedOptions& options) {
    ClusterLayout l;
    l.cluster = cluster;
    l.cgroup2_mount = detect_cgroup2(options);
    l.bpffs_root = options.bpffs_root;
    l.run_root = options.run_root;
    return l;
}

ClusterState load_state(const std::string& cluster, const TestbedOptions& options) {
    ClusterLayout l;
    l.cluster = cluster;
    l.run_root = options.run_root;
    std::ifstream f(l.state_file());
    if (!f)
        throw TestbedError("cluster '" + cluster + "' is not up (no " + l.state_file() + ")");
    try {
        return state_from_json(json::parse(f));
    } catch (const std::exception& e) {
        throw TestbedError("corrupt state file " + l.state_file() + ": " + e.what() +
                           " (run `sluice-testbed down --name " + cluster + "`)");
    }
}

ProcessSpec pod_process(const PodState& pod, std::vector<std::string> argv) {
    ProcessSpec spec;
    spec.argv = std::move(argv);
    spec.netns = pod.netns;
    spec.cgroup_dir = pod.cgroup;
    spec.env_overrides = {{"SLUICE_POD_NAME", pod.name},
                          {"SLUICE_POD_NAMESPACE", pod.namespace_name},
                          {"SLUICE_POD_IP", pod.ip},
                          {"SLUICE_POD_IP6", pod.ip6},
                          {"SLUICE_NODE_NAME", pod.node_name}};
    return spec;
}

ProcessSpec node_process(const NodeState& node, std::vector<std::string> argv) {
    ProcessSpec spec;
    spec.argv = std::move(argv);
    spec.netns = node.netns;
    spec.cgroup_dir = node.system_cgroup;
    spec.env_overrides = {{"SLUICE_NODE_NAME", node.name}};
    return spec;
}

std::vector<std::string> leftovers(const std::string& cluster, const TestbedOptions& options) {
    const ClusterLayout l = layout_for(cluster, options);
    std::vector<std::string> found;
    for (const auto& n : netns_with_prefix(l.netns_prefix()))
        found.push_back("netns " + n);
    std::error_code ec;
    for (const auto& pid : cgroup_pids(l.cgroup_root()))
        found.push_back("process " + std::to_string(pid));
    for (const auto& dir : {l.cgroup_root(), l.bpffs_cluster_root(), l.run_dir()}) {
        if (fs::exists(dir, ec))
            found.push_back("directory " + dir);
    }
    return found;
}

void down(const std::string& cluster, const TestbedOptions& options) {
    const ClusterLayout l = layout_for(cluster, options);
    auto t0 = std::chrono::steady_clock::now();
    auto phase = [&](const char* what) {
        auto now = std::chrono::steady_clock::now();
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - t0).count();
        if (ms > 1000)
            spdlog::warn("down {}: {} took {} ms", cluster, what, ms);
        t0 = now;
    };
    best_effort_cni_del(cluster, options);
    phase("CNI DEL");
    kill_cgroup_tree(l.cgroup_root());
    phase("killing processes");
    // Pods first, then nodes, then the fabric: the reverse of `up`.
    auto names = netns_with_prefix(l.netns_prefix());
    std::stable_partition(names.begin(), names.end(), [&](const std::string& n) {
        return n.rfind(l.netns_prefix() + "pod.", 0) == 0;
    });
    for (const auto& n : names)
        ip("", {"netns", "delete", n});
    phase("deleting namespaces");
    remove_cgroup_tree(l.cgroup_root());
    phase("removing cgroups");
    std::error_code ec;
    fs::remove_all(l.bpffs_cluster_root(), ec);
    if (ec)
        throw TestbedError("cannot remove " + l.bpffs_cluster_root() + ": " + ec.message());
    fs::remove_all(l.run_dir(), ec);
    if (ec)
        throw TestbedError("cannot remove " + l.run_dir() + ": " + ec.message());
    phase("removing pins and run dir");
}

namespace {

// Creates one pod as the runtime does (netns, cgroup, CNI ADD through the node's chain), after
// writing its Pod object to the registry; records it in `s` and the state file.
const PodState& create_pod(ClusterState& s, const PodSpec& ps, const TestbedOptions& options) {
    const ClusterLayout l = layout_for(s.name, options);
    PodState p;
    p.name = ps.name;
    p.namespace_name = ps.namespace_name;
    p.service_account = ps.service_account;
    p.labels = ps.labels;
    p.node = ps.node;
    p.node_name = s.nodes.at(ps.node).name;
    p.uid = random_uid();
    p.container_id = random_hex(64);
    const std::string ns = l.pod_netns(p.namespace_name, p.name);
    p.netns = netns_path(ns);
    p.cgroup = l.pod_cgroup(p.node, p.namespace_name, p.name);
    new_netns(ns);
    fs::create_directories(p.cgroup);
    const NodeState& node = s.nodes.at(p.node);
    // As in Kubernetes, the Pod object exists before the runtime networks it: the mesh's
    // CNI plugin looks its labels up while the pod is being created.
    {
        ClusterState pending = s;
        pending.pods.push_back(p);
        write_registry(s.registry_dir, registry_documents(pending), /*prune=*/false);
    }
    CniRuntime cni(s.cni_path, node.netns);
    // containerd sets up the loopback network first, then the pod network.
    cni.add(loopback_conflist(), attachment_for(p, "lo"));
    p.cni_result = cni.add(s.conflist.at("nodes").at(p.node), attachment_for(p, "eth0"));
    take_ips(p, p.cni_result);
    s.pods.push_back(p);
    start_pod_mesh(s, s.pods.back(), options);
    // State after every pod, so `down` can run CNI DEL for what was added if we crash.
    write_file(l.state_file(), to_json(s).dump(2) + "\n");
    return s.pods.back();
}

ClusterState build(const ClusterSpec& spec, const TestbedOptions& options) {
    const ClusterLayout l = layout_for(spec.name, options);
    ClusterState s;
    s.name = spec.name;
    s.mesh = spec.mesh;
    s.run_dir = l.run_dir();
    s.registry_dir = l.registry_dir();
    s.policies_dir = l.policies_dir();
    s.cgroup_root = l.cgroup_root();
    s.bpffs_root = l.bpffs_cluster_root();
    s.fabric_netns = netns_path(l.fabric_netns());
    s.cni_path = options.cni_path;
    s.namespaces = spec.namespaces;

    fs::create_directories(s.registry_dir);
    fs::create_directories(s.policies_dir);
    fs::create_directories(l.run_dir() + "/logs");
    ensure_bpffs_mounted("/sys/fs/bpf");
    fs::create_directories(s.bpffs_root);
    fs::create_directories(s.cgroup_root);

    // Fabric: one bridge that every node's eth0 plugs into, in a namespace of its own.
    new_netns(l.fabric_netns());
    ip(l.fabric_netns(), {"link", "add", "br0", "type", "bridge"});
    ip(l.fabric_netns(), {"link", "set", "br0", "up"});

    for (int i = 0; i < spec.nodes; ++i) {
        NodeState n;
        n.index = i;
        n.name = l.node_name(i);
        n.netns = netns_path(l.node_netns(i));
        n.cgroup = l.node_cgroup(i);
        n.system_cgroup = l.node_system_cgroup(i);
        n.bpffs = l.node_bpffs(i);
        n.run_dir = l.node_run_dir(i);
        n.fabric_ip = node_fabric_ip(i);
        n.fabric_ip6 = node_fabric_ip6(i);
        n.pod_cidr = pod_cidr(i);
        n.pod_cidr6 = pod_cidr6(i);
        const std::string ns = l.node_netns(i);
        new_netns(ns);
        set_sysctl(ns, "net.ipv4.ip_forward", "1");
        set_sysctl(ns, "net.ipv6.conf.all.forwarding", "1");
        ip(l.fabric_netns(),
           {"link", "add", n.name, "type", "veth", "peer", "name", "eth0", "netns", ns});
        ip(l.fabric_netns(), {"link", "set", n.name, "master", "br0", "up"});
        ip(ns, {"addr", "add", n.fabric_ip + "/24", "dev", "eth0"});
        ip(ns, {"-6", "addr", "add", n.fabric_ip6 + "/64", "dev", "eth0", "nodad"});
        ip(ns, {"link", "set", "eth0", "up"});
        fs::create_directories(n.system_cgroup);
        fs::create_directories(n.cgroup + "/pods");
        fs::create_directories(n.bpffs);
        fs::create_directories(n.run_dir + "/ipam");
        s.nodes.push_back(n);
    }
    // Pod CIDR routes: each node reaches every other node's pods through that node's fabric IP.
    for (const auto& n : s.nodes) {
        for (const auto& peer : s.nodes) {
            if (peer.index == n.index)
                continue;
            const std::string ns = l.node_netns(n.index);
            ip(ns, {"route", "add", peer.pod_cidr, "via", peer.fabric_ip});
            ip(ns, {"-6", "route", "add", peer.pod_cidr6, "via", peer.fabric_ip6});
        }
    }
    json per_node = json::array();
    for (const auto& n : s.nodes) {
        start_node_mesh(s, n, options);
        json conflist = node_conflist(n, mesh_cni_plugins(s, n, options));
        write_file(n.run_dir + "/10-sluice-testbed.conflist", conflist.dump(2) + "\n");
        per_node.push_back(conflist);
    }
    s.conflist = json{{"nodes", per_node}};

    for (const auto& ps : spec.pods)
        create_pod(s, ps, options);

    int vip_index = 0;
    for (const auto& svc : spec.services) {
        s.services.push_back({svc, service_vip(vip_index++), random_uid()});
    }
    write_registry(s.registry_dir, registry_documents(s));
    write_file(l.state_file(), to_json(s).dump(2) + "\n");
    if (spec.waypoint) {
        start_waypoint(s, options);
        write_file(l.state_file(), to_json(s).dump(2) + "\n");
    }
    // ztunnel reads the registry once a second; the first connection must find every pod.
    if (s.mesh != MeshMode::Sidecarless || options.start_ztunnel)
        wait_registry_loaded(s, std::chrono::seconds(10));
    return s;
}

}  // namespace

PodState add_pod(ClusterState& state, const PodSpec& pod, const TestbedOptions& options) {
    if (pod.node < 0 || pod.node >= static_cast<int>(state.nodes.size()))
        throw TestbedError("pod " + pod.namespace_name + "/" + pod.name + ": no node " +
                           std::to_string(pod.node));
    if (state.find_pod(pod.namespace_name + "/" + pod.name) != nullptr)
        throw TestbedError("pod " + pod.namespace_name + "/" + pod.name + " exists already");
    PodState created = create_pod(state, pod, options);
    // Its addresses, as the kubelet reports the pod's status once the network is up.
    write_registry(state.registry_dir, registry_documents(state), /*prune=*/false);
    if (state.mesh != MeshMode::Sidecarless || options.start_ztunnel)
        wait_registry_loaded(state, std::chrono::seconds(10));
    return created;
}

ClusterState up(const ClusterSpec& requested, const TestbedOptions& options) {
    ClusterSpec spec = requested;
    if (spec.waypoint)
        add_waypoint_pods(spec, options);
    auto problems = validate(spec);
    if (!problems.empty()) {
        std::string msg = "invalid cluster spec:";
        for (const auto& p : problems)
            msg += "\n  - " + p;
        throw TestbedError(msg);
    }
    if (::geteuid() != 0) {
        throw TestbedError(
            "sluice-testbed needs root: it creates network namespaces, veths and cgroups");
    }
    {
        CniRuntime probe(options.cni_path, "");
        for (const char* plugin : {"bridge", "host-local", "loopback"})
            probe.find_plugin(plugin);
    }
    down(spec.name, options);
    try {
        return build(spec, options);
    } catch (...) {
        try {
            down(spec.name, options);
        } catch (const std::exception& e) {
            spdlog::error("cleanup after a failed up also failed: {}", e.what());
        }
        throw;
    }
}

}  // namespace sluice::testbed
