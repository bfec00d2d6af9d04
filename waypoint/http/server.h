#pragma once

#include <chrono>
#include <functional>

#include "waypoint/http/asio.h"
#include "waypoint/http/client_stream.h"

namespace sluice::waypoint {

class H2Connections;

struct ServerLimits {
    std::size_t max_header_bytes = 16 * 1024;
    std::size_t max_body_bytes = 8 * 1024 * 1024;
    std::chrono::milliseconds request_timeout{30'000};  // to read one whole request
    std::chrono::milliseconds idle_timeout{60'000};     // keep-alive wait for the next request
    std::size_t max_requests_per_connection = 10'000;
    // HTTP/2: request-body bytes the streams of one connection may reserve together before
    // their bodies are handed to the pipeline (at least max_body_bytes; docs/waypoint.md).
    std::size_t max_connection_body_bytes = 16 * 1024 * 1024;
    // Gateway::stop: how long streams in flight may take to finish after the GOAWAY.
    std::chrono::milliseconds drain_timeout{10'000};
};

// One request read from a client, to be answered by the handler (which writes the response
// itself, so it can stream). Setting keep_alive to false closes the connection afterwards.
struct Exchange {
    ClientStream& stream;
    beast::flat_buffer& buffer;  // bytes read past this request (pipelining) stay here
    Request& request;
    bool keep_alive = true;
    std::string_view peer_identity;  // SPIFFE id when the connection came through HBONE
    std::string_view authority;      // HBONE: the CONNECT :authority (original destination)
    // False when the response was cut (its backend failed mid-body, or the client went away):
    // the connection then ends without the graceful end that says "complete" where the framing
    // cannot (a TLS close_notify, an HTTP/2 END_STREAM): TCP's FIN alone, or RST_STREAM.
    bool response_complete = true;
};

// Who is at the other end of a downstream connection (empty on the plain listener).
struct Downstream {
    std::string peer_identity;
    std::string authority;
    // Where the connection registers for a graceful stop (Gateway::stop), and where an h2c
    // connection (prior knowledge) on it registers; null: HTTP/1.1 only and not drained (admin
    // listeners, and the HTTP/2 streams themselves).
    H2Connections* h2 = nullptr;
    // h2c (prior knowledge, `Upgrade: h2c`) is offered where h2 is; not on a TLS connection,
    // where HTTP/2 is chosen by ALPN only (RFC 9113 §3.2, §3.3).
    bool h2c = true;
};
using Handler = std::function<awaitable<void>(Exchange&)>;

// What every accepted client connection gets: TCP_NODELAY, and TCP_USER_TIMEOUT at the idle
// timeout (a client that stops reading cannot hold our buffers and its upstream for ever).
void tuneClientSocket(tcp::socket& socket, const ServerLimits& limits);

// Serves HTTP/1.1 on one accepted connection: keep-alive, chunked request bodies (the Beast
// parser), header/body limits and read timeouts. A request that does not parse gets a 400 with
// an OpenAI-shaped error body and the connection is closed.
// With `h2`, a client that starts with the HTTP/2 preface is served as h2c.
awaitable<void> serveConnection(tcp::socket socket, const ServerLimits& limits,
                                const Handler& handler, H2Connections* h2 = nullptr);
// The same on any client stream (an HBONE CONNECT stream); ends with a send shutdown and close.
awaitable<void> serveHttp1(ClientStream& stream, const ServerLimits& limits, const Handler& handler,
                           const Downstream& downstream);

// Lingering close (as nginx): closing a TCP connection with unread bytes from the client sends
// a RST, which can destroy what we sent last (an error reply, a GOAWAY) before the client reads
// it. Shuts our side down, then reads and drops the client's bytes until its end, 4 MiB or 1 s.
// The caller closes the stream afterwards.
awaitable<void> lingerBeforeClose(ClientStream& client);

// Accepts on `acceptor` until it is closed, spawning `serve(socket)` for each client.
template <class Serve>
awaitable<void> acceptEach(tcp::acceptor& acceptor, Serve serve) {
    for (;;) {
        error_code ec;
        tcp::socket socket = co_await acceptor.async_accept(noThrow(ec));
        if (ec == asio::error::operation_aborted || !acceptor.is_open())
            co_return;
        if (ec == asio::error::no_descriptors ||
            ec == boost::system::errc::too_many_files_open_in_system) {
            // Out of descriptors: the connection stays queued; retrying at once would spin.
            asio::steady_timer pause(acceptor.get_executor(), std::chrono::milliseconds(50));
            co_await pause.async_wait(noThrow(ec));
            continue;
        }
        if (ec)
            continue;  // the client is dropped, the listener stays
        asio::co_spawn(acceptor.get_executor(), serve(std::move(socket)), asio::detached);
    }
}

// Accepts on `acceptor` until it is closed, spawning serveConnection for each client.
awaitable<void> acceptLoop(tcp::acceptor& acceptor, const ServerLimits& limits,
                           const Handler& handler, H2Connections* h2 = nullptr);

// A listening socket with SO_REUSEPORT, so every worker thread can own one for the same port
// and the kernel spreads connections across them.
tcp::acceptor listenReusePort(asio::io_context& io, const tcp::endpoint& at);

}  // namespace sluice::waypoint
