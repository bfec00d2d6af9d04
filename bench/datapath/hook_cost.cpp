// sluice-bench-hooks: what the eBPF hooks cost an application (issue: datapath benchmark).
//
//  1. connect(): median added latency with the programs attached vs detached, with 10k policy
//     entries and 100k ipcache entries loaded (and with empty maps, to show size does not matter).
//     Both sides make the same local TCP handshake in one network namespace; "detached" runs the
//     same connect() from a sibling cgroup where no program is attached. Rounds alternate so
//     drift hits both sides alike.
//  2. Agent RSS with 1k enrolled pods: a real sluice-agent enrolls 1000 pod namespaces (registry
//     documents + a ZDS peer that opens the listeners), then its VmRSS is read.
//
// Writes JSON and Markdown to --out (bench/results/). Needs root. Everything it creates is named
// sluice-bench-<pid> and removed at exit.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "agent/datapath/datapath.h"
#include "common/mountinfo.h"
#include "common/netns.h"
#include "common/process.h"
#include "tests/support/cgroup_guard.h"
#include "tests/support/sockets.h"
#include "tests/support/zds_peer.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;
using sluice::test::CgroupGuard;
using sluice::test::Fd;

namespace {

const std::string kName = "sluice-bench-" + std::to_string(::getpid());
constexpr const char* kAppIp = "198.18.250.1";
constexpr uint16_t kAppPort = 8080;

void must(const std::vector<std::string>& argv) {
    auto r = sluice::run_process({.argv = argv});
    if (r.exit_code != 0)
        throw std::runtime_error(sluice::join_argv(argv) + ": " + r.err);
}

// Everything named kName, removed in reverse on exit (also on exceptions).
struct Scratch {
    std::string cg2 = sluice::find_cgroup2_mount(sluice::read_mountinfo()).value();
    std::string cgroup = cg2 + "/" + kName;
    std::string hooked = cgroup + "/hooked";
    std::string plain = cgroup + "/plain";
    std::string bpffs = "/sys/fs/bpf/" + kName;
    std::string run_dir = "/var/run/" + kName;
    std::vector<std::string> netns;
    std::vector<pid_t> pids;

    Scratch() {
        sluice::ensure_bpffs_mounted();
        fs::create_directories(hooked);
        fs::create_directories(plain);
        fs::create_directories(run_dir + "/registry");
    }
    ~Scratch() {
        for (pid_t p : pids) {
            ::kill(p, SIGKILL);
            sluice::wait_process(p, 5s);
        }
        if (fs::exists(bpffs))
            sluice::run_process({.argv = {"rm", "-rf", bpffs}});
        for (const auto& n : netns)
            sluice::run_process({.argv = {"ip", "netns", "del", n}});
        for (const auto& d : {hooked, plain, cgroup + "/agent", cgroup})
            ::rmdir(d.c_str());
        fs::remove_all(run_dir);
    }
    std::string add_netns(const std::string& tag) {
        std::string n = kName + "-" + tag;
        must({"ip", "netns", "add", n});
        netns.push_back(n);
        must({"ip", "-n", n, "link", "set", "lo", "up"});
        return n;
    }
};

struct Stats {
    double p50, p90, p99, mean;
};

Stats stats(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    auto at = [&](double q) { return v[static_cast<size_t>(q * (v.size() - 1))]; };
    double sum = 0;
    for (double x : v)
        sum += x;
    return {at(0.5), at(0.9), at(0.99), sum / v.size()};
}

// One blocking connect() to ip:port from inside `netns`, timed in microseconds; RST on close so
// no TIME_WAIT piles up.
double timed_connect(const std::string& ip, uint16_t port) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    auto t0 = std::chrono::steady_clock::now();
    int rc = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    auto t1 = std::chrono::steady_clock::now();
    linger lg{1, 0};
    ::setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    ::close(s);
    if (rc != 0)
        throw std::runtime_error(std::string("bench connect failed: ") + strerror(errno));
    return std::chrono::duration<double, std::micro>(t1 - t0).count();
}

