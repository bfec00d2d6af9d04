#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <future>

#include <algorithm>

#include <filesystem>
#include <fstream>

#include "ztunnel/proxy/access_log.h"
#include "ztunnel/proxy/config.h"
#include "ztunnel/proxy/load_balancer.h"
#include "ztunnel/proxy/metrics.h"
#include "ztunnel/state/authz.h"
#include "ztunnel/state/registry.h"

namespace sluice::ztunnel {
namespace {

namespace fs = std::filesystem;
using state::IpAddress;

IpAddress ip(const char* s) {
    return boost::asio::ip::make_address(s);
}

// A registry folder in the testbed's shape (docs/testbed.md "Registry").
class RegistryTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("sluice-registry-" + std::to_string(::getpid()));
        fs::create_directories(dir_);
        write("namespace.tenant-a.yaml", R"(apiVersion: v1
kind: Namespace
metadata: {name: tenant-a, labels: {istio.io/dataplane-mode: ambient}}
)");
        write("pod.tenant-a.llm-0.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: llm-0, namespace: tenant-a, uid: u0, labels: {app: llm}}
spec: {nodeName: node0, serviceAccountName: llm}
status: {podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}, {ip: "2001:db8::2"}]}
)");
        write("pod.tenant-a.llm-1.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: llm-1, namespace: tenant-a, uid: u1, labels: {app: llm, istio.io/dataplane-mode: none}}
spec: {nodeName: node1, serviceAccountName: llm}
status: {podIP: 198.18.1.2}
)");
        write("service.tenant-a.llm.yaml", R"(apiVersion: v1
kind: Service
metadata: {name: llm, namespace: tenant-a, annotations: {sluice.dev/load-balancer: least-connections}}
spec:
  clusterIP: 198.19.128.1
  ports: [{name: http, port: 80, targetPort: 8080}]
)");
        write("endpointslice.tenant-a.llm-v4.yaml", R"(apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: llm-v4, namespace: tenant-a, labels: {kubernetes.io/service-name: llm}}
addressType: IPv4
endpoints:
  - {addresses: [198.18.0.2], conditions: {ready: true}, targetRef: {kind: Pod, name: llm-0, namespace: tenant-a}}
  - {addresses: [198.18.1.2], conditions: {ready: false}, targetRef: {kind: Pod, name: llm-1, namespace: tenant-a}}
ports: [{name: http, port: 8080}]
)");
    }
    void TearDown() override { fs::remove_all(dir_); }
    void write(const std::string& name, const std::string& text) {
        std::ofstream(dir_ / name) << text;
    }
    fs::path dir_;
};

TEST_F(RegistryTest, ReadsPodsServicesAndEndpoints) {
    auto snap = state::yaml_folder_registry(dir_)->load();
    ASSERT_TRUE(snap) << snap.error();
    const state::Workload* w = snap->workload_by_ip(ip("2001:db8::2"));
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->key(), "tenant-a/llm-0");
    EXPECT_EQ(w->service_account, "llm");
    EXPECT_EQ(w->identity("cluster.local").uri(), "spiffe://cluster.local/ns/tenant-a/sa/llm");
    EXPECT_TRUE(w->ambient) << "the namespace label enrolls the pod";
    EXPECT_FALSE(snap->workload("tenant-a", "llm-1")->ambient) << "a pod label overrides it";
    const state::Service* s = snap->service_by_vip(ip("198.19.128.1"));
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(s->hostname(), "llm.tenant-a.svc.cluster.local");
    EXPECT_EQ(s->load_balancing, state::LoadBalancing::LeastConnections);
    ASSERT_NE(s->port(80), nullptr);
    EXPECT_EQ(s->port(80)->target_port, 8080);
    EXPECT_EQ(s->endpoints.size(), 2u);
    EXPECT_EQ(snap->service_by_vip(ip("198.19.128.9")), nullptr);
}

