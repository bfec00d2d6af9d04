#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "waypoint/http/asio.h"
#include "waypoint/http/deadline.h"

namespace sluice::waypoint {

// Keep-alive HTTP/1.1 connections to backends, one pool per worker thread (so no locking):
// a connection is handed out to one request at a time and returned only after its response was
// read completely; idle connections older than `idle_timeout` are closed instead of reused.
class UpstreamPool {
  public:
    struct Limits {
        std::chrono::milliseconds connect_timeout{5'000};
        std::chrono::milliseconds idle_timeout{60'000};
        std::size_t max_idle_per_endpoint = 64;
    };
    UpstreamPool(asio::any_io_executor ex, Limits limits) : ex_(ex), limits_(limits) {}

    struct Lease {
        tcp::socket socket;
        tcp::endpoint endpoint;  // where it is connected to
        bool reused = false;
        // Bounds each phase on this connection; it stays with the connection, so a request on a
        // reused one schedules no new timer.
        Deadline deadline;
    };
    // An idle connection to `address`, if there is one (not a coroutine: the common case
    // allocates no frame).
    std::optional<Lease> reuse(const tcp::endpoint& address);
    // A new connection to `address`. While it connects, `*watched` (when given) points to the
    // socket, so that a client that leaves meanwhile can close it (the connect then fails with
    // operation_aborted); it is reset before the lease is returned.
    awaitable<std::pair<error_code, Lease>> connect(const tcp::endpoint& address,
                                                    tcp::socket** watched = nullptr);
    // Returns a connection whose last response was read completely and that may be reused.
    void release(Lease lease);

    std::size_t idleCount() const;

  private:
    struct Idle {
        tcp::socket socket;
        Deadline deadline;
        std::chrono::steady_clock::time_point since;
    };
    asio::any_io_executor ex_;
    Limits limits_;
    std::map<tcp::endpoint, std::vector<Idle>> idle_;
};

}  // namespace sluice::waypoint
