#include "agent/agent.h"

#include <malloc.h>
#include <spdlog/spdlog.h>

#include <filesystem>

#include "agent/registry_view.h"
#include "policies/compiler.h"

namespace sluice::agent {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string describe(const datapath::Error& e) {
    return std::string(datapath::errc_name(e.code)) + ": " + e.message;
}

}  // namespace

Agent::Agent(AgentConfig config) : config_(std::move(config)) {}

std::expected<std::unique_ptr<Agent>, std::string> Agent::start(const AgentConfig& config) {
    auto problems = config.validate();
    if (!problems.empty()) {
        std::string msg = "invalid configuration:";
        for (const auto& p : problems)
            msg += "\n  - " + p;
        return std::unexpected(msg);
    }
    std::unique_ptr<Agent> agent(new Agent(config));
    if (auto r = agent->init(); !r)
        return std::unexpected(r.error());
    return agent;
}

std::expected<void, std::string> Agent::init() {
    std::error_code ec;
    fs::create_directories(config_.run_dir, ec);
    if (ec)
        return std::unexpected("cannot create run dir " + config_.run_dir + ": " + ec.message());

    auto dp = datapath::Datapath::open(config_.datapath);
    if (!dp)
        return std::unexpected("eBPF datapath: " + describe(dp.error()));
    datapath_ = std::move(*dp);
    spdlog::info("datapath {} at {} (cgroup {})",
                 datapath_->reused_pinned_state() ? "taken over" : "loaded",
                 config_.datapath.bpffs_root, config_.datapath.cgroup_path);
    if (config_.datapath.same_node_splice) {
        spdlog::info("same-node splice {}", datapath_->splicing()
                                                ? "on"
                                                : "requested but unavailable (see the warning "
                                                  "above); running without it");
    }
    for (const auto& c : config_.excluded_cidrs) {
        if (auto r = datapath_->add_excluded_cidr(*datapath::parse_cidr(c)); !r) {
            return std::unexpected("exclude " + c + ": " + describe(r.error()));
        }
    }

    metrics_ = std::make_unique<AgentMetrics>(*datapath_);
    audit_ = std::make_unique<AuditLog>(config_.audit_log);
    closer_ = std::make_unique<ConnectionCloser>(*datapath_, *metrics_, *audit_);
    ztunnel_ = std::make_unique<ZtunnelLink>(
        config_.ztunnel_socket(),
        [this](ZtunnelLink::SessionId s) {
            metrics_->set_ztunnel_connected(true);
            enrollment_->replay_to_ztunnel(s);
        },
        [this](ZtunnelLink::SessionId s, bool was_steering) {
            enrollment_->ztunnel_lost(s, was_steering);
        });
    enrollment_ = std::make_unique<Enrollment>(*datapath_, *ztunnel_, config_.state_file(),
                                               config_.node_name, config_.ztunnel_timeout);
    enrollment_->set_endpoint_resolver([this](const EnrolledPod& pod) { return binding_of(pod); });
    // What the pinned maps hold from an earlier run; they kept enforcing while we were away.
    enrollment_->restore();

    // Policy before any new enrollment, so pods get their compiled endpoint ids from the start.
    // An invalid policy directory at startup leaves the maps as the last agent left them. The
    // first generation is applied as a change from what the pinned maps hold, so entries the
    // last agent wrote and this generation drops (a DENY removed while no agent ran, a pod
    // gone) are deleted.
    {
        std::lock_guard lk(apply_mu_);
        read_applied();
    }
    policy_status_ =
        std::make_unique<PolicyStatusFile>(config_.policy_status_file(), config_.policies_dir);
    watcher_ = std::make_unique<policies::PolicyWatcher>(
        policies::WatcherConfig{.policy_dir = config_.policies_dir,
                                .registry_dir = config_.registry_dir},
        [this](std::shared_ptr<const policies::Generation> g) { apply_generation(std::move(g)); },
        [this](std::string_view result) {
            metrics_->policy_reload(std::string(result));
            policy_status_->write(*watcher_);
        });
    if (!watcher_->start()) {
        spdlog::warn("cannot watch {}: policy changes need an agent restart", config_.policies_dir);
    }

    if (auto r = ztunnel_->start(); !r)
        return std::unexpected(r.error());
    cni_ = std::make_unique<CniServer>(config_.cni_socket(),
                                       [this](const cni::Request& req) { return handle_cni(req); });
    if (auto r = cni_->start(); !r)
        return std::unexpected(r.error());

    auto m = HttpServer::start(config_.metrics_address, [this](const std::string&,
                                                               const std::string& target) {
        if (target != "/metrics" && target.rfind("/metrics?", 0) != 0)
            return HttpResponse{404, "not found\n"};
        refresh_gauges();
        return HttpResponse{200, metrics_->render(), "text/plain; version=0.0.4; charset=utf-8"};
    });
    if (!m)
        return std::unexpected("metrics: " + m.error());
    metrics_http_ = std::move(*m);
    auto r = HttpServer::start(config_.ready_address,
                               [this](const std::string&, const std::string& target) {
                                   if (target != "/healthz/ready")
                                       return HttpResponse{404, "not found\n"};
                                   return ready_response();
                               });
    if (!r)
        return std::unexpected("readiness: " + r.error());
    ready_http_ = std::move(*r);

    events_thread_ = std::thread([this] { events_loop(); });
    if (config_.enroll_existing)
        reconcile();
    reconcile_thread_ = std::thread([this] { reconcile_loop(); });
    ready_ = true;
    spdlog::info("sluice-agent ready on node {} (cni {}, ztunnel {}, metrics :{}, ready :{})",
                 config_.node_name, config_.cni_socket(), config_.ztunnel_socket(), metrics_port(),
                 ready_port());
    return {};
}

