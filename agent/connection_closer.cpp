#include "agent/connection_closer.h"

#include <spdlog/spdlog.h>

#include <exception>

#include "common/netns.h"

namespace sluice::agent {

size_t ConnectionCloser::close_denied(const std::vector<EnrolledPod>& pods, uint64_t generation) {
    if (!dp_.can_close_connections())
        return 0;
    size_t total = 0;
    for (const EnrolledPod& pod : pods) {
        datapath::Result<std::vector<sluice_deny_event>> closed;
        try {
            run_in_netns(pod.netns, [&] { closed = dp_.close_denied_connections(); });
        } catch (const std::exception& e) {
            spdlog::warn("closing denied connections of {}/{}: cannot enter {}: {}",
                         pod.namespace_name, pod.name, pod.netns, e.what());
            continue;
        }
        if (!closed) {
            spdlog::error("closing denied connections of {}/{}: {}", pod.namespace_name, pod.name,
                          closed.error().message);
            continue;
        }
        const AuditContext ctx{.pod = pod.namespace_name + "/" + pod.name,
                               .closed_by_policy = true,
                               .policy_generation = generation};
        for (const sluice_deny_event& e : *closed) {
            metrics_.connection_closed(e.direction);
            audit_.write(e, ctx);
        }
        total += closed->size();
    }
    if (total > 0)
        spdlog::info("policy generation {}: closed {} open connection(s) it denies", generation,
                     total);
    return total;
}

}  // namespace sluice::agent
