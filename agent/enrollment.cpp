#include "agent/enrollment.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/netns.h"

namespace sluice::agent {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string key_of(const std::string& ns, const std::string& name) {
    return ns + "/" + name;
}

std::string describe(const datapath::Error& e) {
    return std::string(datapath::errc_name(e.code)) + ": " + e.message;
}

zds::WorkloadInfo workload_info(const EnrolledPod& p, const std::string& node) {
    return {.uid = p.uid,
            .name = p.name,
            .namespace_name = p.namespace_name,
            .service_account = p.service_account,
            .node = node,
            .ips = p.ips,
            .netns_cookie = p.netns_cookie};
}

// The cookie of the namespace at `path`, or nullopt when it is gone.
std::optional<uint64_t> cookie_if_present(const std::string& path) {
    std::error_code ec;
    if (path.empty() || !fs::exists(path, ec))
        return std::nullopt;
    try {
        return netns_cookie(path);
    } catch (const std::exception&) {
        return std::nullopt;
    }
}

}  // namespace

Enrollment::Enrollment(datapath::Datapath& dp, ZtunnelLink& ztunnel, std::string state_file,
                       std::string node_name, std::chrono::milliseconds ztunnel_timeout)
    : dp_(dp),
      ztunnel_(ztunnel),
      state_file_(std::move(state_file)),
      node_name_(std::move(node_name)),
      ztunnel_timeout_(ztunnel_timeout) {}

void Enrollment::set_endpoint_resolver(EndpointResolver r) {
    std::lock_guard lk(mu_);
    resolver_ = std::move(r);
}

EndpointBinding Enrollment::binding_for(const EnrolledPod& pod) {
    std::optional<EndpointBinding> b;
    if (resolver_)
        b = resolver_(pod);
    if (!b) {
        // A pod the compiled policy does not know (yet): an id from a range the compiler never
        // hands out, with no policy entries, until the next generation binds it.
        auto it = fallback_ids_.find(pod.uid);
        if (it == fallback_ids_.end()) {
            it = fallback_ids_.emplace(pod.uid, kFallbackEndpointBase + next_endpoint_id_++).first;
            spdlog::warn(
                "pod {}/{} is in no compiled policy (not in the registry): enrolled "
                "with no policy entries until a generation has it",
                pod.namespace_name, pod.name);
        }
        b = EndpointBinding{.endpoint_id = it->second, .flags = 0};
    }
    if (pod.waypoint)
        b->flags |= SLUICE_ENROLLED_F_WAYPOINT;
    return *b;
}

void Enrollment::persist() const {
    json pods = json::array();
    for (const auto& [k, p] : pods_) {
        pods.push_back({{"uid", p.uid},
                        {"name", p.name},
                        {"namespace", p.namespace_name},
                        {"serviceAccount", p.service_account},
                        {"netns", p.netns},
                        {"containerId", p.container_id},
                        {"ips", p.ips},
                        {"netnsCookie", p.netns_cookie},
                        {"endpointId", p.endpoint_id},
                        {"waypoint", p.waypoint}});
    }
    json state{
        {"pods", pods}, {"nextEndpointId", next_endpoint_id_}, {"fallbackIds", fallback_ids_}};
    if (!write_file_atomically(state_file_, state.dump(2) + "\n"))
        spdlog::error("cannot write {}: enrollment state will be rebuilt from the registry",
                      state_file_);
}

void Enrollment::restore() {
    std::lock_guard lk(mu_);
    std::ifstream f(state_file_);
    if (!f)
        return;
    json state = json::parse(f, nullptr, false);
    if (state.is_discarded()) {
        spdlog::error("{} is corrupt; starting with no enrolled pods", state_file_);
        return;
    }
    next_endpoint_id_ = state.value("nextEndpointId", 1u);
    fallback_ids_ = state.value("fallbackIds", std::map<std::string, uint32_t>{});
    for (const auto& j : state.value("pods", json::array())) {
        EnrolledPod p;
        p.uid = j.value("uid", "");
        p.name = j.value("name", "");
        p.namespace_name = j.value("namespace", "");
        p.service_account = j.value("serviceAccount", "");
        p.netns = j.value("netns", "");
        p.container_id = j.value("containerId", "");
        p.ips = j.value("ips", std::vector<std::string>{});
        p.netns_cookie = j.value("netnsCookie", uint64_t{0});
        p.endpoint_id = j.value("endpointId", 0u);
        p.waypoint = j.value("waypoint", false);
        auto cookie = cookie_if_present(p.netns);
        if (cookie && *cookie == p.netns_cookie) {
            pods_[key_of(p.namespace_name, p.name)] = p;
            continue;
        }
        // The pod went away while no agent ran: clear what the maps still hold for it.
        spdlog::info("pod {}/{} vanished while the agent was down; removing its datapath state",
                     p.namespace_name, p.name);
        (void)dp_.unenroll_netns(p.netns_cookie);
        (void)dp_.detach_netns(p.netns_cookie);
    }
    // Only enrolled pods hold a fallback id (state files of earlier versions kept every one).
    std::erase_if(fallback_ids_, [this](const auto& entry) {
        return std::none_of(pods_.begin(), pods_.end(),
                            [&](const auto& p) { return p.second.uid == entry.first; });
    });
    persist();
    spdlog::info("restored {} enrolled pods from {}", pods_.size(), state_file_);
}

