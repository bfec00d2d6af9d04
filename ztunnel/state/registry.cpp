#include "ztunnel/state/registry.h"

#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>

namespace sluice::ztunnel::state {
namespace {

namespace fs = std::filesystem;

Labels labels_of(const YAML::Node& n) {
    Labels out;
    if (n && n.IsMap()) {
        for (const auto& kv : n)
            out[kv.first.as<std::string>()] = kv.second.as<std::string>();
    }
    return out;
}

std::optional<IpAddress> parse_ip(const std::string& s) {
    boost::system::error_code ec;
    auto ip = boost::asio::ip::make_address(s, ec);
    if (ec)
        return std::nullopt;
    return ip;
}

LoadBalancing parse_lb(const std::string& s) {
    if (s == "least-connections")
        return LoadBalancing::LeastConnections;
    if (s == "consistent-hash")
        return LoadBalancing::ConsistentHash;
    return LoadBalancing::RoundRobin;
}

struct Slice {
    std::string namespace_name, service;
    std::map<std::string, uint16_t> ports;  // port name → target port
    std::vector<Endpoint> endpoints;
};

// Reads the documents the testbed writes (docs/testbed.md "Registry"). Interim: the policies
// library's registry reader replaces this once it lands; the snapshot stays as it is.
class YamlFolderRegistry : public RegistrySource {
  public:
    explicit YamlFolderRegistry(std::string dir) : dir_(std::move(dir)) {}

    bool changed() override { return directory_fingerprint(dir_) != fingerprint_; }

    std::string describe() const override { return "yaml folder " + dir_; }

    std::expected<Snapshot, std::string> load() override {
        fingerprint_ = directory_fingerprint(dir_);
        std::map<std::string, Labels> namespaces;
        std::vector<Workload> workloads;
        std::vector<Service> services;
        std::vector<Slice> slices;
        std::error_code ec;
        std::vector<fs::path> files;
        for (const auto& e : fs::directory_iterator(dir_, ec)) {
            const auto name = e.path().filename().string();
            if (!name.starts_with(".") && (name.ends_with(".yaml") || name.ends_with(".yml")))
                files.push_back(e.path());
        }
        if (ec)
            return std::unexpected("cannot list " + dir_ + ": " + ec.message());
        std::sort(files.begin(), files.end());
        try {
            for (const auto& f : files) {
                for (const YAML::Node& doc : YAML::LoadAllFromFile(f.string())) {
                    if (!doc || !doc.IsMap())
                        continue;
                    read_document(doc, namespaces, workloads, services, slices);
                }
            }
        } catch (const YAML::Exception& e) {
            return std::unexpected(std::string("registry: ") + e.what());
        }
        for (auto& w : workloads) {
            const auto& ns_labels = namespaces[w.namespace_name];
            auto has = [](const Labels& l) {
                auto it = l.find(kDataplaneModeLabel);
                return it != l.end() && it->second == "ambient";
            };
            w.ambient =
                has(w.labels) || (has(ns_labels) && !w.labels.contains(kDataplaneModeLabel));
            w.waypoint = is_waypoint_pod(w.labels);
        }
        for (auto& s : services) {
            s.waypoint = use_waypoint(s.labels, namespaces[s.namespace_name], s.namespace_name);
            for (const auto& sl : slices) {
                if (sl.namespace_name != s.namespace_name || sl.service != s.name)
                    continue;
                for (const auto& e : sl.endpoints)
                    s.endpoints.push_back(e);
                // EndpointSlice ports name the target port of each service port.
                for (auto& p : s.ports) {
                    auto it = sl.ports.find(p.name);
                    if (it != sl.ports.end())
                        p.target_port = it->second;
                }
            }
        }
        return Snapshot(std::move(workloads), std::move(services));
    }

