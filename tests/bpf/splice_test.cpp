// Same-node splicing (docs/datapath.md, "Same-node splicing"): both local ends of a captured
// loopback hop go into the splice SOCKHASH and sendmsg skips TCP. Observed as an app and ztunnel
// see it: bytes that arrive, EOF, EAGAIN, epoll readiness, and TCP_INFO on the app's socket
// (bytes that went through TCP are acked there; spliced bytes are not).
#include <fcntl.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "tests/bpf/datapath_fixture.h"

namespace sluice::test {
namespace {

constexpr uint32_t kEndpoint = 30;
constexpr size_t kMiB = 1 << 20;

tcp_info tcp_info_of(int fd) {
    tcp_info info{};
    socklen_t len = sizeof info;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
        throw std::system_error(errno, std::generic_category(), "TCP_INFO");
    return info;
}

// Byte i of a stream that starts at `offset`: any loss, duplicate or reordering shows.
char pattern_byte(size_t i) {
    return static_cast<char>((i * 131 + (i >> 16)) & 0xff);
}

std::string pattern(size_t offset, size_t n) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i)
        s[i] = pattern_byte(offset + i);
    return s;
}

// Writes all of `data` (blocking socket, 3 s SO_SNDTIMEO from tcp_socket()).
bool send_all(int fd, const std::string& data) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
        if (n <= 0)
            return false;
        done += static_cast<size_t>(n);
    }
    return true;
}

// Reads exactly `n` bytes, or what arrived before an error, EOF or 3 s without readiness. Waits
// for readiness before each read, as Asio (and so ztunnel) does: a *blocking* recv on a spliced
// socket can return EAGAIN when something else wakes it (docs/datapath.md, Limits).
std::string recv_n(int fd, size_t n) {
    std::string got(n, '\0');
    size_t have = 0;
    while (have < n) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 3000) != 1)
            break;
        ssize_t r = ::recv(fd, got.data() + have, n - have, MSG_DONTWAIT);
        if (r < 0 && errno == EAGAIN)
            continue;
        if (r <= 0)
            break;
        have += static_cast<size_t>(r);
    }
    got.resize(have);
    return got;
}

