#pragma once

#include "tests/testbed/spec.h"
#include "tests/testbed/state.h"

namespace sluice::testbed {

struct TestbedOptions;

// Namespace of the waypoint and its emulator backends (`up --waypoint`).
inline constexpr const char* kWaypointNamespace = "ai";

// Adds namespace `ai` (enrolled), pods llm-0, llm-1 (emulators, a test fixture) and waypoint,
// and services llm (:8000) and waypoint (:8080) to the spec, before it is validated.
void add_waypoint_pods(ClusterSpec& spec);

// After every pod is networked and the registry written: starts the emulators, writes the
// waypoint config (pool = the emulator pods' addresses) and starts sluice-waypoint with the
// cluster's policies folder; returns once its readiness endpoint answers. Fills state.waypoint.
void start_waypoint(ClusterState& state, const TestbedOptions& options);

}  // namespace sluice::testbed
