#include "waypoint/http/upstream.h"

namespace sluice::waypoint {

std::optional<UpstreamPool::Lease> UpstreamPool::reuse(const tcp::endpoint& address) {
    const auto now = std::chrono::steady_clock::now();
    if (auto it = idle_.find(address); it != idle_.end()) {
        auto& list = it->second;
        while (!list.empty()) {
            Idle idle = std::move(list.back());
            list.pop_back();
            if (now - idle.since < limits_.idle_timeout && idle.socket.is_open())
                return Lease{std::move(idle.socket), address, true, std::move(idle.deadline)};
        }
    }
    return std::nullopt;
}

awaitable<std::pair<error_code, UpstreamPool::Lease>> UpstreamPool::connect(
    const tcp::endpoint& address, tcp::socket** watched) {
    Lease lease{tcp::socket(ex_), address, false, Deadline(ex_)};
    lease.deadline.arm(lease.socket, limits_.connect_timeout);
    error_code ec;
    if (watched)
        *watched = &lease.socket;
    co_await lease.socket.async_connect(address, noThrow(ec));
    if (watched)
        *watched = nullptr;
    lease.deadline.disarm();
    if (lease.deadline.fired())
        ec = asio::error::timed_out;
    if (!ec)
        lease.socket.set_option(tcp::no_delay(true), ec);
    co_return std::pair{ec, std::move(lease)};
}

void UpstreamPool::release(Lease lease) {
    auto& list = idle_[lease.endpoint];
    if (list.size() >= limits_.max_idle_per_endpoint)
        return;  // the socket closes here
    list.push_back(
        Idle{std::move(lease.socket), std::move(lease.deadline), std::chrono::steady_clock::now()});
}

std::size_t UpstreamPool::idleCount() const {
    std::size_t n = 0;
    for (const auto& [key, list] : idle_)
        n += list.size();
    return n;
}

}  // namespace sluice::waypoint
