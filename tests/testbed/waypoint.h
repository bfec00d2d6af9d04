#pragma once

#include "tests/testbed/spec.h"
#include "tests/testbed/state.h"

namespace sluice::testbed {

struct TestbedOptions;

// Namespace of the waypoint and its emulator backends (`up --waypoint`).
inline constexpr const char* kWaypointNamespace = "ai";

// Adds namespace `ai` (enrolled), pods llm-0, llm-1 (emulators, a test fixture) and waypoint,
// and services llm (:8000) and waypoint (:8080) to the spec, before it is validated. With
// `--mesh sidecarless` and a sluice-waypoint that serves HBONE, Istio ambient's labels too: the
// waypoint pod is `gateway.istio.io/managed: istio.io-mesh-controller` (ztunnel leaves it :15008)
// and service llm `istio.io/use-waypoint: waypoint` (ztunnel sends its clients to the waypoint).
void add_waypoint_pods(ClusterSpec& spec, const TestbedOptions& options);

// Whether the pod is labelled as a waypoint that terminates HBONE itself.
bool waypoint_serves_hbone(const PodState& pod);

// After every pod is networked and the registry written: starts the emulators, writes the
// waypoint config (pool = the emulator pods' addresses) and starts sluice-waypoint with the
// cluster's policies folder; returns once its readiness endpoint answers. Fills state.waypoint.
void start_waypoint(ClusterState& state, const TestbedOptions& options);

}  // namespace sluice::testbed
