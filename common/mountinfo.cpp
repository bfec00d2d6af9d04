#include "common/mountinfo.h"

#include <sys/mount.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <system_error>

namespace sluice {
namespace {

// mountinfo escapes space, tab, newline and backslash as three-digit octal.
std::string unescape_octal(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size()) {
            auto a = s[i + 1], b = s[i + 2], c = s[i + 3];
            if (a >= '0' && a <= '7' && b >= '0' && b <= '7' && c >= '0' && c <= '7') {
                out.push_back(static_cast<char>((a - '0') * 64 + (b - '0') * 8 + (c - '0')));
                i += 3;
                continue;
            }
        }
        out.push_back(s[i]);
    }
    return out;
}

}  // namespace

std::vector<MountEntry> parse_mountinfo(std::string_view text) {
    std::vector<MountEntry> mounts;
    std::istringstream in{std::string(text)};
    std::string line;
    while (std::getline(in, line)) {
        // id parent major:minor root mount_point options [optional...] - fstype source super
        std::istringstream fields(line);
        std::vector<std::string> f;
        for (std::string w; fields >> w;)
            f.push_back(w);
        size_t sep = 0;
        for (size_t i = 6; i < f.size(); ++i) {
            if (f[i] == "-") {
                sep = i;
                break;
            }
        }
        if (f.size() < 7 || sep == 0 || sep + 1 >= f.size())
            continue;
        mounts.push_back({unescape_octal(f[4]), f[sep + 1]});
    }
    return mounts;
}

std::vector<MountEntry> read_mountinfo() {
    std::ifstream f("/proc/self/mountinfo");
    std::stringstream ss;
    ss << f.rdbuf();
    return parse_mountinfo(ss.str());
}

std::optional<std::string> find_cgroup2_mount(const std::vector<MountEntry>& mounts) {
    std::optional<std::string> first;
    bool unified = false;
    for (const auto& m : mounts) {
        if (m.fs_type != "cgroup2")
            continue;
        if (m.mount_point == "/sys/fs/cgroup")
            return m.mount_point;
        if (m.mount_point == "/sys/fs/cgroup/unified")
            unified = true;
        if (!first)
            first = m.mount_point;
    }
    if (unified)
        return std::string("/sys/fs/cgroup/unified");
    return first;
}

bool is_bpffs_mounted(const std::vector<MountEntry>& mounts, std::string_view path) {
    for (const auto& m : mounts) {
        if (m.fs_type == "bpf" && m.mount_point == path)
            return true;
    }
    return false;
}

void ensure_bpffs_mounted(const std::string& path) {
    if (is_bpffs_mounted(read_mountinfo(), path))
        return;
    if (::mount("bpf", path.c_str(), "bpf", 0, "mode=0700") != 0) {
        throw std::system_error(errno, std::generic_category(), "mount -t bpf bpf " + path);
    }
}

}  // namespace sluice
