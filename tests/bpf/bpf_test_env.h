#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "agent/datapath/datapath.h"
#include "common/netns.h"

namespace sluice::test {

// Everything a bpf-tier test creates is named sluice-bpftest-<pid>[-tag], so a crashed run's
// leftovers can be told apart from a live run's (and from anything that is not ours).
std::string bpftest_name(const std::string& tag = "");

// Removes leftovers of earlier runs whose pid is gone: netns, cgroups, bpffs roots.
void sweep_stale_bpftest_state();

// An owned file descriptor.
class UniqueFd {
  public:
    UniqueFd() = default;
    explicit UniqueFd(int fd) : fd_(fd) {}
    ~UniqueFd() { reset(); }
    UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept {
        if (this != &o) {
            reset();
            fd_ = std::exchange(o.fd_, -1);
        }
        return *this;
    }
    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }
    void reset();

  private:
    int fd_ = -1;
};

// A cgroup-v2 directory under the cgroup2 mount that this process joins for the test's lifetime
// (cgroup sock_addr programs act for the cgroup of the process that creates a socket), leaving
// it and removing it on destruction.
class TestCgroup {
  public:
    TestCgroup();
    ~TestCgroup();
    const std::string& path() const { return path_; }

  private:
    std::string path_;
    std::string original_;
};

// A named network namespace with lo up, deleted on destruction.
class TestNetns {
  public:
    explicit TestNetns(const std::string& tag);
    ~TestNetns();
    const std::string& name() const { return name_; }
    std::string path() const { return netns_path(name_); }
    uint64_t cookie() const { return netns_cookie(path()); }
    // Runs `fn` on a thread inside this netns and returns its result.
    template <typename F>
    auto run(F&& fn) const {
        using R = decltype(fn());
        if constexpr (std::is_void_v<R>) {
            run_in_netns(path(), fn);
        } else {
            R result{};
            run_in_netns(path(), [&] { result = fn(); });
            return result;
        }
    }

  private:
    std::string name_;
};

// Runs a command and throws with its stderr when it fails.
void must_run(const std::vector<std::string>& argv);

// Connects netns `a` and `b` with a veth pair; each side gets the given IPv4/IPv6 addresses
// (with prefix, e.g. "198.18.1.1/24", "2001:db8:1::1/64"; IPv6 without DAD).
void link_netns(const TestNetns& a, const std::string& a_v4, const std::string& a_v6,
                const TestNetns& b, const std::string& b_v4, const std::string& b_v6);

// --- sockets -------------------------------------------------------------------------------

struct SockAddr {
    sockaddr_storage storage{};
    socklen_t len = 0;
    std::string to_string() const;  // "198.18.0.1:80", "[2001:db8::1]:80"
};
SockAddr make_addr(const std::string& ip, uint16_t port);  // AF_INET for dotted, else AF_INET6

// A TCP listener on ip:port; `ztunnel_mark` sets SO_MARK 0x539 before bind as ztunnel does.
// IPv6 listeners are dual-stack unless `v6only`. Throws on failure.
UniqueFd tcp_listen(const std::string& ip, uint16_t port, bool ztunnel_mark, bool v6only = false);

// A TCP socket of `family` (AF_INET / AF_INET6), optionally marked.
UniqueFd tcp_socket(int family, bool ztunnel_mark = false);

// connect() with a 3 s timeout; returns 0 or the errno.
int tcp_connect(int fd, const std::string& ip, uint16_t port);

// accept() that waits at most `timeout_ms`; an invalid fd when nothing arrived.
UniqueFd accept_within(int listener, int timeout_ms = 3000);

// bind() of a fresh TCP socket; returns 0 or the errno.
int try_bind(int family, const std::string& ip, uint16_t port, bool ztunnel_mark);

std::string local_name(int fd);
std::string peer_name(int fd);
// getsockopt(level, SO_ORIGINAL_DST) as "ip:port", or "errno <n>".
std::string original_dst(int fd, int level);
uint64_t socket_cookie(int fd);

// Sends `msg` on `from` and reads it on `to` (bounded by a 3 s receive timeout).
bool round_trip(int from, int to, const std::string& msg);

}  // namespace sluice::test
