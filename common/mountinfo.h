#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

struct MountEntry {
    std::string mount_point;  // unescaped (\040 → space)
    std::string fs_type;
};

// Parses /proc/<pid>/mountinfo text (proc(5)); lines that do not parse are skipped.
std::vector<MountEntry> parse_mountinfo(std::string_view text);
std::vector<MountEntry> read_mountinfo();

// The cgroup-v2 mount point. A unified host mounts it at /sys/fs/cgroup; a hybrid host (this
// machine: v1 controllers at /sys/fs/cgroup/*, v2 at /sys/fs/cgroup/unified) elsewhere. Prefers
// /sys/fs/cgroup, then /sys/fs/cgroup/unified, then the first cgroup2 mount.
std::optional<std::string> find_cgroup2_mount(const std::vector<MountEntry>& mounts);

// True when a bpf filesystem is mounted exactly at `path`.
bool is_bpffs_mounted(const std::vector<MountEntry>& mounts, std::string_view path);

// Mounts bpffs at `path` unless one is there already. Throws std::system_error on failure.
void ensure_bpffs_mounted(const std::string& path = "/sys/fs/bpf");

}  // namespace sluice
