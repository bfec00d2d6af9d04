#pragma once

#include <string>
#include <vector>

#include "tests/testbed/state.h"

namespace sluice::testbed {

// The registry the mesh reads in the embedded default (DESIGN.md §5): Kubernetes' own object
// shapes, one YAML document per file.
struct RegistryDocument {
    std::string file_name;  // e.g. pod.default.pod-0-0.yaml
    std::string yaml;
};

// Where the agent finds a pod's network namespace when it enrolls pods that were running before
// it started (a kubelet-managed pod has none; the agent would look it up from the runtime).
inline constexpr const char* kNetnsAnnotation = "sluice.dev/netns";

// Namespace, Pod, Service and EndpointSlice documents for the cluster. Pods matching a
// service's selector become its endpoints (both address families, one slice per family).
std::vector<RegistryDocument> registry_documents(const ClusterState& state);

// Writes the documents into `dir` (each to a temp file, then renamed, so a watcher never reads
// half a file); with `prune`, files that are not among them are removed.
void write_registry(const std::string& dir, const std::vector<RegistryDocument>& docs,
                    bool prune = true);

}  // namespace sluice::testbed
