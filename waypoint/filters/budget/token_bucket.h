#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>

namespace sluice::waypoint::budget {

// A token bucket that refills `capacity` per minute. The level may go negative: a request
// admitted on an estimate that turns out to use more is charged in full, and the debt delays
// the next admissions instead of letting a stream overshoot the budget.
class TokenBucket {
  public:
    using Clock = std::chrono::steady_clock;
    explicit TokenBucket(std::uint64_t per_minute, Clock::time_point now = Clock::now())
        : capacity_(double(per_minute)), level_(double(per_minute)), last_(now) {}

    // Takes `n` clamped to the capacity (so a large request can still pass a full bucket) and
    // returns what it took, or nothing when the level is below that. Settling gives back (or
    // charges beyond) what was taken, not `n`.
    std::optional<double> try_take(std::uint64_t n, Clock::time_point now) {
        refill(now);
        const double want = std::min(double(n), capacity_);
        if (level_ < want)
            return std::nullopt;
        level_ -= want;
        return want;
    }
    // Returns (n < 0: charges more) after the real usage is known.
    void adjust(double n, Clock::time_point now) {
        refill(now);
        level_ = std::min(capacity_, level_ + n);
    }
    double level(Clock::time_point now) {
        refill(now);
        return level_;
    }
    double capacity() const { return capacity_; }
    // A new per-minute capacity (a reloaded limit): what was used in the window stays used.
    void resize(std::uint64_t per_minute, Clock::time_point now) {
        refill(now);
        const double used = capacity_ - level_;
        capacity_ = double(per_minute);
        level_ = capacity_ - used;
    }
    // Seconds until `n` could be taken / until the bucket is full again.
    double secondsUntil(std::uint64_t n, Clock::time_point now) {
        refill(now);
        const double want = std::min(double(n), capacity_);
        return level_ >= want ? 0.0 : (want - level_) / ratePerSecond();
    }
    double secondsUntilFull(Clock::time_point now) {
        refill(now);
        return (capacity_ - level_) / ratePerSecond();
    }

  private:
    double ratePerSecond() const { return capacity_ / 60.0; }
    void refill(Clock::time_point now) {
        const double dt = std::chrono::duration<double>(now - last_).count();
        if (dt > 0)
            level_ = std::min(capacity_, level_ + dt * ratePerSecond());
        last_ = std::max(last_, now);
    }
    double capacity_;
    double level_;
    Clock::time_point last_;
};

}  // namespace sluice::waypoint::budget
