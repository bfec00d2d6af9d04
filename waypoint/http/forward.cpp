#include "waypoint/http/forward.h"

#include <array>
#include <charconv>
#include <memory>
#include <optional>
#include <vector>

#include <boost/beast/core/buffers_to_string.hpp>

#include "waypoint/http/sse.h"

namespace sluice::waypoint {
namespace {

// Interim answers read before a final one at most; more and the backend is failed.
constexpr unsigned kMaxInterimAnswers = 8;

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
        // The whole body is already here: a backend asked to expect it would answer
        // "100 Continue" first, which the parser would take for the response.
        case http::field::expect:
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

// The response header block exactly as Beast writes it, as bytes, so that it can leave in the
// same write as the first body bytes: one segment and one wake-up of the client instead of two.
std::string serializeHead(http::response<http::empty_body>& res) {
    http::response_serializer<http::empty_body> serializer{res};
    serializer.split(true);
    std::string out;
    error_code ec;
    while (!ec && !serializer.is_header_done()) {
        serializer.next(ec, [&](error_code&, const auto& buffers) {
            out += beast::buffers_to_string(buffers);
            serializer.consume(beast::buffer_bytes(buffers));
        });
    }
    return out;
}

// What goes to the client after one read from the backend: the response header while it is
// still unsent, then `data` as one HTTP/1.1 chunk (or raw bytes when the response is not
// chunked), then the last chunk when the body ended. One gather write.
awaitable<error_code> writeBody(ClientStream& client, std::string& head, bool chunked,
                                std::string_view data, bool last) {
    char size[24];
    std::array<asio::const_buffer, 5> parts;
    std::size_t n = 0;
    if (!head.empty())
        parts[n++] = asio::buffer(head);
    if (!data.empty()) {
        if (chunked) {
            char* end = std::to_chars(size, size + sizeof size - 2, data.size(), 16).ptr;
            *end++ = '\r';
            *end++ = '\n';
            parts[n++] = asio::buffer(size, std::size_t(end - size));
        }
        parts[n++] = asio::buffer(data);
        if (chunked)
            parts[n++] = asio::buffer("\r\n", 2);
    }
    if (last && chunked)
        parts[n++] = asio::buffer("0\r\n\r\n", 5);
    error_code ec;
    if (n > 0) {
        co_await asio::async_write(client, std::span(parts.data(), n), noThrow(ec));
        head.clear();
    }
    co_return ec;
}

// 16 KiB relay buffers, reused by the requests of one worker thread: a buffer in the coroutine
// frame would make every request allocate (and the allocator consolidate) a 17 KiB frame.
class RelayBuffer {
  public:
    static constexpr std::size_t kSize = 16384;
    RelayBuffer() {
        if (free_.empty()) {
            buf_ = std::make_unique_for_overwrite<char[]>(kSize);
        } else {
            buf_ = std::move(free_.back());
            free_.pop_back();
        }
    }
    ~RelayBuffer() {
        if (free_.size() < kKeep)
            free_.push_back(std::move(buf_));
    }
    RelayBuffer(const RelayBuffer&) = delete;
    RelayBuffer& operator=(const RelayBuffer&) = delete;
    char* data() { return buf_.get(); }

  private:
    static constexpr std::size_t kKeep = 16;  // idle buffers a worker keeps (256 KiB)
    static thread_local std::vector<std::unique_ptr<char[]>> free_;
    std::unique_ptr<char[]> buf_;
};

thread_local std::vector<std::unique_ptr<char[]>> RelayBuffer::free_;

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
        Deadline& deadline = lease.deadline;
        *upstream_socket = &up;
        struct Clear {
            tcp::socket** s;
            ~Clear() { *s = nullptr; }
        } clear{upstream_socket};

