#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "waypoint/admission/config.h"
#include "waypoint/http/asio.h"

namespace sluice::waypoint::admission {

// How an acquire() ended.
enum class Outcome {
    Admitted,   // a slot is held: send the request upstream
    QueueFull,  // every queue place was taken by requests of this class or a higher one
    Preempted,  // queued, then pushed out by a more important request when the queue was full
    Timeout,    // queued longer than the class's queueTimeout
    Withdrawn,  // queued, then withdrawn by the caller (its client went away)
};
const char* to_string(Outcome o);

// Admission control for a saturated waypoint, shared by all worker threads: at most
// `maxConcurrent` requests upstream; the rest wait in one bounded queue. A freed slot goes to the
// most important class that has waiters and, within a class, to the tenants in turn (round
// robin over tenants with waiters, FIFO per tenant), so one busy tenant cannot starve another
// of its class. When the queue is full a new request pushes out the newest waiter of the least
// important class below its own (sheddable goes first); if there is none it is refused itself.
class AdmissionQueue {
    struct Waiter;

  public:
    // Called with the lock held after every change, for gauges: (in flight, queued per class).
    using Observer = std::function<void(std::size_t, const std::array<std::size_t, kPriorities>&)>;

    explicit AdmissionQueue(AdmissionConfig config, Observer observer = {});
    AdmissionQueue(const AdmissionQueue&) = delete;
    AdmissionQueue& operator=(const AdmissionQueue&) = delete;

    // A held slot; destroying (or resetting) it hands the slot to the next waiter.
    class Slot {
      public:
        Slot() = default;
        explicit Slot(AdmissionQueue* q) : queue_(q) {}
        Slot(Slot&& o) noexcept : queue_(std::exchange(o.queue_, nullptr)) {}
        Slot& operator=(Slot&& o) noexcept;
        ~Slot() { reset(); }
        void reset();
        explicit operator bool() const { return queue_ != nullptr; }

      private:
        AdmissionQueue* queue_ = nullptr;
    };

    // Takes a request back out of the queue: its place goes to the next one at once instead of
    // when the request would have been admitted or timed out. Used on the acquiring coroutine's
    // executor only.
    class Withdrawal {
      public:
        Withdrawal() = default;
        Withdrawal(const Withdrawal&) = delete;
        Withdrawal& operator=(const Withdrawal&) = delete;
        // The pending acquire() returns Withdrawn (at once, if it has not queued yet); nothing
        // happens once it has been admitted or shed.
        void withdraw();

      private:
        friend class AdmissionQueue;
        AdmissionQueue* queue_ = nullptr;
        std::shared_ptr<Waiter> waiter_;  // while queued
        bool withdrawn_ = false;
    };

    // Waits (on the calling coroutine's executor) until a slot is free or the request is shed.
    // The Slot is held only when the outcome is Admitted. `withdrawal` lets the caller take the
    // request back while it waits.
    awaitable<std::pair<Outcome, Slot>> acquire(Priority priority, std::string tenant,
                                                Withdrawal* withdrawal = nullptr);
    // Admitted at once if a slot is free, else an empty Slot (nothing queued).
    Slot tryAcquire();

    // For shutdown, once no worker runs any more: forgets every waiter (their coroutines are
    // destroyed with their io_context, never resumed) and stops handing slots over, so slots
    // released while the workers are torn down touch no other worker's io_context.
    void close();

    std::size_t inFlight() const;
    std::size_t queued(Priority p) const;
    const AdmissionConfig& config() const { return config_; }

  private:
    struct ClassQueue {
        std::map<std::string, std::deque<std::shared_ptr<Waiter>>> by_tenant;
        std::string last_served;  // round-robin cursor over tenants
        std::size_t size = 0;
    };

    void release();
    std::shared_ptr<Waiter> popNext();                              // lock held
    std::shared_ptr<Waiter> popNewest(ClassQueue& q);               // lock held
    void remove(const std::shared_ptr<Waiter>& w);                  // lock held
    static void wake(const std::shared_ptr<Waiter>& w, Outcome o);  // lock held
    void notify();                                                  // lock held

    const AdmissionConfig config_;
    const Observer observer_;
    mutable std::mutex mutex_;
    std::size_t in_flight_ = 0;
    bool closed_ = false;
    std::size_t queued_ = 0;
    std::uint64_t next_seq_ = 0;
    std::array<ClassQueue, kPriorities> classes_;
};

}  // namespace sluice::waypoint::admission
