// The agent's policy status file (what `sluicectl policy status` prints), written by the real
// PolicyStatusFile from a real PolicyWatcher over a kubelet-style ConfigMap volume.
#include <gtest/gtest.h>

#include <fstream>

#include "agent/policy_status.h"
#include "tests/support/kubelet_volume.h"
#include "tests/unit/policy_test_util.h"

namespace sluice::agent {
namespace {

using nlohmann::json;

constexpr const char* kAllow = R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: a}
spec:
  rules: [{to: [{operation: {ports: ["8080"]}}]}]
)";
// `ports` must be a list of port strings: the error is at line 5, column 37.
constexpr const char* kWrongType = R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: a}
spec:
  rules: [{to: [{operation: {ports: {x: 1}}}]}]
)";

json read_json(const std::string& path) {
    std::ifstream f(path);
    return json::parse(f);
}

TEST(PolicyStatusFile, ReportsGenerationsAndTheFailingPosition) {
    test::TempDir dir;
    const auto policies = dir.path() / "policies";
    std::filesystem::create_directories(policies);
    test::KubeletVolume volume(policies);
    volume.publish({{"policy.yaml", kAllow}});

    PolicyStatusFile file((dir.path() / "policy-status.json").string(), policies.string());
    std::unique_ptr<policies::PolicyWatcher> watcher;
    watcher = std::make_unique<policies::PolicyWatcher>(
        policies::WatcherConfig{.policy_dir = policies.string()},
        [&](std::shared_ptr<const policies::Generation> g) { file.applied(g->number); },
        [&](std::string_view) { file.write(*watcher); });
    watcher->reload();

    json s = read_json(file.path());
    EXPECT_EQ(s["generation"], 1);
    EXPECT_EQ(s["appliedGeneration"], 1);
    EXPECT_EQ(s["lastReload"]["result"], "success");
    EXPECT_TRUE(s["lastReload"]["time"].is_string());
    EXPECT_EQ(s["objects"], 1);
    EXPECT_EQ(s["reloads"]["success"], 1);
    EXPECT_FALSE(policy_status_failed(s));

    volume.publish({{"policy.yaml", kWrongType}});
    watcher->reload();
    s = read_json(file.path());
    EXPECT_TRUE(policy_status_failed(s));
    EXPECT_EQ(s["generation"], 1) << "the last good generation stays";
    EXPECT_EQ(s["appliedGeneration"], 1);
    EXPECT_EQ(s["lastReload"]["result"], "failure");
    EXPECT_EQ(s["reloads"]["failure"], 1);
    ASSERT_EQ(s["lastReload"]["errors"].size(), 1u) << s.dump(2);
    const json& e = s["lastReload"]["errors"][0];
    EXPECT_EQ(e["file"], (policies / "policy.yaml").string());
    EXPECT_EQ(e["line"], 5);
    EXPECT_EQ(e["column"], 37);
    const std::string text = format_policy_status(s);
    EXPECT_NE(text.find("policy.yaml:5:37: error: "), std::string::npos) << text;
    EXPECT_NE(text.find("last reload: failure"), std::string::npos) << text;
    EXPECT_NE(text.find("generation 1 stays in force"), std::string::npos) << text;

    // A generation the maps could not take is a problem too, even though the reload was valid.
    file.apply_failed(2, "policy map full");
    volume.publish({{"policy.yaml", kAllow}});
    watcher->reload();
    s = read_json(file.path());
    EXPECT_EQ(s["lastReload"]["result"], "unchanged");
    EXPECT_TRUE(policy_status_failed(s));
    EXPECT_NE(format_policy_status(s).find("apply failed: generation 2: policy map full"),
              std::string::npos);
}

}  // namespace
}  // namespace sluice::agent
