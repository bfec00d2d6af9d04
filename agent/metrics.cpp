#include "agent/metrics.h"

#include <prometheus/text_serializer.h>

#include <sstream>

namespace sluice::agent {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

ClientMetric counter(std::vector<ClientMetric::Label> labels, uint64_t value) {
    ClientMetric m;
    m.label = std::move(labels);
    m.counter.value = static_cast<double>(value);
    return m;
}

}  // namespace

AgentMetrics::AgentMetrics(const datapath::Datapath& dp)
    : dp_(dp), registry_(std::make_shared<prometheus::Registry>()) {
    cni_requests_ = &BuildCounter()
                         .Name("sluice_agent_cni_requests_total")
                         .Help("CNI requests from sluice-cni by command and result")
                         .Register(*registry_);
    deny_events_ =
        &BuildCounter()
             .Name("sluice_agent_deny_events_total")
             .Help("Policy denial events read from the datapath ring buffer (one audit line each)")
             .Register(*registry_);
    reloads_ = &BuildCounter()
                    .Name("sluice_policy_reload_total")
                    .Help("Policy reload attempts by result (success, unchanged, failure)")
                    .Register(*registry_);
    connections_closed_ =
        &BuildCounter()
             .Name("sluice_policy_connections_closed_total")
             .Help(
                 "Open connections closed after a policy reload because the new generation "
                 "denies them (one audit line each)")
             .Register(*registry_);
    map_entries_ = &BuildGauge()
                        .Name("sluice_agent_map_entries")
                        .Help("Entries the agent keeps in each eBPF map")
                        .Register(*registry_);
    map_capacity_ = &BuildGauge()
                         .Name("sluice_agent_map_capacity")
                         .Help("max_entries of each eBPF map")
                         .Register(*registry_);
    enrolled_ = &BuildGauge()
                     .Name("sluice_agent_enrolled_pods")
                     .Help("Pods enrolled in the mesh on this node")
                     .Register(*registry_)
                     .Add({});
    ztunnel_connected_ = &BuildGauge()
                              .Name("sluice_agent_ztunnel_connected")
                              .Help("1 while the node's ztunnel is connected to the agent")
                              .Register(*registry_)
                              .Add({});
    ztunnel_sessions_ = &BuildGauge()
                             .Name("sluice_agent_ztunnel_sessions")
                             .Help("ZDS sessions open (two while a new ztunnel takes over)")
                             .Register(*registry_)
                             .Add({});
    policy_generation_ = &BuildGauge()
                              .Name("sluice_policy_generation")
                              .Help("Generation of the policy in force in the datapath")
                              .Register(*registry_)
                              .Add({});
}

const char* AgentMetrics::direction_label(uint8_t direction) {
    return direction == SLUICE_DIR_EGRESS ? "egress" : "ingress";
}

void AgentMetrics::cni_request(const std::string& command, bool ok) {
    cni_requests_->Add({{"command", command}, {"result", ok ? "ok" : "error"}}).Increment();
}

void AgentMetrics::deny_event(uint8_t direction, uint8_t reason) {
    deny_events_
        ->Add({{"direction", direction_label(direction)},
               {"reason", datapath::reason_name(static_cast<sluice_reason>(reason))}})
        .Increment();
}

void AgentMetrics::set_map_entries(const std::string& map, size_t entries, size_t capacity) {
    map_entries_->Add({{"map", map}}).Set(static_cast<double>(entries));
    map_capacity_->Add({{"map", map}}).Set(static_cast<double>(capacity));
}

std::string AgentMetrics::render() const {
    std::vector<MetricFamily> families = registry_->Collect();

    auto drop = [&](sluice_reason r) { return dp_.drop_count(r).value_or(0); };
    auto event = [&](sluice_event e) { return dp_.event_count(e).value_or(0); };

    // Verdicts of the kernel hooks: an allowed egress is a redirected (or passed-through)
    // connect(); an allowed ingress is a connection steered to ztunnel.
    MetricFamily verdicts{"sluice_datapath_verdicts_total",
                          "Decisions of the eBPF hooks by direction, verdict and reason",
                          MetricType::Counter,
                          {}};
    verdicts.metric.push_back(
        counter({{"direction", "egress"}, {"verdict", "allow"}, {"reason", "redirected"}},
                event(SLUICE_EVENT_REDIRECTED)));
    verdicts.metric.push_back(
        counter({{"direction", "egress"}, {"verdict", "allow"}, {"reason", "passthrough"}},
                event(SLUICE_EVENT_PASSTHROUGH)));
    verdicts.metric.push_back(
        counter({{"direction", "egress"}, {"verdict", "deny"}, {"reason", "policy"}},
                drop(SLUICE_REASON_POLICY_DENY_EGRESS)));
    verdicts.metric.push_back(
        counter({{"direction", "ingress"}, {"verdict", "allow"}, {"reason", "steered"}},
                event(SLUICE_EVENT_STEERED)));
    verdicts.metric.push_back(
        counter({{"direction", "ingress"}, {"verdict", "deny"}, {"reason", "policy"}},
                drop(SLUICE_REASON_POLICY_DENY_INGRESS)));
    families.push_back(std::move(verdicts));

    MetricFamily drops{"sluice_datapath_drops_total",
                       "Refusals of the eBPF hooks by reason",
                       MetricType::Counter,
                       {}};
    for (int r = 1; r < SLUICE_REASON_MAX; ++r) {
        auto reason = static_cast<sluice_reason>(r);
        drops.metric.push_back(counter({{"reason", datapath::reason_name(reason)}}, drop(reason)));
    }
    families.push_back(std::move(drops));

    MetricFamily events{"sluice_datapath_events_total",
                        "Things the eBPF hooks did, by event",
                        MetricType::Counter,
                        {}};
    for (int e = 0; e < SLUICE_EVENT_MAX; ++e) {
        auto ev = static_cast<sluice_event>(e);
        events.metric.push_back(counter({{"event", datapath::event_name(ev)}}, event(ev)));
    }
    families.push_back(std::move(events));

    // Same-node splicing: only while it runs (the flag, and a kernel that can).
    if (dp_.splicing()) {
        MetricFamily splice{"sluice_datapath_splice_total",
                            "Same-node splicing: sockets added, sendmsg calls redirected or sent "
                            "through TCP (peer_busy, no_peer)",
                            MetricType::Counter,
                            {}};
        for (int e = 0; e < SLUICE_SPLICE_MAX; ++e) {
            auto ev = static_cast<sluice_splice_event>(e);
            splice.metric.push_back(counter({{"event", datapath::splice_event_name(ev)}},
                                            dp_.splice_count(ev).value_or(0)));
        }
        families.push_back(std::move(splice));
    }

    std::ostringstream out;
    prometheus::TextSerializer().Serialize(out, families);
    return out.str();
}

}  // namespace sluice::agent
