#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "ztunnel/hbone/connection.h"
#include "ztunnel/hbone/event.h"

namespace sluice::ztunnel::hbone {

inline constexpr std::chrono::seconds kDefaultPoolIdleTimeout{300};

// Connections are shared by streams with the same source identity, destination identity and
// destination address (DESIGN.md §4), so one tenant's streams never ride another's TLS session.
// `origin` names the pod whose netns the connection leaves from (its source address), so two
// pods of one service account do not share a connection either.
struct PoolKey {
    identity::Identity source;
    identity::Identity destination;
    std::string address;  // "<ip>:15008"
    std::string origin;   // source workload uid; empty in tests
    auto operator<=>(const PoolKey&) const = default;
};

// HBONE client connections of one worker thread. A connection enters the pool only after
// its TLS handshake verified the peer (the dialer returns it so), so no stream is ever opened
// on an unverified connection. One pool per worker: no locks on the data path, at the price of
// up to one connection per worker and key.
class Pool {
  public:
    using Dialer =
        std::function<asio::awaitable<std::expected<std::shared_ptr<Connection>, Failure>>(
            const PoolKey&)>;

    Pool(asio::any_io_executor ex, Dialer dialer,
         std::chrono::steady_clock::duration idle_timeout = kDefaultPoolIdleTimeout);

    // A stream to key.destination over a pooled or new connection.
    asio::awaitable<std::expected<std::shared_ptr<Stream>, Failure>> open(const PoolKey& key,
                                                                          ConnectRequest request);
    // Closes connections idle longer than the timeout; runs from a periodic timer too.
    void close_idle(std::chrono::steady_clock::time_point now);
    void start_idle_sweep();
    // GOAWAY on every connection: no new streams on them. A later open() dials afresh.
    void drain();

    size_t connections() const;
    size_t streams() const;
    // One entry per open connection: key, streams, idle time (for admin /connections).
    struct ConnectionInfo {
        PoolKey key;
        size_t streams = 0;
        std::string remote;
        double idle_seconds = 0;
    };
    std::vector<ConnectionInfo> describe() const;

  private:
    asio::awaitable<void> sweep_loop();

    asio::any_io_executor executor_;
    Dialer dialer_;
    std::chrono::steady_clock::duration idle_timeout_;
    std::map<PoolKey, std::vector<std::shared_ptr<Connection>>> connections_;
    // A dial in progress per key; other opens of the key wait for it.
    struct Dial {
        bool finished = false;
        std::optional<Failure> failure{Failure{Error::ConnectFailed, "dial failed"}};
        Signal done;
    };
    std::map<PoolKey, std::shared_ptr<Dial>> dialing_;
    bool draining_ = false;
};

}  // namespace sluice::ztunnel::hbone
