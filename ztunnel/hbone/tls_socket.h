#pragma once

#include <openssl/ssl.h>

#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>

#include <memory>

namespace sluice::ztunnel::hbone {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// TLS straight on a non-blocking TCP socket: OpenSSL reads and writes the socket itself (a socket
// BIO) and the reactor only tells when it may try again. Compared with asio::ssl::stream, the
// bytes are not copied through a BIO pair and the stream's own buffers (four 17 KiB buffers per
// connection, for the connection's lifetime), and with SSL_MODE_RELEASE_BUFFERS an idle
// connection holds no record buffer at all (docs/ztunnel.md, "Memory").
//
// One reader and one writer may be pending at a time, on the socket's executor (OpenSSL allows
// SSL_read and SSL_write to interleave on one thread).
class TlsSocket {
  public:
    enum class Role { Client, Server };
    using executor_type = tcp::socket::executor_type;

    TlsSocket(tcp::socket socket, asio::ssl::context& ctx);
    ~TlsSocket();
    TlsSocket(TlsSocket&& other) noexcept;
    TlsSocket& operator=(TlsSocket&&) = delete;
    TlsSocket(const TlsSocket&) = delete;
    TlsSocket& operator=(const TlsSocket&) = delete;

    SSL* native_handle() { return ssl_; }
    tcp::socket& socket() { return socket_; }
    executor_type get_executor() { return socket_.get_executor(); }

    // The TLS handshake; an error code from asio::error or the ssl category.
    asio::awaitable<boost::system::error_code> handshake(Role role);
    // What an SSL_* call that did not succeed asks for: wait (and for which direction), or fail.
    enum class Next { WaitRead, WaitWrite, Fail };

    // Decrypted bytes that are there now (up to buf.size()), without waiting; 0 when there are
    // none: then `next` tells what to wait for, or is Fail with `ec` (as for read_some).
    size_t read_now(asio::mutable_buffer buf, Next& next, boost::system::error_code& ec);
    // Waits until the socket is ready as `next` asks; false (and `ec`) when it failed or the
    // socket was closed meanwhile: OpenSSL must not touch a closed (maybe reused) fd number.
    asio::awaitable<bool> wait(Next next, boost::system::error_code& ec);
    // Up to buf.size() decrypted bytes; eof after the peer's close_notify or a clean TCP close
    // (ssl stream_truncated when the TCP connection ended without close_notify).
    asio::awaitable<size_t> read_some(asio::mutable_buffer buf, boost::system::error_code& ec);
    // All of `buf`, or an error. Its records leave in as few sends as the socket takes.
    asio::awaitable<void> write(asio::const_buffer buf, boost::system::error_code& ec);
    // Sends the close_notify (behind any records a write() still has queued), waiting while the
    // socket buffer is full: sent at once, it would be lost to a full buffer and the peer would
    // see the TCP end alone, as if the stream were cut. Does not wait for the peer's
    // close_notify. Call once nothing more is to be written; then shut the socket's send side.
    asio::awaitable<void> shutdown(boost::system::error_code& ec);
    // Gives back the memory of the write queue while nothing is queued (an idle connection).
    void release_buffers();

  private:
    Next classify(int ret, boost::system::error_code& ec);
    // Sends the records write() queued.
    asio::awaitable<void> flush(boost::system::error_code& ec);

    tcp::socket socket_;
    SSL* ssl_ = nullptr;
};

}  // namespace sluice::ztunnel::hbone
