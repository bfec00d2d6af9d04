#include "waypoint/http/forward.h"

#include <array>
#include <charconv>
#include <memory>
#include <optional>
#include <vector>

#include "waypoint/http/direct_io.h"
#include "waypoint/http/sse.h"

namespace sluice::waypoint {
namespace {

// Interim answers read before a final one at most; more and the backend is failed.
constexpr unsigned kMaxInterimAnswers = 8;

void appendField(std::string& out, std::string_view name, std::string_view value) {
    out.append(name).append(": ").append(value).append("\r\n");
}

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
        // RFC 7540 §3.2.1: connection-specific; left on a request that was not upgraded.
        case http::field::http2_settings:
        case http::field::content_length:
        // The whole body is already here: a backend asked to expect it would answer
        // "100 Continue" first, which the parser would take for the response.
        case http::field::expect:
            return true;
        default:
            return false;
    }
}

// The request line and header sent upstream, written straight into one string (what Beast would
// write for a copy of the client's message with these changes, without building that copy): the
// client's fields in their order minus the hop-by-hop ones, our traceparent in place of theirs,
// then the body's length (Beast's prepare_payload rule: a length when there is a body, or for
// POST, PUT and OPTIONS).
std::string upstreamHead(const RequestContext& ctx, std::size_t body_size) {
    const auto method = ctx.request.method();
    std::string out;
    out.reserve(512);
    out.append(sv(ctx.request.method_string()))
        .append(" ")
        .append(sv(ctx.request.target()))
        .append(" HTTP/1.1\r\n");
    for (const auto& field : ctx.request) {
        if (field.name() != http::field::unknown && isHopByHop(field.name()))
            continue;
        if (!ctx.traceparent.empty() && beast::iequals(field.name_string(), "traceparent"))
            continue;
        if (!ctx.api.empty() && field.name() == http::field::accept_encoding)
            continue;
        appendField(out, sv(field.name_string()), sv(field.value()));
    }
    if (!ctx.traceparent.empty())
        appendField(out, "traceparent", ctx.traceparent);
    // The waypoint reads the answers of the API it knows (usage, SSE events, the embeddings
    // cache), so it asks for them uncompressed: a gzip body would hide the usage, buffer a
    // stream until its end, and be cached for clients that never accepted gzip.
    if (!ctx.api.empty())
        appendField(out, "Accept-Encoding", "identity");
    if (body_size > 0 || method == http::verb::post || method == http::verb::put ||
        method == http::verb::options) {
        char digits[24];
        const char* end = std::to_chars(digits, digits + sizeof digits, body_size).ptr;
        appendField(out, "Content-Length", std::string_view(digits, std::size_t(end - digits)));
    }
    out.append("\r\n");
    return out;
}

// The response header block for the client, as Beast would write a message built from the
// backend's header: the status line in the client's version with the backend's reason, the
// backend's fields minus the hop-by-hop ones, the filters' headers in place of fields of the same
// name, then the framing fields (`framing`: Transfer-Encoding or Content-Length, may be empty)
// and Connection when the client's keep-alive differs from its version's default.
std::string responseHead(const http::response_parser<http::buffer_body>::value_type& head,
                         const RequestContext& ctx, const ClientSide& client,
                         std::string_view framing_name, std::string_view framing_value) {
    const auto& added = ctx.response_headers;
    // A filter header replaces fields of its name, and a later one of the same name an earlier.
    auto replaced = [&](beast::string_view name, std::size_t from) {
        for (std::size_t i = from; i < added.size(); ++i) {
            if (beast::iequals(name, added[i].first))
                return true;
        }
        return false;
    };
    const unsigned code = head.result_int();
    std::string out;
    out.reserve(512);
    char status_line[] = "HTTP/1.1 200 ";  // version and code filled in below
    status_line[5] = char('0' + client.version / 10);
    status_line[7] = char('0' + client.version % 10);
    status_line[9] = char('0' + code / 100);
    status_line[10] = char('0' + code / 10 % 10);
    status_line[11] = char('0' + code % 10);
    out.append(status_line, sizeof status_line - 1).append(sv(head.reason())).append("\r\n");
    for (const auto& field : head) {
        if (field.name() != http::field::unknown && isHopByHop(field.name()))
            continue;
        if (replaced(field.name_string(), 0))
            continue;
        appendField(out, sv(field.name_string()), sv(field.value()));
    }
    for (std::size_t i = 0; i < added.size(); ++i) {
        if (!replaced(added[i].first, i + 1))
            appendField(out, added[i].first, added[i].second);
    }
    if (!framing_name.empty())
        appendField(out, framing_name, framing_value);
    if (client.version >= 11 && !client.keep_alive)
        appendField(out, "Connection", "close");
    else if (client.version < 11 && client.keep_alive)
        appendField(out, "Connection", "keep-alive");
    out.append("\r\n");
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
    if (n == 0)
        co_return ec;
    const std::span<const asio::const_buffer> buffers(parts.data(), n);
    if (tcp::socket* socket = client.socket()) {
        const std::size_t sent = sendNow(*socket, buffers, ec);
        if (!ec && sent < asio::buffer_size(buffers))
            ec = co_await writeRest(*socket, buffers, sent);
    } else {
        co_await asio::async_write(client, buffers, noThrow(ec));
    }
    head.clear();
    co_return ec;
}

