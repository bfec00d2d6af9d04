#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "ztunnel/proxy/config.h"
#include "ztunnel/proxy/load_balancer.h"
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

TEST(ConfigTest, ValidateReportsEveryProblemAtOnce) {
    proxy::Config c;
    c.workers = 0;
    c.mtls_mode = "MAYBE";
    c.admin_address = "nowhere";
    auto problems = c.validate();
    EXPECT_EQ(problems.size(), 5u) << "workers, zds socket, CA, mtls mode, admin address";
    c = proxy::Config{};
    c.mode = proxy::Mode::Sidecar;
    c.workload_name = "p";
    c.workload_namespace = "n";
    c.workload_ips = {"198.18.0.2"};
    c.ca_cert = "ca.crt";
    c.ca_key = "ca.key";
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
