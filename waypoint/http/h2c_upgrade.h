#pragma once

#include <string>

#include "waypoint/http/asio.h"

namespace sluice::waypoint {

// What the waypoint does with an HTTP/1.1 request that offers `Upgrade: h2c` (RFC 7540 §3.2;
// docs/waypoint.md, "HTTP/2 from clients").
struct H2cUpgradeOffer {
    enum class Verdict {
        Http1,      // no offer, or one not taken: the request is served over HTTP/1.1
        Malformed,  // HTTP2-Settings does not hold a valid SETTINGS payload: 400, then close
        Upgrade,    // 101 Switching Protocols; the request becomes stream 1
    };
    Verdict verdict = Verdict::Http1;
    std::string settings;  // Upgrade: the decoded SETTINGS payload
    std::string problem;   // Malformed: what is wrong, for the 400's message
};

// Reads the offer of a whole request (its body too: RFC 7540 §3.2 has the client send it whole
// before any HTTP/2 frame, and serveHttp1 has read it before it asks). It is taken only from an
// HTTP/1.1 request with an `h2c` token in Upgrade, `Upgrade` and `HTTP2-Settings` in
// Connection, and exactly one HTTP2-Settings field (RFC 7540 §3.2.1: a server MUST NOT upgrade
// with none or several). An offer that is taken decodes
// its HTTP2-Settings as a SETTINGS frame (base64url, 6-byte entries, RFC 7540 §6.5.2 values):
// a payload the HTTP/2 connection would reject as a connection error is Malformed.
H2cUpgradeOffer h2cUpgradeOffer(const Request& request);

// The 101 that switches the connection (the server's SETTINGS follow as the first HTTP/2 frame).
inline constexpr std::string_view kSwitchingToH2c =
    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";

}  // namespace sluice::waypoint
