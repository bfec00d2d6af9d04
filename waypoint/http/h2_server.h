#pragma once

#include "waypoint/http/asio.h"
#include "waypoint/http/server.h"

namespace sluice::waypoint {

// HTTP/2 settings of the plain listener's h2c connections (docs/waypoint.md, "HTTP/2").
inline constexpr std::uint32_t kH2MaxConcurrentStreams = 100;

// The HTTP/1.1 parser refuses the HTTP/2 client preface's request line "PRI * HTTP/2.0" as a
// bad version, with the whole line and its empty header block read into `buffer`: only that
// error path tells h2c with prior knowledge apart, so HTTP/1.1 requests pay nothing for it.
bool isH2Preface(const beast::flat_buffer& buffer);

// Serves h2c on `socket`; `received` holds the bytes read so far (the preface's start and maybe
// the client's first frames). Every HTTP/2
// stream is served as one HTTP/1.1 request through serveHttp1 and `handler`, translated at the
// stream boundary. Returns at once; the connection lives on until its last stream ends.
void serveH2c(tcp::socket socket, const beast::flat_buffer& received, const ServerLimits& limits,
              const Handler& handler);

}  // namespace sluice::waypoint
