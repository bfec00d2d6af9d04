#include "agent/cni/protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace sluice::cni {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
}

}  // namespace

std::string encode(const Request& r) {
    return json{{"command", r.command},
                {"containerID", r.container_id},
                {"netns", r.netns},
                {"ifname", r.ifname},
                {"podNamespace", r.pod_namespace},
                {"podName", r.pod_name},
                {"podUID", r.pod_uid},
                {"ips", r.ips}}
        .dump();
}

std::string encode(const Response& r) {
    return json{{"ok", r.ok}, {"enrolled", r.enrolled}, {"error", r.error}}.dump();
}

std::expected<Request, std::string> decode_request(const std::string& text) {
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return std::unexpected("request is not a JSON object");
    try {
        Request r;
        r.command = j.at("command").get<std::string>();
        r.container_id = j.value("containerID", "");
        r.netns = j.value("netns", "");
        r.ifname = j.value("ifname", "");
        r.pod_namespace = j.value("podNamespace", "");
        r.pod_name = j.value("podName", "");
        r.pod_uid = j.value("podUID", "");
        r.ips = j.value("ips", std::vector<std::string>{});
        if (r.command != "ADD" && r.command != "DEL" && r.command != "CHECK") {
            return std::unexpected("unknown command '" + r.command + "'");
        }
        if (r.pod_namespace.empty() || r.pod_name.empty()) {
            return std::unexpected(
                "request without pod namespace/name (CNI_ARGS K8S_POD_NAMESPACE, K8S_POD_NAME)");
        }
        if (r.command != "DEL" && r.netns.empty())
            return std::unexpected(r.command + " without netns");
        return r;
    } catch (const json::exception& e) {
        return std::unexpected(std::string("malformed request: ") + e.what());
    }
}

std::expected<Response, std::string> decode_response(const std::string& text) {
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return std::unexpected("agent response is not a JSON object");
    Response r;
    r.ok = j.value("ok", false);
    r.enrolled = j.value("enrolled", false);
    r.error = j.value("error", "");
    return r;
}

std::expected<Response, std::string> call_agent(const std::string& socket_path,
                                                const Request& request,
                                                std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return std::unexpected(std::string("socket: ") + std::strerror(errno));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_path.size() >= sizeof addr.sun_path) {
        ::close(fd);
        return std::unexpected("agent socket path too long: " + socket_path);
    }
    std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 &&
        errno != EINPROGRESS) {
        std::string why = std::strerror(errno);
        ::close(fd);
        return std::unexpected("sluice-agent is not reachable at " + socket_path + ": " + why);
    }
    const std::string body = encode(request);
    size_t sent = 0;
    while (sent < body.size()) {
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, remaining_ms(deadline)) <= 0)
            break;
        ssize_t w = ::send(fd, body.data() + sent, body.size() - sent, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (w <= 0)
            break;
        sent += static_cast<size_t>(w);
    }
    if (sent < body.size()) {
        ::close(fd);
        return std::unexpected("could not send the request to sluice-agent at " + socket_path);
    }
    ::shutdown(fd, SHUT_WR);
    std::string reply;
    char buf[4096];
    for (;;) {
        int left = remaining_ms(deadline);
        pollfd p{fd, POLLIN, 0};
        if (left == 0 || ::poll(&p, 1, left) <= 0) {
            ::close(fd);
            return std::unexpected("sluice-agent did not answer within " +
                                   std::to_string(timeout.count()) + " ms");
        }
        ssize_t r = ::recv(fd, buf, sizeof buf, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0)
            break;
        reply.append(buf, static_cast<size_t>(r));
        if (reply.size() > kMaxMessageBytes)
            break;
    }
    ::close(fd);
    return decode_response(reply);
}

}  // namespace sluice::cni
