#include "tests/testbed/spec.h"

#include <gtest/gtest.h>

namespace sluice::testbed {
namespace {

std::string error_of(const std::string& yaml) {
    try {
        parse_spec(yaml, "cluster.yaml");
    } catch (const SpecError& e) {
        return e.what();
    }
    return "";
}

TEST(Spec, ParsesPodsServicesNamespaces) {
    auto spec = parse_spec(R"(
name: rag
nodes: 2
namespaces:
  - name: tenant-a
    labels: {istio.io/dataplane-mode: ambient}
pods:
  - name: frontend
    namespace: tenant-a
    serviceAccount: web
    node: 1
    labels: {app: frontend}
  - name: llm
    namespace: tenant-a
    replicas: 3
    labels: {app: llm}
services:
  - name: llm
    namespace: tenant-a
    selector: {app: llm}
    ports: [{name: http, port: 80, targetPort: 8000}]
    labels: {istio.io/use-waypoint: waypoint}
)");
    EXPECT_EQ(spec.name, "rag");
    EXPECT_EQ(spec.nodes, 2);
    ASSERT_EQ(spec.pods.size(), 4u);
    EXPECT_EQ(spec.pods[0].service_account, "web");
    EXPECT_EQ(spec.pods[0].node, 1);
    EXPECT_EQ(spec.pods[0].labels.at("app"), "frontend");
    // Replicas are named <name>-<i> and spread over nodes.
    EXPECT_EQ(spec.pods[1].name, "llm-0");
    EXPECT_EQ(spec.pods[2].node, 1);
    EXPECT_EQ(spec.pods[3].node, 0);
    EXPECT_EQ(spec.namespaces.at(0).labels.at("istio.io/dataplane-mode"), "ambient");
    ASSERT_EQ(spec.services.size(), 1u);
    EXPECT_EQ(spec.services[0].ports.at(0).target_port, 8000);
    EXPECT_EQ(spec.services[0].labels.at("istio.io/use-waypoint"), "waypoint");
    EXPECT_TRUE(validate(spec).empty());
}

TEST(Spec, MalformedYamlNamesLineAndColumn) {
    auto err = error_of("name: x\npods:\n  - name: [unclosed\n");
    EXPECT_EQ(err.rfind("cluster.yaml:", 0), 0u) << err;
    EXPECT_NE(err.find("malformed YAML"), std::string::npos) << err;
}

TEST(Spec, UnknownFieldIsNamedWithPosition) {
    EXPECT_EQ(error_of("name: x\npods:\n  - name: a\n    lables: {}\n"),
              "cluster.yaml:4:5: unknown field 'lables' in pod");
}

TEST(Spec, WrongTypeIsNamed) {
    EXPECT_EQ(error_of("nodes: two\n"), "cluster.yaml:1:8: nodes has the wrong type: 'two'");
    EXPECT_EQ(
        error_of("mesh: istio\n"),
        "cluster.yaml:1:7: unknown mesh mode 'istio' (expected none, sidecar or sidecarless)");
}

TEST(Spec, ValidateReportsEveryProblem) {
    ClusterSpec spec = generated_spec("Bad-Name", 1, 1);
    spec.pods.push_back(spec.pods[0]);              // duplicate
    spec.pods.push_back({.name = "x", .node = 5});  // no such node
    spec.services.push_back({.name = "svc"});       // no ports
    auto problems = validate(spec);
    ASSERT_EQ(problems.size(), 4u);
    EXPECT_NE(problems[0].find("cluster name"), std::string::npos);
    EXPECT_NE(problems[1].find("duplicate pod default/pod-0-0"), std::string::npos);
    EXPECT_NE(problems[2].find("on node 5"), std::string::npos);
    EXPECT_NE(problems[3].find("has no ports"), std::string::npos);
}

TEST(Spec, GeneratedSpecNamesPodsByNode) {
    auto spec = generated_spec("t", 2, 3);
    ASSERT_EQ(spec.pods.size(), 6u);
    EXPECT_EQ(spec.pods[4].name, "pod-1-1");
    EXPECT_EQ(spec.pods[4].node, 1);
    EXPECT_EQ(spec.pods[4].labels.at("app"), "pod-1-1");
}

}  // namespace
}  // namespace sluice::testbed