Agent::~Agent() {
    stopping_ = true;
    if (watcher_)
        watcher_->stop();
    if (events_thread_.joinable())
        events_thread_.join();
    if (reconcile_thread_.joinable())
        reconcile_thread_.join();
    // Servers stop before the objects their handlers use.
    cni_.reset();
    metrics_http_.reset();
    ready_http_.reset();
    ztunnel_.reset();
}

HttpResponse Agent::ready_response() const {
    if (!ready_)
        return {503, "starting\n"};
    // One line per ZDS session: "session <id> pid <pid> ready|syncing [steering]".
    std::string body = std::string("ready\nztunnel: ") +
                       (ztunnel_->connected() ? "connected" : "not connected") + "\n";
    for (const auto& s : ztunnel_->describe()) {
        body += "session " + std::to_string(s.id) + " pid " + std::to_string(s.pid) +
                (s.ready ? " ready" : " syncing") + (s.steering ? " steering" : "") + "\n";
    }
    return {200, body};
}

void Agent::refresh_gauges() {
    auto pods = enrollment_->pods();
    size_t addrs = 0;
    for (const auto& p : pods)
        addrs += p.ips.size();
    metrics_->set_enrolled_pods(pods.size());
    metrics_->set_ztunnel_connected(ztunnel_->connected());
    metrics_->set_ztunnel_sessions(ztunnel_->sessions().size());
    const auto& sizes = config_.datapath.map_sizes;
    metrics_->set_map_entries("enrolled_netns", pods.size(), sizes.enrolled_netns);
    metrics_->set_map_entries("listeners", pods.size(), sizes.listeners);
    metrics_->set_map_entries("endpoint_addrs", addrs, sizes.endpoint_addrs);
    metrics_->set_map_entries("excluded_cidrs", config_.excluded_cidrs.size(),
                              sizes.excluded_cidrs);
}

