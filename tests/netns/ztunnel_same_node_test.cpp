// netns tier: ztunnel's same-node fast path in the sidecarless mesh (real agents and node
// ztunnels). Two pods on node0: the client's connection to the server pod (by pod IP or by the
// service VIP) is handed from node0 ztunnel's outbound side to its inbound side in memory, with
// no HBONE connection, the destination's authorization, both access-log lines and Istio's
// metrics. With the fast path off (SLUICE_SAME_NODE_FAST_PATH=0) it goes over HBONE again.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>

#include <fstream>
#include <future>
#include <thread>
#include <tuple>

#include "common/process.h"
#include "tests/netns/sidecarless_mesh.h"
#include "tests/netns/stream_pattern.h"
#include "tests/support/privileged.h"

namespace sluice::testbed {
namespace {

using namespace std::chrono_literals;
using test::Fd;

constexpr uint16_t kAppPort = 8080;
constexpr uint16_t kServicePort = 80;
constexpr uint16_t kZtunnelMetricsPort = 15020;
constexpr const char* kClientId = "spiffe://cluster.local/ns/mesh/sa/client";
constexpr const char* kServerId = "spiffe://cluster.local/ns/mesh/sa/server";
constexpr const char* kSpec = R"(
nodes: 2
mesh: sidecarless
namespaces:
  - {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
pods:
  - {name: client, namespace: mesh, serviceAccount: client, node: 0, labels: {app: client}}
  - {name: server, namespace: mesh, serviceAccount: server, node: 0, labels: {app: server}}
services:
  - name: server
    namespace: mesh
    selector: {app: server}
    ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
)";

class ZtunnelSameNodeTest : public SidecarlessMeshTest {
  protected:
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        if (!fast_path())
            ::setenv("SLUICE_SAME_NODE_FAST_PATH", "0", 1);
        TestbedOptions options;
        options.bin_dir = SLUICE_BIN_DIR;
        options.cni_path.insert(options.cni_path.begin(), SLUICE_BIN_DIR);
        start_cluster(fast_path() ? "zsn" : "zsh", kSpec, options);
        ::unsetenv("SLUICE_SAME_NODE_FAST_PATH");
    }
    void TearDown() override {
        ::unsetenv("SLUICE_SAME_NODE_FAST_PATH");
        ZtunnelClusterTest::TearDown();
    }
    virtual bool fast_path() const { return true; }
    std::string ztunnel_metrics() const { return node_metrics(0, kZtunnelMetricsPort); }
    // Established TCP connections to or from :15008 in `p`'s netns (an HBONE connection has its
    // server end there), read with ss at once: no gauge that updates once a second.
    static int hbone_sockets(const PodState& p) {
        ProcessResult r =
            run_process({.argv = {"nsenter", "--net=" + p.netns, "ss", "-Htn", "state",
                                  "established", "( sport = :15008 or dport = :15008 )"}});
        EXPECT_EQ(r.exit_code, 0) << r.err;
        return static_cast<int>(std::count(r.out.begin(), r.out.end(), '\n'));
    }
    // The server app's listener and a connection to it from the client app through the mesh,
    // addressed to ip:port (the server pod or the service VIP); empty on failure.
    struct Apps {
        Fd listener, client, server;
    };
    Apps open_apps(const std::string& ip, uint16_t port) {
        Apps a;
        wait_known(pod("mesh/server").ip);
        if (HasFatalFailure())
            return a;
        a.listener = listen_in(pod("mesh/server"), kAppPort);
        std::tie(a.client, a.server) = connect_apps(pod("mesh/client"), ip, port, a.listener);
        return a;
    }
    // TCP_NODELAY of every connected TCP socket of node0's ztunnel whose local port is `port`,
    // read from ztunnel's own descriptors (pidfd_getfd duplicates them into this process).
    std::vector<int> nodelay_of_connections_on(uint16_t port) const {
        pid_t ztunnel = 0;
        for (const auto& d : state_.daemons) {
            if (d.name == "sluice-ztunnel" && d.node == 0)
                ztunnel = d.pid;
        }
        std::vector<int> out;
        const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, ztunnel, 0));
        if (pidfd < 0) {
            ADD_FAILURE() << "pidfd_open " << ztunnel << ": " << strerror(errno);
            return out;
        }
        for (const auto& e :
             std::filesystem::directory_iterator("/proc/" + std::to_string(ztunnel) + "/fd")) {
            const int target = std::stoi(e.path().filename());
            const int fd = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, target, 0));
            if (fd < 0)
                continue;
            sockaddr_storage local{}, peer{};
            socklen_t len = sizeof local, plen = sizeof peer;
            int type = 0;
            socklen_t tlen = sizeof type;
            if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_STREAM &&
                ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
                ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) == 0) {
                const uint16_t local_port =
                    local.ss_family == AF_INET
                        ? ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port)
                        : ntohs(reinterpret_cast<sockaddr_in6*>(&local)->sin6_port);
                int on = 0;
                socklen_t olen = sizeof on;
                if (local_port == port &&
                    ::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, &olen) == 0)
                    out.push_back(on);
            }
            ::close(fd);
        }
        ::close(pidfd);
        return out;
    }
    std::string service_vip() const {
        for (const auto& s : state_.services) {
            if (s.spec.name == "server")
                return s.vip;
        }
        throw std::runtime_error("no service server");
    }
};

