#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "waypoint/http/asio.h"

namespace sluice::waypoint {

// Cancels a stream's (a tcp::socket's or ClientStream's) pending operations when a phase takes too
// long (Boost 1.74 has no `op || timer`). disarm() is called before the stream can go away.
//
// A request passes through several phases, each arming and disarming, so arming must be cheap:
// the timer is rescheduled only when the new deadline is earlier than the one it already waits
// for, and a timer that wakes before the current deadline waits again for the rest. Rescheduling
// the reactor's earliest timer costs a timerfd_settime() each; this way a steady keep-alive
// connection pays one about every timeout instead of one per phase (docs/waypoint.md, "Latency").
class Deadline {
  public:
    explicit Deadline(const asio::any_io_executor& ex) : state_(std::make_shared<State>(ex)) {}
    ~Deadline() {
        if (state_) {
            state_->armed = false;
            state_->timer.cancel();
        }
    }
    Deadline(Deadline&&) noexcept = default;
    Deadline& operator=(Deadline&&) noexcept = default;
    Deadline(const Deadline&) = delete;
    Deadline& operator=(const Deadline&) = delete;

    template <class Stream>
    void arm(Stream& stream, std::chrono::milliseconds timeout) {
        State& s = *state_;
        s.deadline = Clock::now() + timeout;
        s.cancel = [&stream] {
            error_code ignored;
            stream.cancel(ignored);
        };
        s.armed = true;
        s.fired = false;
        if (!s.waiting || s.scheduled > s.deadline)
            schedule(state_);
    }
    void disarm() { state_->armed = false; }
    // True when the last armed phase ended because the timeout fired.
    bool fired() const { return state_->fired; }

  private:
    using Clock = asio::steady_timer::clock_type;
    struct State {
        explicit State(const asio::any_io_executor& ex) : timer(ex) {}
        asio::steady_timer timer;
        Clock::time_point deadline;   // of the armed phase
        Clock::time_point scheduled;  // what the pending wait waits for
        std::function<void()> cancel;
        std::uint64_t generation = 0;  // a wait that was rescheduled away is stale
        bool waiting = false;
        bool armed = false;
        bool fired = false;
    };

    static void schedule(const std::shared_ptr<State>& state) {
        const std::uint64_t generation = ++state->generation;
        state->scheduled = state->deadline;
        state->waiting = true;
        state->timer.expires_at(state->deadline);  // a pending wait ends as operation_aborted
        state->timer.async_wait([state, generation](error_code ec) {
            if (generation != state->generation)
                return;
            state->waiting = false;
            if (ec || !state->armed)
                return;
            if (Clock::now() < state->deadline) {
                schedule(state);  // armed again since (or cancelled again soon): wait for the rest
                return;
            }
            // A cancel finds nothing to cancel when no operation is pending at this moment
            // (while bytes keep arriving, each read completes at once and the next is not
            // started yet): it is repeated every few milliseconds until the phase is disarmed,
            // so a client that goes on trickling cannot outlive its deadline.
            state->fired = true;
            state->cancel();
            state->deadline = Clock::now() + std::chrono::milliseconds(5);
            schedule(state);
        });
    }

    std::shared_ptr<State> state_;
};

}  // namespace sluice::waypoint
