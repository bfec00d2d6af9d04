// netns tier: the testbed itself (DESIGN.md §8). Builds real clusters of network namespaces with
// the CNI reference plugins and checks what a pod sees.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/process.h"
#include "tests/support/privileged.h"
#include "tests/support/sockets.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;
using test::Fd;

// A cluster name unique to this test process, so a leftover from another run never collides.
std::string cluster_name(const char* tag) {
    return std::string(tag) + std::to_string(::getpid() % 100000);
}

class TestbedTest : public ::testing::Test {
  protected:
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        name_ = cluster_name("tb");
        state_ = up(generated_spec(name_, 2, 2));
    }
    void TearDown() override {
        if (name_.empty())
            return;
        down(name_);
        EXPECT_EQ(leftovers(name_), std::vector<std::string>{});
    }
    const PodState& pod(const std::string& n) {
        const PodState* p = state_.find_pod(n);
        if (p == nullptr)
            throw std::runtime_error("no pod " + n);
        return *p;
    }
    // A TCP echo from pod `from` to pod `to`'s address `to_ip`: the bytes come back and the
    // server sees the client's real pod address.
    void expect_echo(const std::string& from, const std::string& to, bool ipv6) {
        const PodState& server = pod(to);
        const PodState& client = pod(from);
        const std::string server_ip = ipv6 ? server.ip6 : server.ip;
        Fd listener = test::tcp_listen(server.netns, server_ip, 7000);
        auto peer =
            std::async(std::launch::async, [&] { return test::echo_one_connection(listener); });
        int err = 0;
        Fd c = test::tcp_connect(client.netns, server_ip, 7000, &err);
        ASSERT_TRUE(c) << from << " -> " << server_ip << ": " << strerror(err);
        const std::string payload = "hello from " + from + " " + std::string(100000, 'x');
        EXPECT_EQ(test::send_and_receive(c, payload), payload);
        c = Fd();
        EXPECT_EQ(peer.get(), ipv6 ? client.ip6 : client.ip);
    }

    std::string name_;
    ClusterState state_;
};

TEST_F(TestbedTest, PodsHaveAddressesFromTheirNodeCidr) {
    ASSERT_EQ(state_.nodes.size(), 2u);
    ASSERT_EQ(state_.pods.size(), 4u);
    for (const auto& p : state_.pods) {
        EXPECT_EQ(p.ip.rfind("198.18." + std::to_string(p.node) + ".", 0), 0u) << p.ip;
        EXPECT_EQ(p.ip6.rfind(p.node == 0 ? "2001:db8::" : "2001:db8:0:1::", 0), 0u) << p.ip6;
        EXPECT_TRUE(fs::exists(p.netns));
    }
}

TEST_F(TestbedTest, EchoAcrossNodesIPv4) {
    expect_echo("pod-0-0", "pod-1-1", false);
}
TEST_F(TestbedTest, EchoAcrossNodesIPv6) {
    expect_echo("pod-1-0", "pod-0-1", true);
}
TEST_F(TestbedTest, EchoWithinNodeIPv4) {
    expect_echo("pod-0-0", "pod-0-1", false);
}
TEST_F(TestbedTest, EchoWithinNodeIPv6) {
    expect_echo("pod-1-1", "pod-1-0", true);
}

TEST_F(TestbedTest, ProcessesRunInThePodNetnsAndCgroup) {
    const PodState& p = pod("pod-1-0");
    auto r =
        run_process(pod_process(p, {"sh", "-c", "cat /proc/self/cgroup; ip -o addr show eth0"}));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string rel = p.cgroup.substr(p.cgroup.find("/sluice.testbed."));
    EXPECT_NE(r.out.find("0::" + rel + "\n"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("inet " + p.ip + "/24"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("inet6 " + p.ip6 + "/64"), std::string::npos) << r.out;
}

TEST_F(TestbedTest, NoIptablesRulesAnywhere) {
    // The testbed's own wiring uses no iptables (no ipMasq): the datapath issue relies on it.
    auto r = run_process(pod_process(pod("pod-0-0"), {"iptables-save"}));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out.find("-A "), std::string::npos) << r.out;
}

TEST_F(TestbedTest, RegistryAndStateDescribeTheCluster) {
    EXPECT_TRUE(fs::exists(state_.registry_dir + "/pod.default.pod-1-1.yaml"));
    EXPECT_TRUE(fs::exists(state_.registry_dir + "/namespace.default.yaml"));
    ClusterState loaded = load_state(name_);
    ASSERT_EQ(loaded.pods.size(), 4u);
    EXPECT_EQ(loaded.find_pod("default/pod-1-1")->ip, pod("pod-1-1").ip);
    // The CLI reads the same state.
    auto r = run_process({.argv = {SLUICE_TESTBED_BIN, "status", "--json", "--name", name_}});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["pods"].size(), 4u);
    EXPECT_EQ(j["nodes"][1]["fabricIP"], "198.19.0.2");
}

