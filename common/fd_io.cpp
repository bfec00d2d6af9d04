#include "common/fd_io.h"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

namespace sluice {

bool wait_fd(int fd, short events, int timeout_ms) {
    pollfd p{fd, events, 0};
    int rc;
    do {
        rc = ::poll(&p, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    return rc > 0;
}

bool send_all(int fd, std::string_view data, int timeout_ms) {
    size_t off = 0;
    while (off < data.size()) {
        if (!wait_fd(fd, POLLOUT, timeout_ms))
            return false;
        ssize_t w = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
        if (w < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (w <= 0)
            return false;
        off += static_cast<size_t>(w);
    }
    return true;
}

}  // namespace sluice
