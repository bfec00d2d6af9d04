// Outbound capture: cgroup/connect4/6, sockops, getsockopt(SO_ORIGINAL_DST), getpeername and the
// bind guard, observed the way an app and ztunnel observe them.
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "tests/bpf/datapath_fixture.h"

namespace sluice::test {
namespace {

constexpr uint32_t kEndpoint = 10;
constexpr uint16_t kDeniedPort = 7000;
constexpr uint32_t kDenyRule = 7;
constexpr uint16_t kExcludedPort = 9999;

struct ConnectCase {
    const char* name;         // gtest name
    const char* description;  // what the case shows
    int family = AF_INET;     // of the app's socket
    const char* dst = "";
    uint16_t port = 0;
    bool enrolled = true;
    bool ztunnel_mark = false;
    int expect = 0;  // connect() errno, 0 = connected
    // When redirected: what ztunnel's getsockopt(SO_ORIGINAL_DST) and the app's getpeername()
    // report. Empty: the connection must not reach the outbound listener.
    const char* expect_orig_dst = "";
    int orig_dst_level = SOL_IP;
    const char* expect_peer = "";
};

std::ostream& operator<<(std::ostream& os, const ConnectCase& c) {
    return os << c.description;
}

// ENETUNREACH proves "not redirected": the test netns has no route but loopback.
const ConnectCase kConnectCases[] = {
    {.name = "EnrolledV4Redirected",
     .description = "enrolled IPv4 connect lands on 127.0.0.1:15001 with its original destination",
     .dst = "198.18.0.10",
     .port = 8080,
     .expect_orig_dst = "198.18.0.10:8080",
     .expect_peer = "198.18.0.10:8080"},
    {.name = "NotEnrolledUntouched",
     .description = "a netns that is not enrolled is untouched",
     .dst = "198.18.0.10",
     .port = 8080,
     .enrolled = false,
     .expect = ENETUNREACH},
    {.name = "ZtunnelMarkNotRedirected",
     .description = "ztunnel's socket (SO_MARK 0x539) is not redirected",
     .dst = "198.18.0.10",
     .port = 8080,
     .ztunnel_mark = true,
     .expect = ENETUNREACH},
    {.name = "EgressDeniedPort",
     .description = "egress to denied port",
     .dst = "198.18.0.10",
     .port = kDeniedPort,
     .expect = EPERM},
    {.name = "LoopbackExcluded",
     .description = "loopback destinations are not redirected",
     .dst = "127.0.0.1",
     .port = 15099,
     .expect = ECONNREFUSED},
    {.name = "HbonePortExcluded",
     .description = "the HBONE port 15008 is not redirected",
     .dst = "198.18.0.10",
     .port = SLUICE_PORT_HBONE,
     .expect = ENETUNREACH},
    {.name = "ExcludedPort",
     .description = "a configured excluded port is not redirected",
     .dst = "198.18.0.10",
     .port = kExcludedPort,
     .expect = ENETUNREACH},
    {.name = "ExcludedCidr",
     .description = "a destination in an excluded CIDR is not redirected",
     .dst = "198.18.200.5",
     .port = 8080,
     .expect = ENETUNREACH},
    {.name = "EnrolledV6Redirected",
     .description = "enrolled IPv6 connect lands on [::1]:15001 with its original destination",
     .family = AF_INET6,
     .dst = "2001:db8::10",
     .port = 8080,
     .expect_orig_dst = "[2001:db8::10]:8080",
     .orig_dst_level = SOL_IPV6,
     .expect_peer = "[2001:db8::10]:8080"},
    {.name = "V4MappedRedirected",
     .description = "v4-mapped IPv6 connect lands on the IPv4 outbound listener",
     .family = AF_INET6,
     .dst = "::ffff:198.18.0.10",
     .port = 8080,
     .expect_orig_dst = "198.18.0.10:8080",
     .expect_peer = "[::ffff:198.18.0.10]:8080"},
    {.name = "V6LoopbackExcluded",
     .description = "::1 is not redirected",
     .family = AF_INET6,
     .dst = "::1",
     .port = 15099,
     .expect = ECONNREFUSED},
    {.name = "V6EgressDeniedPort",
     .description = "IPv6 egress to denied port",
     .family = AF_INET6,
     .dst = "2001:db8::10",
     .port = kDeniedPort,
     .expect = EPERM},
    {.name = "V4MappedEgressDeniedPort",
     .description = "v4-mapped IPv6 egress to denied port",
     .family = AF_INET6,
     .dst = "::ffff:198.18.0.10",
     .port = kDeniedPort,
     .expect = EPERM},
};

class ConnectTest : public DatapathTest, public ::testing::WithParamInterface<ConnectCase> {};

TEST_P(ConnectTest, Outcome) {
    SLUICE_REQUIRE_PRIVILEGES();
    const ConnectCase& c = GetParam();
    config_.excluded_ports = {kExcludedPort};
    auto& dp = open_datapath();
    TestNetns& app = add_netns("app");
    if (c.enrolled)
        enroll(app, kEndpoint);
    deny(kEndpoint, SLUICE_IDENTITY_ANY, kDeniedPort, SLUICE_DIR_EGRESS, kDenyRule);
    ASSERT_TRUE(dp.add_excluded_cidr(cidr("198.18.200.0/24")));

    UniqueFd out4, out6, sock;
    int rc = app.run([&] {
        out4 = tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true);
        out6 = tcp_listen("::1", SLUICE_PORT_OUTBOUND, true, /*v6only=*/true);
        sock = tcp_socket(c.family, c.ztunnel_mark);
        return tcp_connect(sock.get(), c.dst, c.port);
    });
    EXPECT_EQ(rc, c.expect) << std::strerror(rc);

