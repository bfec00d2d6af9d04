#include "ztunnel/hbone/tls_socket.h"

#include <openssl/err.h>
#include <sys/socket.h>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <cerrno>
#include <string>
#include <utility>

namespace sluice::ztunnel::hbone {
namespace {

// How much one recv may bring in for OpenSSL to decrypt from (read-ahead): about four full
// records, so a bulk transfer takes one recv per four records instead of two per record (the
// header, then the rest). With SSL_MODE_RELEASE_BUFFERS a connection holds none of it once all
// it read is decrypted (an idle one); one that waits for the rest of a record holds all of it.
constexpr int kReadAheadBytes = 64 * 1024 + 512;

// A socket BIO of our own: OpenSSL's writes with write(2), which raises SIGPIPE on a connection
// the peer reset; this one sends with MSG_NOSIGNAL, and it tells OpenSSL when the peer closed
// (BIO_CTRL_EOF), so an EOF without close_notify is reported as such.
//
// While TlsSocket::write runs (`coalesce`), and while what it gathered is not all sent, records
// are appended to `queued` instead of sent one by one: one send for a batch of records instead
// of one per 16 KiB record. A record OpenSSL writes meanwhile for itself (a KeyUpdate answer,
// an alert) queues behind them, so records always leave in order.
struct SocketBio {
    int fd = -1;
    bool eof = false;
    bool coalesce = false;
    std::string queued;
    size_t sent = 0;  // the front of `queued` that is already on the socket
};

SocketBio* state(BIO* b) {
    return static_cast<SocketBio*>(BIO_get_data(b));
}

int bio_write(BIO* b, const char* data, size_t len, size_t* written) {
    BIO_clear_retry_flags(b);
    SocketBio* s = state(b);
    if (s->coalesce || !s->queued.empty()) {
        s->queued.append(data, len);
        *written = len;
        return 1;
    }
    const ssize_t n = ::send(state(b)->fd, data, len, MSG_NOSIGNAL);
    if (n >= 0) {
        *written = size_t(n);
        return 1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        BIO_set_retry_write(b);
    return 0;
}

int bio_read(BIO* b, char* data, size_t len, size_t* read) {
    BIO_clear_retry_flags(b);
    const ssize_t n = ::recv(state(b)->fd, data, len, 0);
    if (n > 0) {
        *read = size_t(n);
        return 1;
    }
    if (n == 0) {
        state(b)->eof = true;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        BIO_set_retry_read(b);
    }
    return 0;
}

long bio_ctrl(BIO* b, int cmd, long, void*) {
    switch (cmd) {
        case BIO_CTRL_FLUSH:
            return 1;  // only TlsSocket::write queues, and it sends what it queued itself
        case BIO_CTRL_EOF:
            return state(b)->eof ? 1 : 0;
        default:
            return 0;
    }
}

int bio_create(BIO* b) {
    BIO_set_data(b, new SocketBio);
    BIO_set_init(b, 1);
    return 1;
}

int bio_destroy(BIO* b) {
    delete state(b);
    BIO_set_data(b, nullptr);
    return 1;
}

const BIO_METHOD* socketBioMethod() {
    static BIO_METHOD* method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sluice socket");
        BIO_meth_set_write_ex(m, bio_write);
        BIO_meth_set_read_ex(m, bio_read);
        BIO_meth_set_ctrl(m, bio_ctrl);
        BIO_meth_set_create(m, bio_create);
        BIO_meth_set_destroy(m, bio_destroy);
        return m;
    }();
    return method;
}

auto redirect(boost::system::error_code& ec) {
    return asio::redirect_error(asio::use_awaitable, ec);
}

}  // namespace

TlsSocket::TlsSocket(tcp::socket socket, asio::ssl::context& ctx) : socket_(std::move(socket)) {
    boost::system::error_code ec;
    socket_.non_blocking(true, ec);
    ssl_ = SSL_new(ctx.native_handle());
    if (ssl_ == nullptr)
        return;  // handshake() reports it
    BIO* bio = BIO_new(socketBioMethod());
    if (bio == nullptr) {
        SSL_free(ssl_);
        ssl_ = nullptr;
        return;
    }
    state(bio)->fd = socket_.native_handle();
    SSL_set_bio(ssl_, bio, bio);  // the same BIO both ways: SSL takes our one reference
    SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_set_read_ahead(ssl_, 1);
    SSL_set_default_read_buffer_len(ssl_, kReadAheadBytes);
}

TlsSocket::~TlsSocket() {
    if (ssl_ != nullptr)
        SSL_free(ssl_);
}

TlsSocket::TlsSocket(TlsSocket&& other) noexcept
    : socket_(std::move(other.socket_)), ssl_(std::exchange(other.ssl_, nullptr)) {}

TlsSocket::Next TlsSocket::classify(int ret, boost::system::error_code& ec) {
    const int err = SSL_get_error(ssl_, ret);
    switch (err) {
        case SSL_ERROR_WANT_READ:
            return Next::WaitRead;
        case SSL_ERROR_WANT_WRITE:
            return Next::WaitWrite;
        case SSL_ERROR_ZERO_RETURN:
            ec = asio::error::eof;  // close_notify
            break;
        case SSL_ERROR_SYSCALL:
            ec = errno != 0 ? boost::system::error_code(errno, boost::system::system_category())
                            : boost::system::error_code(asio::ssl::error::stream_truncated);
            break;
        default: {
            const unsigned long e = ERR_peek_last_error();
            if (e == 0)  // a failure OpenSSL queued no reason for must still read as one
                ec = boost::system::errc::make_error_code(boost::system::errc::protocol_error);
            else if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
                ec = asio::ssl::error::stream_truncated;
            else
                ec =
                    boost::system::error_code(static_cast<int>(e), asio::error::get_ssl_category());
            break;
        }
    }
    ERR_clear_error();
    return Next::Fail;
}

asio::awaitable<bool> TlsSocket::wait(Next next, boost::system::error_code& ec) {
    co_await socket_.async_wait(
        next == Next::WaitRead ? tcp::socket::wait_read : tcp::socket::wait_write, redirect(ec));
    if (!ec && !socket_.is_open())
        ec = asio::error::operation_aborted;  // closed while the wait's completion was queued
    co_return !ec;
}

asio::awaitable<boost::system::error_code> TlsSocket::handshake(Role role) {
    boost::system::error_code ec;
    if (ssl_ == nullptr)
        co_return asio::error::no_memory;
    if (role == Role::Client)
        SSL_set_connect_state(ssl_);
    else
        SSL_set_accept_state(ssl_);
    for (;;) {
        ERR_clear_error();
        errno = 0;
        const int ret = SSL_do_handshake(ssl_);
        if (ret == 1)
            co_return ec;
        const Next next = classify(ret, ec);
        if (next == Next::Fail)
            co_return ec;
        if (!co_await wait(next, ec))
            co_return ec;
    }
}

size_t TlsSocket::read_now(asio::mutable_buffer buf, Next& next, boost::system::error_code& ec) {
    ec = {};
    next = Next::Fail;
    if (!socket_.is_open()) {
        ec = asio::error::operation_aborted;
        return 0;
    }
    ERR_clear_error();
    errno = 0;
    size_t n = 0;
    if (SSL_read_ex(ssl_, buf.data(), buf.size(), &n) == 1)
        return n;
    next = classify(0, ec);
    return 0;
}

asio::awaitable<size_t> TlsSocket::read_some(asio::mutable_buffer buf,
                                             boost::system::error_code& ec) {
    for (;;) {
        Next next = Next::Fail;
        const size_t n = read_now(buf, next, ec);
        if (n > 0 || next == Next::Fail)
            co_return n;
        if (!co_await wait(next, ec))
            co_return 0;
    }
}

asio::awaitable<void> TlsSocket::write(asio::const_buffer buf, boost::system::error_code& ec) {
    ec = {};
    SocketBio& bio = *state(SSL_get_wbio(ssl_));
    const char* data = static_cast<const char*>(buf.data());
    size_t left = buf.size();
    while (left > 0) {
        if (!socket_.is_open()) {
            ec = asio::error::operation_aborted;
            break;
        }
        ERR_clear_error();
        errno = 0;
        size_t n = 0;
        bio.coalesce = true;
        const int ret = SSL_write_ex(ssl_, data, left, &n);
        bio.coalesce = false;
        if (ret == 1) {
            data += n;
            left -= n;
            continue;
        }
        const Next next = classify(ret, ec);
        if (next == Next::Fail || !co_await wait(next, ec))
            break;
    }
    if (!ec)
        co_await flush(ec);
    if (ec) {  // the connection is done for: nothing queued may hold back a later record
        bio.queued.clear();
        bio.sent = 0;
    }
}

asio::awaitable<void> TlsSocket::flush(boost::system::error_code& ec) {
    SocketBio& bio = *state(SSL_get_wbio(ssl_));
    while (bio.sent < bio.queued.size()) {
        if (!socket_.is_open()) {
            ec = asio::error::operation_aborted;
            co_return;
        }
        const ssize_t n = ::send(socket_.native_handle(), bio.queued.data() + bio.sent,
                                 bio.queued.size() - bio.sent, MSG_NOSIGNAL);
        if (n >= 0) {
            bio.sent += size_t(n);
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (!co_await wait(Next::WaitWrite, ec))
                co_return;
        } else {
            ec = boost::system::error_code(errno, boost::system::system_category());
            co_return;
        }
    }
    bio.queued.clear();
    bio.sent = 0;
}

asio::awaitable<void> TlsSocket::shutdown(boost::system::error_code& ec) {
    ec = {};
    if (ssl_ == nullptr || !SSL_is_init_finished(ssl_))
        co_return;
    for (;;) {
        if (!socket_.is_open()) {
            ec = asio::error::operation_aborted;
            co_return;
        }
        ERR_clear_error();
        errno = 0;
        // 0: sent (the peer's is not awaited), 1: both sent; else what blocked it. Called again
        // after a full buffer, it sends the alert it holds.
        const int ret = SSL_shutdown(ssl_);
        if (ret >= 0)
            break;
        const Next next = classify(ret, ec);
        if (next == Next::WaitRead) {  // sent before, now it would wait for the peer's
            ec = {};
            break;
        }
        if (next == Next::Fail || !co_await wait(next, ec))
            co_return;
    }
    SocketBio& bio = *state(SSL_get_wbio(ssl_));
    if (!bio.queued.empty())  // behind the records of a write still in progress
        co_await flush(ec);
}

void TlsSocket::release_buffers() {
    if (ssl_ == nullptr)
        return;
    SocketBio& bio = *state(SSL_get_wbio(ssl_));
    if (bio.queued.empty())
        std::string().swap(bio.queued);
}

}  // namespace sluice::ztunnel::hbone
