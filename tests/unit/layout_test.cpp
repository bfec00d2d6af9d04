#include "tests/testbed/layout.h"

#include <gtest/gtest.h>

namespace sluice::testbed {
namespace {

TEST(AddressPlan, FollowsDesign) {
    EXPECT_EQ(node_fabric_ip(0), "198.19.0.1");
    EXPECT_EQ(node_fabric_ip(1), "198.19.0.2");
    EXPECT_EQ(pod_cidr(3), "198.18.3.0/24");
    EXPECT_EQ(pod_gateway(3), "198.18.3.1");
    EXPECT_EQ(pod_cidr6(0), "2001:db8:0:0::/64");
    // IPv6 groups are hexadecimal: node 10 is 2001:db8:0:a::/64.
    EXPECT_EQ(pod_cidr6(10), "2001:db8:0:a::/64");
    EXPECT_EQ(node_fabric_ip6(15), "2001:db8:ff::10");
    EXPECT_EQ(service_vip(0), "198.19.128.1");
}

TEST(ClusterLayout, EveryNameCarriesTheClusterPrefix) {
    ClusterLayout l{.cluster = "demo", .cgroup2_mount = "/sys/fs/cgroup/unified"};
    EXPECT_EQ(l.node_netns(1), "sluice.demo.node1");
    EXPECT_EQ(l.pod_netns("rag", "llm-0"), "sluice.demo.pod.rag.llm-0");
    EXPECT_EQ(l.fabric_netns(), "sluice.demo.fabric");
    EXPECT_EQ(l.pod_cgroup(0, "rag", "llm-0"),
              "/sys/fs/cgroup/unified/sluice.testbed.demo/node0/pods/rag.llm-0");
    EXPECT_EQ(l.node_system_cgroup(0), "/sys/fs/cgroup/unified/sluice.testbed.demo/node0/system");
    EXPECT_EQ(l.node_bpffs(2), "/sys/fs/bpf/sluice/demo/node2");
    EXPECT_EQ(l.state_file(), "/var/run/sluice/testbed/demo/state.json");
    // A cluster named "demo" never owns another cluster's ("demo2") namespaces.
    ClusterLayout other{.cluster = "demo2"};
    EXPECT_NE(other.node_netns(0).rfind(l.netns_prefix(), 0), 0u);
}

}  // namespace
}  // namespace sluice::testbed
