#pragma once

#include <string>

namespace sluice::test {

// Moves this whole process into a cgroup-v2 directory for its lifetime, then back to where it
// was. cgroup programs run for the cgroup of the process that makes the call (connect4 for the
// socket's creator, getsockopt for the caller), so a test plays "app in a pod" or "ztunnel on a
// node" by moving itself. Always leave before the testbed's `down`, which kills what is inside.
class CgroupGuard {
  public:
    explicit CgroupGuard(const std::string& cgroup_dir);
    ~CgroupGuard();
    CgroupGuard(const CgroupGuard&) = delete;
    CgroupGuard& operator=(const CgroupGuard&) = delete;

  private:
    std::string previous_;  // absolute directory
};

}  // namespace sluice::test