class ZtunnelSameNodeOverHbone : public ZtunnelSameNodeTest {
  protected:
    bool fast_path() const override { return false; }
};

TEST_F(ZtunnelSameNodeTest, PodToPodSkipsHboneAndBothEndsAreLoggedAndCounted) {
    const PodState& client = pod("mesh/client");
    const PodState& server = pod("mesh/server");
    auto [listener, c, s] = open_apps(server.ip, kAppPort);
    ASSERT_TRUE(c && s);

    // While it is open: no HBONE connection exists in either pod.
    EXPECT_EQ(hbone_sockets(server), 0);
    EXPECT_EQ(hbone_sockets(client), 0);
    const std::string open = ztunnel_metrics();
    EXPECT_EQ(metric(open, "istio_tcp_connections_opened_total",
                     {"reporter=\"source\"", "connection_security_policy=\"mutual_tls\"",
                      "destination_workload=\"server\""}),
              1);
    EXPECT_EQ(
        metric(open, "istio_tcp_connections_opened_total",
               {"reporter=\"destination\"", "source_principal=\"" + std::string(kClientId) + "\""}),
        1);

    // 4 MiB each way with a half-close in the middle.
    constexpr uint64_t kBytes = 4ull << 20;
    auto app = std::async(std::launch::async, [&, owned = std::move(s)]() mutable {
        const Fd mine = std::move(owned);
        return serve_both_ways(mine.get(), kBytes);
    });
    expect_both_ways(exchange_both_ways(c.get(), kBytes), app, kBytes);
    c = Fd();

    // The reply's 4 MiB + the report; the request's 4 MiB.
    const uint64_t to_client = kBytes + 1 + std::to_string(kBytes).size() + 4;
    for (const char* direction : {"outbound", "inbound"}) {
        auto lines = access_lines(0, direction, 1);
        ASSERT_EQ(lines.size(), 1u) << direction;
        const auto& l = lines[0];
        EXPECT_EQ(l["same_node"], true) << l;
        EXPECT_EQ(l["dst.hbone_addr"], "") << l;
        EXPECT_EQ(l["src.identity"], kClientId) << l;
        EXPECT_EQ(l["dst.identity"], kServerId) << l;
        EXPECT_EQ(l["dst.addr"], server.ip + ":" + std::to_string(kAppPort)) << l;
        EXPECT_EQ(l["src.addr"].get<std::string>().rfind(client.ip + ":", 0), 0u) << l;
        EXPECT_EQ(l["result"], "ok") << l;
        EXPECT_EQ(l["bytes_received"], kBytes) << l;
        EXPECT_EQ(l["bytes_sent"], to_client) << l;
    }
    const std::string closed = ztunnel_metrics();
    EXPECT_EQ(metric(closed, "istio_tcp_received_bytes_total", {"reporter=\"destination\""}),
              static_cast<double>(kBytes));
    EXPECT_EQ(metric(closed, "istio_tcp_sent_bytes_total", {"reporter=\"source\""}),
              static_cast<double>(to_client));
}

TEST_F(ZtunnelSameNodeTest, ServiceVipToALocalEndpointTakesTheFastPath) {
    const PodState& server = pod("mesh/server");
    auto [listener, c, s] = open_apps(service_vip(), kServicePort);
    ASSERT_TRUE(c && s);
    EXPECT_TRUE(test::bytes_flow(c.get(), s.get(), "to the service"));
    EXPECT_TRUE(test::bytes_flow(s.get(), c.get(), "and back"));
    EXPECT_EQ(hbone_sockets(server), 0);
    c = Fd();
    s = Fd();
    auto out = access_lines(0, "outbound", 1);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0]["same_node"], true) << out[0];
    EXPECT_EQ(out[0]["dst.service"], "server.mesh.svc.cluster.local") << out[0];
    EXPECT_EQ(out[0]["dst.addr"], service_vip() + ":" + std::to_string(kServicePort)) << out[0];
    auto in = access_lines(0, "inbound", 1);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0]["same_node"], true) << in[0];
    EXPECT_EQ(in[0]["dst.addr"], server.ip + ":" + std::to_string(kAppPort)) << in[0];
}

