// netns tier: sluice-agent on the testbed with the real CNI chain (bridge + host-local +
// sluice-cni). The ztunnel side of the ZDS socket is a test peer (tests/support/zds_peer.h), so
// these tests see exactly what the datapath hands to ztunnel's listeners.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/process.h"
#include "tests/netns/sidecarless_spec.h"
#include "tests/support/cgroup_guard.h"
#include "tests/support/kubelet_volume.h"
#include "tests/support/privileged.h"
#include "tests/support/proc.h"
#include "tests/support/sockets.h"
#include "tests/support/zds_peer.h"
#include "tests/testbed/mesh.h"
#include "tests/testbed/registry.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using test::CgroupGuard;
using test::Fd;
using test::read_cmdline;

constexpr uint16_t kAppPort = 8080;

// What getsockopt(SO_ORIGINAL_DST) says for a proxy-side socket, as "ip:port".
std::string original_dst(int fd, bool ipv6) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (::getsockopt(fd, ipv6 ? SOL_IPV6 : SOL_IP, SO_ORIGINAL_DST, &ss, &len) != 0) {
        return std::string("error: ") + strerror(errno);
    }
    char buf[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
        return std::string(buf) + ":" + std::to_string(ntohs(a->sin_port));
    }
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(a->sin6_port));
}

// Entries of a pinned map, via bpftool's JSON dump.
size_t map_entries(const std::string& pin) {
    auto r = run_process({.argv = {"bpftool", "-j", "map", "dump", "pinned", pin}});
    if (r.exit_code != 0)
        return SIZE_MAX;
    return nlohmann::json::parse(r.out).size();
}

class AgentTest : public ::testing::Test {
  protected:
    virtual std::string spec_yaml() const {
        return std::string(kSidecarlessClientServerSpec) +
               "  - {name: outsider, namespace: plain, node: 0}\n";
    }
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        name_ = "ag" + std::to_string(::getpid() % 100000);
        ClusterSpec spec = parse_spec(spec_yaml());
        spec.name = name_;
        options_.bin_dir = SLUICE_BIN_DIR;
        options_.start_ztunnel = false;  // the ZdsPeer below is this test's ztunnel
        options_.cni_path.insert(options_.cni_path.begin(), SLUICE_BIN_DIR);
        options_.after_node_mesh = [this](ClusterState&, const NodeState& n) {
            peers_[n.index] =
                std::make_unique<test::ZdsPeer>(n.run_dir + "/ztunnel.sock", n.system_cgroup);
            ASSERT_TRUE(peers_[n.index]->wait_connected(5s));
        };
        state_ = up(spec, options_);
    }
    void TearDown() override {
        if (name_.empty())
            return;
        if (HasFailure() || std::getenv("SLUICE_TEST_DUMP_LOGS") != nullptr) {
            // The daemons' logs go away with the cluster: show them while they exist.
            for (const auto& n : state_.nodes) {
                std::ifstream f(n.run_dir + "/agent.log");
                std::cerr << "---- " << n.name << " agent.log\n" << f.rdbuf() << "\n";
            }
        }
        peers_.clear();
        const auto start = std::chrono::steady_clock::now();
        down(name_, options_);
        const auto took = std::chrono::steady_clock::now() - start;
        EXPECT_LT(took, 5s) << "down took "
                            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                            << " ms";
        EXPECT_EQ(leftovers(name_, options_), std::vector<std::string>{});
    }
    const PodState& pod(const std::string& ref) { return *state_.find_pod(ref); }
    const NodeState& node(int i) { return state_.nodes.at(i); }
    test::ZdsPeer::Listeners listeners(int node_index, const std::string& pod_ref) {
        auto l = peers_.at(node_index)->listeners(pod_ref, 5s);
        if (!l)
            throw std::runtime_error("ztunnel peer never got " + pod_ref);
        return *l;
    }
    // connect() from a pod, as an app in it would (its cgroup and netns).
    Fd connect_from(const PodState& from, const std::string& ip, uint16_t port, int* err) {
        CgroupGuard in_pod(from.cgroup);
        return test::tcp_connect(from.netns, ip, port, err);
    }
    std::string metrics(int node_index) {
        return test::http_get(node(node_index).netns, "127.0.0.1", 15030, "/metrics");
    }

    std::string name_;
    TestbedOptions options_;
    ClusterState state_;
    std::map<int, std::unique_ptr<test::ZdsPeer>> peers_;
};