// True when the peer's EOF arrives within 3 s (readiness first, as in recv_n).
bool eof_within(int fd) {
    pollfd p{fd, POLLIN, 0};
    char c = 0;
    return ::poll(&p, 1, 3000) == 1 && ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

// Sends `total` bytes from `from` to `to` in `chunk`-sized turns, each read before the next is
// sent (so the receiver never falls behind); true when every byte arrived in order.
bool ping_pong(int from, int to, size_t total, size_t chunk) {
    for (size_t off = 0; off < total; off += chunk) {
        const std::string part = pattern(off, std::min(chunk, total - off));
        if (!send_all(from, part) || recv_n(to, part.size()) != part)
            return false;
    }
    return true;
}

// One captured connection: the app's socket and ztunnel's accepted end of it.
struct Hop {
    UniqueFd listener;  // ztunnel's outbound listener (or the app's, inbound)
    UniqueFd client;    // the connecting end (app outbound, ztunnel inbound)
    UniqueFd server;    // the accepted end
};

class SpliceTest : public DatapathTest {
  protected:
    void SetUp() override {
        DatapathTest::SetUp();
        config_.same_node_splice = true;
    }

    // The app in `ns` connects to `dst`:8080; connect4/6 redirects it to ztunnel's outbound
    // listener on loopback (`listen_ip`), which accepts.
    Hop outbound_hop(const TestNetns& ns, int family = AF_INET, const char* dst = "198.18.0.10",
                     const char* listen_ip = "127.0.0.1") {
        Hop hop;
        ns.run([&] {
            hop.listener = tcp_listen(listen_ip, SLUICE_PORT_OUTBOUND, true,
                                      /*v6only=*/std::string(listen_ip) == "::1");
            hop.client = tcp_socket(family);
            ASSERT_EQ(tcp_connect(hop.client.get(), dst, 8080), 0);
        });
        hop.server = accept_within(hop.listener.get());
        EXPECT_TRUE(hop.server) << "redirected connection did not reach the outbound listener";
        return hop;
    }

    // A fresh enrolled app netns (app_) and one captured hop in it.
    Hop captured_hop() {
        app_ = &add_netns("app");
        enroll(*app_, kEndpoint);
        return outbound_hop(*app_);
    }

    size_t spliced() const {
        auto n = dp_->spliced_sockets();
        if (!n)
            throw std::runtime_error(n.error().message);
        return *n;
    }

    TestNetns* app_ = nullptr;
};

struct FamilyCase {
    const char* name;
    int family;
    const char* dst;
    const char* listen_ip;
};

class SpliceFamilyTest : public SpliceTest, public ::testing::WithParamInterface<FamilyCase> {};

// The proof: 1 MiB each way arrives intact while TCP on the app's socket acks (almost) nothing.
TEST_P(SpliceFamilyTest, BytesSkipTcpBothWays) {
    SLUICE_REQUIRE_PRIVILEGES();
    const FamilyCase& c = GetParam();
    auto& dp = open_datapath();
    ASSERT_TRUE(dp.splicing());
    TestNetns& app = add_netns("app");
    enroll(app, kEndpoint);
    Hop hop = outbound_hop(app, c.family, c.dst, c.listen_ip);
    ASSERT_TRUE(hop.server);
    EXPECT_EQ(spliced(), 2u);
    EXPECT_EQ(dp.splice_count(SLUICE_SPLICE_ADDED).value(), 2u);

    EXPECT_TRUE(round_trip(hop.client.get(), hop.server.get(), "x"));
    EXPECT_TRUE(round_trip(hop.server.get(), hop.client.get(), "y"));
    EXPECT_TRUE(ping_pong(hop.client.get(), hop.server.get(), kMiB, 64 * 1024));
    EXPECT_TRUE(ping_pong(hop.server.get(), hop.client.get(), kMiB, 64 * 1024));

    const tcp_info app_tcp = tcp_info_of(hop.client.get());
    EXPECT_LT(app_tcp.tcpi_bytes_acked, 64u) << "app -> ztunnel bytes went through TCP";
    EXPECT_LT(app_tcp.tcpi_bytes_received, 64u) << "ztunnel -> app bytes went through TCP";
    EXPECT_LT(app_tcp.tcpi_segs_out, 16u);
    EXPECT_GE(dp.splice_count(SLUICE_SPLICE_REDIRECTED).value(), 34u);  // 2 + 2 * 16 turns
}

INSTANTIATE_TEST_SUITE_P(Families, SpliceFamilyTest,
                         ::testing::Values(FamilyCase{"V4", AF_INET, "198.18.0.10", "127.0.0.1"},
                                           FamilyCase{"V6", AF_INET6, "2001:db8::10", "::1"},
                                           FamilyCase{"V4Mapped", AF_INET6, "::ffff:198.18.0.10",
                                                      "127.0.0.1"}),
                         [](const auto& info) { return std::string(info.param.name); });

// With the flag off the same exchange goes through TCP: the acked bytes match what was sent.
TEST_F(SpliceTest, WithoutTheFlagBytesGoThroughTcp) {
    SLUICE_REQUIRE_PRIVILEGES();
    config_.same_node_splice = false;
    auto& dp = open_datapath();
    EXPECT_FALSE(dp.splicing());
    EXPECT_FALSE(dp.spliced_sockets().has_value());
    Hop hop = captured_hop();
    ASSERT_TRUE(hop.server);
    EXPECT_TRUE(ping_pong(hop.client.get(), hop.server.get(), kMiB, 64 * 1024));
    EXPECT_TRUE(ping_pong(hop.server.get(), hop.client.get(), kMiB, 64 * 1024));
    const tcp_info app_tcp = tcp_info_of(hop.client.get());
    EXPECT_EQ(app_tcp.tcpi_bytes_acked, kMiB + 1);  // + the SYN
    EXPECT_EQ(app_tcp.tcpi_bytes_received, kMiB);
}

TEST_F(SpliceTest, HalfCloseBothWays) {
    SLUICE_REQUIRE_PRIVILEGES();
    open_datapath();
    Hop hop = captured_hop();
    ASSERT_TRUE(hop.server);

    // The app sends its request and shuts down writing; ztunnel reads all of it, then EOF.
    const std::string request = pattern(0, 300 * 1024);
    std::thread writer([&] {
        EXPECT_TRUE(send_all(hop.client.get(), request));
        EXPECT_EQ(::shutdown(hop.client.get(), SHUT_WR), 0);
    });
    EXPECT_TRUE(recv_n(hop.server.get(), request.size()) == request);
    writer.join();
    EXPECT_TRUE(eof_within(hop.server.get())) << "no EOF after the app's shutdown";
    EXPECT_EQ(::send(hop.client.get(), "z", 1, MSG_NOSIGNAL), -1);
    EXPECT_EQ(errno, EPIPE);

    // The other direction still carries bytes, then its own EOF.
    const std::string reply = pattern(7, 200 * 1024);
    std::thread replier([&] {
        EXPECT_TRUE(send_all(hop.server.get(), reply));
        EXPECT_EQ(::shutdown(hop.server.get(), SHUT_WR), 0);
    });
    EXPECT_TRUE(recv_n(hop.client.get(), reply.size()) == reply);
    replier.join();
    EXPECT_TRUE(eof_within(hop.client.get())) << "no EOF after ztunnel's shutdown";
    EXPECT_LT(tcp_info_of(hop.client.get()).tcpi_bytes_acked, 64u);
}

// A stalled reader: the writer gets EAGAIN after a bounded amount (its spliced queue stops at
// the reader's receive buffer; the rest goes through TCP and its window), then every byte
// arrives in order once the reader reads.
TEST_F(SpliceTest, StalledReaderGivesBackpressure) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    Hop hop = captured_hop();
    ASSERT_TRUE(hop.server);
    ASSERT_EQ(::fcntl(hop.client.get(), F_SETFL, O_NONBLOCK), 0);

    constexpr size_t kLimit = 64 * kMiB;
    constexpr size_t kChunk = 64 * 1024;
    size_t written = 0;
    int err = 0;
    while (written < kLimit) {
        const std::string part = pattern(written, kChunk);
        ssize_t n = ::send(hop.client.get(), part.data(), part.size(), MSG_NOSIGNAL);
        if (n < 0) {
            err = errno;
            break;
        }
        written += static_cast<size_t>(n);
    }
    EXPECT_EQ(err, EAGAIN) << "the writer queued " << written << " bytes without backpressure";
    EXPECT_LT(written, 16 * kMiB);
    EXPECT_GT(dp.splice_count(SLUICE_SPLICE_REDIRECTED).value(), 0u);
    EXPECT_GT(dp.splice_count(SLUICE_SPLICE_PEER_BUSY).value(), 0u);

    // The spliced head first, then what TCP carried: in order, nothing lost.
    std::string got = recv_n(hop.server.get(), written);
    ASSERT_EQ(got.size(), written);
    EXPECT_TRUE(got == pattern(0, written)) << "bytes arrived out of order or changed";
}

