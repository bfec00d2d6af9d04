// sluicectl pods / sluicectl datapath {counters,policy}: what the node's datapath holds, read
// straight from the pinned maps (no agent round trip: works while the agent is down).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <fmt/format.h>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <vector>

#include "agent/config.h"
#include "agent/datapath/datapath.h"
#include "agent/sluicectl/commands.h"
#include "sluice_abi.h"

namespace sluice::ctl {
namespace {

using nlohmann::json;

struct Options {
    std::string bpffs_root = "/sys/fs/bpf/sluice";
    std::string run_dir = agent::kDefaultRunDir;
    bool as_json = false;
};

class PinnedMap {
  public:
    PinnedMap(const std::string& root, const std::string& name) : path_(root + "/maps/" + name) {
        fd_ = bpf_obj_get(path_.c_str());
        if (fd_ < 0) {
            throw std::runtime_error("cannot open " + path_ + ": " + std::strerror(errno) +
                                     " (is sluice-agent installed on this node? --bpffs-root)");
        }
    }
    ~PinnedMap() { ::close(fd_); }
    int fd() const { return fd_; }

    // Every key of a hash-like map.
    template <typename K>
    std::vector<K> keys() const {
        std::vector<K> out;
        K key{}, next{};
        const void* prev = nullptr;
        while (bpf_map_get_next_key(fd_, prev, &next) == 0 && out.size() < 10'000'000) {
            out.push_back(next);
            key = next;
            prev = &key;
        }
        return out;
    }

    // A per-CPU u64 value summed over CPUs; 0 when absent.
    uint64_t percpu_sum(const void* key) const {
        const int cpus = libbpf_num_possible_cpus();
        std::vector<uint64_t> values(cpus > 0 ? cpus : 1);
        if (bpf_map_lookup_elem(fd_, key, values.data()) != 0)
            return 0;
        uint64_t sum = 0;
        for (auto v : values)
            sum += v;
        return sum;
    }

