// Closing open connections after a policy change: the tcp socket iterator (bpf/close.bpf.c) run
// inside a pod netns destroys the redirected app sockets that egress policy now denies, and
// nothing else, observed the way the app and ztunnel observe it.
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <set>

#include "tests/bpf/datapath_fixture.h"
#include "tests/support/sockets.h"

namespace sluice::test {
namespace {

constexpr uint32_t kEndpoint = 12;
constexpr uint16_t kDeniedPort = 7100;
constexpr uint16_t kAllowedPort = 7200;
constexpr uint32_t kDenyRule = 71;
constexpr const char* kServer = "198.18.0.20";

int recv_error_within_1s(int fd) {
    return recv_error_within(fd, 1000);
}

class CloseTest : public DatapathTest {
  protected:
    // An app connection from `app` to server:port, redirected to the test's outbound listener;
    // `proxy` receives ztunnel's end of it.
    UniqueFd open_redirected(const TestNetns& app, int listener, uint16_t port, UniqueFd& proxy,
                             int family = AF_INET, const std::string& server = kServer) {
        UniqueFd sock;
        int rc = app.run([&] {
            sock = tcp_socket(family);
            return tcp_connect(sock.get(), server, port);
        });
        EXPECT_EQ(rc, 0) << std::strerror(rc);
        proxy = accept_within(listener);
        EXPECT_TRUE(proxy) << "the connection to " << server << " was not redirected";
        return sock;
    }

    std::vector<sluice_deny_event> close_in(const TestNetns& ns) {
        auto r = ns.run([&] { return dp_->close_denied_connections(); });
        if (!r)
            throw std::runtime_error(r.error().message);
        return *r;
    }
};

TEST_F(CloseTest, DeniedConnectionIsResetAndAnAllowedOneKeepsFlowing) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    ASSERT_TRUE(dp.can_close_connections()) << "kernel 6.18 has iter/tcp and bpf_sock_destroy";
    TestNetns& app = add_netns("app");
    const uint64_t cookie = enroll(app, kEndpoint);
    UniqueFd listener = app.run([] { return tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true); });

    UniqueFd denied_proxy, allowed_proxy;
    UniqueFd denied = open_redirected(app, listener.get(), kDeniedPort, denied_proxy);
    UniqueFd allowed = open_redirected(app, listener.get(), kAllowedPort, allowed_proxy);
    EXPECT_EQ(original_dst(denied_proxy.get(), SOL_IP),
              std::string(kServer) + ":" + std::to_string(kDeniedPort));
    ASSERT_TRUE(round_trip(denied.get(), denied_proxy.get(), "before"));
    ASSERT_TRUE(round_trip(allowed.get(), allowed_proxy.get(), "before"));

    // Nothing denied yet: a sweep closes nothing.
    EXPECT_TRUE(close_in(app).empty());
    EXPECT_EQ(recv_error_within_1s(denied.get()), 0);

    deny(kEndpoint, SLUICE_IDENTITY_ANY, kDeniedPort, SLUICE_DIR_EGRESS, kDenyRule);
    auto closed = close_in(app);
    ASSERT_EQ(closed.size(), 1u);
    const sluice_deny_event& ev = closed[0];
    EXPECT_EQ(ev.netns_cookie, cookie);
    EXPECT_EQ(event_addr(ev.dst_addr), kServer);
    EXPECT_EQ(ev.dst_port, kDeniedPort);
    EXPECT_EQ(event_addr(ev.src_addr), "127.0.0.1");
    EXPECT_EQ(local_name(denied.get()), "127.0.0.1:" + std::to_string(ev.src_port));
    EXPECT_EQ(ev.direction, SLUICE_DIR_EGRESS);
    EXPECT_EQ(ev.reason, SLUICE_REASON_POLICY_DENY_EGRESS);
    EXPECT_EQ(ev.rule_id, kDenyRule);
    EXPECT_EQ(ev.endpoint_id, kEndpoint);
    EXPECT_EQ(ev.peer_identity, static_cast<uint32_t>(SLUICE_IDENTITY_WORLD));

    // The app's socket was aborted, ztunnel's end got a RST.
    EXPECT_EQ(recv_error_within_1s(denied.get()), ECONNABORTED);
    EXPECT_EQ(recv_error_within_1s(denied_proxy.get()), ECONNRESET);
    // The allowed connection (and ztunnel's marked sockets) were not touched.
    EXPECT_TRUE(round_trip(allowed.get(), allowed_proxy.get(), "after"));
    EXPECT_TRUE(round_trip(allowed_proxy.get(), allowed.get(), "after"));
    // Re-checking is not a new match: the rule's counter stays where connects left it.
    EXPECT_EQ(dp.rule_count(kDenyRule).value(), 0u);
    // A second sweep finds nothing more.
    EXPECT_TRUE(close_in(app).empty());
}

