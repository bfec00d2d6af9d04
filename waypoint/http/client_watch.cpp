#include "waypoint/http/client_watch.h"

#include <poll.h>

namespace sluice::waypoint {
namespace {

// The peer shut its side down or the connection failed (buffered bytes do not hide it).
bool hungUp(tcp::socket& socket) {
    pollfd p{.fd = socket.native_handle(), .events = POLLRDHUP, .revents = 0};
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace

ClientWatch::ClientWatch(ClientStream& client, beast::flat_buffer& buffer, std::size_t max_buffered)
    : client_(client),
      buffer_(buffer),
      max_buffered_(max_buffered),
      state_(std::make_shared<State>()) {}

ClientWatch::~ClientWatch() {
    state_->on_gone = nullptr;
    state_->stopping = true;  // a wait's handler still queued must not touch this object
}

void ClientWatch::start(std::function<void()> on_gone) {
    state_->on_gone = std::move(on_gone);
    state_->running = true;
    if (client_.socket()) {
        waitForHangUp();
        return;
    }
    startReading();
}

void ClientWatch::startReading() {
    state_->reading = true;
    // Only a reading watch needs it (stop() waits on it): a TCP client that merely waits
    // costs no timer.
    state_->exited = std::make_unique<asio::steady_timer>(client_.get_executor());
    state_->exited->expires_at(asio::steady_timer::time_point::max());
    asio::co_spawn(client_.get_executor(), watch(state_, client_, buffer_, max_buffered_),
                   asio::detached);
}

awaitable<void> ClientWatch::watch(std::shared_ptr<State> state, ClientStream& client,
                                   beast::flat_buffer& buffer, std::size_t max_buffered) {
    while (!state->stopping && buffer.size() < max_buffered) {
        error_code ec;
        const std::size_t n = co_await client.async_read_some(buffer.prepare(4096), noThrow(ec));
        buffer.commit(n);
        if (ec) {
            if (!state->stopping && ec != asio::error::operation_aborted)
                noticeGone(*state);
            break;
        }
    }
    state->running = false;
    state->exited->cancel();
}

void ClientWatch::noticeGone(State& state) {
    state.gone = true;
    if (state.on_gone)
        state.on_gone();
}

void ClientWatch::waitForHangUp() {
    // A wait (unlike a read) re-arms the socket in epoll, which reports what is already there
    // too: a hang-up before the watch started is not missed.
    client_.socket()->async_wait(tcp::socket::wait_read, [this, state = state_](error_code ec) {
        if (state->stopping || ec == asio::error::operation_aborted) {
            state->running = false;
            return;
        }
        if (!ec && !hungUp(*client_.socket())) {
            // Bytes of a pipelined request: waiting again would report them at once, again
            // and again, so read them into the buffer from now on (stop() then waits for it).
            startReading();
            return;
        }
        state->running = false;
        noticeGone(*state);
    });
}

bool ClientWatch::stop() {
    if (!state_->running)
        return true;
    state_->stopping = true;
    error_code ec;
    client_.cancel(ec);
    // A wait's handler only notes that it ended; nothing waits for it.
    return !state_->reading;
}

awaitable<void> ClientWatch::stopped() {
    // `exited` never expires by itself; the watcher cancels it on its way out.
    error_code ec;
    while (state_->running)
        co_await state_->exited->async_wait(noThrow(ec));
}

}  // namespace sluice::waypoint