cni::Response Agent::handle_cni(const cni::Request& req) {
    cni::Response res{.ok = true};
    const std::string pod_ref = req.pod_namespace + "/" + req.pod_name;
    // The registry is read on every request: it is the API server's view, and it may have
    // changed since the last pod (a label added to the namespace).
    RegistryView view = RegistryView::read(config_.registry_dir);
    const std::optional<PodRecord> registered = view.pod(req.pod_namespace, req.pod_name);
    PodRecord pod = registered.value_or(PodRecord{.name = req.pod_name,
                                                  .namespace_name = req.pod_namespace,
                                                  .uid = req.pod_uid,
                                                  .service_account = "default"});
    if (pod.uid.empty())
        pod.uid = req.pod_uid;
    // The runtime's result for this sandbox, not the registry's status, which can still hold
    // the addresses of a sandbox the pod had before.
    if (!req.ips.empty())
        pod.ips = req.ips;
    const bool wanted = view.wants_ambient(pod);

    if (req.command == "ADD") {
        {
            std::lock_guard lk(deleted_mu_);
            deleted_by_cni_.erase(pod.uid);
        }
        if (wanted) {
            if (registered)
                compile_for(pod);
            auto r = enrollment_->add(pod, req.netns, req.container_id);
            res = r ? cni::Response{.ok = true, .enrolled = true}
                    : cni::Response{.ok = false, .error = r.error()};
        }
    } else if (req.command == "DEL") {
        // Under deleted_mu_ throughout, so reconcile() sees the DEL either before it enrolls the
        // pod or, when it checks again after, with the pod enrolled.
        std::lock_guard lk(deleted_mu_);
        auto r = enrollment_->remove(req.pod_namespace, req.pod_name, req.container_id);
        if (!r || *r)  // not for a sandbox the runtime has since replaced
            deleted_by_cni_.insert(pod.uid);
        if (!r)
            res = {.ok = false, .error = r.error()};
    } else if (req.command == "CHECK") {
        const bool enrolled = enrollment_->is_enrolled(req.pod_namespace, req.pod_name);
        res.enrolled = enrolled;
        if (wanted && !enrolled)
            res = {.ok = false,
                   .error = "pod " + pod_ref + " should be in the mesh but is not enrolled"};
    }
    metrics_->cni_request(req.command, res.ok);
    if (!res.ok)
        spdlog::error("CNI {} {}: {}", req.command, pod_ref, res.error);
    return res;
}

std::shared_ptr<const policies::Generation> Agent::applied_generation() const {
    std::lock_guard lk(generation_mu_);
    return generation_;
}

std::optional<EndpointBinding> Agent::binding_of(const EnrolledPod& pod) const {
    const auto g = applied_generation();
    if (!g)
        return std::nullopt;
    const std::string ref = pod.namespace_name + "/" + pod.name;
    for (const auto& ep : g->compiled->kernel.endpoints) {
        if (ep.pod == ref)
            return EndpointBinding{.endpoint_id = ep.value.endpoint_id, .flags = ep.value.flags};
    }
    return std::nullopt;
}

void Agent::compile_for(const PodRecord& pod) {
    // Compiled from a registry that held this pod (a pod re-created under the same name may
    // have other labels or another service account).
    auto knows = [&](const std::shared_ptr<const policies::Generation>& g) {
        if (!g)
            return false;
        const policies::Pod* p = g->compiled->registry->find_pod(pod.namespace_name, pod.name);
        return p != nullptr && (pod.uid.empty() || p->uid == pod.uid);
    };
    if (knows(applied_generation()))
        return;
    watcher_->wait_idle();  // a generation the watcher is applying right now
    if (knows(applied_generation()))
        return;
    if (knows(watcher_->current()))
        return;  // compiled, but the maps refused it: retry_failed_apply() goes on with it
    spdlog::info("pod {}/{} is not in the policy in force yet; compiling it now",
                 pod.namespace_name, pod.name);
    watcher_->reload();
}

