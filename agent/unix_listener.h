#pragma once

#include <expected>
#include <string>

namespace sluice::agent {

// A listening unix socket at `path` (SOCK_STREAM or SOCK_SEQPACKET), mode 0600. A socket file
// left by an earlier agent is replaced: only this agent listens on its run dir's sockets.
std::expected<int, std::string> listen_unix(const std::string& path, int type, int backlog);

}  // namespace sluice::agent
