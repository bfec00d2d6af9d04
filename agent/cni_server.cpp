#include "agent/cni_server.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "agent/unix_listener.h"
#include "common/fd_io.h"

namespace sluice::agent {
namespace {

constexpr int kReadTimeoutMs = 5000;

}  // namespace

CniServer::CniServer(std::string socket_path, Handler handler)
    : socket_path_(std::move(socket_path)), handler_(std::move(handler)) {}

CniServer::~CniServer() {
    stopping_ = true;
    if (listen_fd_ >= 0)
        ::shutdown(listen_fd_, SHUT_RDWR);
    if (thread_.joinable())
        thread_.join();
    if (listen_fd_ >= 0)
        ::close(listen_fd_);
}

std::expected<void, std::string> CniServer::start() {
    auto fd = listen_unix(socket_path_, SOCK_STREAM, 64);
    if (!fd)
        return std::unexpected(fd.error());
    listen_fd_ = *fd;
    thread_ = std::thread([this] { serve(); });
    return {};
}

void CniServer::serve() {
    while (!stopping_) {
        pollfd p{listen_fd_, POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0)
            continue;
        int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        handle(c);
        ::close(c);
    }
}

void CniServer::handle(int fd) {
    std::string body;
    char buf[4096];
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, kReadTimeoutMs) <= 0) {
            spdlog::warn("CNI request not completed within {} ms; dropped", kReadTimeoutMs);
            return;
        }
        ssize_t r = ::recv(fd, buf, sizeof buf, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        body.append(buf, static_cast<size_t>(r));
        if (body.size() > cni::kMaxMessageBytes) {
            send_all(fd, cni::encode(cni::Response{.ok = false, .error = "request too large"}),
                     kReadTimeoutMs);
            return;
        }
    }
    auto req = cni::decode_request(body);
    cni::Response res;
    if (!req) {
        res = {.ok = false, .error = req.error()};
    } else {
        try {
            res = handler_(*req);
        } catch (const std::exception& e) {
            res = {.ok = false, .error = std::string("agent error: ") + e.what()};
        }
    }
    send_all(fd, cni::encode(res), kReadTimeoutMs);
}

}  // namespace sluice::agent
