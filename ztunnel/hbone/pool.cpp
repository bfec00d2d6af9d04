#include "ztunnel/hbone/pool.h"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <algorithm>

namespace sluice::ztunnel::hbone {

Pool::Pool(asio::any_io_executor ex, Dialer dialer,
           std::chrono::steady_clock::duration idle_timeout)
    : executor_(std::move(ex)), dialer_(std::move(dialer)), idle_timeout_(idle_timeout) {}

asio::awaitable<std::expected<std::shared_ptr<Stream>, Failure>> Pool::open(
    const PoolKey& key, ConnectRequest request) {
    // A draining pool still serves connections accepted before the listeners closed: they
    // get a fresh HBONE connection (the drained ones take no new streams).
    std::shared_ptr<Connection> conn;
    while (!conn) {
        auto& list = connections_[key];
        std::erase_if(list, [](const auto& c) { return !c->is_open(); });
        for (const auto& c : list) {
            if (c->accepts_streams()) {
                conn = c;
                break;
            }
        }
        if (conn)
            break;
        if (auto pending = dialing_.find(key); pending != dialing_.end()) {
            // Another open() is dialling this key: its connection serves this stream too (300
            // connections an app opens at once make one TLS handshake, not 300). Its failure
            // is this one's.
            const std::shared_ptr<Dial> dial = pending->second;
            while (!dial->finished)
                co_await dial->done.wait();
            if (!dial->failure)
                continue;  // the new connection is in the list (unless already full)
            co_return std::unexpected(*dial->failure);
        }
        const auto dial = std::make_shared<Dial>();
        dialing_[key] = dial;
        // However the dial ends (a dialer that throws too), its waiters are woken and the key
        // can be dialled again; until it succeeds, its failure is "dial failed".
        struct Finish {
            Pool& pool;
            const PoolKey& key;
            Dial& dial;
            ~Finish() {
                pool.dialing_.erase(key);
                dial.finished = true;
                dial.done.notify();
            }
        } finish{*this, key, *dial};
        auto dialed = co_await dialer_(key);
        if (!dialed) {
            dial->failure = dialed.error();
            co_return std::unexpected(dialed.error());
        }
        dial->failure.reset();
        connections_[key].push_back(*dialed);  // `list` may be invalid after the await
        conn = *dialed;
        spdlog::debug("pool: new connection {} -> {} at {}", key.source.uri(),
                      key.destination.uri(), key.address);
    }
    auto stream = co_await conn->open_stream(std::move(request));
    co_return stream;
}

void Pool::close_idle(std::chrono::steady_clock::time_point now) {
    for (auto it = connections_.begin(); it != connections_.end();) {
        auto& list = it->second;
        std::erase_if(list, [&](const std::shared_ptr<Connection>& c) {
            if (!c->is_open())
                return true;
            if (c->active_streams() == 0 && now - c->idle_since() >= idle_timeout_) {
                c->close();
                return true;
            }
            return false;
        });
        it = list.empty() ? connections_.erase(it) : std::next(it);
    }
}

void Pool::start_idle_sweep() {
    asio::co_spawn(executor_, sweep_loop(), asio::detached);
}

asio::awaitable<void> Pool::sweep_loop() {
    asio::steady_timer timer(executor_);
    const auto period = std::max<std::chrono::steady_clock::duration>(
        std::chrono::seconds(1),
        std::min<std::chrono::steady_clock::duration>(idle_timeout_ / 4, std::chrono::seconds(30)));
    while (!draining_) {
        timer.expires_after(period);
        boost::system::error_code ec;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        close_idle(std::chrono::steady_clock::now());
    }
}

void Pool::drain() {
    draining_ = true;
    for (auto& [key, list] : connections_) {
        for (auto& c : list)
            c->drain();
    }
}

size_t Pool::connections() const {
    size_t n = 0;
    for (const auto& [key, list] : connections_)
        n += std::count_if(list.begin(), list.end(), [](const auto& c) { return c->is_open(); });
    return n;
}

std::vector<Pool::ConnectionInfo> Pool::describe() const {
    std::vector<ConnectionInfo> out;
    const auto now = std::chrono::steady_clock::now();
    for (const auto& [key, list] : connections_) {
        for (const auto& c : list) {
            if (!c->is_open())
                continue;
            const double idle = c->active_streams() == 0
                                    ? std::chrono::duration<double>(now - c->idle_since()).count()
                                    : 0.0;
            out.push_back({key, c->active_streams(),
                           c->remote_endpoint().address().to_string() + ":" +
                               std::to_string(c->remote_endpoint().port()),
                           idle});
        }
    }
    return out;
}

size_t Pool::streams() const {
    size_t n = 0;
    for (const auto& [key, list] : connections_) {
        for (const auto& c : list)
            n += c->active_streams();
    }
    return n;
}

}  // namespace sluice::ztunnel::hbone
