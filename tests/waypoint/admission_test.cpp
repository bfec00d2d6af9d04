// AdmissionQueue: the order a saturated waypoint serves waiting requests in (class first, then
// tenants in turn), who is shed when the queue is full, and queue timeouts. Coroutines on one
// io_context, as one worker runs them.
#include <gtest/gtest.h>

#include <boost/asio/post.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "waypoint/admission/queue.h"

namespace sluice::waypoint::admission {
namespace {

using namespace std::chrono_literals;

AdmissionConfig oneSlot(std::size_t max_queued = 64) {
    AdmissionConfig c;
    c.max_concurrent = 1;
    c.max_queued = max_queued;
    return c;
}

// Runs acquire() for `name` and records "<name>:<outcome>" when it returns; an admitted request
// gives its slot back on the next turn of the loop.
void request(asio::io_context& io, AdmissionQueue& q, std::vector<std::string>& log,
             std::string name, Priority p, std::string tenant) {
    asio::co_spawn(
        io,
        [&q, &log, &io, name, p, tenant]() -> awaitable<void> {
            auto [outcome, slot] = co_await q.acquire(p, tenant);
            log.push_back(name + ":" + to_string(outcome));
            if (slot) {
                auto held = std::make_shared<AdmissionQueue::Slot>(std::move(slot));
                asio::post(io, [held] { held->reset(); });
            }
        },
        asio::detached);
}

// Runs what is ready (an io_context that ran out of work must be restarted before it runs again).
void poll(asio::io_context& io) {
    io.restart();
    io.poll();
}
void runFor(asio::io_context& io, std::chrono::milliseconds d) {
    io.restart();
    io.run_for(d);
}

// Takes the only slot and keeps it until `release` is reset.
std::shared_ptr<AdmissionQueue::Slot> hold(asio::io_context& io, AdmissionQueue& q) {
    auto held = std::make_shared<AdmissionQueue::Slot>();
    asio::co_spawn(
        io,
        [&q, held]() -> awaitable<void> {
            auto [outcome, slot] = co_await q.acquire(Priority::Standard, "holder");
            EXPECT_EQ(outcome, Outcome::Admitted);
            *held = std::move(slot);
        },
        asio::detached);
    poll(io);
    return held;
}

TEST(AdmissionQueue, ServesCriticalFirstThenTenantsInTurnThenSheddable) {
    asio::io_context io;
    AdmissionQueue q(oneSlot());
    auto held = hold(io, q);
    ASSERT_EQ(q.inFlight(), 1u);
    std::vector<std::string> log;
    request(io, q, log, "s", Priority::Sheddable, "t3");
    request(io, q, log, "a1", Priority::Standard, "t1");
    request(io, q, log, "a2", Priority::Standard, "t1");
    request(io, q, log, "a3", Priority::Standard, "t1");
    request(io, q, log, "b1", Priority::Standard, "t2");
    request(io, q, log, "c", Priority::Critical, "t3");
    poll(io);
    EXPECT_EQ(log, std::vector<std::string>{}) << "everyone waits while the slot is held";
    EXPECT_EQ(q.queued(Priority::Standard), 4u);
    held->reset();
    runFor(io, 2000ms);
    EXPECT_EQ(log, (std::vector<std::string>{"c:admitted", "a1:admitted", "b1:admitted",
                                             "a2:admitted", "a3:admitted", "s:admitted"}));
    EXPECT_EQ(q.inFlight(), 0u);
}

TEST(AdmissionQueue, AFullQueueShedsTheLeastImportantNewestWaiterFirst) {
    asio::io_context io;
    AdmissionQueue q(oneSlot(2));
    auto held = hold(io, q);
    std::vector<std::string> log;
    request(io, q, log, "s1", Priority::Sheddable, "t");
    request(io, q, log, "s2", Priority::Sheddable, "t");
    request(io, q, log, "s3", Priority::Sheddable, "t");  // full, nobody below it
    poll(io);
    EXPECT_EQ(log, std::vector<std::string>{"s3:queue_full"});
    request(io, q, log, "x", Priority::Standard, "t");  // pushes out s2 (newest sheddable)
    request(io, q, log, "y", Priority::Critical, "t");  // pushes out s1
    request(io, q, log, "z", Priority::Critical, "t");  // pushes out x
    request(io, q, log, "w", Priority::Standard, "t");  // full of critical: refused
    poll(io);
    // A refusal returns at once; a pushed-out waiter wakes on its next turn: compare as sets.
    std::sort(log.begin(), log.end());
    EXPECT_EQ(log, (std::vector<std::string>{"s1:preempted", "s2:preempted", "s3:queue_full",
                                             "w:queue_full", "x:preempted"}));
    EXPECT_EQ(q.queued(Priority::Critical), 2u);
    EXPECT_EQ(q.queued(Priority::Sheddable), 0u);
    held->reset();
    runFor(io, 2000ms);
    EXPECT_EQ(log.size(), 7u);
    EXPECT_EQ(log[5], "y:admitted");
    EXPECT_EQ(log[6], "z:admitted");
}

TEST(AdmissionQueue, AWaiterPastItsClassTimeoutIsShedAndLeavesTheQueue) {
    asio::io_context io;
    auto config = oneSlot();
    config.queue_timeout[static_cast<std::size_t>(Priority::Sheddable)] = 50ms;
    std::size_t observed_queued = 99;
    AdmissionQueue q(config, [&](std::size_t, const auto& queued) {
        observed_queued = queued[static_cast<std::size_t>(Priority::Sheddable)];
    });
    auto held = hold(io, q);
    std::vector<std::string> log;
    const auto start = std::chrono::steady_clock::now();
    request(io, q, log, "s", Priority::Sheddable, "t");
    request(io, q, log, "a", Priority::Standard, "t");
    runFor(io, 300ms);
    EXPECT_EQ(log, std::vector<std::string>{"s:queue_timeout"});
    EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
    EXPECT_EQ(q.queued(Priority::Sheddable), 0u);
    EXPECT_EQ(observed_queued, 0u) << "the gauge follows the queue";
    held->reset();
    runFor(io, 1000ms);
    EXPECT_EQ(log.back(), "a:admitted") << "the standard request (10 s timeout) still got in";
}

TEST(AdmissionQueue, ClosedForShutdownForgetsWaitersAndHandsNothingOver) {
    auto io = std::make_unique<asio::io_context>();
    AdmissionQueue q(oneSlot());
    auto held = hold(*io, q);
    std::vector<std::string> log;
    request(*io, q, log, "w", Priority::Standard, "t");
    poll(*io);
    ASSERT_EQ(q.queued(Priority::Standard), 1u);
    io->stop();
    q.close();
    EXPECT_EQ(q.queued(Priority::Standard), 0u);
    io.reset();     // the waiting coroutine is destroyed, never resumed
    held->reset();  // releasing after that posts to nobody
    EXPECT_EQ(q.inFlight(), 0u);
    EXPECT_EQ(log, std::vector<std::string>{});
    asio::io_context other;
    request(other, q, log, "late", Priority::Critical, "t");
    poll(other);
    EXPECT_EQ(log, std::vector<std::string>{"late:queue_full"});
}

TEST(AdmissionQueue, ConfigParsesClassesAndRejectsUnknownOnes) {
    auto c = parseAdmissionConfig(YAML::Load(R"(
maxConcurrent: 8
maxQueued: 32
queueTimeout: {critical: 60s, sheddable: 250ms}
priorityFrom: {header: x-sluice-priority}
defaultClass: sheddable
tenantClasses: {team-a: critical}
)"));
    EXPECT_EQ(c.max_concurrent, 8u);
    EXPECT_EQ(c.max_queued, 32u);
    EXPECT_EQ(c.queue_timeout[0], 60s);
    EXPECT_EQ(c.queue_timeout[1], 10s) << "unset classes keep their default";
    EXPECT_EQ(c.queue_timeout[2], 250ms);
    EXPECT_EQ(c.priority_header, "x-sluice-priority");
    EXPECT_EQ(c.default_priority, Priority::Sheddable);
    EXPECT_EQ(c.tenant_priorities.at("team-a"), Priority::Critical);
    try {
        parseAdmissionConfig(YAML::Load("maxConcurrent: 1\ntenantClasses: {a: urgent}\n"));
        FAIL() << "an unknown class must be an error";
    } catch (const YAML::Exception& e) {
        EXPECT_NE(std::string(e.what()).find("unknown priority class \"urgent\""),
                  std::string::npos)
            << e.what();
        EXPECT_EQ(e.mark.line, 1);
    }
}

TEST(AdmissionQueue, AWithdrawnWaiterGivesItsPlaceToTheNextAtOnce) {
    asio::io_context io;
    AdmissionQueue q(oneSlot(1));
    auto held = hold(io, q);
    std::vector<std::string> log;
    AdmissionQueue::Withdrawal withdrawal;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
            auto [outcome, slot] = co_await q.acquire(Priority::Standard, "gone", &withdrawal);
            log.push_back(std::string("gone:") + to_string(outcome));
        },
        asio::detached);
    poll(io);
    EXPECT_EQ(q.queued(Priority::Standard), 1u);
    request(io, q, log, "full", Priority::Standard, "t");  // the one queue place is taken
    poll(io);
    EXPECT_EQ(log, std::vector<std::string>{"full:queue_full"});

    withdrawal.withdraw();
    poll(io);
    EXPECT_EQ(log.back(), "gone:withdrawn");
    EXPECT_EQ(q.queued(Priority::Standard), 0u);
    request(io, q, log, "next", Priority::Standard, "t");  // the place is free again
    poll(io);
    EXPECT_EQ(q.queued(Priority::Standard), 1u);
    held->reset();
    poll(io);
    EXPECT_EQ(log.back(), "next:admitted");

    // Withdrawn before it ever queued: it does not queue at all.
    AdmissionQueue::Withdrawal early;
    early.withdraw();
    auto blocker = hold(io, q);
    bool done = false;
    asio::co_spawn(
        io,
        [&]() -> awaitable<void> {
            auto [outcome, slot] = co_await q.acquire(Priority::Standard, "early", &early);
            EXPECT_EQ(outcome, Outcome::Withdrawn);
            done = true;
        },
        asio::detached);
    poll(io);
    EXPECT_TRUE(done);
}

}  // namespace
}  // namespace sluice::waypoint::admission
