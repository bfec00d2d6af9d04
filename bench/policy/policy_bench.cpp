// Policy compile and apply benchmark (issue 5): 10k rules across 1k workloads.
//   policy_bench [--runs N] [--out DIR] [--no-maps]
// Measures, each as the median of N runs: compile (policies + registry → every output), the
// kernel entry set for one node and for the whole cluster (kernel_delta from empty), a one-policy
// change (recompile + delta), applying the whole cluster's entries to an in-memory sink, and —
// when run as root on a bpffs — applying them to the real eBPF maps through the Datapath API in a
// throwaway cgroup and bpffs root (removed afterwards).
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "agent/datapath/datapath.h"
#include "common/mountinfo.h"
#include "policies/compiler.h"
#include "policies/kernel_apply.h"
#include "tests/bpf/bpf_test_env.h"

namespace {

namespace pol = sluice::policies;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kNamespaces = 50;
constexpr int kPodsPerNamespace = 20;  // 1000 workloads
constexpr int kRulesPerWorkload = 10;  // 10000 rules
constexpr int kNodes = 10;
constexpr int kBoundaries = 5;

struct Scenario {
    pol::PolicySet policies;
    pol::Registry registry;
};

Scenario make_scenario(uint32_t seed) {
    std::mt19937 rng(seed);
    auto pick = [&](int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng); };
    Scenario s;
    for (int n = 0; n < kNamespaces; ++n) {
        const std::string ns = "ns" + std::to_string(n);
        s.registry.namespaces.push_back({ns, {{"tenant", "t" + std::to_string(n % kBoundaries)}}});
        for (int p = 0; p < kPodsPerNamespace; ++p) {
            pol::Pod pod;
            pod.namespace_name = ns;
            pod.name = "w" + std::to_string(p);
            pod.service_account = "sa" + std::to_string(p);
            pod.labels = {{"app", "w" + std::to_string(p)}};
            pod.node_name = "node" + std::to_string((n * kPodsPerNamespace + p) % kNodes);
            const int host = n * kPodsPerNamespace + p;
            pod.addresses = {*sluice::datapath::parse_ip("198.18." + std::to_string(host / 250) +
                                                         "." + std::to_string(host % 250 + 2))};
            s.registry.pods.push_back(pod);
        }
    }
    for (int b = 0; b < kBoundaries; ++b) {
        pol::IsolationBoundary ib;
        ib.meta = {"IsolationBoundary", "t" + std::to_string(b), "", {}};
        ib.namespace_selector = pol::Labels{{"tenant", "t" + std::to_string(b)}};
        pol::BoundaryPeer shared;
        shared.boundaries = {"t0"};
        shared.ports = {8080};
        if (b != 0) {
            ib.allow_to.push_back(shared);
        } else {
            shared.boundaries = {"t1", "t2", "t3", "t4"};
            ib.allow_from.push_back(shared);
        }
        s.policies.boundaries.push_back(ib);
    }
    const std::vector<uint16_t> ports = {80, 443, 5432, 6333, 8000, 8080, 9090, 9100};
    for (const auto& pod : s.registry.pods) {
        pol::AuthorizationPolicy p;
        p.meta = {"AuthorizationPolicy", pod.name + "-allow", pod.namespace_name, {}};
        p.selector = pod.labels;
        p.action = pick(10) == 0 ? pol::Action::Deny : pol::Action::Allow;
        for (int r = 0; r < kRulesPerWorkload; ++r) {
            pol::Rule rule;
            pol::Source src;
            switch (pick(4)) {
                case 0:
                    src.principals = {"cluster.local/ns/ns" + std::to_string(pick(kNamespaces)) +
                                      "/sa/sa" + std::to_string(pick(kPodsPerNamespace))};
                    break;
                case 1:
                    src.namespaces = {"ns" + std::to_string(pick(kNamespaces))};
                    break;
                case 2:
                    src.ip_blocks = {*sluice::datapath::parse_cidr(
                        "10." + std::to_string(pick(50)) + ".0.0/16")};
                    break;
                default:
                    src.not_namespaces = {"ns" + std::to_string(pick(kNamespaces))};
                    break;
            }
            rule.from.push_back(src);
            pol::Operation op;
            op.ports = {ports[static_cast<std::size_t>(pick(static_cast<int>(ports.size())))]};
            rule.to.push_back(op);
            p.rules.push_back(rule);
        }
        s.policies.authorization.push_back(p);
    }
    return s;
}

