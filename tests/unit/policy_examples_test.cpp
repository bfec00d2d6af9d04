// Every example under policies/examples/ compiles cleanly and decides its expectations.yaml.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>

#include "policies/evaluate.h"
#include "policies/loader.h"

namespace sluice::policies {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> example_dirs() {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(SLUICE_POLICY_EXAMPLES))
        if (e.is_directory())
            out.push_back(e.path().string());
    std::sort(out.begin(), out.end());
    return out;
}

class PolicyExample : public ::testing::TestWithParam<std::string> {};

TEST_P(PolicyExample, DecidesItsExpectations) {
    const fs::path dir = GetParam();
    auto loaded = load_and_compile((dir / "policies").string(), (dir / "registry").string());
    for (const auto& d : loaded.diagnostics)
        EXPECT_NE(d.severity, Severity::Error) << d.to_string();
    const YAML::Node cases = YAML::LoadFile((dir / "expectations.yaml").string());
    ASSERT_GT(cases.size(), 3u);
    for (const auto& c : cases) {
        ExplainQuery q;
        q.from = c["from"].as<std::string>();
        q.to = c["to"].as<std::string>();
        q.port = c["port"].as<uint16_t>();
        const Explanation e = explain(*loaded.compiled, q);
        const std::string expect = c["expect"].as<std::string>();
        EXPECT_EQ(e.ztunnel.verdict == Verdict::Allow ? "ALLOW" : "DENY", expect)
            << q.from << " → " << q.to << ":" << q.port << "\n"
            << e.text();
        const bool kernel_denies = std::any_of(
            e.kernel.begin(), e.kernel.end(),
            [](const KernelView& k) { return k.lookup.verdict == SLUICE_VERDICT_DENY; });
        if (c["kernel"]) {
            EXPECT_TRUE(kernel_denies) << q.from << " → " << q.to << ":" << q.port << "\n"
                                       << e.text();
        }
        // Never a kernel DENY where ztunnel allows.
        if (expect == "ALLOW") {
            EXPECT_FALSE(kernel_denies) << e.text();
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Examples, PolicyExample, ::testing::ValuesIn(example_dirs()),
                         [](const auto& info) {
                             std::string n = fs::path(info.param).filename().string();
                             std::replace(n.begin(), n.end(), '-', '_');
                             return n;
                         });

}  // namespace
}  // namespace sluice::policies