TEST_F(AgentTest, EnrollsOnlyAmbientPodsThroughTheCniChain) {
    EXPECT_TRUE(peers_[0]->listeners("mesh/client", 1s).has_value());
    EXPECT_TRUE(peers_[1]->listeners("mesh/server", 1s).has_value());
    EXPECT_FALSE(peers_[0]->listeners("plain/outsider", 100ms).has_value());
    // CNI CHECK agrees, and the agent's metrics count what it did.
    EXPECT_NO_THROW(cni_check(state_, pod("mesh/client")));
    const std::string m = metrics(0);
    EXPECT_NE(m.find("sluice_agent_enrolled_pods 1"), std::string::npos) << m;
    EXPECT_NE(m.find("sluice_agent_cni_requests_total{command=\"ADD\",result=\"ok\"} 2"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("sluice_agent_ztunnel_connected 1"), std::string::npos) << m;
    // The pinned maps hold one enrolled netns and both pod addresses on each node.
    EXPECT_EQ(map_entries(node(0).bpffs + "/maps/enrolled_netns"), 1u);
    EXPECT_EQ(map_entries(node(0).bpffs + "/maps/endpoint_addrs"), 2u);
    // sluicectl reads the same from the pinned maps.
    auto ctl = run_process({.argv = {std::string(SLUICE_BIN_DIR) + "/sluicectl", "pods", "--json",
                                     "--bpffs-root", node(0).bpffs, "--run-dir", node(0).run_dir}});
    ASSERT_EQ(ctl.exit_code, 0) << ctl.err;
    auto pods = nlohmann::json::parse(ctl.out);
    ASSERT_EQ(pods.size(), 1u);
    EXPECT_EQ(pods[0]["pod"], "mesh/client");
    EXPECT_EQ(pods[0]["captured"], true);
    EXPECT_EQ(pods[0]["ips"][0], pod("mesh/client").ip);
    // No iptables rule anywhere: capture is eBPF only.
    auto r = run_process(pod_process(pod("mesh/client"), {"iptables-save"}));
    EXPECT_EQ(r.out.find("-A "), std::string::npos) << r.out;
}

TEST_F(AgentTest, OutboundLandsOnZtunnelWithTheOriginalDestination) {
    for (bool v6 : {false, true}) {
        SCOPED_TRACE(v6 ? "IPv6" : "IPv4");
        const PodState& client = pod("mesh/client");
        const std::string dst = v6 ? pod("mesh/server").ip6 : pod("mesh/server").ip;
        auto l = listeners(0, "mesh/client");
        int err = 0;
        std::string app_view;
        Fd app;
        {
            CgroupGuard in_pod(client.cgroup);
            app = test::tcp_connect(client.netns, dst, kAppPort, &err);
            // getpeername4/6 give the app its original peer back, not 127.0.0.1:15001.
            if (app)
                app_view = test::peer_ip(app.get());
        }
        ASSERT_TRUE(app) << strerror(err);
        EXPECT_EQ(app_view, dst);
        Fd proxy = test::accept_on(v6 ? l.outbound6 : l.outbound4);
        ASSERT_TRUE(proxy) << "the connection did not land on ztunnel's :15001 in the pod's netns";
        {
            CgroupGuard as_ztunnel(node(0).system_cgroup);  // where ztunnel runs
            EXPECT_EQ(original_dst(proxy.get(), v6), dst + ":" + std::to_string(kAppPort));
        }
        ASSERT_EQ(::send(app.get(), "ping", 4, 0), 4);
        char buf[8] = {};
        std::this_thread::sleep_for(50ms);
        EXPECT_EQ(::recv(proxy.get(), buf, sizeof buf, 0), 4);
        EXPECT_STREQ(buf, "ping");
    }
    auto ctl = run_process({.argv = {std::string(SLUICE_BIN_DIR) + "/sluicectl", "datapath",
                                     "counters", "--json", "--bpffs-root", node(0).bpffs}});
    ASSERT_EQ(ctl.exit_code, 0) << ctl.err;
    EXPECT_EQ(nlohmann::json::parse(ctl.out)["events"]["redirected"], 2);
    EXPECT_NE(metrics(0).find("sluice_datapath_verdicts_total{direction=\"egress\",verdict="
                              "\"allow\",reason=\"redirected\"} 2"),
              std::string::npos);
}

TEST_F(AgentTest, PlaintextInboundIsSteeredToPort15006AndOutsidersAreNotCaptured) {
    const PodState& outsider = pod("plain/outsider");
    const PodState& server = pod("mesh/server");
    int err = 0;
    Fd app = connect_from(outsider, server.ip, kAppPort, &err);
    ASSERT_TRUE(app) << strerror(err);
    Fd inbound = test::accept_on(listeners(1, "mesh/server").inbound);
    ASSERT_TRUE(inbound) << "inbound plaintext was not steered to :15006";
    // The steered socket keeps the original destination and the real source.
    EXPECT_EQ(test::local_ip(inbound.get()), server.ip);
    EXPECT_EQ(test::local_port(inbound.get()), kAppPort);
    EXPECT_EQ(test::peer_ip(inbound.get()), outsider.ip);
}

TEST_F(AgentTest, CniDelRemovesEveryMapEntryOfThePod) {
    const PodState& server = pod("mesh/server");
    const uint64_t cookie = listeners(1, "mesh/server").netns_cookie;
    ASSERT_TRUE(fs::exists(node(1).bpffs + "/links/netns/" + std::to_string(cookie)));
    ASSERT_EQ(map_entries(node(1).bpffs + "/maps/enrolled_netns"), 1u);

    cni_del(state_, server);
    EXPECT_EQ(peers_[1]->deletes(), 1);
    EXPECT_EQ(map_entries(node(1).bpffs + "/maps/enrolled_netns"), 0u);
    EXPECT_EQ(map_entries(node(1).bpffs + "/maps/endpoint_addrs"), 0u);
    EXPECT_FALSE(fs::exists(node(1).bpffs + "/links/netns/" + std::to_string(cookie)));
    EXPECT_NE(metrics(1).find("sluice_agent_enrolled_pods 0"), std::string::npos);
    // DEL again (runtimes retry): still fine.
    EXPECT_NO_THROW(cni_del(state_, server));
    // The registry still lists the pod for a while; a registry change must not re-enroll it.
    write_registry(state_.registry_dir, registry_documents(state_));
    std::this_thread::sleep_for(700ms);
    EXPECT_EQ(map_entries(node(1).bpffs + "/maps/enrolled_netns"), 0u);
}

// A DEL names its sandbox: a late or repeated DEL of a sandbox the runtime has since replaced
// leaves the pod's current enrollment alone (before, it unenrolled the pod by name and marked
// it deleted, so nothing put it back: the pod ran without capture or policy).
TEST_F(AgentTest, CniDelOfAnotherSandboxLeavesThePodEnrolled) {
    PodState server = pod("mesh/server");
    server.container_id += "-replaced";
    cni_del(state_, server);
    EXPECT_EQ(peers_[1]->deletes(), 0);
    EXPECT_EQ(map_entries(node(1).bpffs + "/maps/enrolled_netns"), 1u);
    EXPECT_NE(metrics(1).find("sluice_agent_enrolled_pods 1"), std::string::npos);
    cni_del(state_, pod("mesh/server"));  // its own sandbox's DEL
    EXPECT_EQ(peers_[1]->deletes(), 1);
    EXPECT_EQ(map_entries(node(1).bpffs + "/maps/enrolled_netns"), 0u);
}

TEST_F(AgentTest, RemovingTheLabelUnenrollsAndRestoresDirectTraffic) {
    const PodState& client = pod("mesh/client");
    const PodState& outsider = pod("plain/outsider");
    // Opt the pod out, as `kubectl label pod client istio.io/dataplane-mode=none` would.
    ClusterState relabelled = state_;
    for (auto& p : relabelled.pods) {
        if (p.name == "client")
            p.labels["istio.io/dataplane-mode"] = "none";
    }
    write_registry(state_.registry_dir, registry_documents(relabelled));
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (peers_[0]->deletes() < 1 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    ASSERT_EQ(peers_[0]->deletes(), 1) << "the agent did not unenroll the relabelled pod";
    EXPECT_EQ(map_entries(node(0).bpffs + "/maps/enrolled_netns"), 0u);

    Fd app_listener = test::tcp_listen(outsider.netns, outsider.ip, kAppPort);
    int err = 0;
    Fd app = connect_from(client, outsider.ip, kAppPort, &err);
    ASSERT_TRUE(app) << strerror(err);
    Fd accepted = test::tcp_accept(app_listener);
    ASSERT_TRUE(accepted) << "the unenrolled pod's connect() did not reach the app directly";
    EXPECT_EQ(test::peer_ip(accepted.get()), client.ip);
}

// A CNI ADD that waits for ztunnel to connect holds up nothing else: the agent's metrics
// (which count enrolled pods) answer meanwhile, and the ADD completes once a ztunnel is there.
TEST_F(AgentTest, AnAddWaitingForZtunnelStallsNothingElse) {
    peers_.erase(0);  // node 0's ztunnel goes away
    std::this_thread::sleep_for(200ms);
    std::string added_error = "not finished";
    std::thread adding([&] {
        try {
            add_pod(state_, {.name = "late", .namespace_name = "mesh", .node = 0}, options_);
            added_error.clear();
        } catch (const std::exception& e) {
            added_error = e.what();
        }
    });
    std::this_thread::sleep_for(500ms);  // the ADD is waiting for a ztunnel now
    const auto start = std::chrono::steady_clock::now();
    const std::string m = metrics(0);
    const auto took = std::chrono::steady_clock::now() - start;
    EXPECT_LT(took, 1s) << "metrics waited for the ADD";
    EXPECT_NE(m.find("sluice_agent_ztunnel_connected 0"), std::string::npos) << m;
    peers_[0] =
        std::make_unique<test::ZdsPeer>(node(0).run_dir + "/ztunnel.sock", node(0).system_cgroup);
    adding.join();
    EXPECT_EQ(added_error, "");
    EXPECT_TRUE(peers_[0]->listeners("mesh/late", 5s).has_value());
    EXPECT_TRUE(peers_[0]->listeners("mesh/client", 1s).has_value()) << "the replay";
}

TEST_F(AgentTest, Kill9AndRestartKeepsConnectionsAndCapture) {
    const PodState& client = pod("mesh/client");
    const PodState& server = pod("mesh/server");
    auto agent =
        std::find_if(state_.daemons.begin(), state_.daemons.end(),
                     [](const DaemonState& d) { return d.node == 0 && d.name == "sluice-agent"; });
    ASSERT_NE(agent, state_.daemons.end());
    const std::vector<std::string> argv = read_cmdline(agent->pid);
    ASSERT_FALSE(argv.empty());

    int err = 0;
    Fd before = connect_from(client, server.ip, kAppPort, &err);
    ASSERT_TRUE(before) << strerror(err);
    Fd before_proxy = test::accept_on(listeners(0, "mesh/client").outbound4);
    ASSERT_TRUE(before_proxy);

    ASSERT_EQ(::kill(agent->pid, SIGKILL), 0);
    std::this_thread::sleep_for(100ms);
    // No agent: the pinned programs still capture new connections…
    Fd during = connect_from(client, server.ip, kAppPort, &err);
    ASSERT_TRUE(during) << strerror(err);
    EXPECT_TRUE(test::accept_on(listeners(0, "mesh/client").outbound4));
    // …and the established one still carries bytes both ways.
    EXPECT_EQ(::send(before.get(), "a", 1, 0), 1);
    std::this_thread::sleep_for(20ms);
    char c = 0;
    EXPECT_EQ(::recv(before_proxy.get(), &c, 1, 0), 1);

    // A new agent takes over the pinned maps and links and replays the pods to ztunnel.
    pid_t pid = spawn_process(node_process(node(0), argv), node(0).run_dir + "/agent.log");
    ASSERT_TRUE(wait_http_ready(node(0).netns, 15031, "/healthz/ready", 20s));
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (peers_[0]->snapshots() < 2 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(10ms);
    // ≥ 2: the peer may also have reached the dying agent's socket for a moment.
    EXPECT_GE(peers_[0]->connections(), 2);
    EXPECT_EQ(peers_[0]->snapshots(), 2);
    EXPECT_EQ(::send(before_proxy.get(), "b", 1, 0), 1);
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(::recv(before.get(), &c, 1, 0), 1);
    EXPECT_EQ(c, 'b');
    Fd after = connect_from(client, server.ip, kAppPort, &err);
    ASSERT_TRUE(after);
    EXPECT_TRUE(test::accept_on(listeners(0, "mesh/client").outbound4));
    EXPECT_NE(metrics(0).find("sluice_agent_enrolled_pods 1"), std::string::npos);
    (void)pid;  // killed with the node's cgroup by down()
}

// Policies from the ConfigMap folder, enforced in the kernel by the agent.
class AgentPolicyTest : public AgentTest {
  protected:
    std::string spec_yaml() const override {
        return R"(
nodes: 2
mesh: sidecarless
namespaces:
  - {name: tenant-a, labels: {istio.io/dataplane-mode: ambient}}
  - {name: tenant-b, labels: {istio.io/dataplane-mode: ambient}}
pods:
  - {name: a, namespace: tenant-a, serviceAccount: a, node: 0}
  - {name: b, namespace: tenant-b, serviceAccount: b, node: 0}
  - {name: server, namespace: tenant-a, serviceAccount: server, node: 1}
  - {name: outsider, namespace: plain, node: 0}
)";
    }
    static constexpr const char* kPolicies = R"(apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: tenant-a}
spec: {namespaces: [tenant-a]}
---
apiVersion: sluice.dev/v1alpha1
kind: IsolationBoundary
metadata: {name: tenant-b}
spec: {namespaces: [tenant-b]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-plaintext-outsiders, namespace: tenant-a}
spec:
  action: DENY
  rules:
    - from: [{source: {namespaces: [plain]}}]
)";
    void write_policy(const std::string& file, const std::string& text) {
        const std::string tmp = state_.policies_dir + "/." + file;
        std::ofstream(tmp) << text;
        fs::rename(tmp, state_.policies_dir + "/" + file);
    }
    // connect() from `from` to `to` until it fails with `want` (the policy took effect) or 5 s.
    int connect_errno_eventually(const PodState& from, const std::string& ip, int want) {
        int err = 0;
        auto deadline = std::chrono::steady_clock::now() + 5s;
        do {
            Fd c = connect_from(from, ip, kAppPort, &err);
            if (err == want)
                return err;
            std::this_thread::sleep_for(50ms);
        } while (std::chrono::steady_clock::now() < deadline);
        return err;
    }
    // SIGKILLs node 0's agent; returns its command line, for restart_agent().
    std::vector<std::string> kill_agent() {
        auto agent = std::find_if(
            state_.daemons.begin(), state_.daemons.end(),
            [](const DaemonState& d) { return d.node == 0 && d.name == "sluice-agent"; });
        std::vector<std::string> argv = read_cmdline(agent->pid);
        EXPECT_EQ(::kill(agent->pid, SIGKILL), 0);
        std::this_thread::sleep_for(100ms);
        return argv;
    }
    // Starts node 0's agent again; true once it is ready.
    bool restart_agent(const std::vector<std::string>& argv) {
        spawn_process(node_process(node(0), argv), node(0).run_dir + "/agent.log");
        return wait_http_ready(node(0).netns, 15031, "/healthz/ready", 20s);
    }
    // A file of the node's run directory (its audit log, the agent's log), as it is now.
    std::string run_file(int node_index, const std::string& name) {
        std::ifstream f(node(node_index).run_dir + "/" + name);
        std::stringstream ss;
        ss << f.rdbuf();
        return ss.str();
    }
    std::string audit(int node_index) { return run_file(node_index, "audit.log"); }
};

TEST_F(AgentPolicyTest, CrossBoundaryConnectFailsWithEpermAnAuditLineAndACounter) {
    const PodState& a = pod("tenant-a/a");
    const PodState& b = pod("tenant-b/b");
    write_policy("policies.yaml", kPolicies);
    ASSERT_EQ(connect_errno_eventually(b, a.ip, EPERM), EPERM) << "tenant-b reached tenant-a";

    std::this_thread::sleep_for(300ms);  // the event reader's poll interval
    const std::string log = audit(0);
    EXPECT_NE(log.find("\"dst\":\"" + a.ip + "\""), std::string::npos) << log;
    EXPECT_NE(log.find("\"reason\":\"policy_deny_egress\""), std::string::npos) << log;
    EXPECT_NE(log.find("\"pod\":\"tenant-b/b\""), std::string::npos) << log;
    const std::string m = metrics(0);
    EXPECT_NE(
        m.find(
            "sluice_agent_deny_events_total{direction=\"egress\",reason=\"policy_deny_egress\"}"),
        std::string::npos)
        << m;
    EXPECT_NE(m.find("sluice_policy_generation "), std::string::npos);
    EXPECT_EQ(m.find("sluice_policy_generation 0"), std::string::npos) << m;
    auto ctl = run_process({.argv = {std::string(SLUICE_BIN_DIR) + "/sluicectl", "datapath",
                                     "counters", "--json", "--bpffs-root", node(0).bpffs}});
    ASSERT_EQ(ctl.exit_code, 0) << ctl.err;
    EXPECT_GE(nlohmann::json::parse(ctl.out)["drops"]["policy_deny_egress"].get<int>(), 1);

    // Inside the boundary traffic still flows to ztunnel.
    int err = 0;
    Fd ok = connect_from(a, pod("tenant-a/server").ip, kAppPort, &err);
    EXPECT_TRUE(ok) << strerror(err);
    EXPECT_TRUE(test::accept_on(listeners(0, "tenant-a/a").outbound4));
}

TEST_F(AgentPolicyTest, ReloadClosesOpenConnectionsItDeniesAndKeepsAllowedOnes) {
    const PodState& a = pod("tenant-a/a");
    const PodState& b = pod("tenant-b/b");
    // Opened before any policy: b → a crosses no boundary yet. Both land on the test ztunnel.
    int err = 0;
    Fd denied = connect_from(b, a.ip, kAppPort, &err);
    ASSERT_TRUE(denied) << strerror(err);
    Fd denied_proxy = test::accept_on(listeners(0, "tenant-b/b").outbound4);
    Fd allowed = connect_from(a, pod("tenant-a/server").ip, kAppPort, &err);
    ASSERT_TRUE(allowed) << strerror(err);
    Fd allowed_proxy = test::accept_on(listeners(0, "tenant-a/a").outbound4);
    ASSERT_TRUE(denied_proxy && allowed_proxy);
    ASSERT_TRUE(test::bytes_flow(denied.get(), denied_proxy.get(), "before"));
    ASSERT_TRUE(test::bytes_flow(allowed.get(), allowed_proxy.get(), "before"));

    const auto written = std::chrono::steady_clock::now();
    write_policy("policies.yaml", kPolicies);
    // The app's socket is aborted; ztunnel's end of it gets a RST.
    EXPECT_EQ(test::recv_error_within(denied.get(), 3000), ECONNABORTED);
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - written);
    RecordProperty("reload_to_close_ms", static_cast<int>(took.count()));
    EXPECT_LT(took, 2s) << "reload to close took " << took.count() << " ms";
    EXPECT_EQ(test::recv_error_within(denied_proxy.get(), 1000), ECONNRESET);
    // Inside the boundary the open connection keeps carrying bytes.
    EXPECT_TRUE(test::bytes_flow(allowed.get(), allowed_proxy.get(), "after the reload"));
    EXPECT_EQ(connect_errno_eventually(b, a.ip, EPERM), EPERM);

    // The audit line follows the close on the agent's policy thread.
    std::string log;
    for (int i = 0; i < 20 && log.find("connection_closed") == std::string::npos; ++i) {
        std::this_thread::sleep_for(50ms);
        log = audit(0);
    }
    EXPECT_NE(log.find("\"type\":\"connection_closed\""), std::string::npos) << log;
    EXPECT_NE(log.find("\"dst\":\"" + a.ip + "\""), std::string::npos) << log;
    EXPECT_NE(log.find("\"pod\":\"tenant-b/b\""), std::string::npos) << log;
    const std::string m = metrics(0);
    EXPECT_NE(m.find("sluice_policy_connections_closed_total{direction=\"egress\"} 1"),
              std::string::npos)
        << m;
}