    UniqueFd accepted4 = accept_within(out4.get(), 200);
    UniqueFd accepted6 = accept_within(out6.get(), 200);
    if (std::string(c.expect_orig_dst).empty()) {
        EXPECT_FALSE(accepted4 || accepted6) << "connection reached the outbound listener";
        return;
    }
    UniqueFd& accepted = accepted4 ? accepted4 : accepted6;
    ASSERT_TRUE(accepted) << "redirected connection did not reach the outbound listener";
    EXPECT_EQ(original_dst(accepted.get(), c.orig_dst_level), c.expect_orig_dst);
    EXPECT_EQ(peer_name(sock.get()), c.expect_peer);
    EXPECT_TRUE(round_trip(sock.get(), accepted.get(), "ping"));
    EXPECT_TRUE(round_trip(accepted.get(), sock.get(), "pong"));
}

INSTANTIATE_TEST_SUITE_P(Described, ConnectTest, ::testing::ValuesIn(kConnectCases),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_F(DatapathTest, EveryProgramLoadsAndIsPinned) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    EXPECT_FALSE(dp.reused_pinned_state());
    namespace fs = std::filesystem;
    const fs::path root(config_.bpffs_root);
    for (const char* prog :
         {"sluice_connect4", "sluice_connect6", "sluice_sockops", "sluice_getsockopt",
          "sluice_getpeername4", "sluice_getpeername6", "sluice_bind4", "sluice_bind6"}) {
        EXPECT_TRUE(fs::exists(root / "links" / "cgroup" / prog)) << prog;
    }
    for (const char* map : {"layout_meta", "enrolled_netns", "endpoint_addrs", "ipcache", "policy",
                            "rule_counters", "drop_counters", "event_counters", "excluded_cidrs",
                            "orig_dst_sk", "orig_dst_tuple", "listeners", "deny_events"}) {
        EXPECT_TRUE(fs::exists(root / "maps" / map)) << map;
    }
    // The sk_lookup program loads too; it attaches per netns.
    TestNetns& pod = add_netns("pod");
    auto cookie = dp.attach_netns(pod.path());
    ASSERT_TRUE(cookie) << cookie.error().message;
    EXPECT_TRUE(fs::exists(root / "links" / "netns" / std::to_string(*cookie)));
}

TEST_F(DatapathTest, EgressDenyReportsEventAndCounters) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    TestNetns& app = add_netns("app");
    uint64_t cookie = enroll(app, kEndpoint);
    ASSERT_TRUE(dp.upsert_ipcache(cidr("198.18.0.0/24"), 4242));
    deny(kEndpoint, 4242, kDeniedPort, SLUICE_DIR_EGRESS, kDenyRule);
    uint64_t drops_before = dp.drop_count(SLUICE_REASON_POLICY_DENY_EGRESS).value();

