// netns tier: what the fabric between two nodes carries in the sidecarless mesh (real agent, eBPF
// capture, one ztunnel per node). A tshark capture on the fabric during a cross-node
// request must show TCP only to or from port 15008, a TLS 1.3 handshake (ALPN h2) and encrypted
// records after it, and never the payload's bytes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/process.h"
#include "tests/netns/sidecarless_spec.h"
#include "tests/support/cgroup_guard.h"
#include "tests/support/privileged.h"
#include "tests/support/sockets.h"
#include "tests/testbed/spec.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

using namespace std::chrono_literals;
using test::Fd;

constexpr uint16_t kAppPort = 8080;
constexpr const char* kMarker = "SLUICE-PLAINTEXT-MARKER-";

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string l; std::getline(in, l);)
        out.push_back(l);
    return out;
}

// Stops a spawned process with SIGINT (tshark then finishes its file) and reaps it.
void interrupt_and_reap(pid_t pid) {
    ::kill(pid, SIGINT);
    for (int i = 0; i < 100; ++i) {
        if (::waitpid(pid, nullptr, WNOHANG) == pid)
            return;
        std::this_thread::sleep_for(100ms);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
}

class ZtunnelCaptureTest : public ::testing::Test {
  protected:
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        name_ = "zcap" + std::to_string(::getpid() % 100000);
        ClusterSpec spec = parse_spec(kSidecarlessClientServerSpec);
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
                for (const char* log : {"/ztunnel.log", "/ztunnel-access.log", "/agent.log"})
                    std::cerr << "==== " << n.name << log << "\n" << read_file(n.run_dir + log);
            }
        }
        down(name_, options_);
        EXPECT_EQ(leftovers(name_, options_), std::vector<std::string>{});
    }
    // tshark's fields of every packet in the capture (decoding :15008 as TLS), one line each.
    std::string fields(const std::string& pcap, const std::string& filter,
                       std::vector<std::string> names) {
        std::vector<std::string> argv = {"tshark", "-r",   pcap, "-d",    "tcp.port==15008,tls",
                                         "-Y",     filter, "-T", "fields"};
        for (auto& n : names) {
            argv.push_back("-e");
            argv.push_back(std::move(n));
        }
        auto r = run_process({.argv = argv}, 60s);
        EXPECT_EQ(r.exit_code, 0) << r.err;
        return r.out;
    }

    std::string name_;
    TestbedOptions options_;
    ClusterState state_;
};