  private:
    static void read_document(const YAML::Node& doc, std::map<std::string, Labels>& namespaces,
                              std::vector<Workload>& workloads, std::vector<Service>& services,
                              std::vector<Slice>& slices) {
        const std::string kind = doc["kind"].as<std::string>("");
        const YAML::Node meta = doc["metadata"];
        if (!meta)
            return;
        const std::string name = meta["name"].as<std::string>("");
        const std::string ns = meta["namespace"].as<std::string>("default");
        if (kind == "Namespace") {
            namespaces[name] = labels_of(meta["labels"]);
        } else if (kind == "Pod") {
            Workload w;
            w.uid = meta["uid"].as<std::string>("");
            w.name = name;
            w.namespace_name = ns;
            w.labels = labels_of(meta["labels"]);
            w.service_account = doc["spec"]["serviceAccountName"].as<std::string>("default");
            w.node = doc["spec"]["nodeName"].as<std::string>("");
            // A host-network pod's IP is its node's, and a pod that finished has handed its IP
            // back (a new pod may hold it now): neither owns an address (Istio's ztunnel skips
            // both), or traffic to the node, or to the IP's new pod, would be taken for theirs.
            const std::string phase = doc["status"]["phase"].as<std::string>("");
            const bool owns_ips = !doc["spec"]["hostNetwork"].as<bool>(false) &&
                                  phase != "Succeeded" && phase != "Failed";
            if (owns_ips) {
                for (const auto& ipn : doc["status"]["podIPs"]) {
                    if (auto ip = parse_ip(ipn["ip"].as<std::string>("")))
                        w.ips.push_back(*ip);
                }
                if (w.ips.empty()) {
                    if (auto ip = parse_ip(doc["status"]["podIP"].as<std::string>("")))
                        w.ips.push_back(*ip);
                }
            }
            workloads.push_back(std::move(w));
        } else if (kind == "Service") {
            Service s;
            s.name = name;
            s.namespace_name = ns;
            s.load_balancing = parse_lb(labels_of(meta["annotations"])[kLoadBalancerAnnotation]);
            s.labels = labels_of(meta["labels"]);
            for (const auto& ipn : doc["spec"]["clusterIPs"]) {
                if (auto ip = parse_ip(ipn.as<std::string>("")))
                    s.vips.push_back(*ip);
            }
            if (s.vips.empty()) {
                if (auto ip = parse_ip(doc["spec"]["clusterIP"].as<std::string>("")))
                    s.vips.push_back(*ip);
            }
            for (const auto& pn : doc["spec"]["ports"]) {
                ServicePort p;
                p.name = pn["name"].as<std::string>("");
                p.port = pn["port"].as<uint16_t>(0);
                // A named targetPort resolves through the EndpointSlice below; none means port.
                const YAML::Node tp = pn["targetPort"];
                p.target_port = tp && tp.IsScalar() ? tp.as<uint16_t>(p.port) : p.port;
                s.ports.push_back(p);
            }
            services.push_back(std::move(s));
        } else if (kind == "EndpointSlice") {
            Slice sl;
            sl.namespace_name = ns;
            sl.service = labels_of(meta["labels"])["kubernetes.io/service-name"];
            for (const auto& pn : doc["ports"])
                sl.ports[pn["name"].as<std::string>("")] = pn["port"].as<uint16_t>(0);
            for (const auto& en : doc["endpoints"]) {
                const bool ready = en["conditions"]["ready"].as<bool>(true);
                std::string pod;
                if (en["targetRef"] && en["targetRef"]["kind"].as<std::string>("") == "Pod") {
                    pod = en["targetRef"]["namespace"].as<std::string>(ns) + "/" +
                          en["targetRef"]["name"].as<std::string>("");
                }
                for (const auto& a : en["addresses"]) {
                    if (auto ip = parse_ip(a.as<std::string>("")))
                        sl.endpoints.push_back({*ip, pod, ready});
                }
            }
            slices.push_back(std::move(sl));
        }
    }

