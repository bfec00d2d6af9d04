#include "waypoint/http/forward.h"

#include <array>
#include <cstdio>

#include "waypoint/http/deadline.h"
#include "waypoint/http/sse.h"

namespace sluice::waypoint {
namespace {

// RFC 9110 §7.6.1 connection-specific fields, never forwarded.
bool isHopByHop(http::field f) {
    switch (f) {
        case http::field::connection:
        case http::field::keep_alive:
        case http::field::proxy_authenticate:
        case http::field::proxy_authorization:
        case http::field::proxy_connection:
        case http::field::te:
        case http::field::trailer:
        case http::field::transfer_encoding:
        case http::field::upgrade:
        case http::field::content_length:
            return true;
        default:
            return false;
    }
}

http::request<http::string_body> upstreamRequest(const RequestContext& ctx,
                                                 const std::string& body) {
    http::request<http::string_body> req{ctx.request.method(), ctx.request.target(), 11};
    for (const auto& field : ctx.request) {
        if (field.name() != http::field::unknown && isHopByHop(field.name()))
            continue;
        req.insert(field.name_string(), field.value());
    }
    if (!ctx.traceparent.empty())
        req.set("traceparent", ctx.traceparent);
    req.keep_alive(true);
    req.body() = body;
    req.prepare_payload();
    return req;
}

// Writes one HTTP/1.1 chunk (or raw bytes when the client response is not chunked).
awaitable<error_code> writeBody(ClientStream& client, bool chunked, std::string_view data) {
    error_code ec;
    if (data.empty())
        co_return ec;
    if (!chunked) {
        co_await asio::async_write(client, asio::buffer(data), noThrow(ec));
        co_return ec;
    }
    char size[24];
    const int len = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    const std::array<asio::const_buffer, 3> parts{asio::buffer(size, std::size_t(len)),
                                                  asio::buffer(data), asio::buffer("\r\n", 2)};
    co_await asio::async_write(client, parts, noThrow(ec));
    co_return ec;
}

}  // namespace

std::string_view toString(ForwardOutcome outcome) {
    switch (outcome) {
        case ForwardOutcome::Completed:
            return "completed";
        case ForwardOutcome::ConnectFailed:
            return "connect_failed";
        case ForwardOutcome::Timeout:
            return "timeout";
        case ForwardOutcome::UpstreamFailed:
            return "upstream_failed";
        case ForwardOutcome::RetryableStatus:
            return "retryable_status";
        case ForwardOutcome::ClientGone:
            return "client_gone";
    }
    return "unknown";
}

awaitable<ForwardResult> forward(ClientSide client, RequestContext& ctx, const std::string& body,
                                 const tcp::endpoint& address, const ForwardOptions& options,
                                 std::span<HttpFilter* const> filters, UpstreamPool& pool,
                                 tcp::socket** upstream_socket) {
    ForwardResult result;
    const auto sent_at = std::chrono::steady_clock::now();
    auto request = upstreamRequest(ctx, body);
    auto ex = client.socket.get_executor();
    Deadline deadline(ex);

    // A pooled connection may have been closed by the backend while idle; that shows as an
    // error before any response byte, and then one fresh connection is tried.
    for (int attempt = 0; attempt < 2; ++attempt) {
        auto [connect_ec, lease] = co_await pool.acquire(address);
        if (connect_ec) {
            result.outcome = connect_ec == asio::error::timed_out ? ForwardOutcome::Timeout
                                                                  : ForwardOutcome::ConnectFailed;
            co_return result;
        }
        tcp::socket& up = lease.socket;
        *upstream_socket = &up;
        struct Clear {
            tcp::socket** s;
            ~Clear() { *s = nullptr; }
        } clear{upstream_socket};

        error_code ec;
        deadline.arm(up, options.timeout);
        co_await http::async_write(up, request, noThrow(ec));
        beast::flat_buffer up_buffer;
        http::response_parser<http::buffer_body> parser;
        parser.body_limit(std::numeric_limits<std::uint64_t>::max());
        if (!ec)
            co_await http::async_read_header(up, up_buffer, parser, noThrow(ec));
        deadline.disarm();
        if (ec) {
            if (lease.reused && !deadline.fired() && up_buffer.size() == 0)
                continue;
            result.outcome =
                deadline.fired() ? ForwardOutcome::Timeout : ForwardOutcome::UpstreamFailed;
            co_return result;
        }
        result.header_latency = std::chrono::steady_clock::now() - sent_at;
        auto& head = parser.get();
        result.status = head.result_int();
        if (options.hold_retryable_status && (result.status >= 500 || result.status == 429)) {
            result.outcome = ForwardOutcome::RetryableStatus;
            co_return result;  // the connection is dropped with its unread body
        }

        // Response header to the client. Streams and bodies of unknown length are chunked; a
        // body we relay unchanged keeps its length.
        const bool sse = head[http::field::content_type].starts_with("text/event-stream");
        const bool chunked = sse || !head.has_content_length();
        http::response<http::empty_body> res{head.result(), client.version};
        res.reason(head.reason());
        for (const auto& field : head) {
            if (field.name() != http::field::unknown && isHopByHop(field.name()))
                continue;
            res.insert(field.name_string(), field.value());
        }
        for (const auto& [name, value] : ctx.response_headers)
            res.set(name, value);
        if (chunked) {
            res.chunked(true);
        } else {
            res.content_length(parser.content_length());
        }
        res.keep_alive(client.keep_alive);
        http::response_serializer<http::empty_body> serializer{res};
        co_await http::async_write_header(client.socket, serializer, noThrow(ec));
        result.committed = true;
        ctx.status = result.status;
        if (ec) {
            result.outcome = ForwardOutcome::ClientGone;
            co_return result;
        }

        SseSplitter splitter;
        std::string inspected;
        bool inspect = !sse;
        std::array<char, 16384> chunk;
        while (!parser.is_done()) {
            parser.get().body().data = chunk.data();
            parser.get().body().size = chunk.size();
            deadline.arm(up, options.timeout);
            co_await http::async_read_some(up, up_buffer, parser, noThrow(ec));
            deadline.disarm();
            if (ec == http::error::need_buffer)
                ec = {};
            if (ec) {
                // Mid-body failure: HTTP/1.1 can only tell the client by closing.
                result.outcome =
                    deadline.fired() ? ForwardOutcome::Timeout : ForwardOutcome::UpstreamFailed;
                co_return result;
            }
            const std::string_view got(chunk.data(), chunk.size() - parser.get().body().size);
            if (got.empty())
                continue;
            error_code write_ec;
            if (sse) {
                // Relay each event as soon as it is complete; filters may drop one (the usage
                // chunk the client did not ask for).
                std::string out;
                splitter.feed(got, [&](std::string_view raw_view, std::string_view data) {
                    std::string raw(raw_view);
                    bool keep = true;
                    for (HttpFilter* f : filters)
                        keep = f->onStreamEvent(ctx, data, raw) && keep;
                    if (!ctx.first_token && !data.empty() && data != "[DONE]") {
                        ctx.first_token = std::chrono::steady_clock::now();
                    }
                    if (keep)
                        out.append(raw);
                });
                write_ec = co_await writeBody(client.socket, chunked, out);
            } else {
                if (inspect && inspected.size() + got.size() <= options.inspect_limit) {
                    inspected.append(got);
                } else {
                    inspect = false;
                }
                write_ec = co_await writeBody(client.socket, chunked, got);
            }
            if (write_ec) {
                result.outcome = ForwardOutcome::ClientGone;
                co_return result;
            }
        }
        if (sse) {
            if (auto rest = co_await writeBody(client.socket, chunked, splitter.pending())) {
                result.outcome = ForwardOutcome::ClientGone;
                co_return result;
            }
        } else if (inspect) {
            for (HttpFilter* f : filters)
                f->onResponseBody(ctx, inspected);
        }
        if (chunked) {
            co_await asio::async_write(client.socket, asio::buffer("0\r\n\r\n", 5), noThrow(ec));
            if (ec) {
                result.outcome = ForwardOutcome::ClientGone;
                co_return result;
            }
        }
        if (parser.keep_alive())
            pool.release(std::move(lease));
        result.outcome = ForwardOutcome::Completed;
        co_return result;
    }
    result.outcome = ForwardOutcome::UpstreamFailed;
    co_return result;
}

}  // namespace sluice::waypoint
