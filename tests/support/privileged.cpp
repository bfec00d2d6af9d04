#include "tests/support/privileged.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace sluice::test {
namespace {

// Effective capability mask from /proc/self/status (CapEff, hex).
unsigned long long effective_caps() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
        if (line.rfind("CapEff:", 0) == 0)
            return std::stoull(line.substr(7), nullptr, 16);
    }
    return 0;
}

}  // namespace

std::string missing_privileges() {
    if (::geteuid() != 0)
        return "not running as root";
    constexpr int kCapNetAdmin = 12, kCapSysAdmin = 21;
    unsigned long long caps = effective_caps();
    for (int cap : {kCapNetAdmin, kCapSysAdmin}) {
        if ((caps & (1ULL << cap)) == 0) {
            return "missing capability " + std::to_string(cap) +
                   " (CapEff=" + std::to_string(caps) + ")";
        }
    }
    return {};
}

bool privileged_required() {
    const char* v = std::getenv("SLUICE_REQUIRE_PRIVILEGED");
    return v != nullptr && std::string(v) == "1";
}

}  // namespace sluice::test
