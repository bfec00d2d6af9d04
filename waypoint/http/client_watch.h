#pragma once

#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>

#include "waypoint/http/asio.h"
#include "waypoint/http/client_stream.h"

namespace sluice::waypoint {

// Notices a client that goes away while its request is being proxied, so the upstream request
// is cancelled instead of running (and burning tokens) to the end. On a TCP client it waits for
// the socket to become readable without reading and then asks the kernel whether the peer shut
// down (POLLRDHUP): no buffer, no syscall while nothing happens, and a pipelined next request
// stays in the socket. On other streams (HBONE) it keeps one read pending; bytes that arrive (a
// pipelined next request) are kept in `buffer`.
class ClientWatch {
  public:
    ClientWatch(ClientStream& client, beast::flat_buffer& buffer, std::size_t max_buffered);
    ~ClientWatch();
    ClientWatch(const ClientWatch&) = delete;
    ClientWatch& operator=(const ClientWatch&) = delete;

    // `on_gone` runs once, on the worker thread, when the client closes or resets.
    void start(std::function<void()> on_gone);
    // Cancels the pending wait or read. True when that is all; false when a read's coroutine
    // is still on its way out, and stopped() then waits until it has finished, so the socket
    // may be read again. (Two steps: the common case allocates no coroutine frame.)
    bool stop();
    awaitable<void> stopped();
    bool gone() const { return state_->gone; }
    bool running() const { return state_->running; }

    // Awaits `body` and then stops the watch, waiting until its read has finished, however
    // `body` ends. The read must not outlive the caller's frame: if `body` throws, the
    // connection's stream and buffer that the read uses are freed soon after (the server closes
    // a connection whose handler threw), and the read would complete into them.
    template <typename T>
    awaitable<T> around(awaitable<T> body) {
        std::exception_ptr failed;
        [[maybe_unused]] std::optional<std::conditional_t<std::is_void_v<T>, bool, T>> value;
        try {
            if constexpr (std::is_void_v<T>) {
                co_await std::move(body);
            } else {
                value.emplace(co_await std::move(body));
            }
        } catch (...) {
            failed = std::current_exception();
        }
        if (!stop())
            co_await stopped();
        if (failed)
            std::rethrow_exception(failed);
        if constexpr (!std::is_void_v<T>)
            co_return std::move(*value);
    }

  private:
    struct State {
        bool gone = false;
        bool running = false;
        bool stopping = false;
        bool reading = false;  // a read is (or was) pending, not just a wait
        std::function<void()> on_gone;
        std::unique_ptr<asio::steady_timer> exited;
    };
    static awaitable<void> watch(std::shared_ptr<State> state, ClientStream& client,
                                 beast::flat_buffer& buffer, std::size_t max_buffered);
    void waitForHangUp();
    void startReading();
    static void noticeGone(State& state);

    ClientStream& client_;
    beast::flat_buffer& buffer_;
    std::size_t max_buffered_;
    std::shared_ptr<State> state_;
};

}  // namespace sluice::waypoint
