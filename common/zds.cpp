#include "common/zds.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace sluice::zds {
namespace {

using nlohmann::json;

struct TypeName {
    MessageType type;
    const char* name;
};
constexpr TypeName kTypes[] = {{MessageType::Hello, "Hello"},
                               {MessageType::AddWorkload, "AddWorkload"},
                               {MessageType::DelWorkload, "DelWorkload"},
                               {MessageType::SnapshotSent, "SnapshotSent"},
                               {MessageType::Ack, "Ack"}};

std::string errno_text(const char* what) {
    return std::string(what) + ": " + std::strerror(errno);
}

}  // namespace

const char* type_name(MessageType t) {
    for (const auto& e : kTypes) {
        if (e.type == t)
            return e.name;
    }
    return "?";
}

std::string encode(const Message& m) {
    json j{{"type", type_name(m.type)}};
    switch (m.type) {
        case MessageType::Hello:
            j["version"] = m.version;
            break;
        case MessageType::AddWorkload:
            j["workload"] = {{"uid", m.workload.uid},
                             {"name", m.workload.name},
                             {"namespace", m.workload.namespace_name},
                             {"serviceAccount", m.workload.service_account},
                             {"node", m.workload.node},
                             {"ips", m.workload.ips},
                             {"netnsCookie", m.workload.netns_cookie}};
            break;
        case MessageType::DelWorkload:
            j["uid"] = m.uid;
            break;
        case MessageType::SnapshotSent:
            break;
        case MessageType::Ack:
            j["error"] = m.error;
            break;
    }
    return j.dump();
}

std::expected<Message, std::string> decode(std::string_view bytes) {
    json j = json::parse(bytes, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object())
        return std::unexpected("zds: message is not a JSON object");
    try {
        Message m;
        const std::string type = j.at("type").get<std::string>();
        bool known = false;
        for (const auto& e : kTypes) {
            if (type == e.name) {
                m.type = e.type;
                known = true;
            }
        }
        if (!known)
            return std::unexpected("zds: unknown message type '" + type + "'");
        switch (m.type) {
            case MessageType::Hello:
                m.version = j.at("version").get<int>();
                break;
            case MessageType::AddWorkload: {
                const json& w = j.at("workload");
                m.workload.uid = w.at("uid").get<std::string>();
                m.workload.name = w.at("name").get<std::string>();
                m.workload.namespace_name = w.at("namespace").get<std::string>();
                m.workload.service_account = w.at("serviceAccount").get<std::string>();
                m.workload.node = w.value("node", "");
                m.workload.ips = w.at("ips").get<std::vector<std::string>>();
                m.workload.netns_cookie = w.value("netnsCookie", uint64_t{0});
                if (m.workload.uid.empty())
                    return std::unexpected("zds: AddWorkload without uid");
                break;
            }
            case MessageType::DelWorkload:
                m.uid = j.at("uid").get<std::string>();
                break;
            case MessageType::SnapshotSent:
                break;
            case MessageType::Ack:
                m.error = j.value("error", "");
                break;
        }
        return m;
    } catch (const json::exception& e) {
        return std::unexpected(std::string("zds: malformed message: ") + e.what());
    }
}

std::expected<void, std::string> send_message(int sock, const Message& m, int fd) {
    const std::string body = encode(m);
    if (body.size() > kMaxMessageBytes)
        return std::unexpected("zds: message too large");
    iovec iov{const_cast<char*>(body.data()), body.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    for (;;) {
        ssize_t n = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n >= 0)
            return {};
        if (errno != EINTR)
            return std::unexpected(errno_text("zds: sendmsg"));
    }
}

std::expected<Received, std::string> recv_message(int sock, int timeout_ms) {
    pollfd p{sock, POLLIN, 0};
    int rc;
    do {
        rc = ::poll(&p, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return std::unexpected(errno_text("zds: poll"));
    if (rc == 0)
        return std::unexpected("zds: timed out waiting for a message");

    std::string body(kMaxMessageBytes, '\0');
    iovec iov{body.data(), body.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do {
        n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return std::unexpected(errno_text("zds: recvmsg"));
    if (n == 0)
        return std::unexpected("closed");

    // Take every passed descriptor so none leaks; keep the first.
    int fd = -1;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
            int got;
            std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (fd < 0) {
                fd = got;
            } else {
                ::close(got);
            }
        }
    }
    if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
        if (fd >= 0)
            ::close(fd);
        return std::unexpected("zds: message truncated");
    }
    body.resize(static_cast<size_t>(n));
    auto decoded = decode(body);
    if (!decoded) {
        if (fd >= 0)
            ::close(fd);
        return std::unexpected(decoded.error());
    }
    return Received{std::move(*decoded), fd};
}

}  // namespace sluice::zds
