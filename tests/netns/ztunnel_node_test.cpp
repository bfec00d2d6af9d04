// netns tier: sluice-ztunnel in node mode, enrolled over the ZDS socket by a stand-in for the
// agent (this test). Capture uses the sidecar iptables rules in each pod, so node mode is tested
// without the eBPF datapath: listeners live in the pods' netns, held by the node's ztunnel.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/process.h"
#include "common/zds.h"
#include "tests/netns/ztunnel_cluster.h"
#include "tests/support/privileged.h"
#include "tests/support/sockets.h"
#include "tests/testbed/mesh.h"
#include "tests/testbed/spec.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;
using test::Fd;

constexpr const char* kSpec = R"(
nodes: 2
namespaces:
  - name: default
    labels: {istio.io/dataplane-mode: ambient}
pods:
  - name: client
    serviceAccount: rag
    node: 0
  - name: server
    serviceAccount: llm
    node: 1
)";
constexpr uint16_t kAppPort = 8080;

// The agent's side of the enrollment socket for one node.
class FakeAgent {
  public:
    explicit FakeAgent(const std::string& path) : path_(path) {
        listener_ = Fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
        if (::bind(listener_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
            ::listen(listener_.get(), 4) != 0) {
            throw std::runtime_error("cannot listen on " + path);
        }
    }
    // Waits for ztunnel to connect and say Hello.
    bool accept_hello(int timeout_ms = 10000) {
        conn_ = test::tcp_accept(listener_, timeout_ms);
        if (!conn_)
            return false;
        auto hello = zds::recv_message(conn_.get(), timeout_ms);
        return hello && hello->message.type == zds::MessageType::Hello;
    }
    // Sends a message (with the pod's netns fd for AddWorkload) and returns ztunnel's Ack.
    zds::Received send(const zds::Message& m, const std::string& netns = "") {
        Fd ns;
        if (!netns.empty())
            ns = Fd(::open(netns.c_str(), O_RDONLY | O_CLOEXEC));
        auto sent = zds::send_message(conn_.get(), m, ns ? ns.get() : -1);
        EXPECT_TRUE(sent) << sent.error();
        auto ack = zds::recv_message(conn_.get(), 10000);
        EXPECT_TRUE(ack) << ack.error();
        return ack ? *ack : zds::Received{};
    }
    void disconnect() { conn_ = Fd(); }

  private:
    std::string path_;
    Fd listener_, conn_;
};

zds::Message add(const PodState& p) {
    return zds::Message{.type = zds::MessageType::AddWorkload,
                        .workload = {.uid = p.uid,
                                     .name = p.name,
                                     .namespace_name = p.namespace_name,
                                     .service_account = p.service_account,
                                     .node = p.node_name,
                                     .ips = {p.ip, p.ip6}}};
}

// ztunnel resets a direct connection to :15006 at once, so connect() may see the RST: only
// ECONNREFUSED means nothing listens.
bool port_listens(const std::string& netns, uint16_t port) {
    int err = 0;
    Fd c = test::tcp_connect(netns, "127.0.0.1", port, &err, 1000);
    return c || err != ECONNREFUSED;
}

class ZtunnelNodeTest : public ZtunnelClusterTest {
  protected:
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        start_cluster("zn", kSpec);
        ensure_cluster_ca(state_, {});
        for (const auto& p : state_.pods)
            install_sidecar_capture(p);
        for (const auto& n : state_.nodes) {
            agents_.push_back(std::make_unique<FakeAgent>(n.run_dir + "/ztunnel.sock"));
            ProcessSpec zt = node_process(
                n, {SLUICE_ZTUNNEL_BIN, "--mode", "node", "--zds-socket",
                    n.run_dir + "/ztunnel.sock", "--registry-dir", state_.registry_dir, "--ca-cert",
                    state_.ca_dir + "/ca.crt", "--ca-key", state_.ca_dir + "/ca.key",
                    "--transparent-inbound", "--access-log", n.run_dir + "/access.log"});
            spawn_process(zt, n.run_dir + "/ztunnel.log");
            ASSERT_TRUE(agents_.back()->accept_hello()) << "ztunnel of " << n.name;
        }
    }
    std::vector<std::string> log_files() const override {
        std::vector<std::string> files;
        for (const auto& n : state_.nodes) {
            files.push_back(n.run_dir + "/ztunnel.log");
            files.push_back(n.run_dir + "/access.log");
        }
        return files;
    }
    void TearDown() override {
        agents_.clear();
        ZtunnelClusterTest::TearDown();
    }

