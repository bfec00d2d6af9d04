#pragma once

#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
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
    void notify() { timer_.cancel(); }

  private:
    boost::asio::steady_timer timer_;
    boost::system::error_code ignored_;  // a cancel is the wake-up; waiters share this
};

// Event's wake-up without a timer, for the two per HBONE stream (10k open streams): the waiters
// are a list of handlers (one small allocation each while waiting, none otherwise), and
// notify() posts each to its own executor. Unlike a timer wait, a waiting handler does not count
// as work of the io_context (its connection's pending socket read does). Waiters still pending
// when it is destroyed are destroyed without running, as Asio does with pending operations at
// shutdown.
class Signal {
  public:
    Signal() = default;
    ~Signal() { destroy(std::exchange(head_, nullptr)); }
    Signal(const Signal&) = delete;
    Signal& operator=(const Signal&) = delete;

    // For a coroutine: resumes it on its executor after the next notify().
    boost::asio::awaitable<void> wait() {
        return boost::asio::async_initiate<const boost::asio::use_awaitable_t<>&, void()>(
            [this](auto handler) { add(std::move(handler)); }, boost::asio::use_awaitable);
    }
    // For a completion handler: h() runs on `ex` after the next notify(). A waiter keeps the
    // io_context's own executor when `ex` wraps one (16 bytes, not any_io_executor's 48: 10k
    // idle streams each have a waiter).
    template <typename H>
    void async_wait(const boost::asio::any_io_executor& ex, H h) {
        if (const auto* io = ex.target<boost::asio::io_context::executor_type>())
            add(boost::asio::bind_executor(*io, std::move(h)));
        else
            add(boost::asio::bind_executor(ex, std::move(h)));
    }
    void notify() {
        Waiter* w = std::exchange(head_, nullptr);
        tail_ = nullptr;
        while (w != nullptr) {
            Waiter* next = w->next;
            w->post();
            delete w;
            w = next;
        }
    }

  private:
    struct Waiter {
        virtual ~Waiter() = default;
        virtual void post() = 0;
        Waiter* next = nullptr;
    };
    template <typename H>
    struct Pending final : Waiter {
        explicit Pending(H&& handler) : h(std::move(handler)) {}
        void post() override {
            auto ex = boost::asio::get_associated_executor(h);
            boost::asio::post(ex, std::move(h));
        }
        H h;
    };
    template <typename H>
    void add(H h) {
        Waiter* w = new Pending<H>(std::move(h));
        if (tail_ != nullptr)
            tail_->next = w;
        else
            head_ = w;
        tail_ = w;
    }
    static void destroy(Waiter* w) {
        while (w != nullptr) {
            Waiter* next = w->next;
            delete w;
            w = next;
        }
    }
    Waiter* head_ = nullptr;  // in the order they came
    Waiter* tail_ = nullptr;
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
