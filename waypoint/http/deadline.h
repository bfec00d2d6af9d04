#pragma once

#include <chrono>
#include <memory>

#include "waypoint/http/asio.h"

namespace sluice::waypoint {

// Cancels a stream's (a tcp::socket's or ClientStream's) pending operations when a phase takes too
// long (Boost 1.74 has no `op || timer`). The timer's handler may already be queued when the phase
// finishes, so it acts only while armed; disarm() is called before the socket can go away.
class Deadline {
  public:
    explicit Deadline(const asio::any_io_executor& ex)
        : timer_(std::make_shared<asio::steady_timer>(ex)), state_(std::make_shared<State>()) {}
    ~Deadline() { disarm(); }
    Deadline(const Deadline&) = delete;
    Deadline& operator=(const Deadline&) = delete;

    template <class Stream>
    void arm(Stream& socket, std::chrono::milliseconds timeout) {
        disarm();
        state_ = std::make_shared<State>();
        state_->armed = true;
        timer_->expires_after(timeout);
        timer_->async_wait([state = state_, socket = &socket](error_code ec) {
            if (ec || !state->armed)
                return;
            state->fired = true;
            error_code ignored;
            socket->cancel(ignored);
        });
    }
    void disarm() {
        state_->armed = false;
        timer_->cancel();
    }
    // True when the last armed phase ended because the timeout fired.
    bool fired() const { return state_->fired; }

  private:
    struct State {
        bool armed = false;
        bool fired = false;
    };
    std::shared_ptr<asio::steady_timer> timer_;
    std::shared_ptr<State> state_;
};

}  // namespace sluice::waypoint