TEST_F(AgentPolicyTest, IngressDenyIsDroppedInTheKernel) {
    const PodState& server = pod("tenant-a/server");
    write_policy("policies.yaml", kPolicies);
    // The outsider is not in the mesh: only the server's node can refuse it.
    EXPECT_EQ(connect_errno_eventually(pod("plain/outsider"), server.ip, ECONNREFUSED),
              ECONNREFUSED);
    // Attempts made before the policy arrived were steered to :15006; drain them, then one more
    // denied attempt must not reach ztunnel at all.
    const int inbound = listeners(1, "tenant-a/server").inbound;
    while (test::accept_on(inbound, 100)) {
    }
    int err = 0;
    Fd again = connect_from(pod("plain/outsider"), server.ip, kAppPort, &err);
    EXPECT_EQ(err, ECONNREFUSED);
    EXPECT_FALSE(test::accept_on(inbound, 200));
    std::this_thread::sleep_for(300ms);
    const std::string log = audit(1);
    EXPECT_NE(log.find("\"reason\":\"policy_deny_ingress\""), std::string::npos) << log;
    EXPECT_NE(log.find("\"src\":\"" + pod("plain/outsider").ip + "\""), std::string::npos) << log;
}

TEST_F(AgentPolicyTest, BadYamlKeepsTheLastGoodPolicy) {
    const PodState& a = pod("tenant-a/a");
    const PodState& b = pod("tenant-b/b");
    write_policy("policies.yaml", kPolicies);
    ASSERT_EQ(connect_errno_eventually(b, a.ip, EPERM), EPERM);
    write_policy(
        "broken.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x\n");
    auto deadline = std::chrono::steady_clock::now() + 5s;
    std::string m;
    do {
        std::this_thread::sleep_for(100ms);
        m = metrics(0);
    } while (m.find("sluice_policy_reload_total{result=\"failure\"} 1") == std::string::npos &&
             std::chrono::steady_clock::now() < deadline);
    EXPECT_NE(m.find("sluice_policy_reload_total{result=\"failure\"} 1"), std::string::npos) << m;
    int err = 0;
    Fd c = connect_from(b, a.ip, kAppPort, &err);
    EXPECT_EQ(err, EPERM) << "the broken file must not lift the policy in force";
    std::ifstream f(node(0).run_dir + "/agent.log");
    std::stringstream ss;
    ss << f.rdbuf();
    EXPECT_NE(ss.str().find("broken.yaml:"), std::string::npos)
        << "the error names the file and position";
}

