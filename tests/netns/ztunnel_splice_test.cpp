// netns tier: same-node splicing in the sidecarless mesh (real agents with
// SLUICE_SAME_NODE_SPLICE=1, which the testbed passes through to them; one ztunnel per node).
// Client pod on node0 → server pod on node1: the app ↔ ztunnel hop on node0 (outbound) and the
// ztunnel ↔ app hop on node1 (inbound) are both spliced; HBONE crosses the fabric as before.
#include <gtest/gtest.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstring>
#include <future>
#include <thread>

#include "tests/netns/sidecarless_spec.h"
#include "tests/netns/stream_pattern.h"
#include "tests/netns/ztunnel_cluster.h"
#include "tests/support/cgroup_guard.h"
#include "tests/support/privileged.h"
#include "tests/support/sockets.h"

namespace sluice::testbed {
namespace {

using namespace std::chrono_literals;
using test::Fd;

constexpr uint16_t kAppPort = 8080;

tcp_info tcp_info_of(int fd) {
    tcp_info info{};
    socklen_t len = sizeof info;
    ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len);
    return info;
}

class ZtunnelSpliceTest : public ZtunnelClusterTest {
  protected:
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        ::setenv("SLUICE_SAME_NODE_SPLICE", "1", 1);
        TestbedOptions options;
        options.bin_dir = SLUICE_BIN_DIR;
        options.cni_path.insert(options.cni_path.begin(), SLUICE_BIN_DIR);
        start_cluster("zsp", kSidecarlessClientServerSpec, options);
        ::unsetenv("SLUICE_SAME_NODE_SPLICE");
    }
    void TearDown() override {
        ::unsetenv("SLUICE_SAME_NODE_SPLICE");
        ZtunnelClusterTest::TearDown();
    }
    std::vector<std::string> log_files() const override {
        std::vector<std::string> files;
        for (const auto& n : state_.nodes) {
            for (const char* f : {"/agent.log", "/ztunnel.log", "/ztunnel-access.log"})
                files.push_back(n.run_dir + f);
        }
        return files;
    }
    double splice_metric(size_t node, const std::string& event) const {
        return metric(test::http_get(state_.nodes.at(node).netns, "127.0.0.1", 15030, "/metrics"),
                      "sluice_datapath_splice_total", {"event=\"" + event + "\""});
    }
    // Both ztunnels must know the server pod (node0's would pass the connection through,
    // node1's would refuse it) before the first connect.
    void wait_server_known(const PodState& server) {
        for (const auto& node : state_.nodes) {
            bool known = false;
            for (int i = 0; i < 100 && !known; ++i) {
                known = test::http_get(node.netns, "127.0.0.1", 15000, "/config_dump")
                            .find("\"" + server.ip + "\"") != std::string::npos;
                if (!known)
                    std::this_thread::sleep_for(200ms);
            }
            ASSERT_TRUE(known) << node.name << "'s ztunnel never listed " << server.ip;
        }
    }
    // A connection from the client pod's app to the server pod's app, both ends created in
    // their pod's cgroup (the cgroup programs act for the cgroup of the socket's creator).
    // node1's ztunnel refuses connections until its compiled policy lists the server pod (a
    // moment after its workload view does): retry until the server app accepts one.
    std::pair<Fd, Fd> connect_apps(const PodState& client, const Fd& listener) {
        for (int attempt = 0; attempt < 40; ++attempt) {
            int err = 0;
            Fd c;
            {
                test::CgroupGuard in_pod(client.cgroup);
                c = test::tcp_connect(client.netns, pod("mesh/server").ip, kAppPort, &err);
            }
            Fd s = c ? test::tcp_accept(listener, 1000) : Fd();
            if (c && s)
                return {std::move(c), std::move(s)};
            std::this_thread::sleep_for(250ms);
        }
        ADD_FAILURE() << "the server app got no connection";
        return {};
    }
};

TEST_F(ZtunnelSpliceTest, BothLocalHopsAreSplicedAndBytesArriveIntact) {
    const PodState& client = pod("mesh/client");
    const PodState& server = pod("mesh/server");
    ASSERT_NO_FATAL_FAILURE(wait_server_known(server));
    Fd listener;
    {
        test::CgroupGuard in_pod(server.cgroup);  // its accepted sockets are the pod's
        listener = test::tcp_listen(server.netns, "0.0.0.0", kAppPort);
    }

    // Request/response turns: every byte of both apps skips their loopback TCP.
    auto [c, s] = connect_apps(client, listener);
    ASSERT_TRUE(c && s);
    for (int turn = 0; turn < 16; ++turn) {
        const std::string req(64 * 1024, static_cast<char>('a' + turn));
        ASSERT_TRUE(sluice::send_all(c.get(), req, 5000));
        ASSERT_EQ(test::recv_exactly(s.get(), req.size(), 5000), req) << "turn " << turn;
        ASSERT_TRUE(sluice::send_all(s.get(), req, 5000));
        ASSERT_EQ(test::recv_exactly(c.get(), req.size(), 5000), req) << "turn " << turn;
    }
    EXPECT_LT(tcp_info_of(c.get()).tcpi_bytes_acked, 64u) << "the client app's bytes used TCP";
    EXPECT_LT(tcp_info_of(c.get()).tcpi_bytes_received, 64u);
    EXPECT_LT(tcp_info_of(s.get()).tcpi_bytes_acked, 64u) << "the server app's bytes used TCP";
    EXPECT_LT(tcp_info_of(s.get()).tcpi_bytes_received, 64u);
    EXPECT_GE(splice_metric(0, "redirected"), 32);
    EXPECT_GE(splice_metric(1, "redirected"), 32);
    c = Fd();
    s = Fd();

    // 100 MiB each way and a half-close on one connection: the bulk switches between the splice
    // and TCP whenever ztunnel falls behind, and no byte may be lost or reordered.
    constexpr uint64_t kBytes = 100ull << 20;
    auto [c2, s2] = connect_apps(client, listener);
    ASSERT_TRUE(c2 && s2);
    // The server app closes its end once it reported what it read.
    auto app = std::async(std::launch::async, [&, owned = std::move(s2)]() mutable {
        const Fd mine = std::move(owned);
        return serve_both_ways(mine.get(), kBytes);
    });
    expect_both_ways(exchange_both_ways(c2.get(), kBytes), app, kBytes);
    std::printf(
        "splice node0: redirected %.0f peer_busy %.0f; node1: redirected %.0f "
        "peer_busy %.0f\n",
        splice_metric(0, "redirected"), splice_metric(0, "peer_busy"),
        splice_metric(1, "redirected"), splice_metric(1, "peer_busy"));
}

}  // namespace
}  // namespace sluice::testbed