TEST_F(ZtunnelSameNodeTest, TheDestinationsDenyPolicyClosesTheConnectionAndIsCounted) {
    const PodState& client = pod("mesh/client");
    const PodState& server = pod("mesh/server");
    // Allowed first: the node's compiled policy knows both pods.
    Fd listener;
    {
        Apps first = open_apps(server.ip, kAppPort);
        ASSERT_TRUE(first.client && first.server);
        listener = std::move(first.listener);
    }
    std::ofstream(state_.policies_dir + "/deny-client.yaml") << R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: mesh}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
    - from:
        - source: {principals: ["cluster.local/ns/mesh/sa/client"]}
)";
    // Principals are ztunnel's to check (the kernel lets the connect through). Until node0's
    // ztunnel has the new policy a connection still reaches the app: until then, attempts.
    auto attempt = [&] {
        int err = 0;
        Fd c;
        {
            test::CgroupGuard in_pod(client.cgroup);
            c = test::tcp_connect(client.netns, server.ip, kAppPort, &err);
        }
        // The refusal is a reset, which may come before connect() returned.
        if (!c) {
            EXPECT_EQ(err, ECONNRESET) << "connect: " << strerror(err);
        }
        const std::string reply = c ? test::send_and_receive(c, "denied?", 1000) : "";
        return std::make_pair(reply, test::tcp_accept(listener, 300));
    };
    bool in_force = false;
    for (int i = 0; i < 40 && !in_force; ++i) {
        auto [reply, accepted] = attempt();
        in_force = reply.empty() && !accepted;
    }
    ASSERT_TRUE(in_force) << "the policy never denied the client";
    const double denials =
        metric(ztunnel_metrics(), "sluice_authz_denials_total", {"direction=\"inbound\""});

    auto [reply, accepted] = attempt();
    EXPECT_EQ(reply, "") << "nothing comes back";
    EXPECT_FALSE(accepted) << "the app never sees a denied connection";
    EXPECT_EQ(metric(ztunnel_metrics(), "sluice_authz_denials_total", {"direction=\"inbound\""}),
              denials + 1);
    auto in = access_lines(0, "inbound", 2);
    ASSERT_GE(in.size(), 2u);
    EXPECT_EQ(in.back()["result"], "denied") << in.back();
    EXPECT_EQ(in.back()["same_node"], true) << in.back();
    EXPECT_NE(in.back()["error"].get<std::string>().find("deny-client"), std::string::npos)
        << in.back();
    auto out = access_lines(0, "outbound", 2);
    ASSERT_GE(out.size(), 2u);
    EXPECT_EQ(out.back()["result"], "denied") << out.back();
    EXPECT_NE(out.back()["error"].get<std::string>().find("deny-client"), std::string::npos)
        << out.back();
}

TEST_F(ZtunnelSameNodeOverHbone, WithTheFastPathOffTheSamePodsUseHbone) {
    const PodState& server = pod("mesh/server");
    auto [listener, c, s] = open_apps(server.ip, kAppPort);
    ASSERT_TRUE(c && s);
    EXPECT_TRUE(test::bytes_flow(c.get(), s.get(), "over hbone"));
    EXPECT_EQ(hbone_sockets(server), 1);
    // The connections ztunnel accepted (the app's on :15001, the HBONE peer's on :15008) send
    // without Nagle's wait for the previous segment's ACK: with it, a small write behind
    // another stream's unacknowledged frame on a shared HBONE connection waited about 1 ms.
    EXPECT_EQ(nodelay_of_connections_on(15001), std::vector<int>{1});
    EXPECT_EQ(nodelay_of_connections_on(15008), std::vector<int>{1});
    c = Fd();
    s = Fd();
    auto out = access_lines(0, "outbound", 1);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0]["dst.hbone_addr"], server.ip + ":15008") << out[0];
    EXPECT_FALSE(out[0].contains("same_node")) << out[0];
}

}  // namespace
}  // namespace sluice::testbed