// A pod created under a policy has it from its first connection: its Pod object reaches the
// registry just before its CNI ADD, within the watcher's debounce, so the agent compiles the
// generation that knows it before enrolling it. Also while the policy folder is broken: the
// policies in force, not none.
TEST_F(AgentPolicyTest, APodCreatedUnderAPolicyHasItFromItsFirstConnection) {
    const std::string a_ip = pod("tenant-a/a").ip;
    write_policy("policies.yaml", kPolicies);
    ASSERT_EQ(connect_errno_eventually(pod("tenant-b/b"), a_ip, EPERM), EPERM);

    const PodState late = add_pod(
        state_, {.name = "late", .namespace_name = "tenant-b", .service_account = "b", .node = 0},
        options_);
    int err = 0;
    Fd c = connect_from(late, a_ip, kAppPort, &err);
    EXPECT_FALSE(c);
    EXPECT_EQ(err, EPERM) << "a new tenant-b pod reached tenant-a: " << strerror(err);
    EXPECT_TRUE(peers_[0]->listeners("tenant-b/late", 1s).has_value()) << "enrolled";

    write_policy("broken.yaml",
                 "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: "
                 "x\n");
    const PodState later = add_pod(
        state_, {.name = "later", .namespace_name = "tenant-b", .service_account = "b", .node = 0},
        options_);
    Fd d = connect_from(later, a_ip, kAppPort, &err);
    EXPECT_FALSE(d);
    EXPECT_EQ(err, EPERM) << "with the folder broken, a new tenant-b pod reached tenant-a: "
                          << strerror(err);
    // Inside its boundary the new pod's traffic still reaches ztunnel.
    Fd ok = connect_from(later, pod("tenant-b/b").ip, kAppPort, &err);
    EXPECT_TRUE(ok) << strerror(err);
    const std::string log = run_file(0, "agent.log");
    EXPECT_EQ(log.find("is in no compiled policy"), std::string::npos) << log;
}

