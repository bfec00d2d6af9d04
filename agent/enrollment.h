#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/datapath/datapath.h"
#include "agent/registry_view.h"
#include "agent/ztunnel_link.h"

namespace sluice::agent {

// A pod this agent has put into the mesh.
struct EnrolledPod {
    std::string uid, name, namespace_name, service_account, netns;
    std::string container_id;  // the CNI sandbox (CNI_CONTAINERID); empty: from the registry
    std::vector<std::string> ips;
    uint64_t netns_cookie = 0;
    uint32_t endpoint_id = 0;
    bool waypoint =
        false;  // labelled a waypoint: may bind the HBONE port (SLUICE_ENROLLED_F_WAYPOINT)
};

// Where a pod's endpoint id and default verdict flags come from: the compiled policy (the
// compiler owns endpoint ids so that kernel policy keys and enrollments agree).
struct EndpointBinding {
    uint32_t endpoint_id = 0;
    uint32_t flags = 0;  // SLUICE_ENROLLED_F_*
};
// Endpoint ids the agent hands out itself, above anything the policy compiler allocates.
inline constexpr uint32_t kFallbackEndpointBase = 0x80000000u;

using EndpointResolver = std::function<std::optional<EndpointBinding>(const EnrolledPod&)>;

// Enrolls and unenrolls pods, in the order that keeps traffic safe:
//   add:  attach sk_lookup → ztunnel opens listeners and acks (with its :15006 listener) →
//         listener + pod addresses into the maps → netns cookie into enrolled_netns (capture on)
//   del:  enrolled_netns entry out first (capture off), then listener, addresses, sk_lookup
//         link, and ztunnel's listeners last.
// The set of enrolled pods is persisted to a state file after every change, so a restarted
// agent knows what the (still enforcing) pinned maps hold.
class Enrollment {
  public:
    Enrollment(datapath::Datapath& dp, ZtunnelLink& ztunnel, std::string state_file,
               std::string node_name, std::chrono::milliseconds ztunnel_timeout);

    void set_endpoint_resolver(EndpointResolver r);

    // Loads the state file of an earlier run. Pods whose netns has disappeared meanwhile are
    // cleaned out of the maps.
    void restore();

    // The pod from the CNI ADD of sandbox `container_id` (or from the registry, without one).
    // Idempotent.
    std::expected<void, std::string> add(const PodRecord& pod, const std::string& netns_path,
                                         const std::string& container_id = {});
    // Unenrolls the pod; true when it is no longer enrolled. A CNI DEL names its sandbox: one of
    // another sandbox than the enrolled one (a late or repeated DEL of a sandbox the runtime
    // has since replaced) leaves the pod enrolled and gives false.
    std::expected<bool, std::string> remove(const std::string& ns, const std::string& name,
                                            const std::string& container_id = {});
    bool is_enrolled(const std::string& ns, const std::string& name) const;
    std::vector<EnrolledPod> pods() const;

    // After a ztunnel connects: every enrolled workload to that session, then SnapshotSent. Once
    // acked, the session steers if it is the newest ready one (its listeners go into the map).
    void replay_to_ztunnel(ZtunnelLink::SessionId session);
    // After a session ended: when it was the one steering, the next one takes over (the
    // workloads are sent to it again; ztunnel answers an AddWorkload it already serves with the
    // same listener).
    void ztunnel_lost(ZtunnelLink::SessionId session, bool was_steering);

    // Re-reads endpoint bindings (after a policy change) and rewrites enrolled_netns values.
    void refresh_bindings();

    // Sends the pods the steering ztunnel refused in a replay to it again; a pod it serves now
    // gets its inbound listener registered. Until then such a pod's outbound is captured (and
    // fails: no ztunnel listens in it) and its inbound has no listener to be steered to.
    void retry_refused();

  private:
    // AddWorkload to every connected session; the steering session's listener is registered.
    std::expected<void, std::string> hand_to_ztunnel(const EnrolledPod& pod);
    // AddWorkload to one session: its :15006 listener fd.
    std::expected<int, std::string> send_to(ZtunnelLink::SessionId session, const EnrolledPod& pod);
    std::expected<void, std::string> register_listener(const EnrolledPod& pod, int listener);
    // The pod is enrolled with this netns already: takes the sandbox id and new addresses.
    std::expected<void, std::string> update_enrolled(EnrolledPod& pod, const PodRecord& rec,
                                                     const std::string& container_id);
    // Drops an enrolled pod and what is kept for it (its fallback id, its refused mark);
    // mu_ held. The datapath and ztunnel are the caller's.
    void forget(std::map<std::string, EnrolledPod>::iterator it);
    // DelWorkload to every connected session.
    void withdraw_from_ztunnel(const EnrolledPod& pod);
    EndpointBinding binding_for(const EnrolledPod& pod);
    void persist() const;

    datapath::Datapath& dp_;
    ZtunnelLink& ztunnel_;
    std::string state_file_;
    std::string node_name_;
    std::chrono::milliseconds ztunnel_timeout_;
    EndpointResolver resolver_;
    mutable std::mutex mu_;
    std::map<std::string, EnrolledPod> pods_;  // by "ns/name"
    std::set<std::string> refused_;            // of pods_: ztunnel refused them in a replay
    uint32_t next_endpoint_id_ = 1;
    std::map<std::string, uint32_t> fallback_ids_;  // by uid, when no resolver knows the pod
};

}  // namespace sluice::agent
