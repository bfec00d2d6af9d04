// Inbound steering: the sk_lookup program in a pod netns hands connections for any pod port to
// ztunnel's :15006 listener and refuses what ingress policy denies.
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "tests/bpf/datapath_fixture.h"

namespace sluice::test {
namespace {

constexpr uint32_t kPodEndpoint = 20;
constexpr uint32_t kClientIdentity = 77;

// A client netns and an enrolled pod netns joined by a veth pair, the pod's sk_lookup attached
// and ztunnel's dual-stack inbound listener registered.
class InboundTest : public DatapathTest {
  protected:
    void SetUp() override {
        DatapathTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        auto& dp = open_datapath();
        client_ = &add_netns("cli");
        pod_ = &add_netns("pod");
        link_netns(*client_, "198.18.1.1/24", "2001:db8:1::1/64", *pod_, "198.18.1.2/24",
                   "2001:db8:1::2/64");
        pod_cookie_ = enroll(*pod_, kPodEndpoint);
        for (const char* ip : {"198.18.1.2", "2001:db8:1::2"}) {
            ASSERT_TRUE(dp.add_endpoint_address(*datapath::parse_ip(ip), pod_cookie_));
        }
        auto attached = dp.attach_netns(pod_->path());
        ASSERT_TRUE(attached) << attached.error().message;
        ASSERT_EQ(*attached, pod_cookie_);
        inbound_ = pod_->run([] { return tcp_listen("::", SLUICE_PORT_INBOUND, true); });
        auto r = dp.register_inbound_listener(pod_cookie_, inbound_.get());
        ASSERT_TRUE(r) << r.error().message;
    }

    void TearDown() override {
        inbound_.reset();
        DatapathTest::TearDown();
    }

    // Connects from the client netns; returns connect()'s errno and the client socket.
    std::pair<int, UniqueFd> connect_from_client(const char* ip, uint16_t port) {
        UniqueFd s;
        int rc = client_->run([&] {
            s = tcp_socket(std::strchr(ip, ':') ? AF_INET6 : AF_INET);
            return tcp_connect(s.get(), ip, port);
        });
        return {rc, std::move(s)};
    }

