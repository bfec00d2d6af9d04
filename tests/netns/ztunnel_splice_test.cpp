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

#include "tests/netns/sidecarless_mesh.h"
#include "tests/netns/sidecarless_spec.h"
#include "tests/netns/stream_pattern.h"
#include "tests/support/privileged.h"

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

class ZtunnelSpliceTest : public SidecarlessMeshTest {
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
    double splice_metric(size_t node, const std::string& event) const {
        return metric(node_metrics(node, 15030), "sluice_datapath_splice_total",
                      {"event=\"" + event + "\""});
    }
    std::pair<Fd, Fd> connect_apps(const PodState& client, const Fd& listener) {
        return SidecarlessMeshTest::connect_apps(client, pod("mesh/server").ip, kAppPort, listener);
    }
};

TEST_F(ZtunnelSpliceTest, BothLocalHopsAreSplicedAndBytesArriveIntact) {
    const PodState& client = pod("mesh/client");
    const PodState& server = pod("mesh/server");
    ASSERT_NO_FATAL_FAILURE(wait_known(server.ip));
    Fd listener = listen_in(server, kAppPort);

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