// A writer faster than its reader switches between the splice and TCP many times; the stream
// stays intact.
TEST_F(SpliceTest, BulkWithSlowReaderStaysInOrder) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    Hop hop = captured_hop();
    ASSERT_TRUE(hop.server);
    constexpr size_t kTotal = 32 * kMiB;
    const std::string data = pattern(0, kTotal);
    std::thread writer([&] { EXPECT_TRUE(send_all(hop.client.get(), data)); });
    std::string got;
    got.reserve(kTotal);
    while (got.size() < kTotal) {
        const std::string part = recv_n(hop.server.get(), 4096);  // small reads: a slow reader
        if (part.empty())
            break;
        got += part;
    }
    writer.join();
    ASSERT_EQ(got.size(), kTotal);
    EXPECT_TRUE(got == data) << "bytes arrived out of order or changed";
    EXPECT_GT(dp.splice_count(SLUICE_SPLICE_REDIRECTED).value(), 0u);
    EXPECT_GT(dp.splice_count(SLUICE_SPLICE_PEER_BUSY).value(), 0u);
    std::printf("bulk: %lu redirected, %lu through TCP (peer busy)\n",
                dp.splice_count(SLUICE_SPLICE_REDIRECTED).value(),
                dp.splice_count(SLUICE_SPLICE_PEER_BUSY).value());
}

