#include "waypoint/http/server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstring>
#include <exception>
#include <functional>
#include <vector>

#include "waypoint/http/deadline.h"
#include "waypoint/http/direct_io.h"
#include "waypoint/http/h2_server.h"
#include "waypoint/http/h2c_upgrade.h"
#include "waypoint/http/openai_error.h"

namespace sluice::waypoint {
namespace {

LocalReply badRequest(std::string message) {
    return {.status = http::status::bad_request,
            .type = "invalid_request_error",
            .message = std::move(message)};
}

constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

using RequestParser = http::request_parser<http::string_body>;

// The header's fields, by address: Beast adds a trailer field next to the last field of its
// name (not at the end), and a field's address does not change while it is in the list.
std::vector<const void*> fieldsOf(const Request& request) {
    std::vector<const void*> fields;
    for (const auto& field : request)
        fields.push_back(&field);
    std::sort(fields.begin(), fields.end(), std::less<>());
    return fields;
}

// Erases every field that is not one of `header` (a chunked body's trailers).
void dropTrailers(Request& request, const std::vector<const void*>& header) {
    for (auto it = request.begin(); it != request.end();) {
        if (std::binary_search(header.begin(), header.end(), static_cast<const void*>(&*it),
                               std::less<>()))
            ++it;
        else
            it = request.erase(it);
    }
}

// An HTTP/1.1 client that sent `Expect: 100-continue` (RFC 9110 §10.1.1) waits for an interim
// 100 before it sends the body.
bool expectsContinue(const RequestParser::value_type& head) {
    if (head.version() < 11)
        return false;
    const auto it = head.find(http::field::expect);
    return it != head.end() && beast::iequals(it->value(), "100-continue");
}

// An HTTP/1.1 connection as a graceful stop sees it (it joins the worker's H2Connections, whose
// drain waits for every member): waiting for its next request with none of it there yet, the
// GOAWAY ends it at once; a request that has begun to arrive, or an exchange in flight,
// finishes (answered with Connection: close if it had not started yet) and the connection then
// closes instead of being kept alive.
class Http1Member final : public H2Connections::Member {
  public:
    Http1Member(H2Connections* registry, ClientStream& stream, const beast::flat_buffer& received)
        : registry_(registry), stream_(stream), received_(received) {
        if (registry_ != nullptr)
            registry_->add(*this);
    }
    ~Http1Member() {
        if (registry_ != nullptr)
            registry_->remove(*this);
    }
    Http1Member(const Http1Member&) = delete;
    Http1Member& operator=(const Http1Member&) = delete;

    void goaway() override {
        stopping_ = true;
        // Nothing of the next request yet: Beast's parser takes the start line as soon as it
        // is whole, and the rest of an incomplete header stays in the buffer.
        if (reading_ != nullptr && !reading_->got_some() && received_.size() == 0) {
            error_code ec;
            stream_.cancel(ec);
        }
    }
    bool stopping() const { return stopping_; }
    // While the next request's header is read with `parser` (null: not reading).
    void reading(const RequestParser* parser) { reading_ = parser; }

  private:
    H2Connections* registry_;
    ClientStream& stream_;
    const beast::flat_buffer& received_;
    bool stopping_ = false;
    const RequestParser* reading_ = nullptr;
};

// An error reply that ends the connection: written within the request timeout, then a
// lingering close.
awaitable<void> replyAndClose(ClientStream& socket, Deadline& deadline, const LocalReply& reply,
                              std::chrono::milliseconds timeout) {
    auto res = toResponse(reply, 11, false);
    error_code ec;
    deadline.arm(socket, timeout);
    co_await http::async_write(socket, res, noThrow(ec));
    deadline.disarm();
    co_await lingerBeforeClose(socket);
}

}  // namespace

awaitable<void> lingerBeforeClose(ClientStream& client) {
    error_code ec;
    co_await client.finishSend(ec);
    Deadline deadline(client.get_executor());
    deadline.arm(client, std::chrono::milliseconds(1000));
    std::array<char, 16384> sink;
    for (std::size_t drained = 0; !ec && drained < (4u << 20);)
        drained += co_await client.async_read_some(asio::buffer(sink), noThrow(ec));
    deadline.disarm();
}

void tuneClientSocket(tcp::socket& socket, const ServerLimits& limits) {
    error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    // A client that stops reading must not hold its upstream request and our buffers for ever:
    // the kernel aborts the connection once sent bytes have waited longer than the idle timeout
    // for an acknowledgement or for the client's zero window to open, and the write waiting on
    // it fails. One bound for every write to this client: HTTP/1.1 and a whole h2c connection.
    const int user_timeout = int(std::min<std::int64_t>(limits.idle_timeout.count(), INT_MAX));
    if (::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout,
                     sizeof user_timeout) != 0)
        spdlog::warn("TCP_USER_TIMEOUT: {}", std::strerror(errno));
}