    std::vector<std::unique_ptr<FakeAgent>> agents_;
};

TEST_F(ZtunnelNodeTest, EnrolledPodsTalkOverHboneFromTheirOwnNetns) {
    const PodState& client = pod("client");
    const PodState& server = pod("server");
    for (const auto* p : {&client, &server}) {
        auto ack = agents_[p->node]->send(add(*p), p->netns);
        EXPECT_EQ(ack.message.type, zds::MessageType::Ack);
        EXPECT_EQ(ack.message.error, "");
        ASSERT_GE(ack.fd, 0) << "the Ack of AddWorkload carries the :15006 listener";
        EXPECT_EQ(test::local_port(ack.fd), 15006);
        ::close(ack.fd);
        EXPECT_EQ(agents_[p->node]->send({.type = zds::MessageType::SnapshotSent}).message.error,
                  "");
        for (uint16_t port : {15001, 15006, 15008})
            EXPECT_TRUE(port_listens(p->netns, port)) << p->name << " :" << port;
    }
    // The registry arrives within a second of ztunnel's start.
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    auto peer =
        std::async(std::launch::async, [&] { return test::echo_one_connection(listener, 10000); });
    int err = 0;
    Fd c = test::tcp_connect(client.netns, server.ip, kAppPort, &err);
    ASSERT_TRUE(c) << strerror(err);
    const std::string payload(300000, 'n');
    EXPECT_TRUE(test::send_and_receive(c, payload, 10000) == payload);
    c = Fd();
    EXPECT_EQ(peer.get(), client.ip)
        << "the tunnel left from the client pod's netns with its address";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::ifstream log(state_.nodes[1].run_dir + "/access.log");
    nlohmann::json j;
    for (std::string line; std::getline(log, line);) {
        auto entry = nlohmann::json::parse(line);
        if (entry["direction"] == "inbound")
            j = entry;  // the port probes above are logged too
    }
    ASSERT_FALSE(j.is_null()) << "no inbound access-log line";
    EXPECT_EQ(j["src.identity"], "spiffe://cluster.local/ns/default/sa/rag");
    EXPECT_EQ(j["dst.identity"], "spiffe://cluster.local/ns/default/sa/llm");
}

TEST_F(ZtunnelNodeTest, DelWorkloadAndResyncRemoveListeners) {
    const PodState& client = pod("client");
    FakeAgent& agent = *agents_[0];
    auto ack = agent.send(add(client), client.netns);
    ASSERT_EQ(ack.message.error, "");
    ::close(ack.fd);
    EXPECT_TRUE(port_listens(client.netns, 15008));
    EXPECT_EQ(agent.send({.type = zds::MessageType::DelWorkload, .uid = client.uid}).message.error,
              "");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(port_listens(client.netns, 15008)) << "DelWorkload closes the listeners";

    // Enrolled again, then the agent restarts and its snapshot no longer has the pod.
    ack = agent.send(add(client), client.netns);
    ASSERT_EQ(ack.message.error, "");
    ::close(ack.fd);
    EXPECT_TRUE(port_listens(client.netns, 15008));
    agent.disconnect();
    ASSERT_TRUE(agent.accept_hello()) << "ztunnel reconnects";
    EXPECT_EQ(agent.send({.type = zds::MessageType::SnapshotSent}).message.error, "");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_FALSE(port_listens(client.netns, 15008)) << "SnapshotSent prunes what was not sent";

    // An AddWorkload without a netns fd is a Nack.
    auto nack = agent.send(add(client));
    EXPECT_NE(nack.message.error, "");
}

}  // namespace
}  // namespace sluice::testbed