    int rc = app.run([&] {
        UniqueFd s = tcp_socket(AF_INET);
        return tcp_connect(s.get(), "198.18.0.10", kDeniedPort);
    });
    EXPECT_EQ(rc, EPERM);

    auto events = drain_deny_events(1);
    ASSERT_EQ(events.size(), 1u);
    const auto& ev = events[0];
    EXPECT_EQ(ev.reason, SLUICE_REASON_POLICY_DENY_EGRESS);
    EXPECT_STREQ(datapath::reason_name(static_cast<sluice_reason>(ev.reason)),
                 "policy_deny_egress");
    EXPECT_EQ(ev.direction, SLUICE_DIR_EGRESS);
    EXPECT_EQ(ev.proto, 6);
    EXPECT_EQ(event_addr(ev.dst_addr), "198.18.0.10");
    EXPECT_EQ(ev.dst_port, kDeniedPort);
    EXPECT_EQ(ev.endpoint_id, kEndpoint);
    EXPECT_EQ(ev.peer_identity, 4242u);
    EXPECT_EQ(ev.rule_id, kDenyRule);
    EXPECT_EQ(ev.netns_cookie, cookie);
    EXPECT_GT(ev.time_ns, 0u);
    EXPECT_EQ(dp.drop_count(SLUICE_REASON_POLICY_DENY_EGRESS).value(), drops_before + 1);
    EXPECT_EQ(dp.rule_count(kDenyRule).value(), 1u);
}

TEST_F(DatapathTest, IpcacheLongestPrefixMatchDecidesIdentity) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    TestNetns& app = add_netns("app");
    enroll(app, kEndpoint);
    ASSERT_TRUE(dp.upsert_ipcache(cidr("198.18.0.0/16"), 100));
    ASSERT_TRUE(dp.upsert_ipcache(cidr("198.18.5.0/24"), 200));
    ASSERT_TRUE(dp.upsert_ipcache(cidr("2001:db8::/32"), 300));
    ASSERT_TRUE(dp.upsert_ipcache(cidr("2001:db8:5::/48"), 400));
    deny(kEndpoint, 200, SLUICE_PORT_ANY, SLUICE_DIR_EGRESS, 20);
    deny(kEndpoint, 400, SLUICE_PORT_ANY, SLUICE_DIR_EGRESS, 40);

    struct Case {
        const char* description;
        int family;
        const char* dst;
        int expect;
    };
    const Case cases[] = {
        {"/24 inside the /16 denies", AF_INET, "198.18.5.7", EPERM},
        {"rest of the /16 allowed", AF_INET, "198.18.6.7", 0},
        {"v4-mapped IPv6 uses the same trie", AF_INET6, "::ffff:198.18.5.7", EPERM},
        {"v4-mapped IPv6 outside the /24 allowed", AF_INET6, "::ffff:198.18.6.7", 0},
        {"IPv6 /48 inside the /32 denies", AF_INET6, "2001:db8:5::7", EPERM},
        {"rest of the IPv6 /32 allowed", AF_INET6, "2001:db8:6::7", 0},
    };
    app.run([&] {
        UniqueFd l4 = tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true);
        UniqueFd l6 = tcp_listen("::1", SLUICE_PORT_OUTBOUND, true, true);
        for (const auto& c : cases) {
            UniqueFd s = tcp_socket(c.family);
            EXPECT_EQ(tcp_connect(s.get(), c.dst, 80), c.expect) << c.description;
        }
    });
    auto events = drain_deny_events(3);
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0].peer_identity, 200u);
    EXPECT_EQ(events[1].peer_identity, 200u);
    EXPECT_EQ(events[2].peer_identity, 400u);
    EXPECT_EQ(event_addr(events[2].dst_addr), "2001:db8:5::7");

    // Without the /24 the /16 decides.
    ASSERT_TRUE(dp.delete_ipcache(cidr("198.18.5.0/24")));
    int rc = app.run([&] {
        UniqueFd l4 = tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true);
        UniqueFd s = tcp_socket(AF_INET);
        return tcp_connect(s.get(), "198.18.5.7", 80);
    });
    EXPECT_EQ(rc, 0);
}