// A host-network pod's IP is the node's, and a finished pod's IP may be another pod's now:
// neither owns it, whichever file is read last (a z- file sorts after llm-0's).
TEST_F(RegistryTest, HostNetworkAndFinishedPodsOwnNoAddress) {
    write("pod.tenant-a.z-agent.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: z-agent, namespace: tenant-a, uid: u2}
spec: {nodeName: node0, hostNetwork: true, serviceAccountName: agent}
status: {phase: Running, podIP: 198.18.255.1, podIPs: [{ip: 198.18.255.1}]}
)");
    write("pod.tenant-a.z-job.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: z-job, namespace: tenant-a, uid: u3}
spec: {nodeName: node0, serviceAccountName: job}
status: {phase: Succeeded, podIP: 198.18.0.2, podIPs: [{ip: 198.18.0.2}]}
)");
    auto snap = state::yaml_folder_registry(dir_)->load();
    ASSERT_TRUE(snap) << snap.error();
    EXPECT_EQ(snap->workload_by_ip(ip("198.18.255.1")), nullptr) << "the node's address";
    const state::Workload* w = snap->workload_by_ip(ip("198.18.0.2"));
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->key(), "tenant-a/llm-0") << "the running pod keeps its address";
    ASSERT_NE(snap->workload("tenant-a", "z-job"), nullptr);
    EXPECT_TRUE(snap->workload("tenant-a", "z-job")->ips.empty());
}

TEST_F(RegistryTest, ViewKeepsTheLastGoodSnapshotOnAParseError) {
    state::RegistryView view(state::yaml_folder_registry(dir_));
    EXPECT_EQ(view.current()->workloads().size(), 2u);
    write("pod.broken.yaml", "kind: Pod\nmetadata: {name: [unclosed\n");
    view.refresh();
    EXPECT_EQ(view.current()->workloads().size(), 2u);
}

TEST_F(RegistryTest, LoadBalancerSkipsUnreadyEndpointsAndFollowsThePolicy) {
    auto snap = state::yaml_folder_registry(dir_)->load();
    ASSERT_TRUE(snap);
    state::Service svc = *snap->service_by_vip(ip("198.19.128.1"));
    proxy::LoadBalancer lb;
    for (int i = 0; i < 4; ++i) {
        auto ep = lb.pick(svc, ip("198.18.5.5"), false);
        ASSERT_TRUE(ep);
        EXPECT_EQ(ep->ip, ip("198.18.0.2")) << "llm-1 is not ready";
    }
    svc.endpoints[1].ready = true;
    lb.opened(ip("198.18.0.2"));
    EXPECT_EQ(lb.pick(svc, ip("198.18.5.5"), false)->ip, ip("198.18.1.2"))
        << "least connections picks the idle endpoint";
    EXPECT_EQ(lb.tracked(), 1u) << "picking adds no entry";
    lb.closed(ip("198.18.0.2"));
    EXPECT_EQ(lb.tracked(), 0u) << "an endpoint with nothing open is forgotten";
    lb.closed(ip("198.18.0.2"));  // a close too many changes nothing
    lb.opened(ip("198.18.0.2"));
    EXPECT_EQ(lb.pick(svc, ip("198.18.5.5"), false)->ip, ip("198.18.1.2"));
    svc.load_balancing = state::LoadBalancing::RoundRobin;
    auto a = lb.pick(svc, ip("198.18.5.5"), false)->ip;
    auto b = lb.pick(svc, ip("198.18.5.5"), false)->ip;
    EXPECT_NE(a, b);
    svc.load_balancing = state::LoadBalancing::ConsistentHash;
    const auto first = lb.pick(svc, ip("198.18.7.7"), false)->ip;
    for (int i = 0; i < 5; ++i)
        EXPECT_EQ(lb.pick(svc, ip("198.18.7.7"), false)->ip, first);
    EXPECT_FALSE(lb.pick(svc, ip("198.18.7.7"), true)) << "no IPv6 endpoints";
}

