#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "agent/audit.h"
#include "agent/datapath/datapath.h"
#include "agent/enrollment.h"
#include "agent/metrics.h"

namespace sluice::agent {

// After a policy generation is in the maps, closes the open connections of this node's enrolled
// pods that it denies (DESIGN.md §5), with one audit line and one
// sluice_policy_connections_closed_total increment per connection.
//
// A socket iterator walks the network namespace of the thread that creates it, so each pod is
// swept from a dedicated thread that has joined the pod's netns (setns, network namespace only);
// the eBPF program (bpf/lib/close.h) also checks enrollment, so a pod that is not enrolled is
// never touched even if its netns were swept.
class ConnectionCloser {
  public:
    ConnectionCloser(const datapath::Datapath& dp, AgentMetrics& metrics, AuditLog& audit)
        : dp_(dp), metrics_(metrics), audit_(audit) {}

    // Sweeps every pod in `pods`; returns how many connections were closed. A pod whose netns
    // vanished meanwhile is skipped (it has no connections left).
    size_t close_denied(const std::vector<EnrolledPod>& pods, uint64_t generation);

  private:
    const datapath::Datapath& dp_;
    AgentMetrics& metrics_;
    AuditLog& audit_;
};

}  // namespace sluice::agent