  private:
    std::string path_;
    int fd_ = -1;
};

int pods(const Options& o) {
    std::ifstream f(o.run_dir + "/agent-state.json");
    if (!f) {
        std::cerr << "no enrollment state at " << o.run_dir << "/agent-state.json (--run-dir)\n";
        return 1;
    }
    json state = json::parse(f, nullptr, false);
    PinnedMap enrolled(o.bpffs_root, "enrolled_netns");
    json out = json::array();
    for (const auto& p : state.value("pods", json::array())) {
        uint64_t cookie = p.value("netnsCookie", uint64_t{0});
        sluice_enrolled_value v{};
        const bool in_kernel = bpf_map_lookup_elem(enrolled.fd(), &cookie, &v) == 0;
        out.push_back({{"pod", p.value("namespace", "") + "/" + p.value("name", "")},
                       {"uid", p.value("uid", "")},
                       {"ips", p.value("ips", json::array())},
                       {"netnsCookie", cookie},
                       {"endpointId", in_kernel ? v.endpoint_id : p.value("endpointId", 0u)},
                       {"captured", in_kernel}});
    }
    if (o.as_json) {
        std::cout << out.dump(2) << "\n";
        return 0;
    }
    std::cout << fmt::format("{:<40} {:<10} {:<9} {}\n", "POD", "ENDPOINT", "CAPTURED", "IPS");
    for (const auto& p : out) {
        std::string ips;
        for (const auto& ip : p["ips"])
            ips += (ips.empty() ? "" : ",") + ip.get<std::string>();
        std::cout << fmt::format("{:<40} {:<10} {:<9} {}\n", p["pod"].get<std::string>(),
                                 p["endpointId"].get<uint32_t>(),
                                 p["captured"].get<bool>() ? "yes" : "NO", ips);
    }
    return 0;
}

int counters(const Options& o) {
    PinnedMap drops(o.bpffs_root, "drop_counters"), events(o.bpffs_root, "event_counters"),
        rules(o.bpffs_root, "rule_counters");
    json out{{"drops", json::object()}, {"events", json::object()}, {"rules", json::object()}};
    for (uint32_t r = 1; r < SLUICE_REASON_MAX; ++r) {
        out["drops"][datapath::reason_name(static_cast<sluice_reason>(r))] = drops.percpu_sum(&r);
    }
    for (uint32_t e = 0; e < SLUICE_EVENT_MAX; ++e) {
        out["events"][datapath::event_name(static_cast<sluice_event>(e))] = events.percpu_sum(&e);
    }
    for (uint32_t id : rules.keys<uint32_t>())
        out["rules"][std::to_string(id)] = rules.percpu_sum(&id);
    if (o.as_json) {
        std::cout << out.dump(2) << "\n";
        return 0;
    }
    for (const char* section : {"drops", "events", "rules"}) {
        std::cout << section << ":\n";
        for (const auto& [k, v] : out[section].items())
            std::cout << fmt::format("  {:<28} {}\n", k, v.get<uint64_t>());
    }
    return 0;
}

int policy(const Options& o) {
    PinnedMap map(o.bpffs_root, "policy");
    json out = json::array();
    for (const auto& k : map.keys<sluice_policy_key>()) {
        sluice_policy_value v{};
        if (bpf_map_lookup_elem(map.fd(), &k, &v) != 0)
            continue;
        out.push_back({{"endpoint", k.endpoint_id},
                       {"peerIdentity", k.peer_identity},
                       {"port", k.port},
                       {"proto", k.proto},
                       {"direction", k.direction == SLUICE_DIR_EGRESS ? "egress" : "ingress"},
                       {"verdict", v.verdict == SLUICE_VERDICT_ALLOW ? "allow" : "deny"},
                       {"rule", v.rule_id}});
    }
    if (o.as_json) {
        std::cout << out.dump(2) << "\n";
        return 0;
    }
    std::cout << fmt::format("{:<9} {:<9} {:<6} {:<6} {:<8} {:<8} {}\n", "ENDPOINT", "PEER", "PORT",
                             "PROTO", "DIR", "VERDICT", "RULE");
    for (const auto& e : out) {
        std::cout << fmt::format("{:<9} {:<9} {:<6} {:<6} {:<8} {:<8} {}\n",
                                 e["endpoint"].get<uint32_t>(), e["peerIdentity"].get<uint32_t>(),
                                 e["port"].get<uint16_t>(), e["proto"].get<int>(),
                                 e["direction"].get<std::string>(), e["verdict"].get<std::string>(),
                                 e["rule"].get<uint32_t>());
    }
    return 0;
}

}  // namespace

void add_datapath_commands(CLI::App& app, Context& ctx) {
    auto opts = std::make_shared<Options>();
    auto common = [opts](CLI::App* cmd) {
        cmd->add_option("--bpffs-root", opts->bpffs_root, "The agent's bpffs root")
            ->envname(agent::kEnvBpffsRoot);
        cmd->add_option("--run-dir", opts->run_dir, "The agent's run dir")
            ->envname(agent::kEnvRunDir);
        cmd->add_flag("--json", opts->as_json, "JSON output");
    };
    auto run = [opts, &ctx](int (*fn)(const Options&)) {
        return [opts, &ctx, fn] {
            try {
                ctx.exit_code = fn(*opts);
            } catch (const std::exception& e) {
                std::cerr << "sluicectl: " << e.what() << "\n";
                ctx.exit_code = 1;
            }
        };
    };
    auto* p = app.add_subcommand("pods",
                                 "Pods enrolled on this node and whether the kernel captures them");
    common(p);
    p->callback(run(pods));
    auto* dp = app.add_subcommand("datapath", "Inspect the eBPF datapath's maps");
    dp->require_subcommand(1);
    auto* c =
        dp->add_subcommand("counters", "Drop, event and per-rule counters (summed over CPUs)");
    common(c);
    c->callback(run(counters));
    auto* pol = dp->add_subcommand("policy", "L4 policy entries in the kernel");
    common(pol);
    pol->callback(run(policy));
}

}  // namespace sluice::ctl