TEST_F(DatapathTest, OrigDstRecordedInTheAppSocketsStorage) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    TestNetns& app = add_netns("app");
    uint64_t netns = enroll(app, kEndpoint);
    UniqueFd listener, sock;
    app.run([&] {
        listener = tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true);
        sock = tcp_socket(AF_INET);
        ASSERT_EQ(tcp_connect(sock.get(), "198.18.0.10", 8080), 0);
    });
    auto od = dp.orig_dst_of_socket(sock.get());
    ASSERT_TRUE(od) << od.error().message;
    ASSERT_TRUE(od->has_value());
    EXPECT_EQ((*od)->address.to_string(), "198.18.0.10");
    EXPECT_EQ((*od)->port, 8080);
    EXPECT_EQ((*od)->family, AF_INET);
    EXPECT_EQ((*od)->netns_cookie, netns);
    EXPECT_EQ(dp.event_count(SLUICE_EVENT_REDIRECTED).value(), 1u);
}

TEST_F(DatapathTest, BindGuardReservesZtunnelPorts) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    TestNetns& pod = add_netns("pod");
    TestNetns& other = add_netns("other");
    TestNetns& waypoint = add_netns("waypoint");
    enroll(pod, kEndpoint);
    enroll(waypoint, kEndpoint + 1, SLUICE_ENROLLED_F_WAYPOINT);

    struct Case {
        const char* description;
        const TestNetns* ns;
        int family;
        const char* ip;
        uint16_t port;
        bool mark;
        int expect;
    };
    const Case cases[] = {
        {"app binding 15001 in an enrolled netns", &pod, AF_INET, "127.0.0.1", 15001, false, EPERM},
        {"app binding 15006 (IPv6) in an enrolled netns", &pod, AF_INET6, "::", 15006, false,
         EPERM},
        {"app binding 15008 in an enrolled netns", &pod, AF_INET, "0.0.0.0", 15008, false, EPERM},
        {"ztunnel binding 15001 in an enrolled netns", &pod, AF_INET, "127.0.0.1", 15001, true, 0},
        {"ztunnel binding 15006 (IPv6)", &pod, AF_INET6, "::", 15006, true, 0},
        {"app binding another port", &pod, AF_INET, "0.0.0.0", 8080, false, 0},
        {"app binding 15001 in a netns that is not enrolled", &other, AF_INET, "127.0.0.1", 15001,
         false, 0},
        {"waypoint binding 15008 in its enrolled netns", &waypoint, AF_INET, "0.0.0.0", 15008,
         false, 0},
        {"waypoint binding 15008 (IPv6)", &waypoint, AF_INET6, "::", 15008, false, 0},
        {"waypoint binding 15001 in its enrolled netns", &waypoint, AF_INET, "127.0.0.1", 15001,
         false, EPERM},
    };
    for (const auto& c : cases) {
        int rc = c.ns->run([&] { return try_bind(c.family, c.ip, c.port, c.mark); });
        EXPECT_EQ(rc, c.expect) << c.description;
    }
    EXPECT_EQ(dp.drop_count(SLUICE_REASON_RESERVED_PORT_BIND).value(), 4u);
    auto events = drain_deny_events(4);
    ASSERT_EQ(events.size(), 4u);
    EXPECT_EQ(events[0].reason, SLUICE_REASON_RESERVED_PORT_BIND);
    EXPECT_EQ(events[0].src_port, 15001);
}

}  // namespace
}  // namespace sluice::test
