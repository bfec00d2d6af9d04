#include "ztunnel/proxy/inbound_connections.h"

#include <boost/asio/post.hpp>

#include <vector>

namespace sluice::ztunnel::proxy {

uint64_t InboundConnections::add(Entry e) {
    std::lock_guard lock(mutex_);
    const uint64_t id = next_id_++;
    open_.emplace(id, std::move(e));
    return id;
}

void InboundConnections::remove(uint64_t id) {
    std::lock_guard lock(mutex_);
    open_.erase(id);
}

size_t InboundConnections::size() const {
    std::lock_guard lock(mutex_);
    return open_.size();
}

size_t InboundConnections::close_denied(
    const std::function<state::AuthzDecision(const Entry&)>& decide) {
    // Decide outside the lock: workers keep registering connections meanwhile. A connection
    // opened after the copy was authorized by the new policy already.
    std::vector<std::pair<uint64_t, Entry>> open;
    {
        std::lock_guard lock(mutex_);
        open.assign(open_.begin(), open_.end());
    }
    size_t denied = 0;
    for (const auto& [id, entry] : open) {
        state::AuthzDecision d = decide(entry);
        if (d.allowed)
            continue;
        ++denied;
        boost::asio::post(entry.executor, [this, id, d = std::move(d)] { close_now(id, d); });
    }
    return denied;
}

void InboundConnections::close_now(uint64_t id, const state::AuthzDecision& decision) {
    std::function<void(const state::AuthzDecision&)> close;
    {
        std::lock_guard lock(mutex_);
        auto it = open_.find(id);
        if (it == open_.end())
            return;  // finished before the close arrived
        close = it->second.close;
    }
    // Still registered, and only this executor unregisters it: the connection is alive.
    close(decision);
}

}  // namespace sluice::ztunnel::proxy
