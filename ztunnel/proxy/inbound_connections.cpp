#include "ztunnel/proxy/inbound_connections.h"

#include <boost/asio/post.hpp>

#include <vector>

namespace sluice::ztunnel::proxy {

uint64_t InboundConnections::add(Entry e, uint64_t authorized_in, const Decide& decide) {
    uint64_t id = 0;
    {
        std::lock_guard lock(mutex_);
        id = next_id_++;
        open_.emplace(id, e);
    }
    // close_denied() starts its epoch before it copies the open set. An unchanged epoch read
    // after the insert means that copy, if one is being taken, already holds this connection.
    if (epoch_.load() != authorized_in) {
        state::AuthzDecision d = decide(e);
        if (!d.allowed)
            e.close(d);
    }
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

size_t InboundConnections::close_denied(const Decide& decide) {
    epoch_.fetch_add(1);
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