TEST_F(CloseTest, IPv6AndV4MappedConnectionsAreJudgedByTheirOriginalDestination) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    ASSERT_TRUE(dp.can_close_connections());
    TestNetns& app = add_netns("app");
    enroll(app, kEndpoint);
    ASSERT_TRUE(dp.upsert_ipcache(cidr("2001:db8::/64"), 6060));
    UniqueFd l4 = app.run([] { return tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true); });
    UniqueFd l6 = app.run([] { return tcp_listen("::1", SLUICE_PORT_OUTBOUND, true, true); });

    UniqueFd v6_proxy, mapped_proxy, other_proxy;
    UniqueFd v6 = open_redirected(app, l6.get(), kDeniedPort, v6_proxy, AF_INET6, "2001:db8::20");
    UniqueFd mapped =
        open_redirected(app, l4.get(), kDeniedPort, mapped_proxy, AF_INET6, "::ffff:198.18.0.20");
    // Same port, another identity: the denies below do not cover it.
    UniqueFd other =
        open_redirected(app, l6.get(), kDeniedPort, other_proxy, AF_INET6, "2001:db8:1::20");
    ASSERT_TRUE(dp.upsert_ipcache(cidr("2001:db8:1::/64"), 7070));

    deny(kEndpoint, 6060, SLUICE_PORT_ANY, SLUICE_DIR_EGRESS, kDenyRule);
    deny(kEndpoint, SLUICE_IDENTITY_WORLD, kDeniedPort, SLUICE_DIR_EGRESS, kDenyRule + 1);
    auto closed = close_in(app);
    ASSERT_EQ(closed.size(), 2u);
    std::set<std::string> dsts;
    for (const auto& ev : closed)
        dsts.insert(event_addr(ev.dst_addr) + " rule " + std::to_string(ev.rule_id));
    EXPECT_EQ(dsts, (std::set<std::string>{"2001:db8::20 rule 71", "198.18.0.20 rule 72"}));
    EXPECT_EQ(recv_error_within_1s(v6.get()), ECONNABORTED);
    EXPECT_EQ(recv_error_within_1s(mapped.get()), ECONNABORTED);
    EXPECT_TRUE(round_trip(other.get(), other_proxy.get(), "identity 7070 is allowed"));
}

TEST_F(CloseTest, ADestinationExcludedSinceTheConnectIsLeftAlone) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    ASSERT_TRUE(dp.can_close_connections());
    TestNetns& app = add_netns("app");
    enroll(app, kEndpoint);
    UniqueFd listener = app.run([] { return tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true); });
    UniqueFd excluded_proxy, denied_proxy;
    UniqueFd excluded = open_redirected(app, listener.get(), kDeniedPort, excluded_proxy);
    UniqueFd denied =
        open_redirected(app, listener.get(), kDeniedPort, denied_proxy, AF_INET, "198.18.0.21");

    ASSERT_TRUE(dp.add_excluded_cidr(cidr(std::string(kServer) + "/32")));
    deny(kEndpoint, SLUICE_IDENTITY_ANY, kDeniedPort, SLUICE_DIR_EGRESS, kDenyRule);
    auto closed = close_in(app);
    ASSERT_EQ(closed.size(), 1u) << "only the destination that is still meshed";
    EXPECT_EQ(event_addr(closed[0].dst_addr), "198.18.0.21");
    EXPECT_EQ(recv_error_within_1s(denied.get()), ECONNABORTED);
    EXPECT_TRUE(round_trip(excluded.get(), excluded_proxy.get(), "excluded since"));
}

// The original destination lives in the app socket's storage: however many connections come
// and go after it (here 5x the size of the tuple map), a long-lived connection still shows the
// app its real peer and is still judged by the closer.
TEST_F(CloseTest, ALongLivedConnectionKeepsItsRecordThroughConnectionChurn) {
    SLUICE_REQUIRE_PRIVILEGES();
    config_.map_sizes.orig_dst = 64;
    auto& dp = open_datapath();
    ASSERT_TRUE(dp.can_close_connections());
    TestNetns& app = add_netns("app");
    enroll(app, kEndpoint);
    UniqueFd listener = app.run([] { return tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true); });
    UniqueFd long_proxy;
    UniqueFd long_lived = open_redirected(app, listener.get(), kDeniedPort, long_proxy);
    for (int i = 0; i < 320; ++i) {
        UniqueFd proxy;
        UniqueFd churn = open_redirected(app, listener.get(), kAllowedPort, proxy);
        ASSERT_TRUE(proxy) << "churn connection " << i;
    }
    EXPECT_EQ(peer_name(long_lived.get()),
              std::string(kServer) + ":" + std::to_string(kDeniedPort));
    EXPECT_EQ(dp.orig_dst_of_socket(long_lived.get()).value()->port, kDeniedPort);

    deny(kEndpoint, SLUICE_IDENTITY_ANY, kDeniedPort, SLUICE_DIR_EGRESS, kDenyRule);
    auto closed = close_in(app);
    ASSERT_EQ(closed.size(), 1u);
    EXPECT_EQ(closed[0].dst_port, kDeniedPort);
    EXPECT_EQ(recv_error_within_1s(long_lived.get()), ECONNABORTED);
}

TEST_F(CloseTest, PodsThatAreNotEnrolledAreUntouched) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    ASSERT_TRUE(dp.can_close_connections());
    TestNetns& app = add_netns("app");
    const uint64_t cookie = enroll(app, kEndpoint);
    UniqueFd listener = app.run([] { return tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true); });
    UniqueFd proxy;
    UniqueFd sock = open_redirected(app, listener.get(), kDeniedPort, proxy);

    ASSERT_TRUE(dp.unenroll_netns(cookie));
    deny(kEndpoint, SLUICE_IDENTITY_ANY, kDeniedPort, SLUICE_DIR_EGRESS, kDenyRule);
    EXPECT_TRUE(close_in(app).empty());
    EXPECT_TRUE(round_trip(sock.get(), proxy.get(), "still here"));
    EXPECT_TRUE(round_trip(proxy.get(), sock.get(), "still here"));
}

}  // namespace
}  // namespace sluice::test
