#pragma once

#include <bpf/bpf.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include "agent/datapath/datapath.h"
#include "common/mountinfo.h"
#include "tests/bpf/bpf_test_env.h"
#include "tests/support/privileged.h"

namespace sluice::test {

// A bpf-tier test: its own cgroup (which this process joins), bpffs root and network
// namespaces, all removed in TearDown. Programs attach at the test cgroup only.
class DatapathTest : public ::testing::Test {
  protected:
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        ensure_bpffs_mounted("/sys/fs/bpf");
        sweep_stale_bpftest_state();
        cgroup_ = std::make_unique<TestCgroup>();
        owned_bpffs_root_ = "/sys/fs/bpf/" + bpftest_name();
        config_.bpffs_root = owned_bpffs_root_;
        config_.cgroup_path = cgroup_->path();
    }

    void TearDown() override {
        if (dp_) {
            auto r = dp_->detach_and_unpin();
            EXPECT_TRUE(r.has_value()) << r.error().message;
            dp_.reset();
        }
        // Only the root this test named: config_ starts with the production default, which a
        // SetUp that failed early would otherwise leave in place.
        if (!owned_bpffs_root_.empty()) {
            std::error_code ec;
            std::filesystem::remove_all(owned_bpffs_root_, ec);
        }
        netns_.clear();
        cgroup_.reset();
    }

    // Opens a datapath, closes it (its pins stay) and writes `version` into its pinned
    // layout_meta.
    ::testing::AssertionResult pin_maps_with_layout_version(uint32_t version) {
        open_datapath();
        dp_.reset();
        const std::string pin = config_.bpffs_root + "/maps/layout_meta";
        UniqueFd fd(bpf_obj_get(pin.c_str()));
        if (fd.get() < 0)
            return ::testing::AssertionFailure() << pin << ": " << std::strerror(errno);
        uint32_t key = 0;
        sluice_layout_meta meta{version, 0};
        if (bpf_map_update_elem(fd.get(), &key, &meta, BPF_ANY) != 0)
            return ::testing::AssertionFailure()
                   << "update " << pin << ": " << std::strerror(errno);
        return ::testing::AssertionSuccess();
    }

    datapath::Datapath& open_datapath() {
        auto dp = datapath::Datapath::open(config_);
        if (!dp)
            throw std::runtime_error("Datapath::open: " + dp.error().message);
        dp_ = std::move(*dp);
        return *dp_;
    }

    TestNetns& add_netns(const std::string& tag) {
        netns_.push_back(std::make_unique<TestNetns>(tag));
        return *netns_.back();
    }

    // Enrolls `ns` as endpoint `endpoint_id`; returns its netns cookie.
    uint64_t enroll(const TestNetns& ns, uint32_t endpoint_id, uint32_t flags = 0) {
        uint64_t cookie = ns.cookie();
        auto r = dp_->enroll_netns(cookie, {endpoint_id, flags});
        if (!r)
            throw std::runtime_error(r.error().message);
        return cookie;
    }

    static sluice_policy_key policy_key(uint32_t endpoint, uint32_t peer, uint16_t port,
                                        sluice_direction direction) {
        return {endpoint, peer, port, 6 /* IPPROTO_TCP */, static_cast<uint8_t>(direction)};
    }

    void deny(uint32_t endpoint, uint32_t peer, uint16_t port, sluice_direction direction,
              uint32_t rule_id) {
        auto r = dp_->upsert_policy(policy_key(endpoint, peer, port, direction),
                                    {SLUICE_VERDICT_DENY, {}, rule_id});
        ASSERT_TRUE(r.has_value()) << r.error().message;
    }

    static datapath::Cidr cidr(const std::string& text) {
        auto c = datapath::parse_cidr(text);
        if (!c)
            throw std::invalid_argument("bad CIDR " + text);
        return *c;
    }

    std::vector<sluice_deny_event> drain_deny_events(int want, int timeout_ms = 2000) {
        std::vector<sluice_deny_event> events;
        for (int i = 0; i < timeout_ms / 100 && static_cast<int>(events.size()) < want; ++i) {
            auto n =
                dp_->poll_deny_events([&](const sluice_deny_event& ev) { events.push_back(ev); },
                                      std::chrono::milliseconds(100));
            if (!n)
                throw std::runtime_error(n.error().message);
        }
        return events;
    }

    datapath::DatapathConfig config_;
    std::string owned_bpffs_root_;
    std::unique_ptr<datapath::Datapath> dp_;
    std::unique_ptr<TestCgroup> cgroup_;
    std::vector<std::unique_ptr<TestNetns>> netns_;
};

// "198.18.0.10" from a 16-byte event address.
inline std::string event_addr(const uint8_t (&bytes)[16]) {
    datapath::IpAddress ip;
    std::copy(std::begin(bytes), std::end(bytes), ip.bytes.begin());
    return ip.to_string();
}

}  // namespace sluice::test
