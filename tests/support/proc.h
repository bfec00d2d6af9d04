#pragma once

// /proc readers for tests that inspect the processes they started.
#include <sys/types.h>

#include <fstream>
#include <string>
#include <vector>

namespace sluice::test {

// The argv a process was started with (empty once it is gone).
inline std::vector<std::string> read_cmdline(pid_t pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
    std::vector<std::string> argv;
    for (std::string arg; std::getline(f, arg, '\0');)
        argv.push_back(arg);
    return argv;
}

}  // namespace sluice::test