// Edge-triggered epoll as Asio uses it: readiness for spliced bytes and for EOF, none spurious.
TEST_F(SpliceTest, EpollReportsSplicedBytesAndEof) {
    SLUICE_REQUIRE_PRIVILEGES();
    open_datapath();
    Hop hop = captured_hop();
    ASSERT_TRUE(hop.server);
    for (auto [sender, receiver] : {std::pair{hop.client.get(), hop.server.get()},
                                    std::pair{hop.server.get(), hop.client.get()}}) {
        UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
        ASSERT_TRUE(ep);
        ASSERT_EQ(::fcntl(receiver, F_SETFL, O_NONBLOCK), 0);
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;
        ev.data.fd = receiver;
        ASSERT_EQ(::epoll_ctl(ep.get(), EPOLL_CTL_ADD, receiver, &ev), 0);
        epoll_event out{};
        EXPECT_EQ(::epoll_wait(ep.get(), &out, 1, 0), 0) << "readable before any byte";

        ASSERT_EQ(::send(sender, "abc", 3, MSG_NOSIGNAL), 3);
        ASSERT_EQ(::epoll_wait(ep.get(), &out, 1, 1000), 1) << "spliced bytes not reported";
        EXPECT_TRUE(out.events & EPOLLIN);
        char buf[8];
        EXPECT_EQ(::recv(receiver, buf, sizeof buf, 0), 3);
        EXPECT_EQ(::recv(receiver, buf, sizeof buf, 0), -1);
        EXPECT_EQ(errno, EAGAIN);
        EXPECT_EQ(::epoll_wait(ep.get(), &out, 1, 0), 0) << "readiness after the queue drained";

        ASSERT_EQ(::shutdown(sender, SHUT_WR), 0);
        ASSERT_EQ(::epoll_wait(ep.get(), &out, 1, 1000), 1) << "EOF not reported";
        EXPECT_TRUE(out.events & EPOLLRDHUP);
        EXPECT_EQ(::recv(receiver, buf, sizeof buf, 0), 0);
    }
}

// A loopback connection that was not redirected is not spliced; closing the ends of a spliced
// hop removes them from the SOCKHASH.
TEST_F(SpliceTest, OnlyCapturedHopsAreSplicedAndCloseRemovesThem) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    TestNetns& app = add_netns("app");
    enroll(app, kEndpoint);
    UniqueFd plain_listener, plain_client;
    app.run([&] {
        plain_listener = tcp_listen("127.0.0.1", 9000, false);
        plain_client = tcp_socket(AF_INET);
        ASSERT_EQ(tcp_connect(plain_client.get(), "127.0.0.1", 9000), 0);
    });
    UniqueFd plain_server = accept_within(plain_listener.get());
    ASSERT_TRUE(plain_server);
    EXPECT_EQ(spliced(), 0u);
    EXPECT_TRUE(ping_pong(plain_client.get(), plain_server.get(), 256 * 1024, 64 * 1024));
    EXPECT_EQ(tcp_info_of(plain_client.get()).tcpi_bytes_acked, 256 * 1024 + 1);

    Hop hop = outbound_hop(app);
    ASSERT_TRUE(hop.server);
    EXPECT_EQ(spliced(), 2u);
    hop.client.reset();
    EXPECT_EQ(spliced(), 1u);
    EXPECT_TRUE(eof_within(hop.server.get()));
    hop.server.reset();
    EXPECT_EQ(spliced(), 0u);
    EXPECT_EQ(dp.splice_count(SLUICE_SPLICE_ADDED).value(), 2u);
}