awaitable<void> serveConnection(tcp::socket socket, const ServerLimits& limits,
                                const Handler& handler, H2Connections* h2) {
    tuneClientSocket(socket, limits);
    ClientStream stream(socket);
    const Downstream plain{.h2 = h2};
    co_await serveHttp1(stream, limits, handler, plain);
}

awaitable<void> serveHttp1(ClientStream& socket, const ServerLimits& limits, const Handler& handler,
                           const Downstream& downstream) {
    error_code ec;
    beast::flat_buffer buffer;
    Deadline deadline(socket.get_executor());
    Http1Member member(downstream.h2, socket, buffer);
    bool clean_end = true;  // no response was cut
    bool lingered = false;  // an error reply's close already shut our side and lingered
    for (std::size_t served = 0; served < limits.max_requests_per_connection; ++served) {
        if (member.stopping())
            break;
        RequestParser parser;
        parser.header_limit(std::uint32_t(limits.max_header_bytes));
        parser.body_limit(limits.max_body_bytes);
        // The idle timeout covers the wait for a request's first byte, the request timeout the
        // rest of it; with one timer the looser of the two bounds the whole read.
        deadline.arm(socket, served == 0 ? limits.request_timeout
                                         : std::max(limits.idle_timeout, limits.request_timeout));
        member.reading(&parser);
        co_await http::async_read_header(socket, buffer, parser, noThrow(ec));
        member.reading(nullptr);
        // Framing a proxy in front could read another way is refused (RFC 9112 §6.1, §6.3): a
        // Transfer-Encoding whose last coding is not chunked (Beast would read no body, or the
        // Content-Length, and take the rest for the next request, with its own tenant), or any
        // Transfer-Encoding on HTTP/1.0.
        if (!ec && parser.get().count(http::field::transfer_encoding) != 0 &&
            (!parser.chunked() || parser.get().version() < 11)) {
            ec = http::error::bad_transfer_encoding;
        }
        if (!ec && !parser.is_done()) {
            if (expectsContinue(parser.get())) {
                // The client waits for this before it sends the body (curl: 1 s, then it sends
                // anyway). The Expect itself is not passed on (forward.cpp).
                co_await asio::async_write(socket, asio::buffer(kContinue), noThrow(ec));
            }
            // Beast adds a chunked body's trailer fields to the header; RFC 9110 §6.5.1 forbids
            // merging them, and a field a proxy in front checked in the header (a tenant's)
            // could come again after the body: they are dropped.
            const auto header_fields =
                parser.chunked() ? fieldsOf(parser.get()) : std::vector<const void*>{};
            // The body mostly came with the header: parsed here, not through a read that would
            // only post its completion (direct_io.h).
            while (!ec && !parser.is_done()) {
                if (auto step = parseBuffered(parser, buffer))
                    ec = *step;
                else
                    co_await http::async_read_some(socket, buffer, parser, noThrow(ec));
            }
            if (!ec && parser.chunked())
                dropTrailers(parser.get(), header_fields);
        }
        deadline.disarm();
        if (ec == http::error::end_of_stream || ec == asio::error::eof ||
            ec == asio::error::connection_reset ||
            (ec == asio::error::operation_aborted && member.stopping())) {
            break;
        }
        if (ec == http::error::bad_version && served == 0 && downstream.h2 != nullptr &&
            downstream.h2c && isH2Preface(buffer)) {
            // h2c with prior knowledge (a TCP connection or an HBONE stream): the connection
            // changes hands (docs/waypoint.md).
            co_await serveH2c(socket, buffer, limits, handler, downstream);
            co_return;
        }
        if (ec) {
            if (deadline.fired() && buffer.size() == 0 && !parser.got_some())
                break;  // idle
            LocalReply reply;
            if (deadline.fired()) {
                reply = {.status = http::status::request_timeout,
                         .type = "invalid_request_error",
                         .message = "request not received in time"};
            } else if (ec == http::error::body_limit) {
                reply = {.status = http::status::payload_too_large,
                         .type = "invalid_request_error",
                         .message = "request body exceeds " +
                                    std::to_string(limits.max_body_bytes) + " bytes"};
            } else if (ec == http::error::header_limit) {
                reply = {.status = http::status::request_header_fields_too_large,
                         .type = "invalid_request_error",
                         .message = "request header exceeds " +
                                    std::to_string(limits.max_header_bytes) + " bytes"};
            } else {
                reply = badRequest("malformed HTTP request: " + ec.message());
            }
            co_await replyAndClose(socket, deadline, reply, limits.request_timeout);
            lingered = true;
            break;
        }
        Request request = parser.release();
        if (downstream.h2 != nullptr && downstream.h2c && !member.stopping()) {
            // Upgrade: h2c (RFC 7540 §3.2) where h2c with prior knowledge is served too; not
            // while stopping (the request is answered over HTTP/1.1 with Connection: close).
            auto offer = h2cUpgradeOffer(request);
            if (offer.verdict == H2cUpgradeOffer::Verdict::Malformed) {
                co_await replyAndClose(socket, deadline, badRequest(std::move(offer.problem)),
                                       limits.request_timeout);
                lingered = true;
                break;
            }
            if (offer.verdict == H2cUpgradeOffer::Verdict::Upgrade) {
                deadline.arm(socket, limits.request_timeout);
                co_await asio::async_write(socket, asio::buffer(kSwitchingToH2c), noThrow(ec));
                deadline.disarm();
                if (ec)
                    break;
                // The connection changes hands as with prior knowledge; this request is its
                // stream 1, and what the buffer holds past it (the client's preface) is HTTP/2.
                const H2cUpgraded upgraded{request, offer.settings};
                co_await serveH2c(socket, buffer, limits, handler, downstream, &upgraded);
                co_return;
            }
        }
        Exchange exchange{socket, buffer, request,
                          // The last request the connection serves is told so, or the
                          // client's next one would go unanswered.
                          request.keep_alive() && !member.stopping() &&
                              served + 1 < limits.max_requests_per_connection,
                          downstream.peer_identity, downstream.authority};
        // A handler that throws has a bug; it costs this connection (closed with a FIN; what
        // the response had written is unknown, so no answer is added), never the worker, and
        // it is logged: a detached coroutine's exception would vanish without a trace.
        std::exception_ptr failed;
        try {
            co_await handler(exchange);
        } catch (...) {
            failed = std::current_exception();
        }
        if (failed) {
            try {
                std::rethrow_exception(failed);
            } catch (const std::exception& e) {
                spdlog::error("request handler failed on {} {}: {}", sv(request.method_string()),
                              sv(request.target()), e.what());
            } catch (...) {
                spdlog::error("request handler failed on {} {}", sv(request.method_string()),
                              sv(request.target()));
            }
            clean_end = false;
            break;
        }
        clean_end = exchange.response_complete;
        if (!exchange.keep_alive || !socket.is_open() || member.stopping())
            break;
    }
    // A cut response ends without what would call it complete: on TLS no close_notify (the
    // client sees the stream truncated), on an HTTP/2 or HBONE stream a reset. A plain TCP
    // connection has only its FIN either way. A clean end over TCP lingers: closing with bytes
    // of the client unread would send a RST, which can destroy the end of the response (all
    // the more one whose end is the close, HTTP/1.0's).
    if (!lingered) {
        if (clean_end && socket.overTcp())
            co_await lingerBeforeClose(socket);
        else if (clean_end)
            co_await socket.finishSend(ec);
        else if (socket.socket() != nullptr)
            socket.shutdown_send(ec);
    }
    socket.close(ec);
}

awaitable<void> acceptLoop(tcp::acceptor& acceptor, const ServerLimits& limits,
                           const Handler& handler, H2Connections* h2) {
    co_await acceptEach(acceptor, [&limits, &handler, h2](tcp::socket socket) {
        return serveConnection(std::move(socket), limits, handler, h2);
    });
}

tcp::acceptor listenReusePort(asio::io_context& io, const tcp::endpoint& at) {
    tcp::acceptor acceptor(io);
    acceptor.open(at.protocol());
    acceptor.set_option(asio::socket_base::reuse_address(true));
    const int one = 1;
    if (::setsockopt(acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        throw std::system_error(errno, std::generic_category(), "SO_REUSEPORT");
    }
    acceptor.bind(at);
    acceptor.listen(asio::socket_base::max_listen_connections);
    return acceptor;
}

}  // namespace sluice::waypoint
