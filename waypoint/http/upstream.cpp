#include "waypoint/http/upstream.h"

#include "waypoint/http/deadline.h"

namespace sluice::waypoint {

namespace {
std::string keyOf(const tcp::endpoint& ep) {
    return ep.address().to_string() + ":" + std::to_string(ep.port());
}
}  // namespace

awaitable<std::pair<error_code, UpstreamPool::Lease>> UpstreamPool::acquire(
    const tcp::endpoint& address) {
    const std::string key = keyOf(address);
    const auto now = std::chrono::steady_clock::now();
    if (auto it = idle_.find(key); it != idle_.end()) {
        auto& list = it->second;
        while (!list.empty()) {
            Idle idle = std::move(list.back());
            list.pop_back();
            if (now - idle.since < limits_.idle_timeout && idle.socket.is_open()) {
                co_return std::pair{error_code{}, Lease{std::move(idle.socket), key, true}};
            }
        }
    }
    tcp::socket socket(ex_);
    Deadline deadline(ex_);
    deadline.arm(socket, limits_.connect_timeout);
    error_code ec;
    co_await socket.async_connect(address, noThrow(ec));
    deadline.disarm();
    if (deadline.fired())
        ec = asio::error::timed_out;
    if (!ec)
        socket.set_option(tcp::no_delay(true), ec);
    co_return std::pair{ec, Lease{std::move(socket), key, false}};
}

void UpstreamPool::release(Lease lease) {
    auto& list = idle_[lease.key];
    if (list.size() >= limits_.max_idle_per_endpoint)
        return;  // the socket closes here
    list.push_back(Idle{std::move(lease.socket), std::chrono::steady_clock::now()});
}

std::size_t UpstreamPool::idleCount() const {
    std::size_t n = 0;
    for (const auto& [key, list] : idle_)
        n += list.size();
    return n;
}

}  // namespace sluice::waypoint