        error_code ec;
        deadline.arm(up, options.timeout);
        co_await http::async_write(up, request, noThrow(ec));
        beast::flat_buffer up_buffer;
        const bool head_request = ctx.request.method() == http::verb::head;
        std::optional<http::response_parser<http::buffer_body>> reading;
        // Interim answers (100 Continue, 102, 103 Early Hints) have no body and the final one
        // follows on the same connection: each is read with a parser of its own and dropped
        // (as Envoy does by default; docs/waypoint.md). 101 is final: the waypoint asks for no
        // upgrade and relays no other protocol.
        unsigned interim = 0;
        for (; !ec; ++interim) {
            reading.emplace();
            reading->body_limit(std::numeric_limits<std::uint64_t>::max());
            reading->skip(head_request);  // the answer to HEAD has a length but no body
            co_await http::async_read_header(up, up_buffer, *reading, noThrow(ec));
            const unsigned status = reading->get().result_int();
            if (ec || status / 100 != 1 || status == 101)
                break;
            if (interim == kMaxInterimAnswers)
                ec = http::error::bad_status;  // a backend that never answers for real
        }
        http::response_parser<http::buffer_body>& parser = *reading;
        deadline.disarm();
        if (ec) {
            // A reused connection that failed before any answer (the backend had closed it):
            // the request was never taken, so it goes again on a fresh one. Not after an
            // interim answer: the backend had the request then.
            if (lease.reused && !deadline.fired() && up_buffer.size() == 0 && interim == 0)
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
        // body we relay unchanged keeps its length. Answers that never have a body (to HEAD,
        // 1xx, 204, 304) get no framing of ours: chunked framing there would be read as the
        // start of the next response.
        const bool sse = head[http::field::content_type].starts_with("text/event-stream");
        const unsigned status = head.result_int();
        const bool bodyless = head_request || status / 100 == 1 || status == 204 || status == 304;
        const bool chunked = !bodyless && (sse || !head.has_content_length());
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
        } else if (bodyless) {
            if (head.has_content_length())  // what the body would be (HEAD, 304)
                res.set(http::field::content_length, head[http::field::content_length]);
        } else {
            res.content_length(parser.content_length());
        }
        res.keep_alive(client.keep_alive);
        // The header leaves with the first body bytes when they came with it (a small reply
        // goes out in one write); a stream's header goes out at once.
        std::string pending_head = serializeHead(res);
        result.committed = true;
        ctx.status = result.status;
        if (up_buffer.size() == 0 && !parser.is_done()) {
            if (co_await writeBody(client.socket, pending_head, chunked, {}, false)) {
                result.outcome = ForwardOutcome::ClientGone;
                co_return result;
            }
        }

        SseSplitter splitter;
        std::string inspected;
        bool inspect = !sse;
        RelayBuffer chunk;
        std::string out;
        while (true) {
            std::string_view got;
            if (!parser.is_done()) {
                parser.get().body().data = chunk.data();
                parser.get().body().size = RelayBuffer::kSize;
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
                got = std::string_view(chunk.data(), RelayBuffer::kSize - parser.get().body().size);
            }
            const bool last = parser.is_done();
            std::string_view data = got;
            if (sse) {
                // Relay each event as soon as it is complete; filters may drop one (the usage
                // chunk the client did not ask for).
                out.clear();
                splitter.feed(got, [&](std::string_view raw_view, std::string_view event) {
                    std::string raw(raw_view);
                    bool keep = true;
                    for (HttpFilter* f : filters)
                        keep = f->onStreamEvent(ctx, event, raw) && keep;
                    if (!ctx.first_token && !event.empty() && event != "[DONE]") {
                        ctx.first_token = std::chrono::steady_clock::now();
                    }
                    if (keep)
                        out.append(raw);
                });
                if (last)
                    out.append(splitter.pending());
                data = out;
            } else if (inspect && inspected.size() + got.size() <= options.inspect_limit) {
                inspected.append(got);
            } else {
                inspect = false;
            }
            // An incomplete event (or a chunk-size line) with the header still unsent: the
            // header goes now, the client must not wait for the rest of the event to see it.
            if (!data.empty() || last || !pending_head.empty()) {
                if (co_await writeBody(client.socket, pending_head, chunked, data, last)) {
                    result.outcome = ForwardOutcome::ClientGone;
                    co_return result;
                }
            }
            if (last)
                break;
        }
        if (inspect) {
            for (HttpFilter* f : filters)
                f->onResponseBody(ctx, inspected);
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
