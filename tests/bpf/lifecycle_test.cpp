// Datapath lifecycle: restart with pinned maps and links, layout version checks, clear errors
// for a broken environment, detach.
#include <bpf/bpf.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "tests/bpf/datapath_fixture.h"

namespace sluice::test {
namespace {

constexpr uint32_t kEndpoint = 30;
constexpr uint16_t kDeniedPort = 7000;

struct LinkIds {
    uint32_t link_id = 0;
    uint32_t prog_id = 0;
};

// The link behind a pin and the program it currently runs.
LinkIds pinned_link(const std::string& pin) {
    int fd = bpf_obj_get(pin.c_str());
    if (fd < 0)
        throw std::runtime_error("bpf_obj_get " + pin + ": " + std::strerror(errno));
    bpf_link_info info{};
    uint32_t len = sizeof info;
    int rc = bpf_obj_get_info_by_fd(fd, &info, &len);
    ::close(fd);
    if (rc != 0)
        throw std::runtime_error("link info " + pin);
    return {info.id, info.prog_id};
}

TEST_F(DatapathTest, RestartKeepsConnectionsAndPolicy) {
    SLUICE_REQUIRE_PRIVILEGES();
    open_datapath();
    TestNetns& app = add_netns("app");
    enroll(app, kEndpoint);
    deny(kEndpoint, SLUICE_IDENTITY_ANY, kDeniedPort, SLUICE_DIR_EGRESS, 1);
    const std::string connect4_pin = config_.bpffs_root + "/links/cgroup/sluice_connect4";
    const LinkIds before = pinned_link(connect4_pin);

    UniqueFd outbound, old_app;
    app.run([&] {
        outbound = tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true);
        old_app = tcp_socket(AF_INET);
        ASSERT_EQ(tcp_connect(old_app.get(), "198.18.0.10", 8080), 0);
    });
    UniqueFd old_proxy = accept_within(outbound.get());
    ASSERT_TRUE(old_proxy);

    // The agent goes away without detaching: the pinned programs keep enforcing.
    dp_.reset();
    auto connect_in_app = [&](uint16_t port, UniqueFd* keep = nullptr) {
        return app.run([&] {
            UniqueFd s = tcp_socket(AF_INET);
            int rc = tcp_connect(s.get(), "198.18.0.10", port);
            if (keep != nullptr)
                *keep = std::move(s);
            return rc;
        });
    };
    EXPECT_EQ(connect_in_app(kDeniedPort), EPERM) << "policy lost while the agent was down";
    UniqueFd gap_app;
    EXPECT_EQ(connect_in_app(8080, &gap_app), 0);
    UniqueFd gap_proxy = accept_within(outbound.get());
    ASSERT_TRUE(gap_proxy) << "capture lost while the agent was down";

    // The new agent reuses maps and swaps programs inside the same links.
    auto& dp = open_datapath();
    EXPECT_TRUE(dp.reused_pinned_state());
    const LinkIds after = pinned_link(connect4_pin);
    EXPECT_EQ(after.link_id, before.link_id);
    EXPECT_NE(after.prog_id, before.prog_id);

    // Connections from before the restart keep working and keep their original destination.
    EXPECT_TRUE(round_trip(old_app.get(), old_proxy.get(), "still"));
    EXPECT_TRUE(round_trip(old_proxy.get(), old_app.get(), "here"));
    EXPECT_EQ(original_dst(old_proxy.get(), SOL_IP), "198.18.0.10:8080");
    EXPECT_EQ(original_dst(gap_proxy.get(), SOL_IP), "198.18.0.10:8080");
    EXPECT_EQ(peer_name(old_app.get()), "198.18.0.10:8080");

    // Enrollment and policy were kept; new connections are captured by the new programs.
    EXPECT_EQ(connect_in_app(kDeniedPort), EPERM);
    UniqueFd new_app;
    EXPECT_EQ(connect_in_app(9000, &new_app), 0);
    UniqueFd new_proxy = accept_within(outbound.get());
    ASSERT_TRUE(new_proxy);
    EXPECT_EQ(original_dst(new_proxy.get(), SOL_IP), "198.18.0.10:9000");
    EXPECT_EQ(dp.drop_count(SLUICE_REASON_POLICY_DENY_EGRESS).value(), 2u);
    EXPECT_EQ(dp.event_count(SLUICE_EVENT_REDIRECTED).value(), 3u);
}

TEST_F(DatapathTest, RestartUpdatesPerNetnsLinks) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto* dp = &open_datapath();
    TestNetns& client = add_netns("cli");
    TestNetns& pod = add_netns("pod");
    link_netns(client, "198.18.2.1/24", "2001:db8:2::1/64", pod, "198.18.2.2/24",
               "2001:db8:2::2/64");
    uint64_t cookie = enroll(pod, kEndpoint);
    ASSERT_TRUE(dp->add_endpoint_address(*datapath::parse_ip("198.18.2.2"), cookie));
    ASSERT_TRUE(dp->attach_netns(pod.path()));
    UniqueFd inbound = pod.run([] { return tcp_listen("::", SLUICE_PORT_INBOUND, true); });
    ASSERT_TRUE(dp->register_inbound_listener(cookie, inbound.get()));
    const std::string pin = config_.bpffs_root + "/links/netns/" + std::to_string(cookie);
    const LinkIds before = pinned_link(pin);

    dp_.reset();
    dp = &open_datapath();
    const LinkIds after = pinned_link(pin);
    EXPECT_EQ(after.link_id, before.link_id);
    EXPECT_NE(after.prog_id, before.prog_id);