void Agent::read_applied() {
    auto maps = datapath_->read_policy_maps();
    applied_ = {};
    if (!maps) {
        // Unknown: the next delta upserts every entry (none is missing), deleting none.
        spdlog::error("reading the policy maps: {}", maps.error().message);
        return;
    }
    for (const auto& [key, value] : maps->policy)
        applied_.policy.push_back({key, value});
    for (const auto& [cidr, identity] : maps->ipcache)
        applied_.ipcache.push_back({cidr, identity});
}

void Agent::apply_generation(std::shared_ptr<const policies::Generation> g) {
    std::lock_guard lk(apply_mu_);
    if (g->number < applied_number_ || (failed_ && g->number < failed_->number))
        return;  // a retry a newer generation overtook
    // This node's share: ipcache is cluster-wide, policy entries are only its own pods'.
    // applied_ holds no other, so the entries of a pod that left the node are deleted too. Its
    // own pods are those the registry puts here and those enrolled here: a terminating pod
    // whose successor (same name, same endpoint id) the registry already places elsewhere
    // keeps its policy for its grace period.
    const auto& compiled = g->compiled->kernel;
    std::set<uint32_t> local;
    for (const auto& ep : compiled.endpoints) {
        if (ep.node_name == config_.node_name)
            local.insert(ep.value.endpoint_id);
    }
    for (const auto& pod : enrollment_->pods())
        local.insert(pod.endpoint_id);
    policies::KernelState next;
    next.ipcache = compiled.ipcache;
    for (const auto& e : compiled.policy) {
        if (local.contains(e.key.endpoint_id))
            next.policy.push_back(e);
    }
    auto delta = policies::kernel_delta(applied_, next, nullptr);
    policies::DatapathSink sink(*datapath_);
    auto result = policies::apply_delta(delta, sink);
    if (!result.ok) {
        // Each step of the delta keeps decisions within old ∪ new, so a partial apply is never
        // more permissive than both generations. The maps now hold part of it: the next delta
        // starts from what they hold, and this generation is tried again.
        spdlog::error("policy generation {}: applying {} map changes failed after {}: {}",
                      g->number, delta.size(), result.applied, sink.last_error());
        policy_status_->apply_failed(g->number, sink.last_error());
        read_applied();
        failed_ = g;
        failed_at_ = std::chrono::steady_clock::now();
        return;
    }
    applied_ = std::move(next);
    applied_number_ = g->number;
    failed_.reset();
    {
        std::lock_guard glk(generation_mu_);
        generation_ = g;
    }
    enrollment_->refresh_bindings();
    metrics_->set_policy_generation(g->number);
    policy_status_->applied(g->number);
    // Only now: the maps hold the new generation, so the sweep judges by it (DESIGN.md §5).
    closer_->close_denied(enrollment_->pods(), g->number);
    // Compiling and diffing a generation allocates far more than it keeps; give it back.
    ::malloc_trim(0);
    spdlog::info("policy generation {} in force ({} map changes)", g->number, delta.size());
}