std::expected<int, std::string> Enrollment::send_to(ZtunnelLink::SessionId session,
                                                    const EnrolledPod& pod) {
    int netns_fd = ::open(pod.netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (netns_fd < 0)
        return std::unexpected("open " + pod.netns + ": " + std::strerror(errno));
    auto listener =
        ztunnel_.add_workload(session, workload_info(pod, node_name_), netns_fd, ztunnel_timeout_);
    ::close(netns_fd);
    return listener;
}

std::expected<void, std::string> Enrollment::register_listener(const EnrolledPod& pod,
                                                               int listener) {
    auto reg = dp_.register_inbound_listener(pod.netns_cookie, listener);
    ::close(listener);
    if (!reg)
        return std::unexpected("register inbound listener: " + describe(reg.error()));
    return {};
}

std::expected<void, std::string> Enrollment::hand_to_ztunnel(const EnrolledPod& pod) {
    const auto steering = ztunnel_.steering();
    bool registered = false;
    for (const auto session : ztunnel_.sessions()) {
        auto listener = send_to(session, pod);
        if (session != steering) {
            // Another ztunnel (draining, or still syncing) serves the pod too, or fails to: its
            // listeners do not steer.
            if (!listener)
                spdlog::warn("ztunnel session {}: {}", session, listener.error());
            else
                ::close(*listener);
            continue;
        }
        if (!listener)
            return std::unexpected(listener.error());
        if (auto r = register_listener(pod, *listener); !r)
            return r;
        registered = true;
    }
    if (!registered)
        return std::unexpected("the steering ztunnel session ended");
    return {};
}

void Enrollment::forget(std::map<std::string, EnrolledPod>::iterator it) {
    fallback_ids_.erase(it->second.uid);
    refused_.erase(it->first);
    pods_.erase(it);
}

void Enrollment::withdraw_from_ztunnel(const EnrolledPod& pod) {
    for (const auto session : ztunnel_.sessions()) {
        if (auto r = ztunnel_.del_workload(session, pod.uid, ztunnel_timeout_); !r)
            spdlog::warn("ztunnel session {} DelWorkload {}/{}: {}", session, pod.namespace_name,
                         pod.name, r.error());
    }
}

std::expected<void, std::string> Enrollment::update_enrolled(EnrolledPod& pod, const PodRecord& rec,
                                                             const std::string& container_id) {
    // A retried CNI ADD: only addresses the pod gained are new.
    if (!container_id.empty())
        pod.container_id = container_id;
    for (const auto& ip : rec.ips) {
        if (std::find(pod.ips.begin(), pod.ips.end(), ip) != pod.ips.end())
            continue;
        auto addr = datapath::parse_ip(ip);
        if (!addr)
            continue;
        if (auto r = dp_.add_endpoint_address(*addr, pod.netns_cookie); !r)
            return std::unexpected("endpoint address " + ip + ": " + describe(r.error()));
        pod.ips.push_back(ip);
    }
    persist();
    return {};
}

std::expected<void, std::string> Enrollment::add(const PodRecord& rec,
                                                 const std::string& netns_path,
                                                 const std::string& container_id) {
    const std::string key = key_of(rec.namespace_name, rec.name);
    const auto cookie = cookie_if_present(netns_path);
    if (!cookie)
        return std::unexpected("pod netns " + netns_path + " does not exist");
    {
        std::lock_guard lk(mu_);
        if (auto it = pods_.find(key); it != pods_.end() && it->second.netns_cookie == *cookie)
            return update_enrolled(it->second, rec, container_id);
    }
    // Waiting for a ztunnel happens outside the lock: held, it would stall every other request
    // (a DEL, the metrics' pod count) for the whole timeout.
    if (!ztunnel_.connected() && !ztunnel_.wait_connected(ztunnel_timeout_))
        return std::unexpected("ztunnel is not connected to " + ztunnel_.socket_path());
    std::lock_guard lk(mu_);
    if (auto it = pods_.find(key); it != pods_.end()) {
        if (it->second.netns_cookie == *cookie)  // enrolled meanwhile
            return update_enrolled(it->second, rec, container_id);
        spdlog::info("pod {} re-created with a new netns; replacing its enrollment", key);
        (void)dp_.unenroll_netns(it->second.netns_cookie);
        (void)dp_.detach_netns(it->second.netns_cookie);
        // Under the same uid ztunnel replaces the workload's listeners itself.
        if (it->second.uid != rec.uid)
            withdraw_from_ztunnel(it->second);
        forget(it);
        persist();
    }
    EnrolledPod pod{.uid = rec.uid,
                    .name = rec.name,
                    .namespace_name = rec.namespace_name,
                    .service_account = rec.service_account,
                    .netns = netns_path,
                    .container_id = container_id,
                    .ips = rec.ips,
                    .waypoint = is_waypoint_pod(rec)};
    auto attached = dp_.attach_netns(netns_path);
    if (!attached)
        return std::unexpected("attach sk_lookup: " + describe(attached.error()));
    pod.netns_cookie = *attached;
    auto undo = [&] {
        (void)dp_.unenroll_netns(pod.netns_cookie);
        (void)dp_.detach_netns(pod.netns_cookie);
        // Sessions that took the pod (before another failed) would listen in it until they
        // restart.
        withdraw_from_ztunnel(pod);
    };

    // Nothing is redirected before ztunnel listens in the pod: the enrolled_netns entry that
    // turns capture on is written last.
    if (auto handed = hand_to_ztunnel(pod); !handed) {
        undo();
        return std::unexpected(handed.error());
    }
    for (const auto& ip : pod.ips) {
        auto addr = datapath::parse_ip(ip);
        if (!addr)
            continue;
        if (auto r = dp_.add_endpoint_address(*addr, pod.netns_cookie); !r) {
            undo();
            return std::unexpected("endpoint address " + ip + ": " + describe(r.error()));
        }
    }
    const EndpointBinding b = binding_for(pod);
    pod.endpoint_id = b.endpoint_id;
    if (auto r =
            dp_.enroll_netns(pod.netns_cookie, {.endpoint_id = b.endpoint_id, .flags = b.flags});
        !r) {
        undo();
        return std::unexpected("enroll: " + describe(r.error()));
    }
    spdlog::info("enrolled pod {} (netns cookie {}, endpoint {}, ips {})", key, pod.netns_cookie,
                 pod.endpoint_id, fmt::join(pod.ips, ","));
    pods_[key] = std::move(pod);
    persist();
    return {};
}

std::expected<bool, std::string> Enrollment::remove(const std::string& ns, const std::string& name,
                                                    const std::string& container_id) {
    std::lock_guard lk(mu_);
    auto it = pods_.find(key_of(ns, name));
    if (it == pods_.end())
        return true;  // DEL is idempotent
    const EnrolledPod pod = it->second;
    if (!container_id.empty() && !pod.container_id.empty() && container_id != pod.container_id) {
        spdlog::info("CNI DEL of sandbox {} of pod {}/{}: sandbox {} is the enrolled one; it stays",
                     container_id, ns, name, pod.container_id);
        return false;
    }
    // Capture off first, so no new connection is sent to listeners that are about to close.
    std::string problems;
    if (auto r = dp_.unenroll_netns(pod.netns_cookie);
        !r && r.error().code != datapath::Errc::NotFound) {
        problems += "unenroll: " + describe(r.error()) + "; ";
    }
    if (auto r = dp_.detach_netns(pod.netns_cookie);
        !r && r.error().code != datapath::Errc::NotFound) {
        problems += "detach sk_lookup: " + describe(r.error()) + "; ";
    }
    withdraw_from_ztunnel(pod);
    forget(it);
    persist();
    spdlog::info("unenrolled pod {}/{}", ns, name);
    if (!problems.empty())
        return std::unexpected(problems);
    return true;
}

bool Enrollment::is_enrolled(const std::string& ns, const std::string& name) const {
    std::lock_guard lk(mu_);
    return pods_.contains(key_of(ns, name));
}

std::vector<EnrolledPod> Enrollment::pods() const {
    std::lock_guard lk(mu_);
    std::vector<EnrolledPod> out;
    for (const auto& [k, p] : pods_)
        out.push_back(p);
    return out;
}

void Enrollment::retry_refused() {
    std::lock_guard lk(mu_);
    const auto steering = ztunnel_.steering();
    if (refused_.empty() || !steering)
        return;
    for (auto it = refused_.begin(); it != refused_.end();) {
        auto pod = pods_.find(*it);
        if (pod == pods_.end()) {
            it = refused_.erase(it);
            continue;
        }
        auto listener = send_to(*steering, pod->second);
        if (!listener) {
            spdlog::warn("pod {}: ztunnel session {} still refuses it: {}", *it, *steering,
                         listener.error());
            ++it;
            continue;
        }
        if (auto r = register_listener(pod->second, *listener); !r) {
            spdlog::error("pod {}: {}", *it, r.error());
            ++it;
            continue;
        }
        spdlog::info("pod {}: ztunnel session {} serves it now", *it, *steering);
        it = refused_.erase(it);
    }
}

void Enrollment::replay_to_ztunnel(ZtunnelLink::SessionId session) {
    std::lock_guard lk(mu_);
    std::vector<std::string> gone;
    std::vector<std::pair<const EnrolledPod*, int>> listeners;
    auto close_all = [&] {
        for (const auto& [pod, fd] : listeners)
            ::close(fd);
    };
    for (const auto& [key, pod] : pods_) {
        if (cookie_if_present(pod.netns) != pod.netns_cookie) {
            gone.push_back(key);
            continue;
        }
        auto listener = send_to(session, pod);
        if (!listener) {
            spdlog::error("replaying pod {} to ztunnel session {}: {}", key, session,
                          listener.error());
            const auto live = ztunnel_.sessions();
            if (std::find(live.begin(), live.end(), session) == live.end()) {
                close_all();
                return;  // the session dropped; its ztunnel reconnects and gets everything again
            }
            // ztunnel refused this one pod (its certificate, its address): the others are
            // served and the snapshot completes, or no pod of the node would be steered. The
            // pod is tried again (retry_refused).
            refused_.insert(key);
            continue;
        }
        refused_.erase(key);
        listeners.emplace_back(&pod, *listener);
    }
    if (auto r = ztunnel_.snapshot_sent(session, ztunnel_timeout_); !r) {
        spdlog::error("SnapshotSent to ztunnel session {}: {}", session, r.error());
        close_all();
        return;
    }
    const bool steers = ztunnel_.mark_ready(session);
    for (const auto& [pod, fd] : listeners) {
        if (!steers) {
            ::close(fd);
            continue;
        }
        if (auto r = register_listener(*pod, fd); !r)
            spdlog::error("pod {}/{}: {}", pod->namespace_name, pod->name, r.error());
    }
    for (const auto& key : gone) {
        const auto it = pods_.find(key);
        (void)dp_.unenroll_netns(it->second.netns_cookie);
        (void)dp_.detach_netns(it->second.netns_cookie);
        forget(it);
    }
    if (!gone.empty())
        persist();
    spdlog::info("ztunnel session {} has the snapshot of {} workloads{}", session, pods_.size(),
                 steers ? " and steers inbound" : "");
}

void Enrollment::ztunnel_lost(ZtunnelLink::SessionId session, bool was_steering) {
    if (!was_steering)
        return;
    const auto next = ztunnel_.steering();
    if (!next) {
        spdlog::warn(
            "ztunnel session {} steered and no other session is connected; inbound "
            "steering waits for a ztunnel",
            session);
        return;
    }
    spdlog::info("ztunnel session {} steered; session {} takes over", session, *next);
    replay_to_ztunnel(*next);
}

void Enrollment::refresh_bindings() {
    std::lock_guard lk(mu_);
    for (auto& [key, pod] : pods_) {
        const EndpointBinding b = binding_for(pod);
        if (auto r = dp_.enroll_netns(pod.netns_cookie,
                                      {.endpoint_id = b.endpoint_id, .flags = b.flags});
            !r) {
            spdlog::error("rebinding pod {}: {}", key, describe(r.error()));
            continue;
        }
        pod.endpoint_id = b.endpoint_id;
    }
    persist();
}

}  // namespace sluice::agent