    UniqueFd s;
    int rc = client.run([&] {
        s = tcp_socket(AF_INET);
        return tcp_connect(s.get(), "198.18.2.2", 8080);
    });
    ASSERT_EQ(rc, 0) << std::strerror(rc);
    UniqueFd accepted = accept_within(inbound.get());
    ASSERT_TRUE(accepted);
    EXPECT_EQ(local_name(accepted.get()), "[::ffff:198.18.2.2]:8080");
}

TEST_F(DatapathTest, LayoutVersionMismatchIsRefused) {
    SLUICE_REQUIRE_PRIVILEGES();
    // Pretend an agent with another layout pinned these maps.
    ASSERT_TRUE(pin_maps_with_layout_version(999));
    auto dp = datapath::Datapath::open(config_);
    ASSERT_FALSE(dp);
    EXPECT_EQ(dp.error().code, datapath::Errc::LayoutMismatch);
    EXPECT_NE(dp.error().message.find("layout version 999"), std::string::npos)
        << dp.error().message;
}

// A first start that pinned the maps and failed before writing layout_meta (version 0) does not
// block every later start: the maps are reused (each checked against this build's layout).
TEST_F(DatapathTest, AnUnfinishedFirstStartDoesNotBlockTheNext) {
    SLUICE_REQUIRE_PRIVILEGES();
    ASSERT_TRUE(pin_maps_with_layout_version(0));
    EXPECT_NO_THROW(open_datapath());  // TearDown detaches and unpins it
}

TEST_F(DatapathTest, ResizedPinnedMapIsRefused) {
    SLUICE_REQUIRE_PRIVILEGES();
    open_datapath();
    dp_.reset();
    config_.map_sizes.policy = 1024;
    auto dp = datapath::Datapath::open(config_);
    ASSERT_FALSE(dp);
    EXPECT_EQ(dp.error().code, datapath::Errc::PinnedMapIncompatible);
    EXPECT_NE(dp.error().message.find("maps/policy"), std::string::npos) << dp.error().message;
    EXPECT_NE(dp.error().message.find("max_entries 65536"), std::string::npos)
        << dp.error().message;
}

TEST_F(DatapathTest, PinnedLinksAtAnotherCgroupAreRefused) {
    SLUICE_REQUIRE_PRIVILEGES();
    open_datapath();
    dp_.reset();
    const std::string other = cgroup_->path() + "/other";
    ASSERT_EQ(::mkdir(other.c_str(), 0755), 0) << std::strerror(errno);
    datapath::DatapathConfig moved = config_;
    moved.cgroup_path = other;
    auto dp = datapath::Datapath::open(moved);
    ::rmdir(other.c_str());
    ASSERT_FALSE(dp);
    EXPECT_EQ(dp.error().code, datapath::Errc::AttachFailed);
    EXPECT_NE(dp.error().message.find("not to cgroup_path " + other), std::string::npos)
        << dp.error().message;
    // Nothing moved: the original config still opens and updates the links.
    EXPECT_TRUE(open_datapath().reused_pinned_state());
}

TEST_F(DatapathTest, EnvironmentErrorsAreNamed) {
    SLUICE_REQUIRE_PRIVILEGES();
    struct Case {
        const char* description;
        std::string bpffs_root;
        std::string cgroup_path;
        datapath::Errc expect;
    };
    const Case cases[] = {
        {"bpffs root outside a bpf filesystem", "/tmp/" + bpftest_name() + "/bpf", cgroup_->path(),
         datapath::Errc::BpffsNotMounted},
        {"attach cgroup that does not exist", config_.bpffs_root, cgroup_->path() + "/missing",
         datapath::Errc::CgroupMissing},
        {"attach path that is not a cgroup-v2 directory", config_.bpffs_root, "/tmp",
         datapath::Errc::CgroupMissing},
        {"relative paths", "sluice", "cgroup", datapath::Errc::InvalidConfig},
    };
    for (const auto& c : cases) {
        datapath::DatapathConfig config = config_;
        config.bpffs_root = c.bpffs_root;
        config.cgroup_path = c.cgroup_path;
        auto dp = datapath::Datapath::open(config);
        ASSERT_FALSE(dp) << c.description;
        EXPECT_EQ(dp.error().code, c.expect)
            << c.description << ": " << datapath::errc_name(dp.error().code) << ": "
            << dp.error().message;
    }
}

TEST_F(DatapathTest, InvalidConfigListsEveryProblem) {
    SLUICE_REQUIRE_PRIVILEGES();
    config_.excluded_ports = {1, 2, 3, 4, 5, 6, 7, 8, 0};
    config_.map_sizes.deny_event_bytes = 5000;
    auto problems = config_.validate();
    EXPECT_EQ(problems.size(), 3u);
    auto dp = datapath::Datapath::open(config_);
    ASSERT_FALSE(dp);
    EXPECT_EQ(dp.error().code, datapath::Errc::InvalidConfig);
    EXPECT_NE(dp.error().message.find("deny_event_bytes"), std::string::npos);
    EXPECT_NE(dp.error().message.find("excluded port 0"), std::string::npos);
}

TEST_F(DatapathTest, DetachStopsCaptureAndRemovesPins) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    TestNetns& app = add_netns("app");
    enroll(app, kEndpoint);
    auto connect_rc = [&] {
        return app.run([&] {
            UniqueFd l = tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true);
            UniqueFd s = tcp_socket(AF_INET);
            return tcp_connect(s.get(), "198.18.0.10", 8080);
        });
    };
    EXPECT_EQ(connect_rc(), 0);
    auto r = dp.detach_and_unpin();
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(connect_rc(), ENETUNREACH);
    EXPECT_FALSE(std::filesystem::exists(config_.bpffs_root));
    dp_.reset();
}

}  // namespace
}  // namespace sluice::test