    TestNetns* client_ = nullptr;
    TestNetns* pod_ = nullptr;
    uint64_t pod_cookie_ = 0;
    UniqueFd inbound_;
};

TEST_F(InboundTest, AnyPodPortIsSteeredToInboundListener) {
    SLUICE_REQUIRE_PRIVILEGES();
    struct Case {
        const char* description;
        const char* ip;
        uint16_t port;
        const char* expect_local;  // getsockname() of ztunnel's accepted socket
    };
    const Case cases[] = {
        {"IPv4 to a port nobody listens on", "198.18.1.2", 8080, "[::ffff:198.18.1.2]:8080"},
        {"IPv4 to another port", "198.18.1.2", 5432, "[::ffff:198.18.1.2]:5432"},
        {"IPv6", "2001:db8:1::2", 8080, "[2001:db8:1::2]:8080"},
    };
    for (const auto& c : cases) {
        auto [rc, client] = connect_from_client(c.ip, c.port);
        ASSERT_EQ(rc, 0) << c.description << ": " << std::strerror(rc);
        UniqueFd accepted = accept_within(inbound_.get());
        ASSERT_TRUE(accepted) << c.description;
        EXPECT_EQ(local_name(accepted.get()), c.expect_local) << c.description;
        EXPECT_TRUE(round_trip(client.get(), accepted.get(), "hello")) << c.description;
        EXPECT_TRUE(round_trip(accepted.get(), client.get(), "world")) << c.description;
    }
    EXPECT_EQ(dp_->event_count(SLUICE_EVENT_STEERED).value(), 3u);
}

TEST_F(InboundTest, HbonePortIsNotSteered) {
    SLUICE_REQUIRE_PRIVILEGES();
    UniqueFd hbone = pod_->run([] { return tcp_listen("0.0.0.0", SLUICE_PORT_HBONE, true); });
    auto [rc, client] = connect_from_client("198.18.1.2", SLUICE_PORT_HBONE);
    ASSERT_EQ(rc, 0) << std::strerror(rc);
    EXPECT_TRUE(accept_within(hbone.get()));
    EXPECT_FALSE(accept_within(inbound_.get(), 200));
}

TEST_F(InboundTest, IngressDenyRefusesConnection) {
    SLUICE_REQUIRE_PRIVILEGES();
    ASSERT_TRUE(dp_->upsert_ipcache(cidr("198.18.1.1/32"), kClientIdentity));
    deny(kPodEndpoint, SLUICE_IDENTITY_ANY, 9090, SLUICE_DIR_INGRESS, 90);
    deny(kPodEndpoint, kClientIdentity, 5432, SLUICE_DIR_INGRESS, 91);

    struct Case {
        const char* description;
        const char* ip;
        uint16_t port;
        int expect;
        uint32_t rule;
    };
    const Case cases[] = {
        {"ingress to denied port", "198.18.1.2", 9090, ECONNREFUSED, 90},
        {"ingress from denied identity", "198.18.1.2", 5432, ECONNREFUSED, 91},
        {"ingress to denied port over IPv6", "2001:db8:1::2", 9090, ECONNREFUSED, 90},
        {"ingress from an identity without a rule", "2001:db8:1::2", 5432, 0, 0},
    };
    int denied = 0;
    for (const auto& c : cases) {
        auto [rc, client] = connect_from_client(c.ip, c.port);
        EXPECT_EQ(rc, c.expect) << c.description << ": " << std::strerror(rc);
        UniqueFd accepted = accept_within(inbound_.get(), c.expect == 0 ? 3000 : 200);
        EXPECT_EQ(static_cast<bool>(accepted), c.expect == 0) << c.description;
        if (c.expect != 0)
            ++denied;
    }
    auto events = drain_deny_events(denied);
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[0].reason, SLUICE_REASON_POLICY_DENY_INGRESS);
    EXPECT_EQ(events[0].direction, SLUICE_DIR_INGRESS);
    EXPECT_EQ(event_addr(events[0].src_addr), "198.18.1.1");
    EXPECT_EQ(event_addr(events[0].dst_addr), "198.18.1.2");
    EXPECT_EQ(events[0].dst_port, 9090);
    EXPECT_NE(events[0].src_port, 0);
    EXPECT_EQ(events[0].rule_id, 90u);
    EXPECT_EQ(events[1].peer_identity, kClientIdentity);
    EXPECT_EQ(events[1].rule_id, 91u);
    EXPECT_EQ(event_addr(events[2].src_addr), "2001:db8:1::1");
    EXPECT_EQ(dp_->drop_count(SLUICE_REASON_POLICY_DENY_INGRESS).value(), 3u);
    EXPECT_EQ(dp_->rule_count(90).value(), 2u);
}

TEST_F(InboundTest, ZtunnelConnectionToAppIsNotSteeredBack) {
    SLUICE_REQUIRE_PRIVILEGES();
    UniqueFd app = pod_->run([] { return tcp_listen("0.0.0.0", 8080, false); });
    // ztunnel (marked) connecting to the app inside the pod reaches the app...
    UniqueFd from_ztunnel;
    int rc = pod_->run([&] {
        from_ztunnel = tcp_socket(AF_INET, true);
        return tcp_connect(from_ztunnel.get(), "198.18.1.2", 8080);
    });
    ASSERT_EQ(rc, 0) << std::strerror(rc);
    EXPECT_TRUE(accept_within(app.get()));
    EXPECT_FALSE(accept_within(inbound_.get(), 200));
    // ...while a client's connection to the same port goes to ztunnel first.
    auto [crc, client] = connect_from_client("198.18.1.2", 8080);
    ASSERT_EQ(crc, 0) << std::strerror(crc);
    EXPECT_TRUE(accept_within(inbound_.get()));
    EXPECT_FALSE(accept_within(app.get(), 200));
}

TEST_F(InboundTest, WithoutListenerConnectionsPassThrough) {
    SLUICE_REQUIRE_PRIVILEGES();
    ASSERT_TRUE(dp_->unregister_inbound_listener(pod_cookie_));
    UniqueFd app = pod_->run([] { return tcp_listen("0.0.0.0", 8080, false); });
    auto [rc, client] = connect_from_client("198.18.1.2", 8080);
    ASSERT_EQ(rc, 0) << std::strerror(rc);
    EXPECT_TRUE(accept_within(app.get()));
    EXPECT_EQ(dp_->event_count(SLUICE_EVENT_NO_LISTENER).value(), 1u);
}

TEST_F(InboundTest, UnenrolledPodIsNotSteered) {
    SLUICE_REQUIRE_PRIVILEGES();
    ASSERT_TRUE(dp_->unenroll_netns(pod_cookie_));
    UniqueFd app = pod_->run([] { return tcp_listen("0.0.0.0", 8080, false); });
    auto [rc, client] = connect_from_client("198.18.1.2", 8080);
    ASSERT_EQ(rc, 0) << std::strerror(rc);
    EXPECT_TRUE(accept_within(app.get()));
    EXPECT_FALSE(accept_within(inbound_.get(), 200));
}

}  // namespace
}  // namespace sluice::test