// Istio ambient's waypoint labels: the Service's own label, else its Namespace's; `none` opts out.
TEST(UseWaypointTest, ServiceLabelThenNamespaceLabelAndNoneOptsOut) {
    using state::use_waypoint;
    const state::Labels ns = {{"istio.io/use-waypoint", "ns-wp"}};
    EXPECT_EQ(use_waypoint({}, {}, "a"), std::nullopt);
    EXPECT_EQ(use_waypoint({{"istio.io/use-waypoint", "wp"}}, {}, "a"), "a/wp")
        << "default: the service's own namespace";
    EXPECT_EQ(use_waypoint(
                  {{"istio.io/use-waypoint", "wp"}, {"istio.io/use-waypoint-namespace", "infra"}},
                  {}, "a"),
              "infra/wp");
    EXPECT_EQ(use_waypoint({}, ns, "a"), "a/ns-wp") << "the namespace label applies";
    EXPECT_EQ(use_waypoint({{"istio.io/use-waypoint", "wp"}}, ns, "a"), "a/wp")
        << "the service label wins";
    EXPECT_EQ(use_waypoint({{"istio.io/use-waypoint", "none"}}, ns, "a"), std::nullopt)
        << "none on the service opts out of the namespace's waypoint";
    EXPECT_EQ(use_waypoint({{"istio.io/use-waypoint-namespace", "infra"}}, ns, "a"), "a/ns-wp")
        << "a namespace override without a name on the service does not move the namespace's";
    EXPECT_TRUE(state::is_waypoint_pod({{"gateway.istio.io/managed", "istio.io-mesh-controller"}}));
    EXPECT_FALSE(state::is_waypoint_pod({{"gateway.istio.io/managed", "other"}}));
    EXPECT_FALSE(state::is_waypoint_pod({{"app", "waypoint"}}));
}

