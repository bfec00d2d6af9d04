// netns tier: a ztunnel upgrade on a sidecarless node (real agent, eBPF capture), as Istio
// ambient does it: a second sluice-ztunnel starts on node0 while the first still serves, the
// agent gives it every workload and makes it the steering session, then the first one drains
// (/quitquitquit) and exits. Throughout, new connections from a pod must all succeed, and a
// long transfer through the old ztunnel must finish intact.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <future>
#include <iostream>
#include <sstream>
#include <thread>

#include "common/process.h"
#include "tests/support/cgroup_guard.h"
#include "tests/support/privileged.h"
#include "tests/support/proc.h"
#include "tests/support/sockets.h"
#include "tests/testbed/mesh.h"
#include "tests/testbed/spec.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

using namespace std::chrono_literals;
using test::Fd;
using test::read_cmdline;

constexpr const char* kSpec = R"(
nodes: 2
mesh: sidecarless
namespaces:
  - {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
pods:
  - {name: client, namespace: mesh, serviceAccount: client, node: 0}
  - {name: server, namespace: mesh, serviceAccount: server, node: 1, labels: {app: server}}
  - {name: local, namespace: mesh, serviceAccount: local, node: 0, labels: {app: local}}
services:
  - {name: server, namespace: mesh, selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
  - {name: local, namespace: mesh, selector: {app: local}, ports: [{port: 80, targetPort: 8080}]}
)";
constexpr uint16_t kEchoPort = 8080;
constexpr uint16_t kSinkPort = 9090;
constexpr int kConnections = 500;
constexpr size_t kChunk = 256 * 1024;
constexpr int kChunks = 96;  // 24 MiB, paced over ~8 s
constexpr auto kChunkPause = 80ms;

// Listener `old` has a connection in its accept queue when it closes; a second listener of its
// SO_REUSEPORT group exists. Prints "migrated hi" when the kernel moved the connection to the
// other listener (tcp_migrate_req=1), "lost <error>" when it reset it.
constexpr const char* kMigrateProbe = R"(
import socket
def listener():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 18080))
    s.listen(8)
    return s
old = listener()
client = socket.create_connection(("127.0.0.1", 18080))
new = listener()
old.close()
new.settimeout(1)
try:
    conn, _ = new.accept()
    client.sendall(b"hi")
    print("migrated", conn.recv(2).decode())
except socket.timeout:
    client.settimeout(1)
    try:
        print("lost", client.recv(1))
    except OSError as e:
        print("lost", e.strerror)
)";

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

size_t count_of(const std::string& text, const std::string& what) {
    size_t n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
        ++n;
    return n;
}

// test::tcp_connect/tcp_accept hand out non-blocking sockets; the transfer wants plain
// blocking calls, bounded by socket timeouts.
void make_blocking(int fd, int timeout_s) {
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    const timeval t{.tv_sec = timeout_s, .tv_usec = 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof t);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
}

char pattern_byte(size_t i) {
    return static_cast<char>((i * 31 + i / 4099) & 0xff);
}

// `argv` with `flag`'s value replaced (or the flag appended).
std::vector<std::string> with_flag(std::vector<std::string> argv, const std::string& flag,
                                   const std::string& value) {
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
        if (argv[i] == flag) {
            argv[i + 1] = value;
            return argv;
        }
    }
    argv.push_back(flag);
    argv.push_back(value);
    return argv;
}

bool exited(pid_t pid) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid)
        return true;
    return r < 0 && ::kill(pid, 0) != 0;
}

// Echoes connections one after another (each until the peer closes) until `stop`.
void echo_server(const Fd& listener, const std::atomic<bool>& stop) {
    while (!stop)
        test::echo_one_connection(listener, 500);
}