    std::string dir_;
    std::string fingerprint_;
};

}  // namespace

const char* to_string(LoadBalancing lb) {
    switch (lb) {
        case LoadBalancing::RoundRobin:
            return "round-robin";
        case LoadBalancing::LeastConnections:
            return "least-connections";
        case LoadBalancing::ConsistentHash:
            return "consistent-hash";
    }
    return "unknown";
}

const ServicePort* Service::port(uint16_t p) const {
    for (const auto& sp : ports) {
        if (sp.port == p)
            return &sp;
    }
    return nullptr;
}

Snapshot::Snapshot(std::vector<Workload> workloads, std::vector<Service> services)
    : workloads_(std::move(workloads)), services_(std::move(services)) {
    for (size_t i = 0; i < workloads_.size(); ++i) {
        workload_by_key_[workloads_[i].key()] = i;
        for (const auto& ip : workloads_[i].ips)
            workload_by_ip_[ip] = i;
    }
    for (size_t i = 0; i < services_.size(); ++i) {
        service_by_key_[services_[i].key()] = i;
        for (const auto& ip : services_[i].vips)
            service_by_vip_[ip] = i;
    }
}

const Service* Snapshot::service(const std::string& key) const {
    auto it = service_by_key_.find(key);
    return it == service_by_key_.end() ? nullptr : &services_[it->second];
}

std::optional<std::string> use_waypoint(const Labels& service_labels,
                                        const Labels& namespace_labels,
                                        const std::string& namespace_name) {
    // The Service's own label wins, `none` included; the Namespace's applies otherwise.
    const Labels& from =
        service_labels.contains(kUseWaypointLabel) ? service_labels : namespace_labels;
    auto name = from.find(kUseWaypointLabel);
    if (name == from.end() || name->second.empty() || name->second == "none")
        return std::nullopt;
    auto ns = from.find(kUseWaypointNamespaceLabel);
    return (ns == from.end() || ns->second.empty() ? namespace_name : ns->second) + "/" +
           name->second;
}

bool is_waypoint_pod(const Labels& pod_labels) {
    auto it = pod_labels.find(kWaypointManagedLabel);
    return it != pod_labels.end() && it->second == kWaypointManagedValue;
}

std::expected<WaypointRoute, std::string> waypoint_route(const Snapshot& snap,
                                                         const Workload* source,
                                                         const Service& destination) {
    if (!destination.waypoint || *destination.waypoint == destination.key() ||
        (source != nullptr && source->waypoint))
        return WaypointRoute{};
    const Service* waypoint = snap.service(*destination.waypoint);
    if (waypoint == nullptr)
        return std::unexpected("service " + destination.key() + " uses waypoint " +
                               *destination.waypoint + ", which is not in the registry");
    return WaypointRoute{waypoint};
}

const Workload* Snapshot::workload_by_ip(const IpAddress& ip) const {
    auto it = workload_by_ip_.find(ip);
    return it == workload_by_ip_.end() ? nullptr : &workloads_[it->second];
}

const Workload* Snapshot::workload(const std::string& ns, const std::string& name) const {
    auto it = workload_by_key_.find(ns + "/" + name);
    return it == workload_by_key_.end() ? nullptr : &workloads_[it->second];
}

const Service* Snapshot::service_by_vip(const IpAddress& ip) const {
    auto it = service_by_vip_.find(ip);
    return it == service_by_vip_.end() ? nullptr : &services_[it->second];
}

std::string directory_fingerprint(const std::string& dir) {
    std::string fp;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        fp += e.path().filename().string();
        fp += std::to_string(e.last_write_time(ec).time_since_epoch().count());
        fp += ';';
    }
    return fp;
}

std::unique_ptr<RegistrySource> yaml_folder_registry(std::string dir) {
    return std::make_unique<YamlFolderRegistry>(std::move(dir));
}

RegistryView::RegistryView(std::unique_ptr<RegistrySource> source)
    : source_(std::move(source)), current_(std::make_shared<const Snapshot>()) {
    refresh();
}

std::shared_ptr<const Snapshot> RegistryView::current() const {
    std::lock_guard lock(mutex_);
    return current_;
}

void RegistryView::refresh() {
    std::lock_guard refreshing(refresh_mutex_);
    if (!source_->changed())
        return;
    auto snap = source_->load();
    if (!snap) {
        spdlog::warn("registry: keeping the last good snapshot: {}", snap.error());
        return;
    }
    spdlog::info("registry: {} workloads, {} services from {}", snap->workloads().size(),
                 snap->services().size(), source_->describe());
    auto next = std::make_shared<const Snapshot>(std::move(*snap));
    std::lock_guard lock(mutex_);
    current_ = std::move(next);
}

}  // namespace sluice::ztunnel::state
