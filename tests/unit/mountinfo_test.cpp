#include "common/mountinfo.h"

#include <gtest/gtest.h>

namespace sluice {
namespace {

// Lines as this machine's kernel prints them (hybrid cgroup layout).
constexpr const char* kHybrid =
    "25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "31 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
    "32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 "
    "cgroup2 rw,nsdelegate\n"
    "33 31 0:28 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu\n";

TEST(Mountinfo, HybridLayoutFindsUnified) {
    auto mounts = parse_mountinfo(kHybrid);
    ASSERT_EQ(mounts.size(), 4u);
    EXPECT_EQ(find_cgroup2_mount(mounts), "/sys/fs/cgroup/unified");
}

TEST(Mountinfo, UnifiedLayoutPrefersSysFsCgroup) {
    auto mounts = parse_mountinfo(
        "40 1 0:50 / /mnt/other rw - cgroup2 none rw\n"
        "41 1 0:51 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw\n");
    EXPECT_EQ(find_cgroup2_mount(mounts), "/sys/fs/cgroup");
}

TEST(Mountinfo, NoCgroup2) {
    EXPECT_FALSE(
        find_cgroup2_mount(
            parse_mountinfo(
                "33 31 0:28 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw\n"))
            .has_value());
}

TEST(Mountinfo, OptionalFieldsAndEscapes) {
    // Zero or several optional fields before "-"; spaces in paths are escaped as \040.
    auto mounts = parse_mountinfo(
        "50 1 0:60 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime - bpf bpf rw,mode=700\n"
        "51 1 0:61 / /mnt/with\\040space rw shared:1 master:2 - tmpfs tmpfs rw\n"
        "garbage line\n");
    ASSERT_EQ(mounts.size(), 2u);
    EXPECT_TRUE(is_bpffs_mounted(mounts, "/sys/fs/bpf"));
    EXPECT_FALSE(is_bpffs_mounted(mounts, "/sys/fs/bpf/sluice"));
    EXPECT_EQ(mounts[1].mount_point, "/mnt/with space");
    EXPECT_EQ(mounts[1].fs_type, "tmpfs");
}

}  // namespace
}  // namespace sluice
