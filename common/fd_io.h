#pragma once

#include <string_view>

namespace sluice {

// poll() for `events` on one descriptor, retrying EINTR; true when ready within the timeout
// (-1: no timeout).
bool wait_fd(int fd, short events, int timeout_ms);

// Sends all of `data` on a socket (MSG_NOSIGNAL), waiting at most `timeout_ms` for each chunk
// to fit; false when the peer went away or stalled.
bool send_all(int fd, std::string_view data, int timeout_ms);

}  // namespace sluice