// Inbound: ztunnel (marked) connects to the app at the pod's address from inside the pod's
// netns; both ends are local, so that hop is spliced too.
TEST_F(SpliceTest, InboundHopToTheAppIsSpliced) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    TestNetns& pod = add_netns("pod");
    must_run({"ip", "-n", pod.name(), "addr", "add", "198.18.0.10/32", "dev", "lo"});
    uint64_t cookie = enroll(pod, kEndpoint);
    ASSERT_TRUE(dp.add_endpoint_address(*datapath::parse_ip("198.18.0.10"), cookie));
    Hop hop;
    pod.run([&] {
        hop.listener = tcp_listen("198.18.0.10", 8080, false);
        hop.client = tcp_socket(AF_INET, /*ztunnel_mark=*/true);
        ASSERT_EQ(tcp_connect(hop.client.get(), "198.18.0.10", 8080), 0);
    });
    hop.server = accept_within(hop.listener.get());
    ASSERT_TRUE(hop.server);
    EXPECT_EQ(spliced(), 2u);
    EXPECT_TRUE(ping_pong(hop.client.get(), hop.server.get(), kMiB, 64 * 1024));
    EXPECT_TRUE(ping_pong(hop.server.get(), hop.client.get(), kMiB, 64 * 1024));
    EXPECT_LT(tcp_info_of(hop.server.get()).tcpi_bytes_received, 64u);
    EXPECT_LT(tcp_info_of(hop.server.get()).tcpi_bytes_acked, 64u);

    // ztunnel connecting to an address that is not this pod's is left alone.
    UniqueFd other_listener, other_client;
    pod.run([&] {
        other_listener = tcp_listen("127.0.0.1", 8081, false);
        other_client = tcp_socket(AF_INET, /*ztunnel_mark=*/true);
        ASSERT_EQ(tcp_connect(other_client.get(), "127.0.0.1", 8081), 0);
    });
    UniqueFd other_server = accept_within(other_listener.get());
    ASSERT_TRUE(other_server);
    EXPECT_EQ(spliced(), 2u);
}

// Restart: the pins keep spliced hops working while no agent runs and after the next one takes
// over (bpf_link_update); a restart with the flag off splices nothing new and leaves the old
// hops spliced.
TEST_F(SpliceTest, RestartKeepsSplicedHops) {
    SLUICE_REQUIRE_PRIVILEGES();
    open_datapath();
    Hop before = captured_hop();
    ASSERT_TRUE(before.server);
    before.listener.reset();  // each hop below brings its own

    dp_.reset();  // the agent is gone; the pins stay
    EXPECT_TRUE(ping_pong(before.client.get(), before.server.get(), 256 * 1024, 64 * 1024));

    auto& dp = open_datapath();
    EXPECT_TRUE(dp.reused_pinned_state());
    ASSERT_TRUE(dp.splicing());
    EXPECT_EQ(spliced(), 2u);
    EXPECT_TRUE(ping_pong(before.server.get(), before.client.get(), 256 * 1024, 64 * 1024));
    Hop after = outbound_hop(*app_);
    ASSERT_TRUE(after.server);
    after.listener.reset();
    EXPECT_EQ(spliced(), 4u);
    EXPECT_TRUE(ping_pong(after.client.get(), after.server.get(), 256 * 1024, 64 * 1024));
    EXPECT_LT(tcp_info_of(after.client.get()).tcpi_bytes_acked, 64u);

    dp_.reset();
    config_.same_node_splice = false;
    auto& off = open_datapath();
    EXPECT_FALSE(off.splicing());
    Hop unspliced = outbound_hop(*app_);
    ASSERT_TRUE(unspliced.server);
    EXPECT_TRUE(ping_pong(unspliced.client.get(), unspliced.server.get(), 256 * 1024, 64 * 1024));
    EXPECT_EQ(tcp_info_of(unspliced.client.get()).tcpi_bytes_acked, 256 * 1024 + 1);
    EXPECT_TRUE(ping_pong(before.client.get(), before.server.get(), 256 * 1024, 64 * 1024));
    EXPECT_LT(tcp_info_of(before.client.get()).tcpi_bytes_acked, 64u);
}

// A splice that cannot run (here: its pinned SOCKHASH has another size than this start asks for)
// is a warning, never a failed start: capture works, nothing is spliced, the old links are gone.
TEST_F(SpliceTest, AnUnusableSpliceNeverFailsStart) {
    SLUICE_REQUIRE_PRIVILEGES();
    open_datapath();
    dp_.reset();
    config_.map_sizes.splice_sockets = 1024;
    auto& dp = open_datapath();
    EXPECT_FALSE(dp.splicing());
    EXPECT_FALSE(std::filesystem::exists(config_.bpffs_root + "/links/splice/sluice_splice_msg"));
    Hop hop = captured_hop();
    ASSERT_TRUE(hop.server);
    EXPECT_TRUE(ping_pong(hop.client.get(), hop.server.get(), 256 * 1024, 64 * 1024));
    EXPECT_EQ(tcp_info_of(hop.client.get()).tcpi_bytes_acked, 256 * 1024 + 1);
}

}  // namespace
}  // namespace sluice::test