// The testbed's shape: service ai/llm uses waypoint ai/waypoint, whose pod is labelled.
class WaypointRegistryTest : public RegistryTest {
  protected:
    void SetUp() override {
        RegistryTest::SetUp();
        write("namespace.ai.yaml", R"(apiVersion: v1
kind: Namespace
metadata: {name: ai, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
)");
        write("pod.ai.waypoint.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: waypoint, namespace: ai, uid: w0, labels: {app: waypoint, gateway.istio.io/managed: istio.io-mesh-controller}}
spec: {nodeName: node0, serviceAccountName: waypoint}
status: {podIP: 198.18.0.9}
)");
        write("pod.ai.llm-0.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: llm-0, namespace: ai, uid: l0, labels: {app: llm}}
spec: {nodeName: node1, serviceAccountName: llm}
status: {podIP: 198.18.1.9}
)");
        service("llm", "198.19.128.2", "");
        service("waypoint", "198.19.128.3", "");
        service("plain", "198.19.128.4", "istio.io/use-waypoint: none");
        service("elsewhere", "198.19.128.5",
                "istio.io/use-waypoint: gone, istio.io/use-waypoint-namespace: infra");
        slice("waypoint", "198.18.0.9", "waypoint", true);
        slice("llm", "198.18.1.9", "llm-0", true);
    }
    void service(const std::string& name, const std::string& vip, const std::string& labels) {
        write("service.ai." + name + ".yaml",
              "apiVersion: v1\nkind: Service\nmetadata: {name: " + name +
                  ", namespace: ai, labels: {" + labels + "}}\nspec:\n  clusterIP: " + vip +
                  "\n  ports: [{name: http, port: 80}]\n");
    }
    void slice(const std::string& svc, const std::string& addr, const std::string& pod,
               bool ready) {
        write("endpointslice.ai." + svc + ".yaml",
              "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: " + svc +
                  "-v4, namespace: ai, labels: {kubernetes.io/service-name: " + svc +
                  "}}\nendpoints:\n  - {addresses: [" + addr + "], conditions: {ready: " +
                  (ready ? "true" : "false") + "}, targetRef: {kind: Pod, name: " + pod +
                  ", namespace: ai}}\nports: [{name: http, port: 80}]\n");
    }
};

TEST_F(WaypointRegistryTest, ServiceRoutesThroughItsWaypointExceptFromTheWaypoint) {
    auto snap = state::yaml_folder_registry(dir_)->load();
    ASSERT_TRUE(snap) << snap.error();
    const state::Service* llm = snap->service_by_vip(ip("198.19.128.2"));
    ASSERT_NE(llm, nullptr);
    EXPECT_EQ(llm->waypoint, "ai/waypoint") << "from the namespace label";
    const state::Workload* wp = snap->workload("ai", "waypoint");
    const state::Workload* client = snap->workload("tenant-a", "llm-0");
    ASSERT_NE(wp, nullptr);
    EXPECT_TRUE(wp->waypoint);
    EXPECT_FALSE(client->waypoint);

    auto route = state::waypoint_route(*snap, client, *llm);
    ASSERT_TRUE(route) << route.error();
    ASSERT_NE(route->waypoint, nullptr);
    EXPECT_EQ(route->waypoint->key(), "ai/waypoint");
    route = state::waypoint_route(*snap, nullptr, *llm);
    ASSERT_TRUE(route);
    EXPECT_NE(route->waypoint, nullptr) << "a source outside the registry goes through it too";

    // No loops: the waypoint's own connections to the service go to its endpoints.
    route = state::waypoint_route(*snap, wp, *llm);
    ASSERT_TRUE(route);
    EXPECT_EQ(route->waypoint, nullptr);
    // The waypoint service itself (the namespace label names it) is not routed to itself.
    route = state::waypoint_route(*snap, client, *snap->service("ai/waypoint"));
    ASSERT_TRUE(route);
    EXPECT_EQ(route->waypoint, nullptr);
    // Opted out by `none`.
    route = state::waypoint_route(*snap, client, *snap->service_by_vip(ip("198.19.128.4")));
    ASSERT_TRUE(route);
    EXPECT_EQ(route->waypoint, nullptr);
    // A waypoint the registry does not hold: an error naming it (the caller fails closed).
    route = state::waypoint_route(*snap, client, *snap->service_by_vip(ip("198.19.128.5")));
    ASSERT_FALSE(route);
    EXPECT_NE(route.error().find("infra/gone"), std::string::npos) << route.error();
}

TEST_F(WaypointRegistryTest, WaypointWithoutAReadyEndpointHasNothingToPick) {
    slice("waypoint", "198.18.0.9", "waypoint", false);
    auto snap = state::yaml_folder_registry(dir_)->load();
    ASSERT_TRUE(snap) << snap.error();
    auto route =
        state::waypoint_route(*snap, snap->workload("tenant-a", "llm-0"), *snap->service("ai/llm"));
    ASSERT_TRUE(route);
    ASSERT_NE(route->waypoint, nullptr);
    proxy::LoadBalancer lb;
    EXPECT_FALSE(lb.pick(*route->waypoint, ip("198.18.5.5"), false));
}

TEST(WaypointHopTest, AccessLogAndMetricLabelsNameTheWaypointOnlyWhenThereIsOne) {
    proxy::ConnectionRecord rec;
    proxy::ConnectionLabels labels;
    EXPECT_FALSE(rec.to_json(labels).contains("waypoint"));
    EXPECT_FALSE(labels.to_map().contains("destination_waypoint"));
    labels.destination_waypoint = "ai/waypoint";
    EXPECT_EQ(rec.to_json(labels)["waypoint"], "ai/waypoint");
    EXPECT_EQ(labels.to_map().at("destination_waypoint"), "ai/waypoint");
}

// A reader that does not keep up (a stalled log collector on the other end of a pipe) costs
// lines, never a stalled worker: writes do not block, what does not fit is counted, and what
// arrives is whole lines.
TEST(AccessLogTest, AFullPipeDropsLinesInsteadOfBlocking) {
    int pipe_fds[2];
    ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
    ::fcntl(pipe_fds[1], F_SETPIPE_SZ, 4096);
    uint64_t dropped = 0;
    {
        proxy::AccessLog log("/proc/self/fd/" + std::to_string(pipe_fds[1]));
        proxy::ConnectionRecord rec;
        rec.direction = "outbound";
        rec.result = "ok";
        auto writing = std::async(std::launch::async, [&] {
            for (int i = 0; i < 200; ++i)
                log.write(rec, proxy::ConnectionLabels{});
        });
        if (writing.wait_for(std::chrono::seconds(5)) != std::future_status::ready) {
            // Unblock the writer so that the test fails instead of hanging.
            ::fcntl(pipe_fds[0], F_SETFL, O_NONBLOCK);
            char sink[4096];
            while (writing.wait_for(std::chrono::milliseconds(1)) != std::future_status::ready)
                [[maybe_unused]] auto n = ::read(pipe_fds[0], sink, sizeof(sink));
            FAIL() << "a write blocked on the full pipe";
        }
        dropped = log.dropped();
    }
    EXPECT_GT(dropped, 100u);
    EXPECT_LT(dropped, 200u);
    const int flags = ::fcntl(pipe_fds[1], F_GETFL);
    EXPECT_EQ(flags & O_NONBLOCK, 0) << "the descriptor others share is left as it was";
    ::close(pipe_fds[1]);
    std::string got;
    char buf[4096];
    for (ssize_t n; (n = ::read(pipe_fds[0], buf, sizeof(buf))) > 0;)
        got.append(buf, size_t(n));
    ::close(pipe_fds[0]);
    size_t lines = 0;
    for (size_t at = 0; at < got.size(); ++lines) {
        const size_t end = got.find('\n', at);
        ASSERT_NE(end, std::string::npos);
        EXPECT_EQ(nlohmann::json::parse(got.substr(at, end - at))["direction"], "outbound");
        at = end + 1;
    }
    EXPECT_EQ(lines + dropped, 200u);
}

// The record keeps addresses as endpoints (no strings per open connection) and writes them as
// text: IPv6 in brackets, one never set as "".
TEST(AccessLogTest, RecordWritesItsAddressesAndLeavesUnsetOnesEmpty) {
    proxy::ConnectionRecord rec;
    rec.direction = "outbound";
    rec.src_addr = {ip("198.18.0.2"), 40000};
    rec.dst_addr = {ip("2001:db8:1::2"), 8080};
    rec.result = "denied";
    const auto j = rec.to_json(proxy::ConnectionLabels{});
    EXPECT_EQ(j["direction"], "outbound");
    EXPECT_EQ(j["src.addr"], "198.18.0.2:40000");
    EXPECT_EQ(j["dst.addr"], "[2001:db8:1::2]:8080");
    EXPECT_EQ(j["dst.hbone_addr"], "");
    EXPECT_EQ(j["result"], "denied");
    EXPECT_FALSE(j.contains("error"));
    // Why it was not ok comes with the write, not from the record an open connection holds.
    EXPECT_EQ(rec.to_json(proxy::ConnectionLabels{}, "no healthy upstream")["error"],
              "no healthy upstream");
}

TEST(DefaultAuthorizerTest, StrictRefusesOnlyPlaintext) {
    state::Workload dst;
    auto strict = state::default_authorizer(state::MtlsMode::Strict);
    EXPECT_FALSE(strict->authorize({.source = ip("198.18.0.2"), .destination = &dst}).allowed);
    EXPECT_TRUE(strict
                    ->authorize({.peer_identity = "spiffe://cluster.local/ns/a/sa/b",
                                 .source = ip("198.18.0.2"),
                                 .destination = &dst})
                    .allowed);
    auto permissive = state::default_authorizer(state::MtlsMode::Permissive);
    EXPECT_TRUE(permissive->authorize({.source = ip("198.18.0.2"), .destination = &dst}).allowed);
}

// While the policy folder is broken the last good policies stay in force, and a pod created
// meanwhile gets them too: before, ztunnel refused every connection to it as an unknown
// workload until the folder was fixed.
TEST_F(RegistryTest, PolicyAuthorizerKeepsThePoliciesInForceForPodsCreatedWhileTheyAreBroken) {
    const fs::path policies = dir_.string() + "-policies";
    fs::create_directories(policies);
    std::ofstream(policies / "p.yaml") << R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-a, namespace: tenant-a}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/tenant-a/sa/client]}}]}]
)";
    auto authz = state::policy_authorizer(policies.string(), dir_.string(),
                                          state::MtlsMode::Permissive, "cluster.local");
    auto decide = [&](const state::Workload& dst, const std::string& peer) {
        return authz
            ->authorize({.peer_identity = peer,
                         .source = ip("198.18.0.9"),
                         .destination = &dst,
                         .port = 8080,
                         .destination_address = dst.ips.at(0)})
            .allowed;
    };
    const std::string client = "spiffe://cluster.local/ns/tenant-a/sa/client";
    const std::string other = "spiffe://cluster.local/ns/tenant-b/sa/x";
    state::Workload llm0{.name = "llm-0", .namespace_name = "tenant-a", .ips = {ip("198.18.0.2")}};
    EXPECT_TRUE(decide(llm0, client));
    EXPECT_FALSE(decide(llm0, other));

    std::ofstream(policies / "p.yaml", std::ios::app) << "  bogus: [\n";
    write("pod.tenant-a.llm-2.yaml", R"(apiVersion: v1
kind: Pod
metadata: {name: llm-2, namespace: tenant-a, uid: u2, labels: {app: llm}}
spec: {nodeName: node0, serviceAccountName: llm}
status: {podIP: 198.18.0.3}
)");
    EXPECT_TRUE(authz->refresh()) << "a new set for the new pod";
    state::Workload llm2{.name = "llm-2", .namespace_name = "tenant-a", .ips = {ip("198.18.0.3")}};
    EXPECT_TRUE(decide(llm2, client)) << "refused as unknown";
    EXPECT_FALSE(decide(llm2, other)) << "the broken folder lifted the policy";
    EXPECT_FALSE(decide(llm0, other));
    fs::remove_all(policies);
}