TEST_F(TestbedTest, CliExecReturnsTheCommandsExitCode) {
    auto r = run_process(
        {.argv = {SLUICE_TESTBED_BIN, "exec", "--name", name_, "pod-0-1", "--", "sh", "-c",
                  "test \"$SLUICE_POD_IP\" = " + pod("pod-0-1").ip + " && exit 42"}});
    EXPECT_EQ(r.exit_code, 42) << r.err;
}

TEST_F(TestbedTest, DownKillsPodProcessesAndLeavesNothing) {
    pid_t pid = spawn_process(pod_process(pod("pod-0-0"), {"sleep", "600"}));
    pid_t node_pid = spawn_process(node_process(state_.nodes[1], {"sleep", "600"}));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    down(name_);
    // Killed, and gone: `down` reaps the daemons it kills when they are its caller's children
    // (a zombie keeps its cgroup busy), so this test may find them already reaped.
    for (pid_t p : {pid, node_pid}) {
        const auto code = wait_process(p, std::chrono::seconds(5));
        EXPECT_TRUE(code == 128 + SIGKILL || (!code && ::kill(p, 0) != 0 && errno == ESRCH))
            << "pid " << p;
    }
    EXPECT_EQ(leftovers(name_), std::vector<std::string>{});
    // Nothing leaked into the root namespace either: no veth or bridge named after us.
    auto links = run_process({.argv = {"ip", "-o", "link"}});
    EXPECT_EQ(links.out.find("cni0"), std::string::npos);
    EXPECT_EQ(links.out.find("br0"), std::string::npos);
}

TEST(TestbedCrash, UpAfterAKilledUpWorks) {
    SLUICE_REQUIRE_PRIVILEGES();
    const std::string name = cluster_name("cr");
    // Kill `up` part-way: once the first pod's namespace exists, nodes and fabric are half built.
    pid_t pid = spawn_process({.argv = {SLUICE_TESTBED_BIN, "up", "--name", name, "--nodes", "2",
                                        "--pods-per-node", "20"}});
    const std::string first_pod = "/var/run/netns/sluice." + name + ".pod.default.pod-0-0";
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!fs::exists(first_pod) && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ::kill(pid, SIGKILL);
    EXPECT_EQ(wait_process(pid, std::chrono::seconds(5)), 128 + SIGKILL);
    EXPECT_FALSE(leftovers(name).empty()) << "the killed run should have left something to clean";

    auto r = run_process({.argv = {SLUICE_TESTBED_BIN, "up", "--name", name, "--nodes", "2",
                                   "--pods-per-node", "1"}});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ClusterState s = load_state(name);
    ASSERT_EQ(s.pods.size(), 2u);
    Fd listener = test::tcp_listen(s.pods[1].netns, s.pods[1].ip, 7001);
    auto peer = std::async(std::launch::async, [&] { return test::echo_one_connection(listener); });
    int err = 0;
    Fd c = test::tcp_connect(s.pods[0].netns, s.pods[1].ip, 7001, &err);
    ASSERT_TRUE(c) << strerror(err);
    EXPECT_EQ(test::send_and_receive(c, "after crash"), "after crash");
    c = Fd();
    EXPECT_EQ(peer.get(), s.pods[0].ip);

    r = run_process({.argv = {SLUICE_TESTBED_BIN, "down", "--name", name}});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(leftovers(name), std::vector<std::string>{});
}

TEST(TestbedSpec, UpFromYamlSpecWritesServicesAndLabels) {
    SLUICE_REQUIRE_PRIVILEGES();
    const std::string name = cluster_name("sp");
    auto spec = parse_spec(R"(
nodes: 2
namespaces:
  - name: tenant-a
    labels: {istio.io/dataplane-mode: ambient}
pods:
  - {name: retriever, namespace: tenant-a, serviceAccount: retriever, labels: {app: retriever}, replicas: 2}
services:
  - {name: retriever, namespace: tenant-a, selector: {app: retriever}, ports: [{port: 80, targetPort: 8080}]}
)");
    spec.name = name;
    ClusterState s = up(spec);
    EXPECT_EQ(s.pods.size(), 2u);
    EXPECT_EQ(s.pods[1].node, 1);
    ASSERT_EQ(s.services.size(), 1u);
    EXPECT_EQ(s.services[0].vip, "198.19.128.1");
    EXPECT_TRUE(fs::exists(s.registry_dir + "/endpointslice.tenant-a.retriever-v4.yaml"));
    down(name);
    EXPECT_EQ(leftovers(name), std::vector<std::string>{});
}

}  // namespace
}  // namespace sluice::testbed
