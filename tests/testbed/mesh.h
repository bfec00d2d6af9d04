#pragma once

#include <nlohmann/json.hpp>

#include <chrono>
#include <optional>
#include <string>

#include "tests/testbed/state.h"

namespace sluice::testbed {

struct TestbedOptions;

// How `up` starts a mesh, at three fixed points of building a cluster. Each mesh mode has its
// own file (mesh_sidecarless.cpp: agent + ztunnel per node; mesh_sidecar.cpp: ztunnel in every
// pod behind iptables REDIRECT); this file only dispatches.
//
//  1. start_node_mesh()    after a node's network exists, before any pod is created (the CNI
//                          chain of a sidecarless node needs its agent running)
//  2. mesh_cni_plugins()   plugins chained after bridge in each node's conflist
//  3. start_pod_mesh()     after a pod is networked
// Daemons run in the node's (or pod's) netns and cgroup, so `down` kills them with the rest.

void start_node_mesh(ClusterState& state, const NodeState& node, const TestbedOptions& options);
nlohmann::json mesh_cni_plugins(const ClusterState& state, const NodeState& node,
                                const TestbedOptions& options);
void start_pod_mesh(ClusterState& state, const PodState& pod, const TestbedOptions& options);

// GET http://127.0.0.1:<port><path> inside `netns`: the body of a 200, else nullopt.
std::optional<std::string> local_http_get(const std::string& netns, int port,
                                          const std::string& path);

// Waits until every ztunnel of the cluster (node ztunnels, or sidecars) lists every pod and
// service of `state` in its /config_dump, so `up` hands over a mesh that decides the first
// connection with every workload known; throws TestbedError after `timeout`.
void wait_registry_loaded(const ClusterState& state, std::chrono::milliseconds timeout);

// Polls http://127.0.0.1:<port><path> inside `netns` until it answers 200 or the timeout passes.
bool wait_http_ready(const std::string& netns, int port, const std::string& path,
                     std::chrono::milliseconds timeout);

// Starts `argv` in the pod (its netns and cgroup, output appended to `log`), records it in
// state.daemons as `name`, and waits until http://127.0.0.1:<ready_port><ready_path> in the pod
// answers 200; throws TestbedError naming the log otherwise. Returns the pid.
pid_t start_pod_daemon(ClusterState& state, const PodState& pod, const std::string& name,
                       std::vector<std::string> argv, const std::string& log, int ready_port,
                       const std::string& ready_path, std::chrono::milliseconds timeout);

// The same for a node daemon (argv[0] must exist): in the node's netns and system cgroup,
// ready when http://127.0.0.1:<ready_port>/healthz/ready in the node answers 200.
pid_t start_node_daemon(ClusterState& state, const NodeState& node, const std::string& name,
                        std::vector<std::string> argv, const std::string& log, int ready_port,
                        std::chrono::milliseconds timeout);

// Where the sluice binaries are (the directory of sluice-testbed, or SLUICE_BIN_DIR).
std::string sluice_bin_dir(const TestbedOptions& options);

// Both mesh modes: creates the cluster's signing CA under <run>/ca once (sluice-ztunnel ca
// create) and records it in state.ca_dir, so `status --json` shows where it is and an outside
// HBONE peer can get a certificate from the same root (sluice-ztunnel ca mint).
void ensure_cluster_ca(ClusterState& state, const TestbedOptions& options);

// mesh_sidecar.cpp: sluice-ztunnel --mode sidecar in the pod's netns behind iptables REDIRECT.
void start_sidecar(ClusterState& state, const PodState& pod, const TestbedOptions& options);
// The iptables capture of sidecar mode in a pod's netns (outbound → :15001, inbound → :15006)
// plus the routing that lets ztunnel connect to the app from the client's address.
void install_sidecar_capture(const PodState& pod);

}  // namespace sluice::testbed
