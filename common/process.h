#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sluice {

// How to start a child process. The child joins `cgroup_dir` (a cgroup-v2 directory) and the
// network namespace at `netns` before exec, so that nothing it does runs outside them.
struct ProcessSpec {
    std::vector<std::string> argv;                     // argv[0] is looked up in PATH
    std::map<std::string, std::string> env_overrides;  // added to (or replacing) our environment
    std::optional<std::string> netns;       // path of a netns to join, e.g. /var/run/netns/x
    std::optional<std::string> cgroup_dir;  // cgroup-v2 directory to join
    std::string stdin_data;                 // written to the child's stdin, then closed
    bool inherit_stdio = false;  // true: child shares our stdin/stdout/stderr (nothing captured)
};

struct ProcessResult {
    int exit_code = -1;  // exit status, or 128 + signal number when killed by a signal
    std::string out;
    std::string err;
    bool timed_out = false;
};

// Runs a process to completion and captures stdout and stderr. On timeout the child is killed
// with SIGKILL and `timed_out` is set. Throws std::system_error if it cannot be started at all
// (fork failure); an exec failure is exit code 127 with the reason on `err`.
ProcessResult run_process(const ProcessSpec& spec,
                          std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Starts a process in the background; stdin is /dev/null, stdout/stderr are inherited unless
// `log_file` is given (then both go there, appended). Returns its pid.
pid_t spawn_process(const ProcessSpec& spec, const std::optional<std::string>& log_file = {});

// Waits up to `timeout` for `pid` to exit; returns its exit code like run_process, or nullopt.
std::optional<int> wait_process(pid_t pid, std::chrono::milliseconds timeout);

// Formats argv for logs and error messages: `ip -n x link set lo up`.
std::string join_argv(const std::vector<std::string>& argv);

}  // namespace sluice
