#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <utility>

namespace sluice::ztunnel::hbone {

// Plain operator new/delete of the exact size, for Asio's operation of a handler that
// asks for it (see Exact).
template <typename T>
struct ExactAllocator {
    using value_type = T;
    ExactAllocator() = default;
    template <typename U>
    ExactAllocator(const ExactAllocator<U>&) {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T))); }
    void deallocate(T* p, std::size_t) { ::operator delete(p); }
    template <typename U>
    bool operator==(const ExactAllocator<U>&) const {
        return true;
    }
};

// A completion handler whose pending operation is allocated at its exact size. Asio otherwise
// recycles the thread's last freed operation block when it is large enough: a wait that stays
// pending for a connection's lifetime (10k idle connections) then keeps a whole accept or
// connect operation's block (~2x the size) instead of its own.
template <typename F>
struct Exact {
    F f;
    using allocator_type = ExactAllocator<void>;
    allocator_type get_allocator() const noexcept { return {}; }
    template <typename... Args>
    void operator()(Args&&... args) {
        f(std::forward<Args>(args)...);
    }
};
template <typename F>
Exact(F) -> Exact<F>;

// A wake-up for coroutines of one io_context (Boost 1.74 has no channels): waiters check their
// condition, then wait(); whoever changes the condition calls notify(), which wakes every
// current waiter. Everything runs on one thread, so no wake-up is lost between check and wait.
class Event {
  public:
    explicit Event(boost::asio::any_io_executor ex)
        : timer_(std::move(ex), boost::asio::steady_timer::time_point::max()) {}
    // Not a coroutine itself: the timer's awaitable is returned as is, so a waiter costs no
    // coroutine frame of its own (10k idle connections each have waiters).
    boost::asio::awaitable<void> wait() {
        return timer_.async_wait(boost::asio::redirect_error(boost::asio::use_awaitable, ignored_));
    }
    // The same for a completion handler: h() runs on the next notify().
    template <typename H>
    void async_wait(H h) {
        timer_.async_wait(
            Exact{[h = std::move(h)](const boost::system::error_code&) mutable { h(); }});
    }
    void notify() { timer_.cancel(); }

  private:
    boost::asio::steady_timer timer_;
    boost::system::error_code ignored_;  // a cancel is the wake-up; waiters share this
};

// Calls `on_expiry` (typically: close a socket) unless destroyed first; bounds one operation in
// time without Boost 1.74's missing `||` awaitable operator.
class Deadline {
  public:
    Deadline(boost::asio::any_io_executor ex, std::chrono::steady_clock::duration after,
             std::function<void()> on_expiry)
        : timer_(std::move(ex), after), expired_(std::make_shared<bool>(false)) {
        timer_.async_wait(
            [fn = std::move(on_expiry), flag = expired_](boost::system::error_code ec) {
                if (!ec) {
                    *flag = true;
                    fn();
                }
            });
    }
    ~Deadline() { timer_.cancel(); }
    Deadline(const Deadline&) = delete;
    Deadline& operator=(const Deadline&) = delete;
    bool expired() const { return *expired_; }

  private:
    boost::asio::steady_timer timer_;
    std::shared_ptr<bool> expired_;
};

}  // namespace sluice::ztunnel::hbone
