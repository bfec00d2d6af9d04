#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include "policies/watcher.h"
#include "tests/support/kubelet_volume.h"
#include "tests/unit/policy_test_util.h"

namespace sluice::policies {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string allow_port(int port) {
    return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, "
           "namespace: a}\nspec:\n  rules: [{to: [{operation: {ports: [\"" +
           std::to_string(port) + "\"]}}]}]\n";
}

class Collector {
  public:
    void add(std::shared_ptr<const Generation> g) {
        std::lock_guard lock(mu_);
        gens_.push_back(std::move(g));
        cv_.notify_all();
    }
    std::shared_ptr<const Generation> wait_for(std::size_t n, std::chrono::milliseconds timeout) {
        std::unique_lock lock(mu_);
        cv_.wait_for(lock, timeout, [&] { return gens_.size() >= n; });
        return gens_.size() >= n ? gens_[n - 1] : nullptr;
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::shared_ptr<const Generation>> gens_;
};

uint16_t allowed_port(const Generation& g) {
    return g.compiled->policies->authorization.at(0).rules.at(0).to.at(0).ports.at(0);
}

TEST(PolicyWatcher, FollowsKubeletSwapsAndKeepsLastGoodOnErrors) {
    test::TempDir dir;
    test::KubeletVolume volume(dir.path());
    volume.publish({{"policy.yaml", allow_port(8080)}});

    Collector gens;
    std::vector<std::string> results;
    std::mutex results_mu;
    WatcherConfig cfg;
    cfg.policy_dir = dir.path().string();
    cfg.debounce = 50ms;
    PolicyWatcher w(
        cfg, [&](auto g) { gens.add(g); },
        [&](std::string_view r) {
            std::lock_guard lock(results_mu);
            results.emplace_back(r);
        });
    ASSERT_TRUE(w.start());
    auto g1 = gens.wait_for(1, 1s);
    ASSERT_TRUE(g1);
    EXPECT_EQ(g1->number, 1u);
    EXPECT_EQ(allowed_port(*g1), 8080);

    // A valid change takes effect (well within the 1 s the issue allows).
    const auto t0 = std::chrono::steady_clock::now();
    volume.publish({{"policy.yaml", allow_port(9090)}});
    auto g2 = gens.wait_for(2, 2s);
    ASSERT_TRUE(g2);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
    EXPECT_EQ(g2->number, 2u);
    EXPECT_EQ(allowed_port(*g2), 9090);

    // Broken YAML: the old generation stays, the error says where.
    volume.publish({{"policy.yaml", "apiVersion: security.istio.io/v1\nkind: [\n"}});
    for (int i = 0; i < 100 && w.counts().failure == 0; ++i)
        std::this_thread::sleep_for(20ms);
    EXPECT_EQ(w.counts().failure, 1u);
    EXPECT_EQ(w.current()->number, 2u);
    const auto st = w.status();
    EXPECT_FALSE(st.last_ok);
    EXPECT_EQ(st.generation, 2u);
    ASSERT_FALSE(st.last_diagnostics.empty());
    EXPECT_EQ(st.last_diagnostics[0].where.file, (dir.path() / "policy.yaml").string());
    EXPECT_GT(st.last_diagnostics[0].where.line, 0);

    // Fixed again: generation 3, ids of generation 2 carried over.
    volume.publish({{"policy.yaml", allow_port(7070)}});
    auto g3 = gens.wait_for(3, 2s);
    ASSERT_TRUE(g3);
    EXPECT_EQ(g3->number, 3u);
    EXPECT_EQ(allowed_port(*g3), 7070);
    w.stop();
    EXPECT_EQ(w.counts().success, 3u);
    std::lock_guard lock(results_mu);
    EXPECT_EQ(std::count(results.begin(), results.end(), "failure"), 1);
}

TEST(PolicyWatcher, PlainFileEditsAndUnchangedReloads) {
    test::TempDir dir;
    dir.write("p.yaml", allow_port(80));
    Collector gens;
    WatcherConfig cfg;
    cfg.policy_dir = dir.path().string();
    cfg.debounce = 30ms;
    PolicyWatcher w(cfg, [&](auto g) { gens.add(g); });
    ASSERT_TRUE(w.start());
    ASSERT_TRUE(gens.wait_for(1, 1s));
    dir.write("p.yaml", allow_port(80));  // same content: no new generation
    for (int i = 0; i < 100 && w.counts().unchanged == 0; ++i)
        std::this_thread::sleep_for(20ms);
    EXPECT_EQ(w.counts().unchanged, 1u);
    dir.write("q.yaml", allow_port(81).replace(allow_port(81).find("name: p"), 7, "name: q"));
    auto g2 = gens.wait_for(2, 2s);
    ASSERT_TRUE(g2);
    EXPECT_EQ(g2->compiled->policies->authorization.size(), 2u);
}

TEST(PolicyWatcher, DirectoryThatAppearsLaterIsPickedUp) {
    test::TempDir parent;
    const fs::path dir = parent.path() / "policies";
    Collector gens;
    WatcherConfig cfg;
    cfg.policy_dir = dir.string();
    cfg.debounce = 30ms;
    PolicyWatcher w(cfg, [&](auto g) { gens.add(g); });
    ASSERT_TRUE(w.start());
    EXPECT_EQ(w.counts().failure, 1u);  // no such directory: nothing valid yet
    EXPECT_EQ(w.current(), nullptr);
    parent.write("policies/p.yaml", allow_port(80));
    auto g1 = gens.wait_for(1, 3s);
    ASSERT_TRUE(g1);
    EXPECT_EQ(g1->number, 1u);
}

TEST(PolicyWatcher, RegistryChangesRecompile) {
    test::TempDir policies, registry;
    policies.write("p.yaml", allow_port(80));
    auto pod = [](const std::string& name, const std::string& ip) {
        return "apiVersion: v1\nkind: Pod\nmetadata: {name: " + name +
               ", namespace: a}\nstatus: {podIP: " + ip + "}\n";
    };
    registry.write("pod.a.x.yaml", pod("x", "198.18.0.2"));
    Collector gens;
    WatcherConfig cfg;
    cfg.policy_dir = policies.path().string();
    cfg.registry_dir = registry.path().string();
    cfg.debounce = 30ms;
    PolicyWatcher w(cfg, [&](auto g) { gens.add(g); });
    ASSERT_TRUE(w.start());
    auto g1 = gens.wait_for(1, 1s);
    ASSERT_TRUE(g1);
    EXPECT_EQ(g1->compiled->ztunnel.workloads.size(), 1u);
    registry.write("pod.a.y.yaml", pod("y", "198.18.0.3"));
    auto g2 = gens.wait_for(2, 2s);
    ASSERT_TRUE(g2);
    EXPECT_EQ(g2->compiled->ztunnel.workloads.size(), 2u);
    // The existing pod keeps its endpoint id and identity.
    EXPECT_EQ(g2->compiled->id_state().endpoints.at("a/x"),
              g1->compiled->id_state().endpoints.at("a/x"));
    EXPECT_EQ(g2->compiled->id_state().identities, g1->compiled->id_state().identities);

    // While the policy folder is broken, a new pod still gets the policies in force: the last
    // good set, compiled with the registry as it is now. The reload itself is a failure.
    policies.write("p.yaml", allow_port(80) + "  bogus: [\n");
    registry.write("pod.a.z.yaml", pod("z", "198.18.0.4"));
    auto g3 = gens.wait_for(3, 2s);
    ASSERT_TRUE(g3);
    EXPECT_EQ(g3->number, 3u);
    EXPECT_EQ(g3->compiled->ztunnel.workloads.size(), 3u);
    EXPECT_EQ(allowed_port(*g3), 80);
    const WorkloadRules* z = g3->compiled->workload("a/z");
    ASSERT_NE(z, nullptr);
    EXPECT_EQ(z->allow_policies.size(), 1u) << "the new pod is selected by the ALLOW policy";
    EXPECT_EQ(g3->compiled->id_state().endpoints.at("a/x"),
              g1->compiled->id_state().endpoints.at("a/x"));
    EXPECT_FALSE(w.status().last_ok);
    EXPECT_EQ(w.status().generation, 3u);
    EXPECT_GE(w.counts().failure, 1u);
    // Nothing new in the registry: a failed reload publishes nothing.
    w.reload();
    EXPECT_EQ(w.current()->number, 3u);
}

}  // namespace
}  // namespace sluice::policies
