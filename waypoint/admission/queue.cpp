#include "waypoint/admission/queue.h"

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <optional>

namespace sluice::waypoint::admission {

const char* to_string(Outcome o) {
    switch (o) {
        case Outcome::Admitted:
            return "admitted";
        case Outcome::QueueFull:
            return "queue_full";
        case Outcome::Preempted:
            return "preempted";
        case Outcome::Timeout:
            return "queue_timeout";
        case Outcome::Withdrawn:
            return "withdrawn";
    }
    return "unknown";
}

// One queued request. Its timer lives on the waiting coroutine's executor and is only touched
// there: other threads post the cancel that wakes it.
struct AdmissionQueue::Waiter {
    Waiter(asio::any_io_executor ex, Priority p, std::string t, std::uint64_t s)
        : executor(ex), timer(ex), priority(p), tenant(std::move(t)), seq(s) {}
    asio::any_io_executor executor;
    asio::steady_timer timer;
    Priority priority;
    std::string tenant;
    std::uint64_t seq;
    std::optional<Outcome> outcome;  // set (lock held) when granted or pushed out
};

AdmissionQueue::AdmissionQueue(AdmissionConfig config, Observer observer)
    : config_(std::move(config)), observer_(std::move(observer)) {}

AdmissionQueue::Slot& AdmissionQueue::Slot::operator=(Slot&& o) noexcept {
    if (this != &o) {
        reset();
        queue_ = std::exchange(o.queue_, nullptr);
    }
    return *this;
}

void AdmissionQueue::Slot::reset() {
    if (auto* q = std::exchange(queue_, nullptr))
        q->release();
}

AdmissionQueue::Slot AdmissionQueue::tryAcquire() {
    std::lock_guard lock(mutex_);
    if (closed_ || in_flight_ >= config_.max_concurrent)
        return Slot();
    ++in_flight_;
    notify();
    return Slot(this);
}

void AdmissionQueue::Withdrawal::withdraw() {
    withdrawn_ = true;
    if (!waiter_)
        return;
    std::lock_guard lock(queue_->mutex_);
    if (waiter_->outcome)
        return;  // admitted or pushed out already: acquire() returns that
    queue_->remove(waiter_);
    queue_->notify();
    wake(waiter_, Outcome::Withdrawn);
}

awaitable<std::pair<Outcome, AdmissionQueue::Slot>> AdmissionQueue::acquire(
    Priority priority, std::string tenant, Withdrawal* withdrawal) {
    auto executor = co_await asio::this_coro::executor;
    std::shared_ptr<Waiter> waiter;
    {
        std::lock_guard lock(mutex_);
        if (withdrawal && withdrawal->withdrawn_)
            co_return std::pair{Outcome::Withdrawn, Slot()};
        if (closed_)
            co_return std::pair{Outcome::QueueFull, Slot()};
        if (in_flight_ < config_.max_concurrent) {
            ++in_flight_;
            notify();
            co_return std::pair{Outcome::Admitted, Slot(this)};
        }
        if (queued_ >= config_.max_queued) {
            // Push out the newest waiter of the least important class below this one.
            std::shared_ptr<Waiter> victim;
            for (std::size_t c = kPriorities; c-- > static_cast<std::size_t>(priority) + 1;) {
                if (classes_[c].size > 0) {
                    victim = popNewest(classes_[c]);
                    break;
                }
            }
            if (!victim)
                co_return std::pair{Outcome::QueueFull, Slot()};
            wake(victim, Outcome::Preempted);
        }
        waiter = std::make_shared<Waiter>(executor, priority, std::move(tenant), next_seq_++);
        auto& q = classes_[static_cast<std::size_t>(priority)];
        q.by_tenant[waiter->tenant].push_back(waiter);
        ++q.size;
        ++queued_;
        notify();
        if (withdrawal) {
            withdrawal->queue_ = this;
            withdrawal->waiter_ = waiter;
        }
    }
    waiter->timer.expires_after(config_.queue_timeout[static_cast<std::size_t>(priority)]);
    error_code ec;
    co_await waiter->timer.async_wait(noThrow(ec));
    if (withdrawal)
        withdrawal->waiter_.reset();
    std::lock_guard lock(mutex_);
    if (!waiter->outcome) {  // the timer ran out first
        remove(waiter);
        notify();
        co_return std::pair{Outcome::Timeout, Slot()};
    }
    co_return std::pair{*waiter->outcome,
                        *waiter->outcome == Outcome::Admitted ? Slot(this) : Slot()};
}

void AdmissionQueue::close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    for (auto& q : classes_) {
        q.by_tenant.clear();
        q.size = 0;
    }
    queued_ = 0;
    notify();
}

void AdmissionQueue::release() {
    std::lock_guard lock(mutex_);
    if (auto next = closed_ ? nullptr : popNext())
        wake(next, Outcome::Admitted);  // the slot passes on: in_flight_ stays
    else
        --in_flight_;
    notify();
}

std::shared_ptr<AdmissionQueue::Waiter> AdmissionQueue::popNext() {
    for (auto& q : classes_) {
        if (q.size == 0)
            continue;
        // The first tenant after the one served last, wrapping around.
        auto it = q.by_tenant.upper_bound(q.last_served);
        if (it == q.by_tenant.end())
            it = q.by_tenant.begin();
        auto w = it->second.front();
        it->second.pop_front();
        q.last_served = it->first;
        if (it->second.empty())
            q.by_tenant.erase(it);
        --q.size;
        --queued_;
        return w;
    }
    return nullptr;
}

std::shared_ptr<AdmissionQueue::Waiter> AdmissionQueue::popNewest(ClassQueue& q) {
    auto newest = q.by_tenant.end();
    for (auto it = q.by_tenant.begin(); it != q.by_tenant.end(); ++it) {
        if (newest == q.by_tenant.end() || it->second.back()->seq > newest->second.back()->seq)
            newest = it;
    }
    auto w = newest->second.back();
    newest->second.pop_back();
    if (newest->second.empty())
        q.by_tenant.erase(newest);
    --q.size;
    --queued_;
    return w;
}

void AdmissionQueue::remove(const std::shared_ptr<Waiter>& w) {
    auto& q = classes_[static_cast<std::size_t>(w->priority)];
    auto it = q.by_tenant.find(w->tenant);
    if (it == q.by_tenant.end())
        return;
    auto& d = it->second;
    if (auto pos = std::find(d.begin(), d.end(), w); pos != d.end()) {
        d.erase(pos);
        --q.size;
        --queued_;
    }
    if (d.empty())
        q.by_tenant.erase(it);
}

void AdmissionQueue::wake(const std::shared_ptr<Waiter>& w, Outcome o) {
    w->outcome = o;
    asio::post(w->executor, [w] { w->timer.cancel(); });
}

void AdmissionQueue::notify() {
    if (!observer_)
        return;
    std::array<std::size_t, kPriorities> queued{};
    for (std::size_t c = 0; c < kPriorities; ++c)
        queued[c] = classes_[c].size;
    observer_(in_flight_, queued);
}

std::size_t AdmissionQueue::inFlight() const {
    std::lock_guard lock(mutex_);
    return in_flight_;
}

std::size_t AdmissionQueue::queued(Priority p) const {
    std::lock_guard lock(mutex_);
    return classes_[static_cast<std::size_t>(p)].size;
}

}  // namespace sluice::waypoint::admission
