#pragma once

// The sidecarless netns tests' cluster: mesh/client on node0 and mesh/server on node1, in the
// enrolled (ambient) namespace "mesh". Tests append pods of their own.
namespace sluice::testbed {

inline constexpr const char* kSidecarlessClientServerSpec = R"(
nodes: 2
mesh: sidecarless
namespaces:
  - {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
pods:
  - {name: client, namespace: mesh, serviceAccount: client, node: 0}
  - {name: server, namespace: mesh, serviceAccount: server, node: 1}
)";

}  // namespace sluice::testbed
