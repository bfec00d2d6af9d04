#include "agent/unix_listener.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sluice::agent {

std::expected<int, std::string> listen_unix(const std::string& path, int type, int backlog) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path)
        return std::unexpected("socket path too long: " + path);
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return std::unexpected(std::string("socket: ") + std::strerror(errno));
    ::unlink(path.c_str());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::listen(fd, backlog) != 0) {
        std::string why = std::strerror(errno);
        ::close(fd);
        return std::unexpected("listen on " + path + ": " + why);
    }
    ::chmod(path.c_str(), 0600);
    return fd;
}

}  // namespace sluice::agent