// The ConfigMap path end to end: kubelet's `..data` swap in the testbed's policies folder, the
// agent's watcher, the compiler and the maps, timed from the rename to the first refused connect().
TEST_F(AgentPolicyTest, KubeletSwapTakesEffectWithinOneSecondAndBadYamlIsReported) {
    const PodState& a = pod("tenant-a/a");
    const PodState& b = pod("tenant-b/b");
    const std::string status_file = node(0).run_dir + "/policy-status.json";
    auto status = [&] {
        std::ifstream f(status_file);
        return nlohmann::json::parse(f, nullptr, false);
    };
    auto reloads = [](const nlohmann::json& s) {
        return s["reloads"]["success"].get<uint64_t>() + s["reloads"]["unchanged"].get<uint64_t>() +
               s["reloads"]["failure"].get<uint64_t>();
    };
    // Waits until the agent on node 0 has made more than `reloads_before` reload attempts.
    auto wait_reload = [&](uint64_t reloads_before) {
        auto deadline = std::chrono::steady_clock::now() + 5s;
        nlohmann::json s;
        do {
            s = status();
            if (!s.is_discarded() && reloads(s) > reloads_before)
                return s;
            std::this_thread::sleep_for(20ms);
        } while (std::chrono::steady_clock::now() < deadline);
        return s;
    };
    nlohmann::json st = status();
    ASSERT_FALSE(st.is_discarded()) << "the agent wrote no " << status_file;

    // Generation with no boundary: tenant-b may reach tenant-a (the connect lands on ztunnel).
    test::KubeletVolume volume(state_.policies_dir);
    const std::string outsiders_only = std::string(kPolicies).substr(
        std::string(kPolicies).find("apiVersion: security.istio.io/v1"));
    volume.publish({{"policies.yaml", outsiders_only}});
    st = wait_reload(reloads(st));
    ASSERT_EQ(st["lastReload"]["result"], "success") << st.dump(2);
    const uint64_t gen_before = st["generation"];
    int err = 0;
    {
        Fd c = connect_from(b, a.ip, kAppPort, &err);
        ASSERT_TRUE(c) << "before the boundary, tenant-b must reach tenant-a: " << strerror(err);
    }

    // The boundary arrives by the swap: from the rename on, connect() until the kernel refuses.
    const auto t0 = std::chrono::steady_clock::now();
    volume.publish({{"policies.yaml", kPolicies}});
    auto took = std::chrono::steady_clock::duration::max();
    int attempts = 0;
    while (std::chrono::steady_clock::now() - t0 < 3s) {
        ++attempts;
        Fd c = connect_from(b, a.ip, kAppPort, &err);
        if (!c) {
            took = std::chrono::steady_clock::now() - t0;
            break;
        }
        std::this_thread::sleep_for(5ms);
    }
    ASSERT_EQ(err, EPERM) << "after " << attempts << " attempts";
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(took).count();
    std::cerr << "boundary in force " << ms << " ms after the ..data rename (" << attempts
              << " connects)\n";
    EXPECT_LT(took, 1s) << ms << " ms";
    st = wait_reload(reloads(st));  // written after the maps took the generation
    EXPECT_EQ(st["appliedGeneration"].get<uint64_t>(), gen_before + 1) << st.dump(2);

    // Broken YAML by the same swap: the boundary stays, and the position is reported.
    const std::string before_metrics = metrics(0);
    EXPECT_EQ(before_metrics.find("sluice_policy_reload_total{result=\"failure\"} 1"),
              std::string::npos)
        << before_metrics;
    // `ports` must be a list: the error is at line 5, column 37 of broken.yaml.
    volume.publish({{"policies.yaml", kPolicies},
                    {"broken.yaml",
                     "apiVersion: security.istio.io/v1\n"
                     "kind: AuthorizationPolicy\n"
                     "metadata: {name: broken, namespace: tenant-a}\n"
                     "spec:\n"
                     "  rules: [{to: [{operation: {ports: {x: 1}}}]}]\n"}});
    st = wait_reload(reloads(st));
    ASSERT_EQ(st["lastReload"]["result"], "failure") << st.dump(2);
    EXPECT_EQ(st["generation"].get<uint64_t>(), gen_before + 1);
    for (int i = 0; i < 10; ++i) {
        Fd c = connect_from(b, a.ip, kAppPort, &err);
        EXPECT_FALSE(c);
        EXPECT_EQ(err, EPERM) << "the broken file must not lift the boundary";
    }
    auto ctl = run_process({.argv = {std::string(SLUICE_BIN_DIR) + "/sluicectl", "policy", "status",
                                     "--run-dir", node(0).run_dir}});
    EXPECT_EQ(ctl.exit_code, 1) << ctl.out << ctl.err;
    EXPECT_NE(ctl.out.find(state_.policies_dir + "/broken.yaml:5:37: error: "), std::string::npos)
        << ctl.out;
    EXPECT_NE(ctl.out.find("generation " + std::to_string(gen_before + 1) + " stays in force"),
              std::string::npos)
        << ctl.out;
    const std::string m = metrics(0);
    EXPECT_NE(m.find("sluice_policy_reload_total{result=\"failure\"} 1"), std::string::npos) << m;

    // Fixed: the status is clean again and sluicectl exits 0.
    volume.publish({{"policies.yaml", kPolicies}});
    st = wait_reload(reloads(st));
    EXPECT_EQ(st["lastReload"]["result"], "unchanged") << st.dump(2);
    ctl = run_process({.argv = {std::string(SLUICE_BIN_DIR) + "/sluicectl", "policy", "status",
                                "--run-dir", node(0).run_dir}});
    EXPECT_EQ(ctl.exit_code, 0) << ctl.out << ctl.err;
}