template <typename F>
double median_ms(int runs, F&& f) {
    std::vector<double> ms;
    for (int i = 0; i < runs; ++i) {
        const auto t0 = Clock::now();
        f();
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

// Process CPU time: what the work costs, independent of other load on a shared machine.
double cpu_now_ms() {
    timespec ts{};
    ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

template <typename F>
double median_cpu_ms(int runs, F&& f) {
    std::vector<double> ms;
    for (int i = 0; i < runs; ++i) {
        const double t0 = cpu_now_ms();
        f();
        ms.push_back(cpu_now_ms() - t0);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

class MemorySink : public pol::KernelSink {
  public:
    bool upsert_ipcache(const pol::Cidr& c, uint32_t id) override {
        ipcache_[{c.address.bytes, c.prefix_len}] = id;
        return true;
    }
    bool delete_ipcache(const pol::Cidr& c) override {
        ipcache_.erase({c.address.bytes, c.prefix_len});
        return true;
    }
    bool upsert_policy(const sluice_policy_key& k, const sluice_policy_value& v) override {
        policy_[key(k)] = v;
        return true;
    }
    bool delete_policy(const sluice_policy_key& k) override {
        policy_.erase(key(k));
        return true;
    }
    std::size_t size() const { return policy_.size() + ipcache_.size(); }

  private:
    static std::tuple<uint32_t, uint32_t, uint16_t, uint8_t, uint8_t> key(
        const sluice_policy_key& k) {
        return {k.endpoint_id, k.peer_identity, k.port, k.proto, k.direction};
    }
    std::map<std::tuple<uint32_t, uint32_t, uint16_t, uint8_t, uint8_t>, sluice_policy_value>
        policy_;
    std::map<std::pair<std::array<uint8_t, 16>, uint32_t>, uint32_t> ipcache_;
};

std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("model name", 0) == 0)
            return line.substr(line.find(':') + 2);
    }
    return "unknown";
}

// Applies the whole cluster's entries to real maps; returns ms, or a reason it could not.
std::variant<double, std::string> apply_to_real_maps(const pol::KernelDelta& delta,
                                                     std::size_t* applied) {
    if (::geteuid() != 0)
        return std::string("not root");
    try {
        sluice::ensure_bpffs_mounted("/sys/fs/bpf");
        sluice::test::sweep_stale_bpftest_state();
        sluice::test::TestCgroup cgroup;
        sluice::datapath::DatapathConfig cfg;
        cfg.bpffs_root = "/sys/fs/bpf/" + sluice::test::bpftest_name("policybench");
        cfg.cgroup_path = cgroup.path();
        cfg.map_sizes.policy = 1u << 18;
        cfg.map_sizes.ipcache = 1u << 16;
        auto dp = sluice::datapath::Datapath::open(cfg);
        if (!dp)
            return "Datapath::open: " + dp.error().message;
        pol::DatapathSink sink(**dp);
        const auto t0 = Clock::now();
        const auto r = pol::apply_delta(delta, sink);
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        *applied = r.applied;
        auto detach = (*dp)->detach_and_unpin();
        std::error_code ec;
        fs::remove_all(cfg.bpffs_root, ec);
        if (!r.ok)
            return "apply failed after " + std::to_string(r.applied) + ": " + sink.last_error();
        return ms;
    } catch (const std::exception& e) {
        return std::string(e.what());
    }
}

}  // namespace

int main(int argc, char** argv) {
    int runs = 5;
    std::string out_dir;
    bool maps = true;
    std::string command;
    for (int i = 0; i < argc; ++i)
        command += (i ? " " : "") + std::string(argv[i]);
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--runs" && i + 1 < argc)
            runs = std::max(1, std::atoi(argv[++i]));
        else if (a == "--out" && i + 1 < argc)
            out_dir = argv[++i];
        else if (a == "--no-maps")
            maps = false;
    }
    const Scenario s = make_scenario(42);
    auto policies = std::make_shared<const pol::PolicySet>(s.policies);
    auto registry = std::make_shared<const pol::Registry>(s.registry);
    std::size_t rules = 0;
    for (const auto& p : s.policies.authorization)
        rules += p.rules.size();

    pol::CompiledPolicy compiled;
    const double compile_ms = median_ms(runs, [&] { compiled = pol::compile(policies, registry); });
    const double compile_cpu_ms =
        median_cpu_ms(runs, [&] { compiled = pol::compile(policies, registry); });
    double load[3] = {};
    ::getloadavg(load, 3);
    const pol::KernelState empty;
    std::set<uint32_t> node0;
    for (const auto& e : compiled.kernel.endpoints) {
        if (e.node_name == "node0")
            node0.insert(e.value.endpoint_id);
    }
    pol::KernelDelta full, node;
    const double delta_full_ms =
        median_ms(runs, [&] { full = pol::kernel_delta(empty, compiled.kernel); });
    const double delta_node_ms = median_ms(runs, [&] {
        node = pol::kernel_delta(empty, compiled.kernel,
                                 [&](uint32_t ep) { return node0.contains(ep); });
    });
    // One policy changes: recompile with the previous ids, then the delta.
    pol::PolicySet changed = s.policies;
    changed.authorization[7].rules[0].to[0].ports = {12345};
    auto changed_ptr = std::make_shared<const pol::PolicySet>(changed);
    const pol::IdState ids = compiled.id_state();
    pol::CompileOptions opt;
    opt.previous = &ids;
    pol::KernelDelta change;
    const double change_ms = median_ms(runs, [&] {
        auto c2 = pol::compile(changed_ptr, registry, opt);
        change = pol::kernel_delta(compiled.kernel, c2.kernel);
    });
    std::size_t sink_size = 0;
    const double memory_apply_ms = median_ms(runs, [&] {
        MemorySink sink;
        pol::apply_delta(full, sink);
        sink_size = sink.size();
    });

    nlohmann::json real = {{"measured", false}};
    if (maps) {
        std::size_t applied = 0;
        auto r = apply_to_real_maps(full, &applied);
        if (auto* ms = std::get_if<double>(&r))
            real = {{"measured", true}, {"ms", *ms}, {"operations", applied}};
        else
            real = {{"measured", false}, {"reason", std::get<std::string>(r)}};
    }

    utsname u{};
    ::uname(&u);
    nlohmann::json j = {
        {"benchmark", "policy compile and apply"},
        {"command", command},
        {"machine",
         {{"cpu", cpu_model()},
          {"cores", ::sysconf(_SC_NPROCESSORS_ONLN)},
          {"kernel", std::string(u.release)},
          {"host", std::string(u.nodename)}}},
        {"input",
         {{"workloads", s.registry.pods.size()},
          {"namespaces", kNamespaces},
          {"authorization_policies", s.policies.authorization.size()},
          {"rules", rules},
          {"boundaries", s.policies.boundaries.size()},
          {"nodes", kNodes}}},
        {"output",
         {{"kernel_policy_entries", compiled.kernel.policy.size()},
          {"ipcache_entries", compiled.kernel.ipcache.size()},
          {"identities", compiled.identities.size()},
          {"node0_policy_entries", node.policy_upserts.size()}}},
        {"runs", runs},
        {"load_average_1m", load[0]},
        {"median_cpu_ms", {{"compile", compile_cpu_ms}}},
        {"median_ms",
         {{"compile", compile_ms},
          {"kernel_entries_cluster", delta_full_ms},
          {"kernel_entries_node", delta_node_ms},
          {"one_policy_change_recompile_and_delta", change_ms},
          {"apply_cluster_to_memory", memory_apply_ms}}},
        {"one_policy_change_delta_ops", change.size()},
        {"apply_cluster_to_bpf_maps", real},
        {"targets_ms", {{"compile", 200}, {"apply", 200}}},
    };
    std::cout << j.dump(2) << "\n";
    if (!out_dir.empty()) {
        fs::create_directories(out_dir);
        std::ofstream(fs::path(out_dir) / "policy-bench.json") << j.dump(2) << "\n";
        std::ofstream md(fs::path(out_dir) / "policy-bench.md");
        md << "# Policy compile and apply benchmark\n\n"
           << "Command: `" << command << "`  \n"
           << "Machine: " << cpu_model() << ", " << ::sysconf(_SC_NPROCESSORS_ONLN)
           << " cores, kernel " << u.release << "  \n"
           << "Input: " << s.registry.pods.size() << " workloads in " << kNamespaces
           << " namespaces, " << s.policies.authorization.size() << " AuthorizationPolicies with "
           << rules << " rules, " << s.policies.boundaries.size() << " isolation boundaries, "
           << kNodes << " nodes  \n"
           << "Output: " << compiled.kernel.policy.size() << " kernel policy entries ("
           << node.policy_upserts.size() << " on one node), " << compiled.kernel.ipcache.size()
           << " ipcache entries, " << compiled.identities.size() << " identities  \n"
           << "Load average while measuring (1 min): " << load[0]
           << " on a machine shared with parallel builds; wall times include that contention.\n\n"
           << "| step (median of " << runs << ") | ms | target |\n|---|---:|---:|\n"
           << "| compile (wall) | " << compile_ms << " | ≤ 200 |\n"
           << "| compile (process CPU time) | " << compile_cpu_ms << " | ≤ 200 |\n"
           << "| kernel entry set, whole cluster | " << delta_full_ms << " | |\n"
           << "| kernel entry set, one node | " << delta_node_ms << " | |\n"
           << "| one policy changed: recompile + delta (" << change.size() << " ops) | "
           << change_ms << " | |\n"
           << "| apply whole cluster to an in-memory sink | " << memory_apply_ms << " | |\n";
        if (real["measured"].get<bool>())
            md << "| apply whole cluster to the eBPF maps (Datapath API, " << full.size()
               << " ops) | " << real["ms"].get<double>() << " | ≤ 200 |\n";
        else
            md << "| apply to the eBPF maps | not measured: "
               << real.value("reason", std::string("--no-maps")) << " | ≤ 200 |\n";
    }
    return 0;
}
