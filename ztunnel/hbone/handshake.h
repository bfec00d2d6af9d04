#pragma once

#include <boost/asio/ssl/context.hpp>

#include <chrono>

#include "ztunnel/hbone/connection.h"

namespace sluice::ztunnel::hbone {

inline constexpr std::chrono::seconds kDefaultHandshakeTimeout{10};

// Client side of an HBONE connection on a connected socket: TLS 1.3 handshake in which the
// server must prove `expected` (URI SAN) under the trust bundle, then HTTP/2. The returned
// connection is started.
asio::awaitable<std::expected<std::shared_ptr<Connection>, Failure>> handshake_client(
    tcp::socket socket, asio::ssl::context& ctx, identity::Identity expected,
    std::chrono::steady_clock::duration timeout = kDefaultHandshakeTimeout);

// Server side on an accepted socket: the client must present a certificate of the trust domain.
// `on_request` is called for each CONNECT stream.
asio::awaitable<std::expected<std::shared_ptr<Connection>, Failure>> handshake_server(
    tcp::socket socket, asio::ssl::context& ctx, Connection::RequestHandler on_request,
    std::chrono::steady_clock::duration timeout = kDefaultHandshakeTimeout);

}  // namespace sluice::ztunnel::hbone
