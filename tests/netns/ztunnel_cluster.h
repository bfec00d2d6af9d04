#pragma once

// What the ztunnel netns tests share: a testbed cluster from an inline spec, named uniquely for
// this process, torn down (with its logs printed on failure) after each test.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "tests/testbed/spec.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {

class ZtunnelClusterTest : public ::testing::Test {
  protected:
    // Call from SetUp after SLUICE_REQUIRE_PRIVILEGES().
    void start_cluster(const std::string& tag, const char* spec_yaml, TestbedOptions options = {}) {
        name_ = tag + std::to_string(::getpid() % 100000);
        ClusterSpec spec = parse_spec(spec_yaml);
        spec.name = name_;
        options_ = std::move(options);
        state_ = up(spec, options_);
    }
    // Files worth reading when a test failed.
    virtual std::vector<std::string> log_files() const = 0;

    void TearDown() override {
        if (name_.empty())
            return;
        if (HasFailure()) {
            for (const auto& path : log_files()) {
                // Not `<< f.rdbuf()`: an empty file sets failbit on cerr and hides the rest.
                std::ifstream f(path);
                const std::string text(std::istreambuf_iterator<char>(f), {});
                std::cerr << "==== " << path << "\n" << text << "\n";
            }
        }
        down(name_, options_);
        EXPECT_EQ(leftovers(name_, options_), std::vector<std::string>{});
    }

    const PodState& pod(const std::string& n) const {
        const PodState* p = state_.find_pod(n);
        if (p == nullptr)
            throw std::runtime_error("no pod " + n);
        return *p;
    }

    std::string name_;
    TestbedOptions options_;
    ClusterState state_;
};

}  // namespace sluice::testbed