// Buffers reused by the requests of one worker thread, from a free list of at most `kKeep`: a
// buffer in the coroutine frame would make every request allocate (and the allocator
// consolidate) a frame that large, and a fresh one per request would allocate it anyway.
template <class T>
class Recycled {
  public:
    static constexpr std::size_t kKeep = 16;  // idle buffers of each kind a worker keeps
    explicit Recycled(T (*make)()) {
        if (free_.empty()) {
            value_ = make();
        } else {
            value_ = std::move(free_.back());
            free_.pop_back();
        }
    }
    ~Recycled() {
        if (free_.size() < kKeep)
            free_.push_back(std::move(value_));
    }
    Recycled(const Recycled&) = delete;
    Recycled& operator=(const Recycled&) = delete;
    T& get() { return value_; }

  private:
    static thread_local std::vector<T> free_;
    T value_;
};
template <class T>
thread_local std::vector<T> Recycled<T>::free_;

// The relay's 16 KiB body chunks, and the buffer the backend's bytes are read into: its
// capacity is what Beast asks the socket for per read (an empty flat_buffer reads 512 bytes at
// a time, a recv and a send per 512 bytes of a large response).
constexpr std::size_t kRelayChunk = 16384;
std::unique_ptr<char[]> makeChunk() {
    return std::make_unique_for_overwrite<char[]>(kRelayChunk);
}
beast::flat_buffer makeReadBuffer() {
    beast::flat_buffer b;
    b.reserve(kRelayChunk);
    return b;
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
    const std::string request_head = upstreamHead(ctx, body.size());
    const std::array<asio::const_buffer, 2> request{asio::buffer(request_head), asio::buffer(body)};

    // A pooled connection may have been closed by the backend while idle; that shows as an
    // error before any response byte, and then one fresh connection is tried.
    for (int attempt = 0; attempt < 2; ++attempt) {
        error_code connect_ec;
        std::optional<UpstreamPool::Lease> held = pool.reuse(address);
        if (!held) {
            auto [ec, fresh] = co_await pool.connect(address, upstream_socket);
            connect_ec = ec;
            held.emplace(std::move(fresh));
        }
        UpstreamPool::Lease& lease = *held;
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
        if (const std::size_t sent = sendNow(up, request, ec);
            !ec && sent < request_head.size() + body.size()) {
            ec = co_await writeRest(up, request, sent);
        }
        Recycled<beast::flat_buffer> read_buffer(makeReadBuffer);
        beast::flat_buffer& up_buffer = read_buffer.get();
        up_buffer.clear();  // what a connection that failed left in it
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
            // interim answer: the backend had the request then; not when the socket is closed
            // here: the client left and its watch closed it (a new request would run unwatched).
            if (lease.reused && !deadline.fired() && up_buffer.size() == 0 && interim == 0 &&
                up.is_open())
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

        // Response header to the client. Streams and bodies of unknown length are chunked (to an
        // HTTP/1.0 client: raw, ended by closing); a body we relay unchanged keeps its length.
        // Answers that never have a body (to HEAD, 1xx, 204, 304) get no framing of ours: chunked
        // framing there would be read as the start of the next response.
        // A coded body (a backend that compressed anyway) is relayed as it came, not read:
        // neither split into events nor inspected for usage or cached.
        const auto coding = head[http::field::content_encoding];
        const bool coded = !coding.empty() && !beast::iequals(coding, "identity");
        const bool sse = !coded && head[http::field::content_type].starts_with("text/event-stream");
        const unsigned status = head.result_int();
        const bool bodyless = head_request || status / 100 == 1 || status == 204 || status == 304;
        const bool unknown_length = !bodyless && (sse || !head.has_content_length());
        // An HTTP/1.0 client knows no chunked coding (RFC 9112 §6.1): the end of the
        // connection delimits the body instead.
        const bool chunked = unknown_length && client.version >= 11;
        if (unknown_length && !chunked) {
            client.keep_alive = false;
            result.close_delimited = true;
        }
        std::string_view framing;  // the framing field of ours, and its value
        std::string framing_value;
        if (chunked) {
            framing = "Transfer-Encoding";
            framing_value = "chunked";
        } else if (bodyless) {
            if (head.has_content_length()) {  // what the body would be (HEAD, 304)
                framing = "Content-Length";
                framing_value = std::string(sv(head[http::field::content_length]));
            }
        } else if (const auto length = parser.content_length(); length && !unknown_length) {
            framing = "Content-Length";
            framing_value = std::to_string(*length);
        }
        // The header leaves with the first body bytes when they came with it (a small reply
        // goes out in one write); a stream's header goes out at once.
        std::string pending_head = responseHead(head, ctx, client, framing, framing_value);
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
        bool inspect = !sse && !coded;
        Recycled<std::unique_ptr<char[]>> chunk(makeChunk);
        std::string out;
        std::string raw;  // one SSE event as relayed (filters may edit it)
        while (true) {
            std::string_view got;
            if (!parser.is_done()) {
                parser.get().body().data = chunk.get().get();
                parser.get().body().size = kRelayChunk;
                if (auto step = parseBuffered(parser, up_buffer)) {
                    ec = *step;
                } else {
                    deadline.arm(up, options.timeout);
                    co_await http::async_read_some(up, up_buffer, parser, noThrow(ec));
                    deadline.disarm();
                }
                if (ec == http::error::need_buffer)
                    ec = {};
                if (ec) {
                    // Mid-body failure: HTTP/1.1 can only tell the client by closing.
                    result.outcome =
                        deadline.fired() ? ForwardOutcome::Timeout : ForwardOutcome::UpstreamFailed;
                    co_return result;
                }
                got = std::string_view(chunk.get().get(), kRelayChunk - parser.get().body().size);
            }
            const bool last = parser.is_done();
            std::string_view data = got;
            if (sse) {
                // Relay each event as soon as it is complete; filters may drop one (the usage
                // chunk the client did not ask for).
                out.clear();
                splitter.feed(got, [&](std::string_view raw_view, std::string_view event) {
                    raw.assign(raw_view);
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
