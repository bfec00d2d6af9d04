#include "ztunnel/hbone/handshake.h"

#include <spdlog/spdlog.h>

#include "ztunnel/hbone/tls.h"

namespace sluice::ztunnel::hbone {
namespace {

asio::awaitable<std::expected<std::shared_ptr<Connection>, Failure>> handshake(
    tcp::socket socket, asio::ssl::context& ctx, Connection::Role role,
    std::optional<identity::Identity> expected, Connection::RequestHandler on_request,
    std::chrono::steady_clock::duration timeout) {
    TlsSocket tls(std::move(socket), ctx);
    PeerVerification verification{.expected = std::move(expected)};
    attach_verification(tls.native_handle(), &verification);
    boost::system::error_code ec;
    {
        Deadline deadline(tls.get_executor(), timeout, [&tls] {
            boost::system::error_code ignored;
            tls.socket().close(ignored);
        });
        ec = co_await tls.handshake(role == Connection::Role::Client ? TlsSocket::Role::Client
                                                                     : TlsSocket::Role::Server);
        if (deadline.expired())
            co_return std::unexpected(Failure{Error::Timeout, "TLS handshake timed out"});
    }
    attach_verification(tls.native_handle(), nullptr);
    if (verification.error)
        co_return std::unexpected(Failure{Error::PeerRejected, verification.error->message()});
    if (ec) {
        co_return std::unexpected(Failure{Error::HandshakeFailed, ec.message()});
    }
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(tls.native_handle(), &alpn, &alpn_len);
    if (std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != "h2")
        co_return std::unexpected(Failure{Error::HandshakeFailed, "ALPN h2 not negotiated"});
    if (!verification.peer)
        co_return std::unexpected(Failure{Error::PeerRejected, "peer identity not verified"});
    auto conn = std::make_shared<Connection>(std::move(tls), role, *verification.peer,
                                             std::move(on_request));
    conn->start();
    co_return conn;
}

}  // namespace

asio::awaitable<std::expected<std::shared_ptr<Connection>, Failure>> handshake_client(
    tcp::socket socket, asio::ssl::context& ctx, identity::Identity expected,
    std::chrono::steady_clock::duration timeout) {
    return handshake(std::move(socket), ctx, Connection::Role::Client, std::move(expected), {},
                     timeout);
}

asio::awaitable<std::expected<std::shared_ptr<Connection>, Failure>> handshake_server(
    tcp::socket socket, asio::ssl::context& ctx, Connection::RequestHandler on_request,
    std::chrono::steady_clock::duration timeout) {
    return handshake(std::move(socket), ctx, Connection::Role::Server, std::nullopt,
                     std::move(on_request), timeout);
}

}  // namespace sluice::ztunnel::hbone
