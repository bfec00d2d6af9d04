#include "waypoint/http/client_watch.h"

namespace sluice::waypoint {

ClientWatch::ClientWatch(ClientStream& client, beast::flat_buffer& buffer, std::size_t max_buffered)
    : client_(client),
      buffer_(buffer),
      max_buffered_(max_buffered),
      state_(std::make_shared<State>()) {
    state_->exited = std::make_unique<asio::steady_timer>(client.get_executor());
}

ClientWatch::~ClientWatch() {
    state_->on_gone = nullptr;
}

void ClientWatch::start(std::function<void()> on_gone) {
    state_->on_gone = std::move(on_gone);
    state_->running = true;
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
            if (!state->stopping && ec != asio::error::operation_aborted) {
                state->gone = true;
                if (state->on_gone)
                    state->on_gone();
            }
            break;
        }
    }
    state->running = false;
    state->exited->cancel();
}

awaitable<void> ClientWatch::stop() {
    if (!state_->running)
        co_return;
    state_->stopping = true;
    error_code ec;
    client_.cancel(ec);
    // `exited` never expires by itself; the watcher cancels it on its way out.
    while (state_->running)
        co_await state_->exited->async_wait(noThrow(ec));
}

}  // namespace sluice::waypoint
