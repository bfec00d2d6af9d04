#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sluice::agent {

// What enrollment needs to know about a pod from the registry (Kubernetes Pod and Namespace
// documents; a folder of YAML in the embedded default, DESIGN.md §5).
struct PodRecord {
    std::string name, namespace_name, uid, node_name, service_account;
    std::map<std::string, std::string> labels;
    std::vector<std::string> ips;
    std::string netns;  // annotation sluice.dev/netns (pods that ran before the agent)
};

// Istio's enrollment label, on the Pod or its Namespace. A pod label wins over the namespace's
// ("none" opts a pod out of an ambient namespace), as in Istio.
inline constexpr const char* kDataplaneModeLabel = "istio.io/dataplane-mode";
inline constexpr const char* kDataplaneModeAmbient = "ambient";
inline constexpr const char* kNetnsAnnotation = "sluice.dev/netns";
// Istio ambient's waypoint pod label: such a pod terminates HBONE on its own :15008.
inline constexpr const char* kWaypointManagedLabel = "gateway.istio.io/managed";
inline constexpr const char* kWaypointManagedValue = "istio.io-mesh-controller";
bool is_waypoint_pod(const PodRecord& pod);

// A snapshot of the registry folder. Documents that do not parse are skipped with a warning
// (the policy library validates them with positions; enrollment must not stop on one bad file).
class RegistryView {
  public:
    static RegistryView read(const std::string& dir);

    std::optional<PodRecord> pod(const std::string& ns, const std::string& name) const;
    std::vector<PodRecord> pods_on_node(const std::string& node) const;
    bool wants_ambient(const PodRecord& pod) const;

    // For tests and in-process callers.
    void add_pod(PodRecord p) { pods_.push_back(std::move(p)); }
    void set_namespace_labels(const std::string& ns, std::map<std::string, std::string> labels) {
        namespace_labels_[ns] = std::move(labels);
    }

  private:
    std::vector<PodRecord> pods_;
    std::map<std::string, std::map<std::string, std::string>> namespace_labels_;
};

}  // namespace sluice::agent