// Accepts and closes everything until stopped.
struct Drain {
    std::atomic<bool> stop{false};
    std::thread t;
    explicit Drain(int fd) {
        t = std::thread([this, fd] {
            while (!stop) {
                Fd c = sluice::test::accept_on(fd, 100);
            }
        });
    }
    ~Drain() {
        stop = true;
        t.join();
    }
};

json connect_cost(Scratch& s, int rules, int ipcache, int rounds, int per_round) {
    const std::string ns = s.add_netns(fmt::format("c{}", rules));
    const std::string ns_path = sluice::netns_path(ns);
    must({"ip", "-n", ns, "addr", "add", std::string(kAppIp) + "/32", "dev", "lo"});
    Fd app = sluice::test::tcp_listen(ns_path, kAppIp, kAppPort);
    Fd ztunnel;
    sluice::run_in_netns(ns_path, [&] {
        ztunnel = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        int mark = SLUICE_ZTUNNEL_MARK, one = 1;
        ::setsockopt(ztunnel.get(), SOL_SOCKET, SO_MARK, &mark, sizeof mark);
        ::setsockopt(ztunnel.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(SLUICE_PORT_OUTBOUND);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(ztunnel.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
            ::listen(ztunnel.get(), 4096) != 0) {
            throw std::runtime_error("ztunnel listener");
        }
    });
    Drain d1(app.get()), d2(ztunnel.get());

    sluice::datapath::DatapathConfig cfg;
    cfg.bpffs_root = s.bpffs + fmt::format("/c{}", rules);
    cfg.cgroup_path = s.hooked;
    cfg.map_sizes.ipcache = std::max(ipcache + 16, 1024);
    cfg.map_sizes.policy = std::max(rules + 16, 1024);
    auto dp = sluice::datapath::Datapath::open(cfg);
    if (!dp)
        throw std::runtime_error("datapath: " + dp.error().message);
    auto& datapath = **dp;

    std::mt19937 rng(42);
    auto load_start = std::chrono::steady_clock::now();
    for (int i = 0; i < ipcache; ++i) {
        uint32_t host = (198u << 24) | (18u << 16) | (rng() & 0x1ffff);  // 198.18.0.0/15
        auto cidr = sluice::datapath::parse_cidr(fmt::format(
            "{}.{}.{}.{}/32", host >> 24, (host >> 16) & 255, (host >> 8) & 255, host & 255));
        (void)datapath.upsert_ipcache(*cidr, 100 + (rng() % 5000));
    }
    (void)datapath.upsert_ipcache(*sluice::datapath::parse_cidr(std::string(kAppIp) + "/32"), 7);
    for (int i = 0; i < rules; ++i) {
        sluice_policy_key k{
            .endpoint_id = 1 + static_cast<uint32_t>(rng() % 1000),
            .peer_identity = 100 + static_cast<uint32_t>(rng() % 5000),
            .port = static_cast<uint16_t>(1 + rng() % 65535),
            .proto = IPPROTO_TCP,
            .direction = static_cast<uint8_t>(rng() % 2 ? SLUICE_DIR_EGRESS : SLUICE_DIR_INGRESS)};
        (void)datapath.upsert_policy(
            k, {.verdict = SLUICE_VERDICT_DENY, .rule_id = static_cast<uint32_t>(i + 1)});
    }
    // The measured connect matches an allow entry at the first lookup step.
    (void)datapath.upsert_policy({.endpoint_id = 1,
                                  .peer_identity = 7,
                                  .port = kAppPort,
                                  .proto = IPPROTO_TCP,
                                  .direction = SLUICE_DIR_EGRESS},
                                 {.verdict = SLUICE_VERDICT_ALLOW, .rule_id = 999999});
    const double load_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start)
            .count();
    (void)datapath.enroll_netns(sluice::netns_cookie(ns_path), {.endpoint_id = 1, .flags = 0});

    std::vector<double> hooked, plain;
    for (int r = 0; r < rounds; ++r) {
        for (auto* side : {&plain, &hooked}) {
            CgroupGuard in(side == &hooked ? s.hooked : s.plain);
            sluice::run_in_netns(ns_path, [&] {
                for (int i = 0; i < per_round; ++i)
                    side->push_back(timed_connect(kAppIp, kAppPort));
            });
        }
    }
    const uint64_t redirected = datapath.event_count(SLUICE_EVENT_REDIRECTED).value_or(0);
    (void)datapath.detach_and_unpin();
    if (redirected != hooked.size()) {
        throw std::runtime_error(fmt::format(
            "expected {} redirected connects, the datapath counted {}", hooked.size(), redirected));
    }
    Stats h = stats(hooked), p = stats(plain);
    return {{"policy_rules", rules},
            {"ipcache_entries", ipcache},
            {"connects_per_side", hooked.size()},
            {"map_load_ms", load_ms},
            {"detached_us", {{"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"mean", p.mean}}},
            {"attached_us", {{"p50", h.p50}, {"p90", h.p90}, {"p99", h.p99}, {"mean", h.mean}}},
            {"added_p50_us", h.p50 - p.p50},
            {"ratio_p50", h.p50 / p.p50}};
}

long rss_kib(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(f, line);) {
        if (line.rfind("VmRSS:", 0) == 0)
            return std::stol(line.substr(6));
    }
    return -1;
}

json agent_rss(Scratch& s, const std::string& bin_dir, int pods) {
    const std::string agent_cg = s.cgroup + "/agent";
    fs::create_directories(agent_cg);
    const std::string node_ns = s.add_netns("node");
    sluice::test::ZdsPeer peer(s.run_dir + "/ztunnel.sock", agent_cg);
    sluice::ProcessSpec spec{
        .argv = {bin_dir + "/sluice-agent", "--node-name", "bench", "--run-dir", s.run_dir,
                 "--bpffs-root", s.bpffs + "/agent", "--cgroup-path", s.cgroup, "--registry-dir",
                 s.run_dir + "/registry", "--audit-log", s.run_dir + "/audit.log", "--log-level",
                 "warn"},
        .netns = sluice::netns_path(node_ns),
        .cgroup_dir = agent_cg};
    pid_t pid = sluice::spawn_process(spec, s.run_dir + "/agent.log");
    s.pids.push_back(pid);
    if (!peer.wait_connected(20s))
        throw std::runtime_error("agent did not start; see " + s.run_dir + "/agent.log");
    const long idle = rss_kib(pid);
    auto t0 = std::chrono::steady_clock::now();
    std::ofstream ns_doc(s.run_dir + "/registry/namespace.yaml");
    ns_doc << "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bench\n  labels: "
              "{istio.io/dataplane-mode: ambient}\n";
    ns_doc.close();
    for (int i = 0; i < pods; ++i) {
        const std::string ns = s.add_netns(fmt::format("p{}", i));
        std::ofstream doc(s.run_dir + fmt::format("/registry/pod-{}.yaml", i));
        doc << fmt::format(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{0}\n  namespace: bench\n  uid: "
            "uid-{0}\n"
            "  annotations: {{sluice.dev/netns: {1}}}\nspec: {{nodeName: bench, "
            "serviceAccountName: sa}}\n"
            "status: {{podIPs: [{{ip: 198.18.{2}.{3}}}]}}\n",
            i, sluice::netns_path(ns), 100 + i / 250, 1 + i % 250);
    }
    // The agent's reconcile enrolls running pods from the registry; wait until all are in.
    auto deadline = std::chrono::steady_clock::now() + 300s;
    size_t enrolled = 0;
    while (std::chrono::steady_clock::now() < deadline) {
        std::ifstream st(s.run_dir + "/agent-state.json");
        json j = json::parse(st, nullptr, false);
        enrolled = j.is_discarded() ? 0 : j.value("pods", json::array()).size();
        if (enrolled == static_cast<size_t>(pods))
            break;
        std::this_thread::sleep_for(200ms);
    }
    const double enroll_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::this_thread::sleep_for(1s);
    const long rss = rss_kib(pid);
    ::kill(pid, SIGTERM);
    sluice::wait_process(pid, 10s);
    sluice::run_process(
        {.argv = {bin_dir + "/sluice-agent", "--uninstall", "--bpffs-root", s.bpffs + "/agent",
                  "--cgroup-path", s.cgroup, "--node-name", "bench"}});
    if (enrolled != static_cast<size_t>(pods))
        throw std::runtime_error(fmt::format("only {} of {} pods enrolled", enrolled, pods));
    return {{"enrolled_pods", pods},
            {"agent_rss_idle_kib", idle},
            {"agent_rss_kib", rss},
            {"enroll_seconds", enroll_s}};
}

std::string machine() {
    utsname u{};
    uname(&u);
    std::ifstream cpu("/proc/cpuinfo");
    std::string model;
    for (std::string line; std::getline(cpu, line);) {
        if (line.rfind("model name", 0) == 0) {
            model = line.substr(line.find(':') + 2);
            break;
        }
    }
    return fmt::format("{} {} {}, {}, {} CPUs", u.sysname, u.release, u.machine, model,
                       std::thread::hardware_concurrency());
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"sluice-bench-hooks: cost of the eBPF hooks and agent memory"};
    std::string out = "bench/results";
    std::string bin_dir;
    int rounds = 10, per_round = 1000, pods = 1000;
    app.add_option("--out", out, "Directory for datapath-hooks.{json,md}");
    app.add_option("--bin-dir", bin_dir, "Where sluice-agent is")->required();
    app.add_option("--rounds", rounds, "Alternating rounds per side")->check(CLI::Range(1, 100));
    app.add_option("--per-round", per_round, "connect() calls per round")
        ->check(CLI::Range(10, 10000));
    app.add_option("--pods", pods, "Pods for the agent RSS figure")->check(CLI::Range(1, 2000));
    CLI11_PARSE(app, argc, argv);
    std::string command;
    for (int i = 0; i < argc; ++i)
        command += (i ? " " : "") + std::string(argv[i]);

    json result;
    try {
        Scratch s;
        result["connect"] = json::array({connect_cost(s, 0, 0, rounds, per_round),
                                         connect_cost(s, 10000, 100000, rounds, per_round)});
        result["agent"] = agent_rss(s, bin_dir, pods);
    } catch (const std::exception& e) {
        std::cerr << "sluice-bench-hooks: " << e.what() << "\n";
        return 1;
    }
    auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    result["machine"] = machine();
    result["date"] = date;
    result["command"] = command;

    fs::create_directories(out);
    std::ofstream(out + "/datapath-hooks.json") << result.dump(2) << "\n";
    std::ofstream md(out + "/datapath-hooks.md");
    md << "# eBPF hook cost and agent memory\n\n"
       << "Machine: " << result["machine"].get<std::string>() << "  \nDate: " << date
       << "  \nCommand: `" << command << "`\n\n"
       << "connect() latency in one netns, blocking local TCP handshake, programs attached "
          "(redirect to :15001 after "
          "policy and ipcache lookups) vs detached (same connect from a cgroup without programs), "
          "alternating rounds.\n\n"
       << "| policy entries | ipcache entries | connects/side | detached p50 µs | attached p50 µs "
          "| added p50 µs | "
          "ratio | detached p99 µs | attached p99 µs |\n|---|---|---|---|---|---|---|---|---|\n";
    for (const auto& c : result["connect"]) {
        md << fmt::format(
            "| {} | {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.3f} | {:.2f} | {:.2f} |\n",
            c["policy_rules"].get<int>(), c["ipcache_entries"].get<int>(),
            c["connects_per_side"].get<int>(), c["detached_us"]["p50"].get<double>(),
            c["attached_us"]["p50"].get<double>(), c["added_p50_us"].get<double>(),
            c["ratio_p50"].get<double>(), c["detached_us"]["p99"].get<double>(),
            c["attached_us"]["p99"].get<double>());
    }
    const auto& a = result["agent"];
    md << fmt::format(
        "\nsluice-agent RSS: {:.1f} MiB idle, {:.1f} MiB with {} enrolled pods (target ≤ 20 MiB); "
        "enrolling them took {:.1f} s.\n",
        a["agent_rss_idle_kib"].get<long>() / 1024.0, a["agent_rss_kib"].get<long>() / 1024.0,
        a["enrolled_pods"].get<int>(), a["enroll_seconds"].get<double>());
    md.close();
    std::ifstream again(out + "/datapath-hooks.md");
    std::cout << again.rdbuf();
    return 0;
}