TEST_F(ZtunnelCaptureTest, FabricCarriesOnlyTls13OnHbonePortAndNeverThePayload) {
    const PodState& client = *state_.find_pod("mesh/client");
    const PodState& server = *state_.find_pod("mesh/server");

    // The server app: echoes every connection until the test ends.
    Fd listener = test::tcp_listen(server.netns, "0.0.0.0", kAppPort);
    std::atomic<bool> stop = false;
    std::thread app([&] {
        while (!stop)
            test::echo_one_connection(listener, 1000);
    });

    // Node0's ztunnel must know the server pod before the first connect, or it would pass the
    // connection through as a destination outside the mesh.
    bool known = false;
    for (int i = 0; i < 100 && !known; ++i) {
        known = test::http_get(state_.nodes.at(0).netns, "127.0.0.1", 15000, "/config_dump")
                    .find("\"" + server.ip + "\"") != std::string::npos;
        if (!known)
            std::this_thread::sleep_for(200ms);
    }
    ASSERT_TRUE(known) << "node0's ztunnel never listed " << server.ip;

    // The capture starts before any cross-node traffic, so it sees the HBONE handshake. It
    // listens on node0's port of the fabric bridge: a capture on the bridge device itself only
    // sees frames for the bridge, not those it forwards between nodes.
    const std::string pcap = state_.run_dir + "/fabric.pcap";
    const std::string tshark_log = state_.run_dir + "/tshark.log";
    const pid_t tshark = spawn_process({.argv = {"tshark", "-i", state_.nodes.at(0).name, "-w",
                                                 pcap, "-P", "-l", "-a", "duration:60"},
                                        .netns = state_.fabric_netns},
                                       tshark_log);
    // tshark reports "Capture started" a moment before packets are really seen, and prints them
    // a moment after: ping node1 from node0 until one more ping reply shows up in tshark's packet
    // lines, before the request (capture running) and after it (everything before is in the
    // file). ICMP is neither TCP nor UDP, which the assertions below are about.
    const auto ping_seen = [&] {
        const auto replies = [&] {
            const std::string log = read_file(tshark_log);
            size_t n = 0;
            for (size_t at = log.find("Echo (ping) reply"); at != std::string::npos;
                 at = log.find("Echo (ping) reply", at + 1))
                ++n;
            return n;
        };
        const size_t before = replies();
        for (int i = 0; i < 200; ++i) {
            run_process({.argv = {"ping", "-c1", "-W1", state_.nodes.at(1).fabric_ip},
                         .netns = state_.nodes.at(0).netns},
                        5s);
            std::this_thread::sleep_for(100ms);
            if (replies() > before)
                return true;
        }
        return false;
    };
    const bool capturing = ping_seen();

    std::string payload;
    while (payload.size() < 64 * 1024)
        payload += kMarker + std::to_string(payload.size()) + "\n";
    std::string echoed;
    for (int attempt = 0; attempt < 10 && echoed != payload; ++attempt) {
        int err = 0;
        Fd s;
        {
            test::CgroupGuard in_pod(client.cgroup);  // connect() as an app of the client pod
            s = test::tcp_connect(client.netns, server.ip, kAppPort, &err);
        }
        if (s)
            echoed = test::send_and_receive(s, payload, 5000);
        if (echoed != payload)
            std::this_thread::sleep_for(250ms);
    }
    const bool flushed = ping_seen();
    interrupt_and_reap(tshark);
    stop = true;
    app.join();
    ASSERT_TRUE(capturing && flushed) << read_file(tshark_log);
    ASSERT_EQ(echoed.size(), payload.size());
    EXPECT_EQ(echoed, payload);

    // The payload crossed the fabric while it was captured, yet none of its bytes are visible.
    EXPECT_EQ(read_file(pcap).find(kMarker), std::string::npos);
    size_t hbone_bytes = 0;
    for (const auto& l : lines(fields(pcap, "tcp", {"tcp.srcport", "tcp.dstport", "tcp.len"}))) {
        unsigned src = 0, dst = 0;
        size_t len = 0;
        ASSERT_EQ(std::sscanf(l.c_str(), "%u %u %zu", &src, &dst, &len), 3) << l;
        EXPECT_TRUE(src == 15008 || dst == 15008) << "TCP off the HBONE port: " << l;
        hbone_bytes += len;
    }
    EXPECT_GE(hbone_bytes, 2 * payload.size())
        << read_file(tshark_log) << run_process({.argv = {"tshark", "-r", pcap}}).out;
    EXPECT_EQ(fields(pcap, "udp", {"udp.srcport", "udp.dstport"}), "");

    // TLS 1.3: the server chose version 0x0304, the client offered h2, and every record after the
    // handshake is an encrypted (opaque type 23) one: no cleartext application_data header.
    const auto versions = lines(
        fields(pcap, "tls.handshake.type == 2", {"tls.handshake.extensions.supported_version"}));
    ASSERT_FALSE(versions.empty()) << "no ServerHello captured";
    for (const auto& v : versions)
        EXPECT_EQ(v, "0x0304");
    for (const auto& alpn :
         lines(fields(pcap, "tls.handshake.type == 1", {"tls.handshake.extensions_alpn_str"})))
        EXPECT_EQ(alpn, "h2");
    EXPECT_EQ(fields(pcap, "tls.record.content_type == 23 || tls.record.content_type == 21",
                     {"frame.number"}),
              "");
    EXPECT_FALSE(fields(pcap, "tls.record.opaque_type == 23", {"frame.number"}).empty());
}

}  // namespace
}  // namespace sluice::testbed