// Reads one connection to its end, checks every byte against pattern_byte(), answers
// "<bytes> ok|bad".
void sink_server(const Fd& listener) {
    Fd c = test::tcp_accept(listener, 10000);
    if (!c)
        return;
    make_blocking(c.get(), 20);
    size_t total = 0;
    bool intact = true;
    char buf[64 * 1024];
    for (;;) {
        const ssize_t n = ::recv(c.get(), buf, sizeof buf, 0);
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; ++i)
            intact &= buf[i] == pattern_byte(total + static_cast<size_t>(i));
        total += static_cast<size_t>(n);
    }
    const std::string reply = std::to_string(total) + (intact ? " ok" : " bad");
    (void)::send(c.get(), reply.data(), reply.size(), MSG_NOSIGNAL);
}

class ZtunnelNodeTakeoverTest : public ::testing::Test {
  protected:
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        name_ = "ztko" + std::to_string(::getpid() % 100000);
        ClusterSpec spec = parse_spec(kSpec);
        spec.name = name_;
        options_.bin_dir = SLUICE_BIN_DIR;
        options_.cni_path.insert(options_.cni_path.begin(), SLUICE_BIN_DIR);
        state_ = up(spec, options_);
    }
    void TearDown() override {
        if (name_.empty())
            return;
        if (HasFailure()) {
            for (const auto& n : state_.nodes) {
                for (const char* log : {"/ztunnel.log", "/ztunnel-access.log", "/ztunnel-new.log",
                                        "/ztunnel-new-access.log", "/agent.log"})
                    std::cerr << "==== " << n.name << log << "\n" << read_file(n.run_dir + log);
            }
        }
        down(name_, options_);
        EXPECT_EQ(leftovers(name_, options_), std::vector<std::string>{});
    }
    const PodState& pod(const std::string& ref) const { return *state_.find_pod(ref); }
    std::string service_vip(const std::string& name) const {
        for (const auto& s : state_.services) {
            if (s.spec.name == name)
                return s.vip;
        }
        throw std::runtime_error("no service " + name);
    }

    std::string name_;
    TestbedOptions options_;
    ClusterState state_;
};

