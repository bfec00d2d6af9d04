#include "agent/registry_view.h"

#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>

namespace sluice::agent {
namespace {

namespace fs = std::filesystem;

std::map<std::string, std::string> string_map(const YAML::Node& n) {
    std::map<std::string, std::string> m;
    if (!n || !n.IsMap())
        return m;
    for (const auto& kv : n) {
        if (kv.second.IsScalar())
            m[kv.first.as<std::string>()] = kv.second.as<std::string>();
    }
    return m;
}

std::string scalar(const YAML::Node& n) {
    return n && n.IsScalar() ? n.as<std::string>() : std::string();
}

}  // namespace

RegistryView RegistryView::read(const std::string& dir) {
    RegistryView view;
    std::error_code ec;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        const auto name = e.path().filename().string();
        if (name.starts_with("."))
            continue;  // temp files and kubelet's ..data machinery
        if (e.path().extension() == ".yaml" || e.path().extension() == ".yml")
            files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
        std::vector<YAML::Node> docs;
        try {
            docs = YAML::LoadAllFromFile(f.string());
        } catch (const YAML::Exception& e) {
            spdlog::warn("registry: skipping {}: {}", f.string(), e.what());
            continue;
        }
        for (const auto& d : docs) {
            if (!d.IsMap())
                continue;
            const std::string kind = scalar(d["kind"]);
            const YAML::Node meta = d["metadata"];
            if (!meta || !meta.IsMap())
                continue;
            if (kind == "Namespace") {
                view.namespace_labels_[scalar(meta["name"])] = string_map(meta["labels"]);
            } else if (kind == "Pod") {
                PodRecord p;
                p.name = scalar(meta["name"]);
                p.namespace_name = scalar(meta["namespace"]);
                if (p.namespace_name.empty())
                    p.namespace_name = "default";
                p.uid = scalar(meta["uid"]);
                p.labels = string_map(meta["labels"]);
                auto annotations = string_map(meta["annotations"]);
                if (auto it = annotations.find(kNetnsAnnotation); it != annotations.end())
                    p.netns = it->second;
                if (const auto spec = d["spec"]; spec && spec.IsMap()) {
                    p.node_name = scalar(spec["nodeName"]);
                    p.service_account = scalar(spec["serviceAccountName"]);
                }
                if (p.service_account.empty())
                    p.service_account = "default";
                if (const auto status = d["status"]; status && status.IsMap()) {
                    if (const auto ips = status["podIPs"]; ips && ips.IsSequence()) {
                        for (const auto& ip : ips)
                            p.ips.push_back(scalar(ip["ip"]));
                    } else if (!scalar(status["podIP"]).empty()) {
                        p.ips.push_back(scalar(status["podIP"]));
                    }
                }
                if (!p.name.empty())
                    view.pods_.push_back(std::move(p));
            }
        }
    }
    return view;
}

std::optional<PodRecord> RegistryView::pod(const std::string& ns, const std::string& name) const {
    for (const auto& p : pods_) {
        if (p.namespace_name == ns && p.name == name)
            return p;
    }
    return std::nullopt;
}

std::vector<PodRecord> RegistryView::pods_on_node(const std::string& node) const {
    std::vector<PodRecord> out;
    for (const auto& p : pods_) {
        if (p.node_name == node)
            out.push_back(p);
    }
    return out;
}

bool is_waypoint_pod(const PodRecord& pod) {
    auto it = pod.labels.find(kWaypointManagedLabel);
    return it != pod.labels.end() && it->second == kWaypointManagedValue;
}

bool RegistryView::wants_ambient(const PodRecord& pod) const {
    if (auto it = pod.labels.find(kDataplaneModeLabel); it != pod.labels.end()) {
        return it->second == kDataplaneModeAmbient;
    }
    auto ns = namespace_labels_.find(pod.namespace_name);
    if (ns == namespace_labels_.end())
        return false;
    auto it = ns->second.find(kDataplaneModeLabel);
    return it != ns->second.end() && it->second == kDataplaneModeAmbient;
}

}  // namespace sluice::agent
