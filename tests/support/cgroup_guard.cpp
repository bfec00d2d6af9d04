#include "tests/support/cgroup_guard.h"

#include <unistd.h>

#include <fstream>
#include <system_error>

#include "common/mountinfo.h"

namespace sluice::test {
namespace {

void move_self(const std::string& dir) {
    std::ofstream procs(dir + "/cgroup.procs");
    procs << ::getpid();
    procs.flush();
    if (!procs)
        throw std::system_error(errno, std::generic_category(), "join cgroup " + dir);
}

std::string current_cgroup() {
    std::ifstream f("/proc/self/cgroup");
    for (std::string line; std::getline(f, line);) {
        if (line.rfind("0::", 0) == 0)
            return find_cgroup2_mount(read_mountinfo()).value_or("") + line.substr(3);
    }
    throw std::runtime_error("no cgroup-v2 membership in /proc/self/cgroup");
}

}  // namespace

CgroupGuard::CgroupGuard(const std::string& cgroup_dir) : previous_(current_cgroup()) {
    move_self(cgroup_dir);
}

CgroupGuard::~CgroupGuard() {
    try {
        move_self(previous_);
    } catch (const std::exception&) {
        // Nothing sensible to do in a destructor; the testbed's down would then kill us, which
        // shows up as a crashed test rather than a silent pass.
    }
}

}  // namespace sluice::test