void Agent::reconcile() {
    RegistryView view = RegistryView::read(config_.registry_dir);
    for (const auto& pod : enrollment_->pods()) {
        auto rec = view.pod(pod.namespace_name, pod.name);
        // A pod missing from the registry is being deleted: CNI DEL removes it, not us.
        if (rec && rec->uid == pod.uid && !view.wants_ambient(*rec)) {
            spdlog::info("pod {}/{} no longer selects the mesh; unenrolling", pod.namespace_name,
                         pod.name);
            if (auto r = enrollment_->remove(pod.namespace_name, pod.name); !r) {
                spdlog::error("unenrolling {}/{}: {}", pod.namespace_name, pod.name, r.error());
            }
        }
    }
    const std::vector<PodRecord> here = view.pods_on_node(config_.node_name);
    for (const auto& pod : here) {
        // Only pods whose network is up (they have addresses): a pod being created is enrolled
        // by its CNI ADD, which knows when the network exists.
        if (!view.wants_ambient(pod) || pod.netns.empty() || pod.ips.empty() ||
            enrollment_->is_enrolled(pod.namespace_name, pod.name)) {
            continue;
        }
        {
            std::lock_guard lk(deleted_mu_);
            if (deleted_by_cni_.contains(pod.uid))
                continue;
        }
        compile_for(pod);
        if (auto r = enrollment_->add(pod, pod.netns); !r) {
            spdlog::error("enrolling running pod {}/{}: {}", pod.namespace_name, pod.name,
                          r.error());
            continue;
        }
        // A CNI DEL that came while this enrolled the pod found nothing to remove: remove it
        // now (the lock is not held over add(), which can wait for ztunnel for seconds).
        std::lock_guard lk(deleted_mu_);
        if (deleted_by_cni_.contains(pod.uid)) {
            spdlog::info("pod {}/{} was deleted while it was enrolled from the registry",
                         pod.namespace_name, pod.name);
            if (auto r = enrollment_->remove(pod.namespace_name, pod.name); !r)
                spdlog::error("unenrolling {}/{}: {}", pod.namespace_name, pod.name, r.error());
        }
    }
    // A pod the registry no longer places here will not be enrolled by reconcile() again.
    std::lock_guard lk(deleted_mu_);
    std::erase_if(deleted_by_cni_, [&](const std::string& uid) {
        return std::none_of(here.begin(), here.end(),
                            [&](const PodRecord& p) { return p.uid == uid; });
    });
}

namespace {

// Changes when any registry document is added, removed or rewritten.
std::string registry_signature(const std::string& dir) {
    std::string sig;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
        auto t = fs::last_write_time(e.path(), ec).time_since_epoch().count();
        sig += e.path().filename().string() + ":" + std::to_string(t) + ":" +
               std::to_string(e.is_regular_file(ec) ? e.file_size(ec) : 0) + ";";
    }
    return sig;
}

}  // namespace

void Agent::retry_failed_apply() {
    std::shared_ptr<const policies::Generation> g;
    {
        std::lock_guard lk(apply_mu_);
        if (!failed_ || std::chrono::steady_clock::now() - failed_at_ < 2s)
            return;
        g = failed_;
    }
    spdlog::info("policy generation {}: applying it again", g->number);
    apply_generation(std::move(g));
    policy_status_->write(*watcher_);  // the watcher's hook writes it only on a reload
}

void Agent::reconcile_loop() {
    std::string last = registry_signature(config_.registry_dir);
    auto retried = std::chrono::steady_clock::now();
    while (!stopping_) {
        std::this_thread::sleep_for(250ms);
        retry_failed_apply();
        if (std::chrono::steady_clock::now() - retried >= 2s) {
            enrollment_->retry_refused();
            retried = std::chrono::steady_clock::now();
        }
        std::string now = registry_signature(config_.registry_dir);
        if (now == last)
            continue;
        last = std::move(now);
        reconcile();
        ::malloc_trim(0);  // parsing the registry is a burst of short-lived allocations
    }
}

void Agent::events_loop() {
    std::map<uint64_t, std::string> pod_by_cookie;
    auto on_event = [&](const sluice_deny_event& e) {
        metrics_->deny_event(e.direction, e.reason);
        AuditContext ctx;
        auto it = pod_by_cookie.find(e.netns_cookie);
        if (it == pod_by_cookie.end()) {
            pod_by_cookie.clear();
            for (const auto& p : enrollment_->pods())
                pod_by_cookie[p.netns_cookie] = p.namespace_name + "/" + p.name;
            it = pod_by_cookie.find(e.netns_cookie);
        }
        if (it != pod_by_cookie.end())
            ctx.pod = it->second;
        audit_->write(e, ctx);
    };
    while (!stopping_) {
        if (auto r = datapath_->poll_deny_events(on_event, 200ms); !r) {
            spdlog::error("reading deny events: {}", describe(r.error()));
            std::this_thread::sleep_for(200ms);
        }
    }
}

}  // namespace sluice::agent
