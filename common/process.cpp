#include "common/process.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>

extern char** environ;

namespace sluice {
namespace {

using Clock = std::chrono::steady_clock;

// Everything the child needs, prepared before fork(): between fork and exec only
// async-signal-safe calls are allowed, so no allocation happens there.
struct ChildPlan {
    std::vector<std::string> env_storage;
    std::vector<char*> argv;
    std::vector<char*> envp;
    std::string cgroup_procs;
    std::string netns;
    std::string exec_error_prefix;
};

ChildPlan make_plan(const ProcessSpec& spec) {
    if (spec.argv.empty())
        throw std::invalid_argument("run_process: empty argv");
    ChildPlan plan;
    std::map<std::string, std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        std::string kv(*e);
        auto eq = kv.find('=');
        if (eq != std::string::npos)
            env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    for (const auto& [k, v] : spec.env_overrides)
        env[k] = v;
    for (const auto& [k, v] : env)
        plan.env_storage.push_back(k + "=" + v);
    for (auto& s : plan.env_storage)
        plan.envp.push_back(s.data());
    plan.envp.push_back(nullptr);
    for (const auto& a : spec.argv)
        plan.argv.push_back(const_cast<char*>(a.c_str()));
    plan.argv.push_back(nullptr);
    if (spec.cgroup_dir)
        plan.cgroup_procs = *spec.cgroup_dir + "/cgroup.procs";
    if (spec.netns)
        plan.netns = *spec.netns;
    plan.exec_error_prefix = "sluice: cannot start " + spec.argv[0] + ": ";
    return plan;
}

void write_all(int fd, const char* p, size_t n) {
    while (n > 0) {
        ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= static_cast<size_t>(w);
    }
}

[[noreturn]] void child_fail(const ChildPlan& plan, const char* what) {
    int e = errno;
    write_all(2, plan.exec_error_prefix.data(), plan.exec_error_prefix.size());
    write_all(2, what, std::strlen(what));
    write_all(2, ": ", 2);
    const char* msg = strerror(e);
    write_all(2, msg, std::strlen(msg));
    write_all(2, "\n", 1);
    _exit(127);
}

// Runs in the child after fork(). Joins cgroup then netns, then execs.
[[noreturn]] void exec_child(const ChildPlan& plan) {
    // The parent may block signals on its threads; the child must start clean.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (!plan.cgroup_procs.empty()) {
        int fd = ::open(plan.cgroup_procs.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            child_fail(plan, "open cgroup.procs");
        if (::write(fd, "0", 1) != 1)
            child_fail(plan, "join cgroup");
        ::close(fd);
    }
    if (!plan.netns.empty()) {
        int fd = ::open(plan.netns.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            child_fail(plan, "open netns");
        if (::setns(fd, CLONE_NEWNET) != 0)
            child_fail(plan, "setns");
        ::close(fd);
    }
    ::execvpe(plan.argv[0], plan.argv.data(), plan.envp.data());
    child_fail(plan, "exec");
}

int decode_status(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

void make_pipe(int fds[2]) {
    if (::pipe2(fds, O_CLOEXEC) != 0)
        throw std::system_error(errno, std::generic_category(), "pipe2");
}

// Blocks SIGPIPE on this thread while we write to a child's stdin: a child that exits without
// reading must cost us an EPIPE, not the whole process. A SIGPIPE our writes raised is consumed
// before the old mask comes back.
class SigpipeGuard {
  public:
    SigpipeGuard() {
        sigemptyset(&pipe_);
        sigaddset(&pipe_, SIGPIPE);
        sigset_t pending;
        sigpending(&pending);
        was_pending_ = sigismember(&pending, SIGPIPE) == 1;
        pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    }
    ~SigpipeGuard() {
        sigset_t pending;
        sigpending(&pending);
        if (!was_pending_ && sigismember(&pending, SIGPIPE) == 1) {
            timespec zero{0, 0};
            sigtimedwait(&pipe_, nullptr, &zero);
        }
        pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    }

  private:
    sigset_t pipe_, old_;
    bool was_pending_ = false;
};

}  // namespace

std::string join_argv(const std::vector<std::string>& argv) {
    std::string s;
    for (const auto& a : argv) {
        if (!s.empty())
            s += ' ';
        s += a;
    }
    return s;
}

ProcessResult run_process(const ProcessSpec& spec, std::chrono::milliseconds timeout) {
    ChildPlan plan = make_plan(spec);
    SigpipeGuard no_sigpipe;  // the child's mask is reset in exec_child
    int in[2], out[2], err[2];
    if (!spec.inherit_stdio) {
        make_pipe(in);
        make_pipe(out);
        make_pipe(err);
    }
    pid_t pid = ::fork();
    if (pid < 0)
        throw std::system_error(errno, std::generic_category(), "fork");
    if (pid == 0) {
        if (!spec.inherit_stdio) {
            ::dup2(in[0], 0);
            ::dup2(out[1], 1);
            ::dup2(err[1], 2);
        }
        exec_child(plan);
    }
    ProcessResult result;
    if (!spec.inherit_stdio) {
        ::close(in[0]);
        ::close(out[1]);
        ::close(err[1]);
        // Non-blocking stdin so a child that never reads cannot wedge us.
        ::fcntl(in[1], F_SETFL, O_NONBLOCK);
        size_t written = 0;
        int in_fd = in[1];
        if (spec.stdin_data.empty()) {
            ::close(in_fd);
            in_fd = -1;
        }
        int out_fd = out[0], err_fd = err[0];
        auto deadline = Clock::now() + timeout;
        char buf[16384];
        while (out_fd >= 0 || err_fd >= 0 || in_fd >= 0) {
            auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
            if (left.count() <= 0) {
                result.timed_out = true;
                ::kill(pid, SIGKILL);
                break;
            }
            pollfd pfds[3];
            int n = 0;
            if (in_fd >= 0)
                pfds[n++] = {in_fd, POLLOUT, 0};
            if (out_fd >= 0)
                pfds[n++] = {out_fd, POLLIN, 0};
            if (err_fd >= 0)
                pfds[n++] = {err_fd, POLLIN, 0};
            int rc = ::poll(pfds, n, static_cast<int>(left.count()));
            if (rc < 0 && errno == EINTR)
                continue;
            if (rc < 0)
                break;
            for (int i = 0; i < n; ++i) {
                if (pfds[i].revents == 0)
                    continue;
                int fd = pfds[i].fd;
                if (fd == in_fd) {
                    ssize_t w = ::write(fd, spec.stdin_data.data() + written,
                                        spec.stdin_data.size() - written);
                    if (w > 0)
                        written += static_cast<size_t>(w);
                    if (w < 0 && errno != EAGAIN && errno != EINTR)
                        written = spec.stdin_data.size();
                    if (written >= spec.stdin_data.size()) {
                        ::close(in_fd);
                        in_fd = -1;
                    }
                    continue;
                }
                ssize_t r = ::read(fd, buf, sizeof buf);
                if (r > 0) {
                    (fd == out_fd ? result.out : result.err).append(buf, static_cast<size_t>(r));
                } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                    ::close(fd);
                    (fd == out_fd ? out_fd : err_fd) = -1;
                }
            }
        }
        for (int fd : {in_fd, out_fd, err_fd}) {
            if (fd >= 0)
                ::close(fd);
        }
    }
    if (spec.inherit_stdio) {
        auto code = wait_process(pid, timeout);
        if (!code) {
            result.timed_out = true;
            ::kill(pid, SIGKILL);
        } else {
            result.exit_code = *code;
            return result;
        }
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    result.exit_code = decode_status(status);
    return result;
}

pid_t spawn_process(const ProcessSpec& spec, const std::optional<std::string>& log_file) {
    ChildPlan plan = make_plan(spec);
    int log_fd = -1;
    if (log_file) {
        log_fd = ::open(log_file->c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd < 0)
            throw std::system_error(errno, std::generic_category(), "open " + *log_file);
    }
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    pid_t pid = ::fork();
    if (pid < 0)
        throw std::system_error(errno, std::generic_category(), "fork");
    if (pid == 0) {
        if (null_fd >= 0)
            ::dup2(null_fd, 0);
        if (log_fd >= 0) {
            ::dup2(log_fd, 1);
            ::dup2(log_fd, 2);
        }
        exec_child(plan);
    }
    if (null_fd >= 0)
        ::close(null_fd);
    if (log_fd >= 0)
        ::close(log_fd);
    return pid;
}

std::optional<int> wait_process(pid_t pid, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return decode_status(status);
        if (r < 0 && errno != EINTR)
            return std::nullopt;
        if (Clock::now() >= deadline)
            return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

}  // namespace sluice
