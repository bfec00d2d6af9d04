#include "ztunnel/proxy/zds_client.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

namespace sluice::ztunnel::proxy {
namespace {

constexpr int kPollMs = 250;
constexpr auto kMaxBackoff = std::chrono::milliseconds(1000);

int connect_seqpacket(const std::string& path) {
    int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) {
        ::close(s);
        return -ENAMETOOLONG;
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    if (::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        const int err = errno;
        ::close(s);
        return -err;
    }
    return s;
}

}  // namespace

ZdsClient::ZdsClient(std::string socket_path, Proxy& proxy)
    : path_(std::move(socket_path)), proxy_(proxy) {}

ZdsClient::~ZdsClient() {
    stop();
}

void ZdsClient::start() {
    thread_ = std::thread([this] { run(); });
}

void ZdsClient::stop() {
    stop_ = true;
    if (thread_.joinable())
        thread_.join();
}

void ZdsClient::run() {
    auto backoff = std::chrono::milliseconds(50);
    bool warned = false;
    while (!stop_) {
        const int sock = connect_seqpacket(path_);
        if (sock < 0) {
            if (!warned)
                spdlog::warn("zds: cannot connect to {}: {}; retrying", path_, strerror(-sock));
            warned = true;
            std::this_thread::sleep_for(backoff);
            backoff = std::min(backoff * 2, kMaxBackoff);
            continue;
        }
        warned = false;
        backoff = std::chrono::milliseconds(50);
        spdlog::info("zds: connected to {}", path_);
        session(sock);
        ::close(sock);
    }
}

void ZdsClient::session(int sock) {
    zds::Message hello{.type = zds::MessageType::Hello};
    if (auto sent = zds::send_message(sock, hello); !sent) {
        spdlog::warn("zds: {}", sent.error());
        return;
    }
    std::set<std::string> sent_since_hello;
    while (!stop_) {
        auto got = zds::recv_message(sock, kPollMs);
        if (!got) {
            if (got.error().find("timed out") != std::string::npos)
                continue;
            spdlog::warn("zds: session ended: {}", got.error());
            return;
        }
        const zds::Message& m = got->message;
        zds::Message ack{.type = zds::MessageType::Ack};
        int ack_fd = -1;
        switch (m.type) {
            case zds::MessageType::AddWorkload: {
                if (got->fd < 0) {
                    ack.error = "AddWorkload without a netns fd";
                    break;
                }
                auto listener = proxy_.add_workload(m.workload, got->fd);  // takes the fd
                if (!listener) {
                    ack.error = listener.error();
                    spdlog::error("zds: cannot serve {}/{}: {}", m.workload.namespace_name,
                                  m.workload.name, listener.error());
                } else {
                    ack_fd = *listener;
                    sent_since_hello.insert(m.workload.uid);
                }
                break;
            }
            case zds::MessageType::DelWorkload:
                proxy_.remove_workload(m.uid);
                break;
            case zds::MessageType::SnapshotSent:
                for (const auto& uid : proxy_.workload_uids()) {
                    if (!sent_since_hello.contains(uid))
                        proxy_.remove_workload(uid);
                }
                synced_ = true;
                break;
            default:
                ack.error = std::string("unexpected message ") + zds::type_name(m.type);
                if (got->fd >= 0)
                    ::close(got->fd);
                break;
        }
        if (auto sent = zds::send_message(sock, ack, ack_fd); !sent) {
            spdlog::warn("zds: cannot ack: {}", sent.error());
            return;
        }
    }
}

}  // namespace sluice::ztunnel::proxy
