// The compiler's kernel entries in the real eBPF maps: what connect() sees for a pod enrolled with
// the endpoint id the compiler gave it, before and after a reload applied as a delta.
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "policies/kernel_apply.h"
#include "policies/loader.h"
#include "tests/bpf/datapath_fixture.h"
#include "tests/support/sockets.h"

namespace sluice::test {
namespace {

namespace pol = sluice::policies;

const std::string kExample = std::string(SLUICE_POLICY_EXAMPLES) + "/rag-two-tenants";

class PolicyMapsTest : public DatapathTest {
  protected:
    // connect() from `app` to dst:port; 0 when it was redirected to the outbound listener.
    int connect_from(const TestNetns& app, const char* dst, uint16_t port) {
        UniqueFd out, sock;
        return app.run([&] {
            out = tcp_listen("127.0.0.1", SLUICE_PORT_OUTBOUND, true);
            sock = tcp_socket(AF_INET, false);
            return tcp_connect(sock.get(), dst, port);
        });
    }
};

// What the maps hold, read back: a restarted agent starts its first delta from it.
TEST_F(PolicyMapsTest, ReadPolicyMapsGivesBackWhatWasApplied) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    auto loaded = pol::load_and_compile(kExample + "/policies", kExample + "/registry");
    ASSERT_TRUE(loaded.ok());
    const pol::KernelState& want = loaded.compiled->kernel;
    pol::DatapathSink sink(dp);
    ASSERT_TRUE(pol::apply_delta(pol::kernel_delta({}, want), sink).ok) << sink.last_error();
    auto maps = dp.read_policy_maps();
    ASSERT_TRUE(maps) << maps.error().message;
    ASSERT_EQ(maps->policy.size(), want.policy.size());
    ASSERT_EQ(maps->ipcache.size(), want.ipcache.size());
    pol::KernelState read;
    for (const auto& [key, value] : maps->policy)
        read.policy.push_back({key, value});
    for (const auto& [cidr, identity] : maps->ipcache)
        read.ipcache.push_back({cidr, identity});
    // Nothing to change from what was read to what was applied, and back to nothing: all of it.
    EXPECT_EQ(pol::kernel_delta(read, want).size(), 0u);
    EXPECT_EQ(pol::kernel_delta(read, {}).size(), want.policy.size() + want.ipcache.size());
}

TEST_F(PolicyMapsTest, CompiledBoundariesRefuseConnectAndReloadLiftsThem) {
    SLUICE_REQUIRE_PRIVILEGES();
    auto& dp = open_datapath();
    auto loaded = pol::load_and_compile(kExample + "/policies", kExample + "/registry");
    ASSERT_TRUE(loaded.ok());
    const pol::CompiledPolicy& gen1 = *loaded.compiled;
    pol::DatapathSink sink(dp);
    const auto r1 = pol::apply_delta(pol::kernel_delta({}, gen1.kernel), sink);
    ASSERT_TRUE(r1.ok) << sink.last_error();

    // Be tenant-b's frontend.
    const pol::KernelEndpoint* frontend = nullptr;
    for (const auto& e : gen1.kernel.endpoints) {
        if (e.pod == "tenant-b/frontend")
            frontend = &e;
    }
    ASSERT_NE(frontend, nullptr);
    TestNetns& app = add_netns("tenantb");
    enroll(app, frontend->value.endpoint_id, frontend->value.flags);

    // Across the boundary to tenant-a's retriever: EPERM at connect(), reported with the rule.
    EXPECT_EQ(connect_from(app, "198.18.0.11", 8080), EPERM);
    const auto events = drain_deny_events(1);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].rule_id, gen1.rule_id("IsolationBoundary tenant-b", -1));
    // To the shared pool (allowed by both boundaries) and to the world: captured for ztunnel.
    EXPECT_EQ(connect_from(app, "198.18.0.40", 8000), 0);
    EXPECT_EQ(connect_from(app, "192.0.2.7", 443), 0);

    // Reload without boundaries: the delta lifts the deny, keeping ids (the enrollment stays).
    pol::PolicySet without = *gen1.policies;
    without.boundaries.clear();
    const pol::IdState ids = gen1.id_state();
    pol::CompileOptions opt;
    opt.previous = &ids;
    const auto gen2 = pol::compile(without, *gen1.registry, opt);
    ASSERT_FALSE(pol::has_errors(gen2.diagnostics));
    EXPECT_EQ(gen2.id_state().endpoints.at("tenant-b/frontend"), frontend->value.endpoint_id);
    const auto delta = pol::kernel_delta(gen1.kernel, gen2.kernel);
    EXPECT_FALSE(delta.policy_deletes.empty());
    ASSERT_TRUE(pol::apply_delta(delta, sink).ok) << sink.last_error();
    EXPECT_EQ(connect_from(app, "198.18.0.11", 8080), 0);
}

}  // namespace
}  // namespace sluice::test
