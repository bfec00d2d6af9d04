#include "tests/support/zds_peer.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <system_error>

#include "sluice_abi.h"

namespace sluice::test {
namespace {

// Child side, after fork(): only system calls until _exit.
int marked_listener(int family, const void* addr, uint16_t port, bool v6only) {
    int s = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -1;
    int mark = SLUICE_ZTUNNEL_MARK, one = 1, v6 = v6only ? 1 : 0;
    ::setsockopt(s, SOL_SOCKET, SO_MARK, &mark, sizeof mark);
    ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_storage ss{};
    socklen_t len;
    if (family == AF_INET) {
        auto* a = reinterpret_cast<sockaddr_in*>(&ss);
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        std::memcpy(&a->sin_addr, addr, 4);
        len = sizeof *a;
    } else {
        ::setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v6, sizeof v6);
        auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        std::memcpy(&a->sin6_addr, addr, 16);
        len = sizeof *a;
    }
    if (::bind(s, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(s, 64) != 0)
        return -1;
    return s;
}

// Opens the three listeners in the netns from a child in `cgroup_procs`; returns them.
std::vector<Fd> open_listeners(int netns_fd, const std::string& cgroup_procs, std::string& error) {
    int sp[2];
    if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sp) != 0) {
        error = "socketpair";
        return {};
    }
    in_addr lo4{htonl(INADDR_LOOPBACK)};
    in6_addr lo6 = IN6ADDR_LOOPBACK_INIT, any6 = IN6ADDR_ANY_INIT;
    pid_t pid = ::fork();
    if (pid == 0) {
        int fds[3] = {-1, -1, -1};
        int cg = ::open(cgroup_procs.c_str(), O_WRONLY | O_CLOEXEC);
        if (cg < 0 || ::write(cg, "0", 1) != 1 || ::setns(netns_fd, CLONE_NEWNET) != 0)
            _exit(2);
        fds[0] = marked_listener(AF_INET, &lo4, SLUICE_PORT_OUTBOUND, false);
        fds[1] = marked_listener(AF_INET6, &lo6, SLUICE_PORT_OUTBOUND, true);
        fds[2] = marked_listener(AF_INET6, &any6, SLUICE_PORT_INBOUND, false);
        if (fds[0] < 0 || fds[1] < 0 || fds[2] < 0)
            _exit(3);
        char byte = 0;
        iovec iov{&byte, 1};
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof fds)] = {};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof fds);
        std::memcpy(CMSG_DATA(c), fds, sizeof fds);
        _exit(::sendmsg(sp[1], &msg, 0) == 1 ? 0 : 4);
    }
    ::close(sp[1]);
    std::vector<Fd> out;
    char byte;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 3)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
        ::recvmsg(sp[0], &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) == 1) {
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        int fds[3];
        std::memcpy(fds, CMSG_DATA(c), sizeof fds);
        for (int fd : fds)
            out.emplace_back(fd);
    } else {
        error = "listener child failed with status " + std::to_string(status);
    }
    ::close(sp[0]);
    return out;
}

}  // namespace

ZdsPeer::ZdsPeer(std::string socket_path, std::string cgroup_dir)
    : socket_path_(std::move(socket_path)), cgroup_procs_(std::move(cgroup_dir) + "/cgroup.procs") {
    thread_ = std::thread([this] { run(); });
}

ZdsPeer::~ZdsPeer() {
    stopping_ = true;
    if (thread_.joinable())
        thread_.join();
}

bool ZdsPeer::wait_connected(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!connected_ && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return connected_;
}

std::optional<ZdsPeer::Listeners> ZdsPeer::listeners(const std::string& pod,
                                                     std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        {
            std::lock_guard lk(mu_);
            if (auto it = by_pod_.find(pod); it != by_pod_.end())
                return it->second;
        }
        if (std::chrono::steady_clock::now() >= deadline)
            return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

void ZdsPeer::run() {
    while (!stopping_) {
        int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, socket_path_.c_str(), sizeof addr.sun_path - 1);
        if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
            ::close(s);
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            continue;
        }
        if (zds::send_message(s, {.type = zds::MessageType::Hello})) {
            connected_ = true;
            ++connections_;
            serve(s);
        }
        connected_ = false;
        ::close(s);
    }
}

void ZdsPeer::serve(int sock) {
    while (!stopping_) {
        auto got = zds::recv_message(sock, 100);
        if (!got) {
            if (got.error() == "zds: timed out waiting for a message")
                continue;
            return;  // agent gone: reconnect
        }
        Fd netns(got->fd);
        const zds::Message& m = got->message;
        if (m.type == zds::MessageType::AddWorkload) {
            const std::string pod = m.workload.namespace_name + "/" + m.workload.name;
            {
                std::lock_guard lk(mu_);
                ++adds_[pod];
                if (refused_.contains(pod)) {
                    (void)zds::send_message(
                        sock, {.type = zds::MessageType::Ack, .error = "refused by the test"});
                    continue;
                }
                // A replay after the agent reconnected: keep serving with the same listeners.
                if (auto it = owned_.find(m.workload.uid); it != owned_.end()) {
                    (void)zds::send_message(sock, {.type = zds::MessageType::Ack},
                                            it->second[2].get());
                    continue;
                }
            }
            std::string error;
            std::vector<Fd> fds = open_listeners(netns.get(), cgroup_procs_, error);
            if (fds.size() != 3) {
                (void)zds::send_message(sock, {.type = zds::MessageType::Ack, .error = error});
                continue;
            }
            Listeners l{.uid = m.workload.uid,
                        .netns_cookie = m.workload.netns_cookie,
                        .outbound4 = fds[0].get(),
                        .outbound6 = fds[1].get(),
                        .inbound = fds[2].get()};
            int inbound = fds[2].get();
            {
                std::lock_guard lk(mu_);
                by_pod_[pod] = l;
                pod_by_uid_[m.workload.uid] = pod;
                owned_[m.workload.uid] = std::move(fds);
            }
            (void)zds::send_message(sock, {.type = zds::MessageType::Ack}, inbound);
        } else if (m.type == zds::MessageType::DelWorkload) {
            ++deletes_;
            {
                std::lock_guard lk(mu_);
                if (auto it = pod_by_uid_.find(m.uid); it != pod_by_uid_.end()) {
                    by_pod_.erase(it->second);
                    pod_by_uid_.erase(it);
                }
                owned_.erase(m.uid);
            }
            (void)zds::send_message(sock, {.type = zds::MessageType::Ack});
        } else if (m.type == zds::MessageType::SnapshotSent) {
            ++snapshots_;
            (void)zds::send_message(sock, {.type = zds::MessageType::Ack});
        }
    }
}

}  // namespace sluice::test
