#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "agent/datapath/datapath.h"

namespace sluice::agent {

// The agent's Prometheus metrics (:15030/metrics). Counters the agent increments live in a
// prometheus-cpp registry; the datapath's per-CPU counters are read from the maps at scrape
// time, so the numbers are exact and nothing polls in between.
class AgentMetrics {
  public:
    explicit AgentMetrics(const datapath::Datapath& dp);

    void cni_request(const std::string& command, bool ok);
    void deny_event(uint8_t direction, uint8_t reason);
    // One open connection closed because a new policy generation denies it.
    void connection_closed(uint8_t direction) {
        connections_closed_->Add({{"direction", direction_label(direction)}}).Increment();
    }
    static const char* direction_label(uint8_t direction);
    void set_enrolled_pods(size_t n) { enrolled_->Set(static_cast<double>(n)); }
    void set_ztunnel_connected(bool c) { ztunnel_connected_->Set(c ? 1 : 0); }
    void set_ztunnel_sessions(size_t n) { ztunnel_sessions_->Set(static_cast<double>(n)); }
    void set_policy_generation(uint64_t g) { policy_generation_->Set(static_cast<double>(g)); }
    void set_map_entries(const std::string& map, size_t entries, size_t capacity);
    void policy_reload(const std::string& result) {
        reloads_->Add({{"result", result}}).Increment();
    }

    // Prometheus text exposition format.
    std::string render() const;

  private:
    const datapath::Datapath& dp_;
    std::shared_ptr<prometheus::Registry> registry_;
    prometheus::Family<prometheus::Counter>* cni_requests_;
    prometheus::Family<prometheus::Counter>* deny_events_;
    prometheus::Family<prometheus::Counter>* reloads_;
    prometheus::Family<prometheus::Counter>* connections_closed_;
    prometheus::Family<prometheus::Gauge>* map_entries_;
    prometheus::Family<prometheus::Gauge>* map_capacity_;
    prometheus::Gauge* enrolled_;
    prometheus::Gauge* ztunnel_connected_;
    prometheus::Gauge* ztunnel_sessions_;
    prometheus::Gauge* policy_generation_;
};

}  // namespace sluice::agent
