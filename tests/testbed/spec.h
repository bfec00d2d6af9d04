#pragma once

#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace sluice::testbed {

// Which mesh `up` starts on the cluster. Only `none` exists until the datapath, ztunnel and
// waypoint issues land; the CLI already carries the choice so the demo, the netns tests and the
// benchmark all start clusters the same way.
enum class MeshMode { None, Sidecar, Sidecarless };

struct NamespaceSpec {
    std::string name;
    std::map<std::string, std::string> labels;
};

struct PodSpec {
    std::string name;
    std::string namespace_name = "default";
    std::string service_account = "default";
    int node = 0;  // index into the cluster's nodes
    std::map<std::string, std::string> labels;
};

struct ServicePort {
    std::string name;
    int port = 0;
    int target_port = 0;
    std::string protocol = "TCP";
};

struct ServiceSpec {
    std::string name;
    std::string namespace_name = "default";
    std::map<std::string, std::string> selector;
    std::vector<ServicePort> ports;
    std::map<std::string, std::string> labels;  // e.g. istio.io/use-waypoint
};

// A whole local cluster. Every resource it creates carries the cluster name, so several
// clusters can coexist and `down` can find what a crashed run left behind.
struct ClusterSpec {
    std::string name = "local";
    int nodes = 2;
    MeshMode mesh = MeshMode::None;
    // Also run sluice-waypoint in front of OpenAI-compatible emulator pods (tests/testbed/
    // waypoint.cpp): namespace `ai`, pods llm-0, llm-1 and waypoint.
    bool waypoint = false;
    std::vector<NamespaceSpec> namespaces;  // extra labels; pods' namespaces exist implicitly
    std::vector<PodSpec> pods;
    std::vector<ServiceSpec> services;
};

// A spec error; `where` is "file:line:column" when it comes from YAML.
class SpecError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

// Limits that keep every generated name valid (interface names ≤ 15 bytes, address plan).
inline constexpr int kMaxNodes = 200;
inline constexpr int kMaxPodsPerNode = 250;

// Parses the YAML spec format documented in docs/testbed.md. Throws SpecError naming
// `origin:line:column` for malformed YAML, wrong types, unknown fields and invalid values.
ClusterSpec parse_spec(const std::string& yaml_text, const std::string& origin = "<spec>");
ClusterSpec load_spec_file(const std::string& path);

// N nodes × M pods named pod-<node>-<j> in namespace "default" with label app=pod-<node>-<j>.
ClusterSpec generated_spec(const std::string& name, int nodes, int pods_per_node);

// Every problem with the spec at once (duplicate pods, bad names, node out of range…);
// empty when valid.
std::vector<std::string> validate(const ClusterSpec& spec);

MeshMode parse_mesh_mode(const std::string& s);
std::string to_string(MeshMode m);

}  // namespace sluice::testbed
