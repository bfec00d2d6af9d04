#pragma once

#include <gtest/gtest.h>

#include <string>

namespace sluice::test {

// Why privileged tests cannot run here, or empty when they can (root with CAP_SYS_ADMIN,
// CAP_NET_ADMIN and CAP_BPF or an older kernel's equivalent).
std::string missing_privileges();

// True when SLUICE_REQUIRE_PRIVILEGED=1: CI must not skip privileged tests.
bool privileged_required();

}  // namespace sluice::test

// First statement of every bpf- or netns-tier test: skips with a loud message when the process
// lacks privileges, or fails when SLUICE_REQUIRE_PRIVILEGED=1 demands that they run.
#define SLUICE_REQUIRE_PRIVILEGES()                                                          \
    do {                                                                                     \
        const std::string sluice_missing_ = ::sluice::test::missing_privileges();            \
        if (!sluice_missing_.empty()) {                                                      \
            if (::sluice::test::privileged_required()) {                                     \
                FAIL() << "SLUICE_REQUIRE_PRIVILEGED=1 but " << sluice_missing_;             \
            }                                                                                \
            GTEST_SKIP() << "\n*** SKIPPED privileged test: " << sluice_missing_             \
                         << " (run as root; set SLUICE_REQUIRE_PRIVILEGED=1 to fail) ***\n"; \
        }                                                                                    \
    } while (0)
