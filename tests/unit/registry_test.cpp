#include "tests/testbed/registry.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

namespace sluice::testbed {
namespace {

ClusterState two_pod_state() {
    ClusterState s;
    s.name = "t";
    NodeState n0{.index = 0, .name = "node0", .fabric_ip = "198.19.0.1"};
    NodeState n1{.index = 1, .name = "node1", .fabric_ip = "198.19.0.2"};
    s.nodes = {n0, n1};
    s.namespaces = {{"rag", {{"istio.io/dataplane-mode", "ambient"}}}};
    PodState llm{.name = "llm",
                 .namespace_name = "rag",
                 .service_account = "llm-sa",
                 .uid = "u1",
                 .node = 1,
                 .node_name = "node1",
                 .netns = "/var/run/netns/sluice.t.pod.rag.llm",
                 .ip = "198.18.1.2",
                 .ip6 = "2001:db8:0:1::2",
                 .labels = {{"app", "llm"}}};
    PodState web = llm;
    web.name = "web";
    web.labels = {{"app", "web"}};
    web.ip = "198.18.0.2";
    web.node = 0;
    web.node_name = "node0";
    s.pods = {llm, web};
    ServiceState svc{.spec = {.name = "llm",
                              .namespace_name = "rag",
                              .selector = {{"app", "llm"}},
                              .ports = {{"http", 80, 8000, "TCP"}},
                              .labels = {{"istio.io/use-waypoint", "waypoint"}}},
                     .vip = "198.19.128.1",
                     .uid = "s1"};
    s.services = {svc};
    return s;
}

const RegistryDocument& doc(const std::vector<RegistryDocument>& docs, const std::string& name) {
    for (const auto& d : docs) {
        if (d.file_name == name)
            return d;
    }
    throw std::runtime_error("no document " + name);
}

TEST(Registry, PodDocumentIsAKubernetesPod) {
    auto docs = registry_documents(two_pod_state());
    YAML::Node pod = YAML::Load(doc(docs, "pod.rag.llm.yaml").yaml);
    EXPECT_EQ(pod["apiVersion"].as<std::string>(), "v1");
    EXPECT_EQ(pod["kind"].as<std::string>(), "Pod");
    EXPECT_EQ(pod["metadata"]["namespace"].as<std::string>(), "rag");
    EXPECT_EQ(pod["metadata"]["labels"]["app"].as<std::string>(), "llm");
    EXPECT_EQ(pod["metadata"]["annotations"][kNetnsAnnotation].as<std::string>(),
              "/var/run/netns/sluice.t.pod.rag.llm");
    EXPECT_EQ(pod["spec"]["nodeName"].as<std::string>(), "node1");
    EXPECT_EQ(pod["spec"]["serviceAccountName"].as<std::string>(), "llm-sa");
    EXPECT_EQ(pod["status"]["podIP"].as<std::string>(), "198.18.1.2");
    EXPECT_EQ(pod["status"]["hostIP"].as<std::string>(), "198.19.0.2");
    EXPECT_EQ(pod["status"]["podIPs"][1]["ip"].as<std::string>(), "2001:db8:0:1::2");
}

TEST(Registry, NamespaceCarriesEnrollmentLabel) {
    auto docs = registry_documents(two_pod_state());
    YAML::Node ns = YAML::Load(doc(docs, "namespace.rag.yaml").yaml);
    EXPECT_EQ(ns["metadata"]["labels"]["istio.io/dataplane-mode"].as<std::string>(), "ambient");
}

TEST(Registry, ServiceEndpointsAreTheSelectedPodsOnly) {
    auto docs = registry_documents(two_pod_state());
    YAML::Node svc = YAML::Load(doc(docs, "service.rag.llm.yaml").yaml);
    EXPECT_EQ(svc["spec"]["clusterIP"].as<std::string>(), "198.19.128.1");
    EXPECT_EQ(svc["metadata"]["labels"]["istio.io/use-waypoint"].as<std::string>(), "waypoint");
    EXPECT_EQ(svc["spec"]["ports"][0]["targetPort"].as<int>(), 8000);
    YAML::Node v4 = YAML::Load(doc(docs, "endpointslice.rag.llm-v4.yaml").yaml);
    EXPECT_EQ(v4["apiVersion"].as<std::string>(), "discovery.k8s.io/v1");
    EXPECT_EQ(v4["metadata"]["labels"]["kubernetes.io/service-name"].as<std::string>(), "llm");
    ASSERT_EQ(v4["endpoints"].size(), 1u);
    EXPECT_EQ(v4["endpoints"][0]["addresses"][0].as<std::string>(), "198.18.1.2");
    EXPECT_EQ(v4["endpoints"][0]["targetRef"]["name"].as<std::string>(), "llm");
    EXPECT_EQ(v4["ports"][0]["port"].as<int>(), 8000);
    YAML::Node v6 = YAML::Load(doc(docs, "endpointslice.rag.llm-v6.yaml").yaml);
    EXPECT_EQ(v6["addressType"].as<std::string>(), "IPv6");
    EXPECT_EQ(v6["endpoints"][0]["addresses"][0].as<std::string>(), "2001:db8:0:1::2");
}

}  // namespace
}  // namespace sluice::testbed

namespace sluice::testbed {
namespace {

TEST(Registry, PendingPodHasNoAddresses) {
    ClusterState s = two_pod_state();
    s.pods[0].ip.clear();
    s.pods[0].ip6.clear();
    YAML::Node pod = YAML::Load(doc(registry_documents(s), "pod.rag.llm.yaml").yaml);
    EXPECT_EQ(pod["status"]["phase"].as<std::string>(), "Pending");
    EXPECT_FALSE(pod["status"]["podIP"]);
    EXPECT_FALSE(pod["status"]["podIPs"]);
}

}  // namespace
}  // namespace sluice::testbed
