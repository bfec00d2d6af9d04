#pragma once

#include <string>

namespace sluice::ztunnel::hbone {

// What went wrong on the way to an HBONE stream; names follow what happened, as the access
// log and metrics report them.
enum class Error {
    ConnectFailed,    // TCP connect to the peer's :15008 failed
    HandshakeFailed,  // TLS handshake failed (also: ALPN not h2)
    PeerRejected,     // the peer certificate did not verify (reason in detail)
    ProtocolError,    // HTTP/2 framing or session failure
    StreamRefused,    // the peer answered CONNECT with a non-200 status
    ConnectionLost,   // the connection closed while the stream was being opened
    Timeout,
};
const char* to_string(Error e);

struct Failure {
    Error error;
    std::string detail;
    int status = 0;  // the HTTP status for StreamRefused
    std::string message() const { return std::string(to_string(error)) + ": " + detail; }
};

// The reply statuses of DESIGN.md §4.
inline constexpr int kStatusOk = 200;
inline constexpr int kStatusBadRequest = 400;    // malformed request / authority not this pod
inline constexpr int kStatusUnauthorized = 401;  // denied by policy
inline constexpr int kStatusUnavailable = 503;   // upstream connect failed

}  // namespace sluice::ztunnel::hbone
