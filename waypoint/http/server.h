#pragma once

#include <chrono>
#include <functional>

#include "waypoint/http/asio.h"

namespace sluice::waypoint {

struct ServerLimits {
    std::size_t max_header_bytes = 16 * 1024;
    std::size_t max_body_bytes = 8 * 1024 * 1024;
    std::chrono::milliseconds request_timeout{30'000};  // to read one whole request
    std::chrono::milliseconds idle_timeout{60'000};     // keep-alive wait for the next request
    std::size_t max_requests_per_connection = 10'000;
};

// One request read from a client, to be answered by the handler (which writes the response
// itself, so it can stream). Setting keep_alive to false closes the connection afterwards.
struct Exchange {
    tcp::socket& socket;
    beast::flat_buffer& buffer;  // bytes read past this request (pipelining) stay here
    Request& request;
    bool keep_alive = true;
    std::string peer_identity;  // SPIFFE id when the connection came through HBONE
};
using Handler = std::function<awaitable<void>(Exchange&)>;

// Serves HTTP/1.1 on one accepted connection: keep-alive, chunked request bodies (the Beast
// parser), header/body limits and read timeouts. A request that does not parse gets a 400 with
// an OpenAI-shaped error body and the connection is closed.
awaitable<void> serveConnection(tcp::socket socket, const ServerLimits& limits,
                                const Handler& handler);

// Accepts on `acceptor` until it is closed, spawning serveConnection for each client.
awaitable<void> acceptLoop(tcp::acceptor& acceptor, const ServerLimits& limits,
                           const Handler& handler);

// A listening socket with SO_REUSEPORT, so every worker thread can own one for the same port
// and the kernel spreads connections across them.
tcp::acceptor listenReusePort(asio::io_context& io, const tcp::endpoint& at);

}  // namespace sluice::waypoint
