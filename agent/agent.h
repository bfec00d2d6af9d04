#pragma once

#include <atomic>
#include <chrono>
#include <expected>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "agent/audit.h"
#include "agent/cni_server.h"
#include "agent/config.h"
#include "agent/connection_closer.h"
#include "agent/enrollment.h"
#include "agent/metrics.h"
#include "agent/policy_status.h"
#include "agent/ztunnel_link.h"
#include "common/http_server.h"
#include "policies/kernel_apply.h"
#include "policies/watcher.h"

namespace sluice::agent {

// sluice-agent, assembled. Threads (docs/ARCHITECTURE.md): CNI server, ZDS accept (and
// snapshot replay), deny-event reader, metrics HTTP, readiness HTTP; the caller's thread waits.
//
// Stopping the agent never detaches the eBPF programs: they stay pinned and keep enforcing
// until the next agent takes them over (DESIGN.md §3).
class Agent {
  public:
    static std::expected<std::unique_ptr<Agent>, std::string> start(const AgentConfig& config);
    ~Agent();
    Agent(const Agent&) = delete;
    Agent& operator=(const Agent&) = delete;

    Enrollment& enrollment() { return *enrollment_; }
    datapath::Datapath& datapath() { return *datapath_; }
    uint16_t metrics_port() const { return metrics_http_ ? metrics_http_->port() : 0; }
    uint16_t ready_port() const { return ready_http_ ? ready_http_->port() : 0; }

  private:
    explicit Agent(AgentConfig config);
    std::expected<void, std::string> init();
    cni::Response handle_cni(const cni::Request& req);
    void events_loop();
    // Enrolls this node's running pods that want the mesh and unenrolls enrolled pods whose
    // Pod or Namespace no longer asks for it (a label change), from the registry.
    void reconcile();
    void reconcile_loop();
    void refresh_gauges();
    HttpResponse ready_response() const;
    // Applies a new policy generation to the maps (a delta from the last applied one, in the
    // order that never opens an allow-all window) and rebinds enrolled pods' endpoint ids.
    void apply_generation(std::shared_ptr<const policies::Generation> g);
    // applied_ := what the policy and ipcache maps hold (apply_mu_ held).
    void read_applied();
    // Applies the generation whose apply failed again, two seconds after the last try.
    void retry_failed_apply();
    std::optional<EndpointBinding> binding_of(const EnrolledPod& pod) const;
    // The generation in the maps (null before the first).
    std::shared_ptr<const policies::Generation> applied_generation() const;
    // Before enrolling a pod the registry holds: when the generation in force does not know it
    // yet (its document arrived within the watcher's debounce), compiles and applies one that
    // does, so the pod starts with its policy rather than with none.
    void compile_for(const PodRecord& pod);

    AgentConfig config_;
    std::unique_ptr<datapath::Datapath> datapath_;
    std::unique_ptr<ZtunnelLink> ztunnel_;
    std::unique_ptr<Enrollment> enrollment_;
    std::unique_ptr<AgentMetrics> metrics_;
    std::unique_ptr<AuditLog> audit_;
    std::unique_ptr<ConnectionCloser> closer_;
    std::unique_ptr<CniServer> cni_;
    std::unique_ptr<HttpServer> metrics_http_;
    std::unique_ptr<HttpServer> ready_http_;
    std::atomic<bool> stopping_{false};
    std::atomic<bool> ready_{false};
    std::thread events_thread_;
    std::thread reconcile_thread_;
    // Pods (by uid) the runtime has torn down with CNI DEL. The registry can still list them for
    // a while; reconcile must not put them back into the mesh.
    std::mutex deleted_mu_;
    std::set<std::string> deleted_by_cni_;
    std::unique_ptr<PolicyStatusFile> policy_status_;  // before watcher_: its hook writes it
    std::unique_ptr<policies::PolicyWatcher> watcher_;
    std::mutex apply_mu_;  // one generation applied at a time
    // What the maps hold (apply_mu_): ipcache and this node's policy entries, no endpoints.
    policies::KernelState applied_;
    uint64_t applied_number_ = 0;  // the generation in force (apply_mu_)
    // A generation whose apply failed, to try again, and when it was last tried (apply_mu_).
    std::shared_ptr<const policies::Generation> failed_;
    std::chrono::steady_clock::time_point failed_at_;
    mutable std::mutex generation_mu_;  // guards generation_ only; never held while calling out
    std::shared_ptr<const policies::Generation> generation_;
};

}  // namespace sluice::agent
