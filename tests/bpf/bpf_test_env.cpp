#include "tests/bpf/bpf_test_env.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

#include "common/mountinfo.h"
#include "common/process.h"

namespace sluice::test {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPrefix = "sluice-bpftest-";
constexpr int kZtunnelMark = 0x539;
constexpr int kSoOriginalDst = 80;

std::string cgroup2_root() {
    auto root = find_cgroup2_mount(read_mountinfo());
    if (!root)
        throw std::runtime_error("no cgroup2 mount found");
    return *root;
}

void write_file(const std::string& path, const std::string& text) {
    std::ofstream f(path);
    f << text;
    f.flush();
    if (!f)
        throw std::runtime_error("cannot write '" + text + "' to " + path);
}

// The pid a sluice-bpftest-<pid>[-tag] name belongs to, or 0.
pid_t owner_pid(const std::string& name) {
    if (name.rfind(kPrefix, 0) != 0)
        return 0;
    try {
        return static_cast<pid_t>(std::stol(name.substr(std::strlen(kPrefix))));
    } catch (...) {
        return 0;
    }
}

bool is_stale(const std::string& name) {
    pid_t pid = owner_pid(name);
    return pid > 0 && pid != ::getpid() && ::kill(pid, 0) != 0 && errno == ESRCH;
}

// Removes a bpffs tree; unlinking a link pin detaches it once nothing else holds it.
void remove_bpffs_tree(const fs::path& root) {
    std::error_code ec;
    fs::remove_all(root, ec);
}

void set_timeouts(int fd) {
    timeval tv{3, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

ProcessResult run_argv(const std::vector<std::string>& argv) {
    ProcessSpec spec;
    spec.argv = argv;
    return run_process(spec, std::chrono::seconds(10));
}

}  // namespace

std::string bpftest_name(const std::string& tag) {
    std::string name = kPrefix + std::to_string(::getpid());
    if (!tag.empty())
        name += "-" + tag;
    return name;
}

void sweep_stale_bpftest_state() {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/var/run/netns", ec)) {
        std::string name = e.path().filename().string();
        if (is_stale(name))
            run_argv({"ip", "netns", "del", name});
    }
    for (const auto& e : fs::directory_iterator(cgroup2_root(), ec)) {
        if (e.is_directory() && is_stale(e.path().filename().string()))
            ::rmdir(e.path().c_str());
    }
    for (const auto& e : fs::directory_iterator("/sys/fs/bpf", ec)) {
        if (is_stale(e.path().filename().string()))
            remove_bpffs_tree(e.path());
    }
}

void UniqueFd::reset() {
    if (fd_ >= 0)
        ::close(fd_);
    fd_ = -1;
}

TestCgroup::TestCgroup() {
    const std::string root = cgroup2_root();
    path_ = root + "/" + bpftest_name();
    if (::mkdir(path_.c_str(), 0755) != 0 && errno != EEXIST) {
        throw std::system_error(errno, std::generic_category(), "mkdir " + path_);
    }
    std::ifstream self("/proc/self/cgroup");
    for (std::string line; std::getline(self, line);) {
        if (line.rfind("0::", 0) == 0)
            original_ = root + line.substr(3);
    }
    if (original_.empty())
        throw std::runtime_error("no cgroup-v2 line in /proc/self/cgroup");
    write_file(path_ + "/cgroup.procs", "0");
}

TestCgroup::~TestCgroup() {
    try {
        write_file(original_ + "/cgroup.procs", "0");
    } catch (...) {
    }
    ::rmdir(path_.c_str());
}

TestNetns::TestNetns(const std::string& tag) : name_(bpftest_name(tag)) {
    must_run({"ip", "netns", "add", name_});
    must_run({"ip", "-n", name_, "link", "set", "lo", "up"});
}

TestNetns::~TestNetns() {
    run_argv({"ip", "netns", "del", name_});
}

void must_run(const std::vector<std::string>& argv) {
    auto r = run_argv(argv);
    if (r.exit_code != 0) {
        throw std::runtime_error(join_argv(argv) + " failed (" + std::to_string(r.exit_code) +
                                 "): " + r.err);
    }
}

void link_netns(const TestNetns& a, const std::string& a_v4, const std::string& a_v6,
                const TestNetns& b, const std::string& b_v4, const std::string& b_v6) {
    // veth names are per netns, so short fixed names are fine.
    must_run({"ip", "-n", a.name(), "link", "add", "vt0", "type", "veth", "peer", "name", "vt1",
              "netns", b.name()});
    must_run({"ip", "-n", a.name(), "addr", "add", a_v4, "dev", "vt0"});
    must_run({"ip", "-n", b.name(), "addr", "add", b_v4, "dev", "vt1"});
    must_run({"ip", "-n", a.name(), "addr", "add", a_v6, "dev", "vt0", "nodad"});
    must_run({"ip", "-n", b.name(), "addr", "add", b_v6, "dev", "vt1", "nodad"});
    must_run({"ip", "-n", a.name(), "link", "set", "vt0", "up"});
    must_run({"ip", "-n", b.name(), "link", "set", "vt1", "up"});
}

std::string SockAddr::to_string() const {
    char buf[INET6_ADDRSTRLEN] = {};
    if (storage.ss_family == AF_INET) {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(&storage);
        ::inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
        return std::string(buf) + ":" + std::to_string(ntohs(sin->sin_port));
    }
    if (storage.ss_family == AF_INET6) {
        const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&storage);
        ::inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf);
        return "[" + std::string(buf) + "]:" + std::to_string(ntohs(sin6->sin6_port));
    }
    return "family " + std::to_string(storage.ss_family);
}

