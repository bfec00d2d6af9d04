#include "waypoint/http/tls_server.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <stdexcept>
#include <utility>

#include "waypoint/http/client_stream.h"
#include "waypoint/http/deadline.h"
#include "waypoint/http/h2_server.h"
#include "ztunnel/hbone/tls_socket.h"
#include "ztunnel/identity/verify.h"

namespace sluice::waypoint {
namespace {

using ztunnel::hbone::TlsSocket;

// The read buffer of a client connection: one whole TLS record (16 KiB of payload and its
// overhead), which OpenSSL needs at least.
constexpr std::size_t kRecordBuffer = 16 * 1024 + 512;

// ALPN protocols in the server's order of preference (wire format: length-prefixed).
constexpr unsigned char kAlpn[] = {2, 'h', '2', 8, 'h', 't', 't', 'p', '/', '1', '.', '1'};

int selectAlpn(SSL*, const unsigned char** out, unsigned char* out_len, const unsigned char* in,
               unsigned int in_len, void*) {
    unsigned char* chosen = nullptr;
    if (SSL_select_next_proto(&chosen, out_len, kAlpn, sizeof kAlpn, in, in_len) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;  // none of ours offered: go on without ALPN (HTTP/1.1)
    }
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

std::string opensslReason() {
    const unsigned long e = ERR_get_error();
    ERR_clear_error();
    if (e == 0)
        return "unknown OpenSSL error";
    char text[256];
    ERR_error_string_n(e, text, sizeof text);
    return text;
}

// One TLS connection as the byte stream the HTTP/1.1 and HTTP/2 servers read and write.
//
// cancel() ends the pending read only: a read waits for the socket's readability through a
// duplicate of its descriptor (`reader_`), so cancelling that wait leaves a concurrent write
// (HTTP/2's write loop) waiting on the socket itself untouched: a write cut in the middle of
// a record would break the stream. A cancel that comes before the read's coroutine started
// (ClientStream posts it) ends it as soon as it starts.
class TlsByteStream final : public ByteStream {
  public:
    explicit TlsByteStream(TlsSocket& tls) : tls_(tls), socket_(tls.socket()), reader_(ex()) {
        const int fd = ::dup(socket_.native_handle());
        error_code ec;
        if (fd >= 0)
            reader_.assign(socket_.local_endpoint(ec).protocol(), fd, ec);
        if (fd >= 0 && ec)
            ::close(fd);
    }

    awaitable<IoResult> write(std::string data) override {
        error_code ec;
        co_await tls_.write(asio::buffer(data), ec);
        co_return IoResult{ec, ec ? 0 : data.size()};
    }
    // close_notify, then our FIN: the client can tell a complete response from a cut one.
    // Without waiting (a caller that cannot): the close_notify is lost if the socket buffer is
    // full, so the servers' graceful ends use finishSend().
    void shutdown_send() override {
        if (std::exchange(shut_down_, true) || !socket_.is_open())
            return;
        if (SSL_is_init_finished(tls_.native_handle())) {
            SSL_shutdown(tls_.native_handle());
            ERR_clear_error();
        }
        error_code ec;
        socket_.shutdown(tcp::socket::shutdown_send, ec);
    }
    // The same, waiting for room for the close_notify (at most until the socket fails or is
    // closed: TCP_USER_TIMEOUT bounds a client that stopped reading).
    awaitable<void> finishSend() override {
        if (std::exchange(shut_down_, true) || !socket_.is_open())
            co_return;
        error_code ec;
        co_await tls_.shutdown(ec);
        socket_.shutdown(tcp::socket::shutdown_send, ec);
    }
    void close() override {
        error_code ec;
        reader_.close(ec);
        socket_.close(ec);
    }
    bool is_open() const override { return socket_.is_open(); }
    bool overTcp() const override { return true; }

  protected:
    awaitable<IoResult> readSome(asio::mutable_buffer buf) override {
        for (;;) {
            if (readCancelled())
                co_return IoResult{asio::error::operation_aborted, 0};
            TlsSocket::Next next = TlsSocket::Next::Fail;
            error_code ec;
            const std::size_t n = tls_.read_now(buf, next, ec);
            if (n > 0 || next == TlsSocket::Next::Fail)
                co_return IoResult{ec, n};
            if (next == TlsSocket::Next::WaitRead && !reader_.is_open())
                co_return IoResult{asio::error::no_descriptors, 0};  // dup() failed: no reads
            if (next == TlsSocket::Next::WaitRead)
                co_await reader_.async_wait(tcp::socket::wait_read, noThrow(ec));
            else  // OpenSSL must write first (a TLS 1.3 key update): rare, and short
                co_await socket_.async_wait(tcp::socket::wait_write, noThrow(ec));
            if (!ec && !socket_.is_open())
                ec = asio::error::operation_aborted;  // closed while the wait was queued
            if (ec)
                co_return IoResult{ec, 0};
        }
    }

    void interruptRead() override {
        error_code ec;
        reader_.cancel(ec);
    }

  private:
    asio::any_io_executor ex() { return socket_.get_executor(); }

    TlsSocket& tls_;
    tcp::socket& socket_;
    tcp::socket reader_;  // a duplicate of socket_'s descriptor, for read waits only
    bool shut_down_ = false;
};

// The handshake's deadline closes the socket: a cancel could land between a wait's completion
// and the handshake's next step and be lost; TlsSocket stops at a closed socket.
struct CloseOnTimeout {
    tcp::socket& socket;
    void cancel(error_code& ec) { socket.close(ec); }
};

// Whether a client certificate's SPIFFE id is in one of `allowed` (none listed: any).
bool inTrustDomains(X509* cert, const std::vector<std::string>& allowed) {
    if (allowed.empty())
        return true;
    const auto id = ztunnel::identity::spiffe_identity(cert);
    return id && std::find(allowed.begin(), allowed.end(), id->trust_domain) != allowed.end();
}

// Why a handshake failed, for the metric: the client's certificate when that was it.
std::string_view handshakeFailure(SSL* ssl, const error_code& ec) {
    if (ssl != nullptr && SSL_get_verify_result(ssl) != X509_V_OK)
        return "client_certificate_refused";
    if (ec.category() == asio::error::get_ssl_category() &&
        ERR_GET_REASON(static_cast<unsigned long>(ec.value())) ==
            SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
        return "no_client_certificate";
    return "failed";
}

}  // namespace

std::expected<std::shared_ptr<asio::ssl::context>, std::string> makeGatewayTlsContext(
    const GatewayTlsConfig& config, std::chrono::system_clock::time_point* not_after) {
    const std::string& certificate_file = config.certificate_file;
    const std::string& private_key_file = config.private_key_file;
    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
    SSL_CTX* native = ctx->native_handle();
    ERR_clear_error();
    SSL_CTX_set_min_proto_version(native, TLS1_2_VERSION);
    SSL_CTX_set_options(
        native, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    // TLS 1.2: forward secrecy and AEAD only (TLS 1.3's suites are all of that kind).
    if (SSL_CTX_set_cipher_list(native, "ECDHE+AESGCM:ECDHE+CHACHA20") != 1)
        return std::unexpected("TLS 1.2 ciphers: " + opensslReason());
    SSL_CTX_set_mode(native, SSL_MODE_RELEASE_BUFFERS);  // an idle connection holds no buffer
    // Resumed sessions (clients keep them: libcurl, Node's https agent) need a session id
    // context wherever client certificates are verified, or OpenSSL refuses the resumption.
    static constexpr unsigned char kSessionContext[] = "sluice-waypoint-gateway";
    SSL_CTX_set_session_id_context(native, kSessionContext, sizeof kSessionContext - 1);
    SSL_CTX_set_alpn_select_cb(native, selectAlpn, nullptr);
    if (SSL_CTX_use_certificate_chain_file(native, certificate_file.c_str()) != 1)
        return std::unexpected("certificate " + certificate_file + ": " + opensslReason());
    if (SSL_CTX_use_PrivateKey_file(native, private_key_file.c_str(), SSL_FILETYPE_PEM) != 1)
        return std::unexpected("private key " + private_key_file + " (for " + certificate_file +
                               "): " + opensslReason());
    if (SSL_CTX_check_private_key(native) != 1) {
        return std::unexpected("private key " + private_key_file + " does not match " +
                               certificate_file + ": " + opensslReason());
    }
    if (!config.client_ca_file.empty()) {
        const std::string& ca = config.client_ca_file;
        STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca.c_str());
        if (names == nullptr || SSL_CTX_load_verify_locations(native, ca.c_str(), nullptr) != 1) {
            if (names != nullptr)
                sk_X509_NAME_pop_free(names, X509_NAME_free);
            return std::unexpected("client CA " + ca + ": " + opensslReason());
        }
        SSL_CTX_set_client_CA_list(native, names);  // the CAs the client may choose from
        SSL_CTX_set_verify(
            native,
            SSL_VERIFY_PEER |
                (config.require_client_certificate ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
            nullptr);
        SSL_CTX_set_purpose(native, X509_PURPOSE_SSL_CLIENT);  // a server's certificate is not
        if (!config.client_trust_domains.empty()) {
            // A chain the CA vouches for, of a name outside the trust domains, fails the
            // handshake with a bad_certificate alert: the client learns why, not just an EOF.
            error_code ec;
            ctx->set_verify_callback(
                [allowed = config.client_trust_domains](bool verified,
                                                        asio::ssl::verify_context& vc) {
                    X509_STORE_CTX* store = vc.native_handle();
                    if (!verified || X509_STORE_CTX_get_error_depth(store) != 0)
                        return verified;
                    bool allowed_domain = false;
                    try {  // called from OpenSSL's C frames: nothing may unwind through them
                        allowed_domain =
                            inTrustDomains(X509_STORE_CTX_get_current_cert(store), allowed);
                    } catch (...) {
                    }
                    if (allowed_domain)
                        return true;
                    X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
                    return false;
                },
                ec);
            if (ec)
                return std::unexpected("client certificate check: " + ec.message());
        }
    }
    if (not_after != nullptr) {
        std::tm tm{};
        const X509* leaf = SSL_CTX_get0_certificate(native);
        if (leaf == nullptr || ASN1_TIME_to_tm(X509_get0_notAfter(leaf), &tm) != 1)
            return std::unexpected("certificate " + certificate_file + ": no validity period");
        *not_after = std::chrono::system_clock::from_time_t(timegm(&tm));
    }
    return ctx;
}

GatewayTlsContext::GatewayTlsContext(GatewayTlsConfig config) : config_(std::move(config)) {
    loaded_ = stamps(config_);
    auto ctx = makeGatewayTlsContext(config_, &not_after_);
    if (!ctx)
        throw std::runtime_error("TLS listener: " + ctx.error());
    context_ = std::move(*ctx);
}

std::shared_ptr<asio::ssl::context> GatewayTlsContext::current() const {
    std::lock_guard lock(mutex_);
    return context_;
}

std::chrono::system_clock::time_point GatewayTlsContext::notAfter() const {
    std::lock_guard lock(mutex_);
    return not_after_;
}

GatewayTlsContext::Stamps GatewayTlsContext::stamps(const GatewayTlsConfig& c) {
    auto of = [](const std::string& path) {
        struct stat st {};
        if (path.empty() || ::stat(path.c_str(), &st) != 0)
            return FileStamp{};
        return FileStamp{
            .inode = std::uint64_t(st.st_ino),
            .size = std::uint64_t(st.st_size),
            .mtime_ns = std::int64_t(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
    };
    return {of(c.certificate_file), of(c.private_key_file), of(c.client_ca_file)};
}

GatewayTlsContext::Reload GatewayTlsContext::reloadIfChanged(std::string& problem) {
    const auto now = stamps(config_);
    {
        std::lock_guard lock(mutex_);
        if (now == loaded_)
            return Reload::Unchanged;
    }
    std::chrono::system_clock::time_point not_after;
    auto ctx = makeGatewayTlsContext(config_, &not_after);
    std::lock_guard lock(mutex_);
    if (!ctx) {
        // Tried again at every check (the cause may pass: a half-written file, no file
        // descriptors), reported once per version of the files.
        if (failed_ == now)
            return Reload::Unchanged;
        failed_ = now;
        problem = ctx.error();
        return Reload::Failed;
    }
    loaded_ = now;
    context_ = std::move(*ctx);
    not_after_ = not_after;
    return Reload::Reloaded;
}

awaitable<void> serveTlsConnection(tcp::socket socket, std::shared_ptr<asio::ssl::context> context,
                                   const GatewayTlsConfig& config, const ServerLimits& limits,
                                   const Handler& handler, H2Connections* h2,
                                   const TlsHandshakeResult& result) {
    tuneClientSocket(socket, limits);
    TlsSocket tls(std::move(socket), *context);
    // Requests are small: one record's buffer, not the bulk read-ahead ztunnel's tunnels use
    // (each buffer is allocated while there is data and given back between requests).
    SSL_set_default_read_buffer_len(tls.native_handle(), kRecordBuffer);
    // A client that opens the connection and says nothing must not hold it for ever.
    Deadline deadline(tls.get_executor());
    CloseOnTimeout closer{tls.socket()};
    deadline.arm(closer, limits.request_timeout);
    const error_code ec = co_await tls.handshake(TlsSocket::Role::Server);
    deadline.disarm();
    if (ec) {
        spdlog::debug("TLS handshake with a client failed: {}", ec.message());
        result(deadline.fired() ? "timeout" : handshakeFailure(tls.native_handle(), ec));
        error_code ignored;
        tls.socket().close(ignored);
        co_return;
    }
    // A verified client certificate's SPIFFE id is the peer identity of every request, for
    // tenants and metrics, as an HBONE peer's is.
    std::string peer;
    bool foreign = false;
    if (X509* cert = SSL_get0_peer_certificate(tls.native_handle())) {
        if (auto id = ztunnel::identity::spiffe_identity(cert))
            peer = id->uri();
        // The handshake refused these already; a resumed session is not verified again.
        foreign = !inTrustDomains(cert, config.client_trust_domains);
    }
    if (foreign) {
        spdlog::debug("TLS client {} refused: not in an allowed trust domain",
                      peer.empty() ? "without a SPIFFE id" : peer);
        result("client_certificate_refused");
        error_code ignored;
        tls.socket().close(ignored);
        co_return;
    }
    const unsigned char* alpn = nullptr;
    unsigned int alpn_len = 0;
    SSL_get0_alpn_selected(tls.native_handle(), &alpn, &alpn_len);
    const bool h2_chosen = std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) == "h2";
    result(h2_chosen ? "h2" : "http/1.1");
    TlsByteStream bytes(tls);
    ClientStream stream(bytes, tls.get_executor());
    const Downstream downstream{.peer_identity = std::move(peer), .h2 = h2, .h2c = false};
    if (h2_chosen) {
        const beast::flat_buffer none;
        co_await serveH2c(stream, none, limits, handler, downstream);
    } else {
        co_await serveHttp1(stream, limits, handler, downstream);
    }
    error_code ignored;
    stream.close(ignored);
}

}  // namespace sluice::waypoint