TEST(ConfigTest, ValidateReportsEveryProblemAtOnce) {
    proxy::Config c;
    c.workers = 0;
    c.mtls_mode = "MAYBE";
    c.admin_address = "nowhere";
    c.busy_poll = std::chrono::microseconds(10'001);
    auto problems = c.validate();
    EXPECT_EQ(problems.size(), 6u)
        << "workers, busy poll, zds socket, CA, mtls mode, admin address";
    EXPECT_NE(std::find(problems.begin(), problems.end(), "--busy-poll-us must be 0..10000"),
              problems.end());
    c = proxy::Config{};
    c.mode = proxy::Mode::Sidecar;
    c.workload_name = "p";
    c.workload_namespace = "n";
    c.workload_ips = {"198.18.0.2"};
    c.ca_cert = "ca.crt";
    c.ca_key = "ca.key";
    c.busy_poll = proxy::kMaxBusyPoll;
    EXPECT_TRUE(c.validate().empty());
    std::string host;
    uint16_t port = 0;
    EXPECT_TRUE(proxy::split_host_port("[2001:db8::1]:15008", host, port));
    EXPECT_EQ(host, "2001:db8::1");
    EXPECT_EQ(port, 15008);
    EXPECT_FALSE(proxy::split_host_port("198.18.0.1:", host, port));
}

}  // namespace
}  // namespace sluice::ztunnel