TEST_F(AgentPolicyTest, PolicyStaysEnforcedThroughAnAgentKill9) {
    const PodState& a = pod("tenant-a/a");
    const PodState& b = pod("tenant-b/b");
    write_policy("policies.yaml", kPolicies);
    ASSERT_EQ(connect_errno_eventually(b, a.ip, EPERM), EPERM);
    const std::vector<std::string> argv = kill_agent();
    int err = 0;
    Fd c = connect_from(b, a.ip, kAppPort, &err);
    EXPECT_EQ(err, EPERM) << "no agent: the pinned policy must still deny";
    ASSERT_TRUE(restart_agent(argv));
    for (int i = 0; i < 20; ++i) {  // throughout the takeover, never a successful connect
        Fd again = connect_from(b, a.ip, kAppPort, &err);
        EXPECT_EQ(err, EPERM);
        std::this_thread::sleep_for(25ms);
    }
}

// ztunnel refusing one pod while the agent replays its pods does not cost the others: the
// snapshot completes (before, the replay stopped at the refusal, no SnapshotSent followed, and
// the session never steered any pod of the node).
TEST_F(AgentPolicyTest, AReplayGoesOnPastAPodZtunnelRefuses) {
    ASSERT_TRUE(peers_[0]->listeners("tenant-a/a", 1s));
    ASSERT_EQ(peers_[0]->snapshots(), 1);
    peers_[0]->refuse("tenant-b/b");
    ASSERT_TRUE(restart_agent(kill_agent()));
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (peers_[0]->snapshots() < 2 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(10ms);
    EXPECT_EQ(peers_[0]->snapshots(), 2);
    // Once ztunnel serves it again, the refused pod is sent again (every 2 s) and served.
    const int refused_adds = peers_[0]->add_workloads("tenant-b/b");
    peers_[0]->serve_again("tenant-b/b");
    deadline = std::chrono::steady_clock::now() + 6s;
    while (peers_[0]->add_workloads("tenant-b/b") == refused_adds &&
           std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    EXPECT_GT(peers_[0]->add_workloads("tenant-b/b"), refused_adds);
    std::string log;
    for (int i = 0; i < 50 && log.find("serves it now") == std::string::npos; ++i) {
        std::this_thread::sleep_for(20ms);
        log = run_file(0, "agent.log");
    }
    EXPECT_NE(log.find("refused by the test"), std::string::npos) << log;
    EXPECT_NE(log.find("pod tenant-b/b: ztunnel session"), std::string::npos) << log;
    EXPECT_NE(log.find("serves it now"), std::string::npos) << log;
}

// What the runtime hands sluice-cni is checked before anything is sent to the agent: a field of
// the wrong type or a version before 0.3.0 is a CNI error object with the spec's code (7:
// invalid network config, 1: incompatible version), never a crash without an answer.
TEST(SluiceCni, MalformedConfigurationsGetACniError) {
    struct Case {
        const char* command;
        const char* stdin_json;
        int code;
    };
    const Case cases[] = {
        {"ADD", R"({"cniVersion": 1})", 7},
        {"ADD", R"({"cniVersion": "1.0.0", "prevResult": {"ips": [1]}})", 7},
        {"ADD", R"({"cniVersion": "1.0.0", "agentSocket": 5, "prevResult": {"ips": []}})", 7},
        {"ADD", R"({"cniVersion": "0.2.0", "prevResult": {}})", 1},
        {"CHECK", R"({"cniVersion": "0.3.1", "prevResult": {}})", 1},
    };
    for (const auto& c : cases) {
        auto r = run_process({.argv = {std::string(SLUICE_BIN_DIR) + "/sluice-cni"},
                              .env_overrides = {{"CNI_COMMAND", c.command},
                                                {"CNI_CONTAINERID", "c1"},
                                                {"CNI_NETNS", "/nonexistent"},
                                                {"CNI_IFNAME", "eth0"},
                                                {"CNI_ARGS", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"}},
                              .stdin_data = c.stdin_json});
        EXPECT_EQ(r.exit_code, 1) << c.stdin_json << "\n" << r.out << r.err;
        const auto err = nlohmann::json::parse(r.out, nullptr, false);
        ASSERT_TRUE(err.is_object()) << c.stdin_json << "\n" << r.out << r.err;
        EXPECT_EQ(err.value("code", 0), c.code) << c.stdin_json << "\n" << r.out;
        EXPECT_TRUE(err["cniVersion"].is_string()) << r.out;
    }
}

// A policy removed while no agent runs is lifted when the agent is back: its first generation
// is applied as a change from what the pinned maps hold, so the entries the last agent wrote
// are deleted (before, that generation only added entries, and b → a stayed refused).
TEST_F(AgentPolicyTest, APolicyRemovedWhileTheAgentIsDownIsLiftedWhenItIsBack) {
    const PodState& a = pod("tenant-a/a");
    const PodState& b = pod("tenant-b/b");
    write_policy("policies.yaml", kPolicies);
    ASSERT_EQ(connect_errno_eventually(b, a.ip, EPERM), EPERM);
    const std::vector<std::string> argv = kill_agent();
    write_policy("policies.yaml", "");  // every boundary and policy gone
    int err = 0;
    Fd still = connect_from(b, a.ip, kAppPort, &err);
    EXPECT_EQ(err, EPERM) << "no agent yet: the pinned entries decide";
    ASSERT_TRUE(restart_agent(argv));
    EXPECT_EQ(connect_errno_eventually(b, a.ip, 0), 0) << strerror(err);
}

}  // namespace
}  // namespace sluice::testbed