TEST_F(ZtunnelNodeTakeoverTest, NewZtunnelTakesOverWhileTheOldDrainsWithoutRefusingAny) {
    const NodeState& node0 = state_.nodes.at(0);
    const PodState& client = pod("mesh/client");
    const PodState& server = pod("mesh/server");
    const PodState& local = pod("mesh/local");
    auto old_daemon = std::find_if(state_.daemons.begin(), state_.daemons.end(), [](auto& d) {
        return d.node == 0 && d.name == "sluice-ztunnel";
    });
    ASSERT_NE(old_daemon, state_.daemons.end());
    const pid_t old_pid = old_daemon->pid;
    const std::vector<std::string> old_argv = read_cmdline(old_pid);
    ASSERT_FALSE(old_argv.empty());

    // Apps: echo on :8080 in server (node1) and local (node0), a checking sink on :9090.
    std::atomic<bool> stop = false;
    Fd server_echo = test::tcp_listen(server.netns, "0.0.0.0", kEchoPort);
    Fd local_echo = test::tcp_listen(local.netns, "0.0.0.0", kEchoPort);
    Fd sink = test::tcp_listen(server.netns, "0.0.0.0", kSinkPort);
    std::thread server_app([&] { echo_server(server_echo, stop); });
    std::thread local_app([&] { echo_server(local_echo, stop); });
    std::thread sink_app([&] { sink_server(sink); });
    // Tear down in order whatever happens below (the threads stop within 0.5 s).
    struct Joiner {
        std::atomic<bool>& stop;
        std::vector<std::thread*> threads;
        ~Joiner() {
            stop = true;
            for (auto* t : threads)
                if (t->joinable())
                    t->join();
        }
    } joiner{stop, {&server_app, &local_app, &sink_app}};

    const std::string server_vip = service_vip("server");
    const std::string local_vip = service_vip("local");
    std::optional<test::CgroupGuard> in_client;  // connect() as an app of the client pod
    in_client.emplace(client.cgroup);

    // The long transfer, accepted by the old ztunnel (the only one yet).
    int err = 0;
    Fd long_conn = test::tcp_connect(client.netns, server.ip, kSinkPort, &err);
    ASSERT_TRUE(long_conn) << strerror(err);
    make_blocking(long_conn.get(), 20);
    const auto transfer_start = std::chrono::steady_clock::now();
    auto transfer = std::async(std::launch::async, [&]() -> std::pair<std::string, double> {
        std::string chunk(kChunk, '\0');
        size_t sent = 0;
        for (int i = 0; i < kChunks; ++i) {
            for (size_t j = 0; j < kChunk; ++j)
                chunk[j] = pattern_byte(sent + j);
            for (size_t off = 0; off < chunk.size();) {
                const ssize_t n =
                    ::send(long_conn.get(), chunk.data() + off, chunk.size() - off, MSG_NOSIGNAL);
                if (n <= 0) {
                    return {"send: " + std::string(strerror(errno)) + " after " +
                                std::to_string(sent + off) + " bytes",
                            0};
                }
                off += static_cast<size_t>(n);
            }
            sent += kChunk;
            std::this_thread::sleep_for(kChunkPause);
        }
        ::shutdown(long_conn.get(), SHUT_WR);
        const std::string reply = test::recv_exactly(long_conn.get(), 64, 15000);
        return {reply,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - transfer_start)
                    .count()};
    });

    // New connections all along: client → service VIP on node1 and on node0, alternately.
    struct LoadResult {
        int ok = 0;
        std::vector<std::string> failures;
    };
    auto load = std::async(std::launch::async, [&] {
        LoadResult r;
        const auto deadline = std::chrono::steady_clock::now() + 60s;
        for (int i = 0; i < kConnections && std::chrono::steady_clock::now() < deadline; ++i) {
            const std::string& vip = i % 2 == 0 ? server_vip : local_vip;
            int e = 0;
            Fd c = test::tcp_connect(client.netns, vip, 80, &e, 3000);
            const std::string msg = "hello " + std::to_string(i) + "\n";
            std::string got = c ? test::send_and_receive(c, msg, 3000) : "";
            if (got == msg) {
                ++r.ok;
            } else {
                r.failures.push_back("#" + std::to_string(i) + " to " + vip + ": " +
                                     (c ? "echoed '" + got + "'" : strerror(e)));
            }
            std::this_thread::sleep_for(10ms);
        }
        return r;
    });

    // The new ztunnel: same flags, its own admin/metrics/readiness ports and access log.
    std::this_thread::sleep_for(500ms);
    std::vector<std::string> argv = old_argv;
    argv = with_flag(argv, "--admin-address", "127.0.0.1:15100");
    argv = with_flag(argv, "--metrics-address", "0.0.0.0:15120");
    argv = with_flag(argv, "--readiness-address", "0.0.0.0:15121");
    argv = with_flag(argv, "--access-log", node0.run_dir + "/ztunnel-new-access.log");
    const pid_t new_pid = start_node_daemon(state_, node0, "sluice-ztunnel-new", argv,
                                            node0.run_dir + "/ztunnel-new.log", 15121, 20s);

    // The agent holds both sessions; the new one steers once its snapshot is acked.
    const std::string steering = "pid " + std::to_string(new_pid) + " ready steering";
    std::string agent_view;
    for (int i = 0; i < 100 && agent_view.find(steering) == std::string::npos; ++i) {
        agent_view = local_http_get(node0.netns, 15031, "/healthz/ready").value_or("");
        if (agent_view.find(steering) == std::string::npos)
            std::this_thread::sleep_for(50ms);
    }
    EXPECT_NE(agent_view.find(steering), std::string::npos) << agent_view;
    EXPECT_NE(agent_view.find("pid " + std::to_string(old_pid) + " ready\n"), std::string::npos)
        << agent_view;
    const std::string metrics_during = test::http_get(node0.netns, "127.0.0.1", 15030, "/metrics");
    EXPECT_NE(metrics_during.find("sluice_agent_ztunnel_sessions 2"), std::string::npos);
    // Connections queued on a closing listener migrate to the other one of the reuseport group.
    for (const PodState* p : {&client, &local}) {
        auto r = run_process(pod_process(*p, {"cat", "/proc/sys/net/ipv4/tcp_migrate_req"}));
        EXPECT_EQ(r.out, "1\n") << p->name;
    }
    // What that buys, checked on this kernel: a queued connection survives its listener's close
    // in the pod netns, and is reset in the node netns, which nobody changed (per-netns sysctl).
    auto probe = run_process({.argv = {"python3", "-c", kMigrateProbe}, .netns = local.netns});
    EXPECT_EQ(probe.out, "migrated hi\n") << probe.err;
    probe = run_process({.argv = {"python3", "-c", kMigrateProbe}, .netns = node0.netns});
    EXPECT_EQ(probe.out, "lost Connection reset by peer\n") << probe.err;

    // The old one drains.
    std::this_thread::sleep_for(1s);
    const auto quit_at = std::chrono::steady_clock::now();
    const auto quit = test::http_request(node0.netns, "127.0.0.1", 15000, "POST", "/quitquitquit");
    EXPECT_EQ(quit.status, 200u);
    bool gone = false;
    double gone_after = 0;
    while (!gone && std::chrono::steady_clock::now() - quit_at < 35s) {
        gone = exited(old_pid);
        if (!gone)
            std::this_thread::sleep_for(50ms);
    }
    gone_after = std::chrono::duration<double>(std::chrono::steady_clock::now() - quit_at).count();
    EXPECT_TRUE(gone) << "the old ztunnel still runs 35 s after /quitquitquit";
    EXPECT_LT(gone_after, 30.0) << "the default drain timeout is 30 s";

    const auto [reply, transfer_seconds] = transfer.get();
    const double quit_seconds = std::chrono::duration<double>(quit_at - transfer_start).count();
    EXPECT_EQ(reply, std::to_string(kChunk * kChunks) + " ok")
        << "the transfer through the draining ztunnel lost or changed bytes";
    EXPECT_GT(transfer_seconds, quit_seconds) << "the transfer was not in flight at the drain";
    EXPECT_GE(quit_seconds + gone_after, transfer_seconds)
        << "the old ztunnel exited before its last connection finished";

    const LoadResult r = load.get();
    EXPECT_EQ(r.ok, kConnections);
    EXPECT_TRUE(r.failures.empty()) << r.failures.size() << " failed, first: " << r.failures[0];

    // Afterwards the new ztunnel alone serves new connections ("after": 5 bytes each way, unlike
    // the loop's messages, so its access-log lines are these).
    for (int i = 0; i < 10; ++i) {
        Fd c = test::tcp_connect(client.netns, i % 2 == 0 ? server_vip : local_vip, 80, &err);
        ASSERT_TRUE(c) << strerror(err);
        EXPECT_EQ(test::send_and_receive(c, "after"), "after");
    }
    in_client.reset();
    const std::string after_line = R"("bytes_received":5,"bytes_sent":5,"direction":"outbound")";
    const std::string new_log = node0.run_dir + "/ztunnel-new-access.log";
    for (int i = 0; i < 100 && count_of(read_file(new_log), after_line) < 10; ++i)
        std::this_thread::sleep_for(20ms);
    EXPECT_EQ(count_of(read_file(new_log), after_line), 10u);
    std::cout << "takeover: " << r.ok << "/" << kConnections << " connections ok; transfer of "
              << kChunk * kChunks << " bytes took " << transfer_seconds << " s, quit at "
              << quit_seconds << " s; old ztunnel exited " << gone_after
              << " s after /quitquitquit\n";
    agent_view = local_http_get(node0.netns, 15031, "/healthz/ready").value_or("");
    EXPECT_EQ(count_of(agent_view, "session "), 1u) << agent_view;
    EXPECT_NE(agent_view.find(steering), std::string::npos) << agent_view;
    EXPECT_NE(read_file(node0.run_dir + "/ztunnel.log").find("drained (0 connections left)"),
              std::string::npos);
}

}  // namespace
}  // namespace sluice::testbed