SockAddr make_addr(const std::string& ip, uint16_t port) {
    SockAddr a;
    if (ip.find(':') == std::string::npos) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&a.storage);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        if (::inet_pton(AF_INET, ip.c_str(), &sin->sin_addr) != 1) {
            throw std::invalid_argument("bad IPv4 " + ip);
        }
        a.len = sizeof(sockaddr_in);
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&a.storage);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        if (::inet_pton(AF_INET6, ip.c_str(), &sin6->sin6_addr) != 1) {
            throw std::invalid_argument("bad IPv6 " + ip);
        }
        a.len = sizeof(sockaddr_in6);
    }
    return a;
}

UniqueFd tcp_socket(int family, bool ztunnel_mark) {
    UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd)
        throw std::system_error(errno, std::generic_category(), "socket");
    if (ztunnel_mark) {
        int mark = kZtunnelMark;
        if (::setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
            throw std::system_error(errno, std::generic_category(), "SO_MARK");
        }
    }
    set_timeouts(fd.get());
    return fd;
}

UniqueFd tcp_listen(const std::string& ip, uint16_t port, bool ztunnel_mark, bool v6only) {
    SockAddr addr = make_addr(ip, port);
    UniqueFd fd = tcp_socket(addr.storage.ss_family, ztunnel_mark);
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (addr.storage.ss_family == AF_INET6) {
        int v6 = v6only ? 1 : 0;
        ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6);
    }
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr.storage), addr.len) != 0) {
        throw std::system_error(errno, std::generic_category(), "bind " + addr.to_string());
    }
    if (::listen(fd.get(), 16) != 0)
        throw std::system_error(errno, std::generic_category(), "listen");
    return fd;
}

int tcp_connect(int fd, const std::string& ip, uint16_t port) {
    SockAddr addr = make_addr(ip, port);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr.storage), addr.len) == 0)
        return 0;
    return errno;
}

UniqueFd accept_within(int listener, int timeout_ms) {
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, timeout_ms) != 1)
        return UniqueFd();
    return UniqueFd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
}

int try_bind(int family, const std::string& ip, uint16_t port, bool ztunnel_mark) {
    UniqueFd fd = tcp_socket(family, ztunnel_mark);
    SockAddr addr = make_addr(ip, port);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr.storage), addr.len) == 0)
        return 0;
    return errno;
}

std::string local_name(int fd) {
    SockAddr a;
    a.len = sizeof a.storage;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a.storage), &a.len) != 0) {
        return "errno " + std::to_string(errno);
    }
    return a.to_string();
}

std::string peer_name(int fd) {
    SockAddr a;
    a.len = sizeof a.storage;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&a.storage), &a.len) != 0) {
        return "errno " + std::to_string(errno);
    }
    return a.to_string();
}

std::string original_dst(int fd, int level) {
    SockAddr a;
    a.len = sizeof a.storage;
    if (::getsockopt(fd, level, kSoOriginalDst, &a.storage, &a.len) != 0) {
        return "errno " + std::to_string(errno);
    }
    return a.to_string();
}

uint64_t socket_cookie(int fd) {
    uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    if (::getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) != 0) {
        throw std::system_error(errno, std::generic_category(), "SO_COOKIE");
    }
    return cookie;
}

bool round_trip(int from, int to, const std::string& msg) {
    if (::send(from, msg.data(), msg.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(msg.size())) {
        return false;
    }
    std::string got(msg.size(), '\0');
    size_t have = 0;
    for (int i = 0; i < 100 && have < got.size(); ++i) {
        ssize_t n = ::recv(to, got.data() + have, got.size() - have, 0);
        if (n <= 0)
            return false;
        have += static_cast<size_t>(n);
    }
    return got == msg;
}

}  // namespace sluice::test
