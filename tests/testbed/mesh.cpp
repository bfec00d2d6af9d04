#include "tests/testbed/mesh.h"

#include "tests/testbed/testbed.h"

#include <filesystem>

namespace sluice::testbed {
namespace {

[[noreturn]] void unavailable(MeshMode mode) {
    throw TestbedError("mesh mode '" + to_string(mode) +
                       "' is not available in this build; use --mesh none");
}

}  // namespace

std::string sluice_bin_dir(const TestbedOptions& options) {
    if (!options.bin_dir.empty())
        return options.bin_dir;
    // The binaries are built side by side (build/bin/), as is every test binary.
    return std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
}

void start_node_mesh(ClusterState& state, const NodeState&, const TestbedOptions&) {
    switch (state.mesh) {
        case MeshMode::None:
        case MeshMode::Sidecar:  // sidecars start per pod
            return;
        case MeshMode::Sidecarless:
            unavailable(state.mesh);
    }
}

nlohmann::json mesh_cni_plugins(const ClusterState&, const NodeState&, const TestbedOptions&) {
    return nlohmann::json::array();
}

void start_pod_mesh(ClusterState& state, const PodState& pod, const TestbedOptions& options) {
    switch (state.mesh) {
        case MeshMode::None:
        case MeshMode::Sidecarless:  // the node's ztunnel serves every pod
            return;
        case MeshMode::Sidecar:
            start_sidecar(state, pod, options);
            return;
    }
}

}  // namespace sluice::testbed
