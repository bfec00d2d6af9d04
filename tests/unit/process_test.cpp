#include "common/process.h"

#include <gtest/gtest.h>

#include <string>

namespace sluice {
namespace {

TEST(RunProcess, CapturesStdoutStderrAndExitCode) {
    auto r = run_process({.argv = {"sh", "-c", "echo out; echo err >&2; exit 3"}});
    EXPECT_EQ(r.exit_code, 3);
    EXPECT_EQ(r.out, "out\n");
    EXPECT_EQ(r.err, "err\n");
    EXPECT_FALSE(r.timed_out);
}

TEST(RunProcess, FeedsStdinLargerThanAPipeBuffer) {
    // 1 MiB through cat: stdin and stdout must be pumped together or both sides block.
    std::string big(1 << 20, 'x');
    auto r = run_process({.argv = {"cat"}, .stdin_data = big});
    EXPECT_EQ(r.exit_code, 0);
    EXPECT_EQ(r.out.size(), big.size());
    EXPECT_EQ(r.out, big);
}

TEST(RunProcess, EnvironmentOverrides) {
    auto r = run_process({.argv = {"sh", "-c", "printf %s \"$CNI_COMMAND\""},
                          .env_overrides = {{"CNI_COMMAND", "ADD"}}});
    EXPECT_EQ(r.out, "ADD");
}

TEST(RunProcess, ExecFailureIs127WithReason) {
    auto r = run_process({.argv = {"/nonexistent/sluice-no-such-binary"}});
    EXPECT_EQ(r.exit_code, 127);
    EXPECT_NE(r.err.find("No such file"), std::string::npos) << r.err;
}

TEST(RunProcess, TimeoutKillsTheChild) {
    auto start = std::chrono::steady_clock::now();
    auto r = run_process({.argv = {"sleep", "30"}}, std::chrono::milliseconds(200));
    EXPECT_TRUE(r.timed_out);
    EXPECT_EQ(r.exit_code, 128 + 9);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(RunProcess, KilledBySignalReports128PlusSignal) {
    auto r = run_process({.argv = {"sh", "-c", "kill -TERM $$"}});
    EXPECT_EQ(r.exit_code, 128 + 15);
}

TEST(SpawnProcess, BackgroundProcessCanBeWaitedFor) {
    pid_t pid = spawn_process({.argv = {"sh", "-c", "exit 7"}});
    ASSERT_GT(pid, 0);
    EXPECT_EQ(wait_process(pid, std::chrono::seconds(5)), 7);
}

TEST(JoinArgv, SpaceSeparated) {
    EXPECT_EQ(join_argv({"ip", "-n", "x"}), "ip -n x");
}

}  // namespace
}  // namespace sluice

namespace sluice {
namespace {

TEST(RunProcess, ChildThatIgnoresStdinDoesNotKillUsWithSigpipe) {
    // 1 MiB to a child that exits at once: our writes hit a closed pipe.
    auto r = run_process({.argv = {"true"}, .stdin_data = std::string(1 << 20, 'x')});
    EXPECT_EQ(r.exit_code, 0);
}

}  // namespace
}  // namespace sluice
