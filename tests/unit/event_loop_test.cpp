// common/event_loop: the bounded busy polling shared by ztunnel's and the waypoint's workers.
#include <gtest/gtest.h>
#include <pthread.h>
#include <time.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <chrono>
#include <thread>

#include "common/event_loop.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;

std::chrono::nanoseconds cpuTime(clockid_t clock) {
    timespec ts{};
    clock_gettime(clock, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// The CPU time a loop thread with `spin` uses: in the `spin` after one handler ran, and in a
// quiet window after that.
struct Usage {
    std::chrono::nanoseconds after_work, idle;
};

Usage usageAfterOneHandler(std::chrono::microseconds spin) {
    asio::io_context io;
    auto guard = asio::make_work_guard(io);
    std::thread loop([&] { run_event_loop(io, spin); });
    clockid_t clock{};
    EXPECT_EQ(pthread_getcpuclockid(loop.native_handle(), &clock), 0);
    std::atomic<bool> ran{false};
    std::this_thread::sleep_for(100ms);  // the loop sleeps before any work
    asio::post(io, [&] { ran = true; });
    while (!ran)
        std::this_thread::sleep_for(1ms);
    const auto start = cpuTime(clock);
    std::this_thread::sleep_for(std::chrono::duration_cast<std::chrono::milliseconds>(spin) + 50ms);
    const auto spun = cpuTime(clock);
    std::this_thread::sleep_for(300ms);
    const auto quiet = cpuTime(clock);
    io.stop();
    loop.join();
    return {spun - start, quiet - spun};
}

TEST(EventLoop, SpinsForTheWindowAfterWorkThenSleeps) {
    const Usage u = usageAfterOneHandler(100ms);
    // Polling for 100 ms of wall time: even a thread that got a tenth of a CPU used 10 ms.
    EXPECT_GE(u.after_work, 10ms);
    EXPECT_LT(u.idle, 10ms) << "still spinning after the window";
}

TEST(EventLoop, WithoutSpinAThreadSleepsAtOnce) {
    const Usage u = usageAfterOneHandler(0us);
    EXPECT_LT(u.after_work, 10ms);
    EXPECT_LT(u.idle, 10ms);
}

TEST(EventLoop, RunsEveryHandlerAndEndsWhenWorkRunsOut) {
    asio::io_context io;
    int ran = 0;
    for (int i = 0; i < 100; ++i)
        asio::post(io, [&] { ++ran; });
    run_event_loop(io, 1ms);  // no guard: returns once the handlers ran
    EXPECT_EQ(ran, 100);
}

}  // namespace
}  // namespace sluice
