#include "waypoint/http/h2_server.h"

#include <nghttp2/nghttp2.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include <boost/asio/write.hpp>

#include "ztunnel/hbone/nghttp2_io.h"

namespace sluice::waypoint {
namespace {

using ztunnel::hbone::Event;
using ztunnel::hbone::header;
using ztunnel::hbone::SendQueue;

// Response bytes queued for the peer beyond this make the pipeline's write wait.
constexpr std::size_t kSendHighWater = 256 * 1024;
constexpr std::size_t kReadChunk = 16 * 1024;
constexpr std::size_t kWriteBatch = 64 * 1024;
// The HTTP/1.1 response header the pipeline writes (status line and fields).
constexpr std::uint32_t kResponseHeaderLimit = 64 * 1024;
constexpr std::string_view kPrefaceHead = "PRI * HTTP/2.0\r\n\r\n";
constexpr std::size_t kMaxWindow = (1u << 31) - 1;

// Connection-specific fields (RFC 9113 §8.2.2) never cross the translation in either direction.
// `name` is lower case (HTTP/2 requires it; response names are lowered first).
bool hopByHop(std::string_view name) {
    return name == "connection" || name == "keep-alive" || name == "transfer-encoding" ||
           name == "upgrade" || name == "proxy-connection" || name == "te";
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

class H2Session;

// One HTTP/2 stream as an HTTP/1.1 connection carrying one request: reads yield the request as
// HTTP/1.1 bytes, writes are parsed as an HTTP/1.1 response and leave as HEADERS and DATA.
class H2Stream final : public ByteStream,
                       public std::enable_shared_from_this<H2Stream>,
                       private http::basic_parser<false> {
  public:
    H2Stream(H2Session& session, int32_t id, asio::any_io_executor ex)
        : session_(session), id_(id), executor_(ex), readable_(ex), writable_(ex) {
        header_limit(kResponseHeaderLimit);
        // Not boost::none: Beast 1.74 compares a content length against the optional itself.
        body_limit(std::numeric_limits<std::uint64_t>::max());
        eager(true);
    }

    awaitable<IoResult> write(std::string data) override;
    void shutdown_send() override;
    void close() override;
    bool is_open() const override { return !closed_ && !ended_; }

  protected:
    awaitable<IoResult> readSome(asio::mutable_buffer buf) override;
    void interruptRead() override { readable_.notify(); }

  private:
    friend class H2Session;
    // The request, from HEADERS and DATA.
    void addHeader(std::string_view name, std::string_view value);
    // The request line, as soon as the request's HEADERS are there: the HTTP/1.1 parser has
    // begun a request, so a body that never ends is a 408 (request timeout), not an idle close.
    void requestStarted();
    void requestComplete(std::size_t max_body_bytes);
    // Response parser callbacks.
    void on_request_impl(http::verb, beast::string_view, beast::string_view, int,
                         error_code&) override {}
    void on_response_impl(int code, beast::string_view, int, error_code&) override {
        status_ = std::to_string(code);
    }
    void on_field_impl(http::field, beast::string_view name, beast::string_view value,
                       error_code&) override {
        std::string lowered = lower(sv(name));
        if (!hopByHop(lowered))
            response_fields_.emplace_back(std::move(lowered), std::string(sv(value)));
    }
    void on_header_impl(error_code&) override;
    void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
    std::size_t on_body_impl(beast::string_view body, error_code&) override {
        send_.append({body.data(), body.size()});
        return body.size();
    }
    void on_chunk_header_impl(std::uint64_t, beast::string_view, error_code&) override {}
    std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code&) override {
        send_.append({body.data(), body.size()});
        return body.size();
    }
    void on_finish_impl(error_code&) override { finished_ = true; }
    static ssize_t readData(nghttp2_session*, int32_t, uint8_t* buf, std::size_t length,
                            uint32_t* flags, nghttp2_data_source* source, void*);
    void ended(bool reset) {
        ended_ = true;
        reset_ = reset;
        readable_.notify();
        writable_.notify();
    }

    H2Session& session_;
    int32_t id_;
    asio::any_io_executor executor_;
    // Request side.
    std::string method_, path_, authority_, fields_;
    std::size_t field_bytes_ = 0;
    std::string body_;  // collected; read after the head once the request is whole
    std::size_t body_offset_ = 0;
    bool body_too_large_ = false;
    // Body admission (docs/waypoint.md, "Request bodies held per connection"): the budget this
    // stream reserved while admitted, the declared content-length, bytes not yet given back
    // to its window while it waits.
    std::optional<std::size_t> declared_length_;
    std::size_t reserved_ = 0;
    std::size_t unconsumed_ = 0;
    bool admitted_ = false;
    std::string request_;  // HTTP/1.1 head: the request line, whole once request_ready_
    std::size_t request_offset_ = 0;
    bool request_ready_ = false;
    bool handed_ = false;  // the pipeline has read the whole request
    // Response side.
    std::string unparsed_;
    std::string status_;
    std::vector<std::pair<std::string, std::string>> response_fields_;
    SendQueue send_;
    bool submitted_ = false;
    bool finished_ = false;   // the whole response went through the parser (or send shut down)
    bool send_shut_ = false;  // shutdown_send was called
    // Lifetime.
    bool closed_ = false;  // close() was called by the pipeline
    bool ended_ = false;   // nghttp2 closed the stream
    bool reset_ = false;   // ... with an error code (RST_STREAM, connection lost)
    Event readable_, writable_;
};

// One h2c connection: the nghttp2 server session, its transport's loops and its streams.
class H2Session : public std::enable_shared_from_this<H2Session>, private H2Connections::Member {
  public:
    H2Session(ClientStream& transport, const ServerLimits& limits, const Handler& handler,
              const Downstream& downstream)
        : transport_(transport),
          executor_(transport.get_executor()),
          limits_(limits),
          handler_(handler),
          // The streams are HTTP/1.1 exchanges of this peer; they detect no HTTP/2 themselves.
          downstream_{downstream.peer_identity, downstream.authority, nullptr},
          registry_(downstream.h2),
          write_ready_(executor_),
          write_ended_(executor_),
          idle_timer_(executor_) {
        nghttp2_option* opt = nullptr;
        nghttp2_option_new(&opt);
        // A stream's window is given back only while its body is admitted (docs/waypoint.md,
        // "Request bodies held per connection"); the connection's as bytes arrive.
        nghttp2_option_set_no_auto_window_update(opt, 1);
        nghttp2_session_server_new2(&session_, callbacks(), this, opt);
        nghttp2_option_del(opt);
    }
    ~H2Session() { nghttp2_session_del(session_); }
    H2Session(const H2Session&) = delete;
    H2Session& operator=(const H2Session&) = delete;

    awaitable<void> run(std::string_view received, const H2cUpgraded* upgraded);

    nghttp2_session* session() { return session_; }
    std::chrono::milliseconds idleTimeout() const { return limits_.idle_timeout; }
    void kick() { write_ready_.notify(); }
    void resume(H2Stream& s) {
        if (s.send_.deferred && !s.ended_) {
            s.send_.deferred = false;
            nghttp2_session_resume_data(session_, s.id_);
        }
        kick();
    }
    // The body of `s` was handed to the pipeline (or dropped): its budget goes to the next
    // waiting stream.
    void release(H2Stream& s);

  private:
    static const nghttp2_session_callbacks* callbacks();
    static int onBeginHeaders(nghttp2_session*, const nghttp2_frame*, void*);
    static int onHeader(nghttp2_session*, const nghttp2_frame*, const uint8_t*, std::size_t,
                        const uint8_t*, std::size_t, uint8_t, void*);
    static int onFrameRecv(nghttp2_session*, const nghttp2_frame*, void*);
    static int onDataChunk(nghttp2_session*, uint8_t, int32_t, const uint8_t*, std::size_t, void*);
    static int onStreamClose(nghttp2_session*, int32_t, uint32_t, void*);

    // GOAWAY with the last stream we took: those finish, later ones are not processed (the
    // client may retry them elsewhere). The connection ends with its last stream.
    void goaway() override {
        if (!open_ || std::exchange(goaway_sent_, true))
            return;
        nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                              nullptr, 0);
        kick();
    }
    H2Stream* find(int32_t id) {
        return static_cast<H2Stream*>(nghttp2_session_get_stream_user_data(session_, id));
    }
    bool feed(std::string_view bytes) {
        const ssize_t rv = nghttp2_session_mem_recv(
            session_, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
        if (rv < 0) {
            spdlog::debug("h2c: HTTP/2 error: {}", nghttp2_strerror(static_cast<int>(rv)));
            return false;
        }
        kick();
        return true;
    }
    awaitable<void> readLoop();
    awaitable<void> writeLoop();
    // Ends the connection gracefully (GOAWAY) once no stream is live and the client has sent
    // nothing for the request timeout (before its first stream: a preface and then silence)
    // or the idle timeout (after one): a silent connection must not hold its descriptor,
    // session and buffers for ever.
    awaitable<void> idleWatch();
    awaitable<void> serveStream(std::shared_ptr<H2Stream> stream);
    // Stream 1 from the request that asked for the upgrade; false if nghttp2 refused it.
    bool upgrade(const H2cUpgraded& upgraded);
    // A stream whose HEADERS did not end it: admitted if the budget has room for its body.
    void admit(H2Stream& s);
    void grant(H2Stream& s);
    void admitWaiting();
    std::size_t need(const H2Stream& s) const {
        return s.declared_length_.value_or(limits_.max_body_bytes);
    }
    // `graceful`: the session is done (GOAWAY exchanged, or the client closed); else an error.
    void close(bool graceful);

    ClientStream& transport_;  // only until run() returns: the loops end before
    asio::any_io_executor executor_;
    const ServerLimits& limits_;
    const Handler& handler_;
    const Downstream downstream_;
    H2Connections* registry_;
    nghttp2_session* session_ = nullptr;
    std::map<int32_t, std::shared_ptr<H2Stream>> streams_;
    // Request-body budget: what admitted streams reserved, and the streams waiting, in order.
    std::size_t reserved_ = 0;
    std::deque<int32_t> waiting_;
    bool open_ = true;
    bool linger_ = false;            // a graceful end on TCP: the read loop drains before closing
    bool end_after_writes_ = false;  // ... or, the client having ended, run() ends our side
    bool goaway_sent_ = false;
    bool write_loop_running_ = false;
    Event write_ready_, write_ended_;
    asio::steady_timer idle_timer_;  // idleWatch()'s; close() cancels it
    std::chrono::steady_clock::time_point last_activity_ = std::chrono::steady_clock::now();
};

// ---- H2Stream ------------------------------------------------------------------------------

void H2Stream::addHeader(std::string_view name, std::string_view value) {
    field_bytes_ += name.size() + value.size() + 4;
    if (name == ":method")
        method_ = value;
    else if (name == ":path")
        path_ = value;
    else if (name == ":authority")
        authority_ = value;
    else if (name == "content-length") {
        std::size_t n = 0;
        const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
        if (ec == std::errc() && end == value.data() + value.size())
            declared_length_ = n;
    } else if (name.starts_with(':') || hopByHop(name) || name == "expect" ||
               (name == "host" && !authority_.empty())) {
        // Expect: the body is whole before the request is handed on, and the HTTP/1.1 side
        // would answer the expectation with a 100 into the stream as if it were the response.
        return;
    } else {
        fields_.append(name).append(": ").append(value).append("\r\n");
    }
}

void H2Stream::requestStarted() {
    // A response to HEAD has no body whatever its framing fields say (nghttp2 knows the method
    // too and a client takes DATA on it for a protocol error); a body the pipeline writes
    // anyway is dropped.
    if (method_ == "HEAD")
        skip(true);
    request_.append(method_).append(" ").append(path_).append(" HTTP/1.1\r\n");
    readable_.notify();
}

void H2Stream::requestComplete(std::size_t max_body_bytes) {
    if (request_ready_)
        return;
    // One request per stream: "connection: close" ends serveHttp1 after the response. The body
    // arrived whole (END_STREAM), so its length is known; one over the limit is announced as
    // such and the HTTP/1.1 parser answers 413 exactly as on the plain listener.
    const std::size_t length = body_too_large_ ? max_body_bytes + 1 : body_.size();
    request_.reserve(request_.size() + field_bytes_ + 64);
    if (!authority_.empty())
        request_.append("host: ").append(authority_).append("\r\n");
    request_.append(fields_).append("connection: close\r\ncontent-length: ");
    request_.append(std::to_string(length)).append("\r\n\r\n");
    std::string().swap(fields_);
    request_ready_ = true;
    readable_.notify();
}

awaitable<ByteStream::IoResult> H2Stream::readSome(asio::mutable_buffer buf) {
    if (closed_)
        co_return IoResult{asio::error::bad_descriptor, 0};
    // An error reply went out before the request was whole (408, 413): nothing more to read
    // (HTTP/1.1's lingering close protects a reply from a TCP reset; a stream needs none).
    if (send_shut_ && !request_ready_)
        co_return IoResult{asio::error::eof, 0};
    // After the request, a read waits for the stream's end: the client's END_STREAM is not a
    // disconnect (HTTP/1.1's EOF is); only RST_STREAM or a lost connection is.
    // The head, then (once whole) the body, each read from where it was collected.
    auto unread = [this] {
        return request_offset_ < request_.size() || (request_ready_ && body_offset_ < body_.size());
    };
    while (!readCancelled() && !ended_ && !unread())
        co_await readable_.wait();
    if (readCancelled())
        co_return IoResult{asio::error::operation_aborted, 0};
    // A stream the client (or nghttp2, for a protocol error of the client's) reset before its
    // request was handed on is not served: nghttp2 no longer counts it against the concurrent
    // streams, so serving it would let a client run requests past that limit.
    if (reset_ && !handed_)
        co_return IoResult{asio::error::connection_reset, 0};
    if (unread()) {
        const bool head = request_offset_ < request_.size();
        const std::string& from = head ? request_ : body_;
        std::size_t& offset = head ? request_offset_ : body_offset_;
        const std::size_t n = std::min(buf.size(), from.size() - offset);
        std::memcpy(buf.data(), from.data() + offset, n);
        offset += n;
        if (request_ready_ && !unread()) {
            std::string().swap(request_);  // the parser has its own copy now
            std::string().swap(body_);
            request_offset_ = body_offset_ = 0;
            handed_ = true;
            session_.release(*this);  // handed to the pipeline
        }
        co_return IoResult{error_code{}, n};
    }
    co_return IoResult{
        reset_ ? error_code(asio::error::connection_reset) : error_code(asio::error::eof), 0};
}

awaitable<ByteStream::IoResult> H2Stream::write(std::string data) {
    if (send_.queued() >= kSendHighWater && !ended_ && !closed_) {
        // The peer's window holds the response back: a client that stopped reading this stream
        // gets it reset after the idle timeout (a timer only on this slow path).
        ztunnel::hbone::Deadline bound(executor_, session_.idleTimeout(),
                                       [self = shared_from_this()] { self->writable_.notify(); });
        while (send_.queued() >= kSendHighWater && !ended_ && !closed_ && !bound.expired())
            co_await writable_.wait();
        if (bound.expired() && !ended_ && !closed_) {
            spdlog::info("h2c: stream {}: the peer took no response bytes for {} ms; reset", id_,
                         session_.idleTimeout().count());
            nghttp2_submit_rst_stream(session_.session(), NGHTTP2_FLAG_NONE, id_, NGHTTP2_CANCEL);
            session_.kick();
            co_return IoResult{asio::error::broken_pipe, 0};
        }
    }
    if (ended_ || closed_)
        co_return IoResult{asio::error::broken_pipe, 0};
    const std::size_t n = data.size();
    unparsed_.append(data);
    std::size_t used = 0;
    error_code ec;
    while (used < unparsed_.size() && !is_done()) {
        const std::size_t k =
            put(asio::buffer(unparsed_.data() + used, unparsed_.size() - used), ec);
        used += k;
        if (ec == http::error::need_more) {
            ec = {};
            break;
        }
        if (ec)
            break;
    }
    // Past the end of the response (one per stream) nothing is sent.
    if (is_done())
        unparsed_.clear();
    else
        unparsed_.erase(0, used);
    if (ec) {
        spdlog::warn("h2c: stream {}: response does not parse: {}", id_, ec.message());
        co_return IoResult{asio::error::broken_pipe, 0};
    }
    session_.resume(*this);
    co_return IoResult{error_code{}, n};
}

void H2Stream::on_header_impl(error_code&) {
    std::vector<nghttp2_nv> nva;
    nva.reserve(response_fields_.size() + 1);
    nva.push_back(header(":status", status_));
    for (const auto& [name, value] : response_fields_)
        nva.push_back(header(name, value));
    nghttp2_data_provider provider{};
    provider.source.ptr = this;
    provider.read_callback = readData;
    if (!ended_)
        nghttp2_submit_response(session_.session(), id_, nva.data(), nva.size(), &provider);
    submitted_ = true;
    response_fields_.clear();
}

void H2Stream::shutdown_send() {
    send_shut_ = true;
    if (!is_done()) {
        error_code ec;
        put_eof(ec);  // a body delimited by the end of the connection ends here
    }
    if (submitted_ && is_done())  // else close() resets it: a cut body is not ended cleanly
        finished_ = true;
    session_.resume(*this);
}

void H2Stream::close() {
    if (std::exchange(closed_, true))
        return;
    session_.release(*this);
    // An incomplete response (client gone, upstream reset mid-response) resets the stream; a
    // complete one still goes out with END_STREAM. REFUSED_STREAM tells the client the request
    // was not processed and may be retried, so only a stream whose request never reached the
    // pipeline gets it: once handed on, it may have gone upstream (a POST retried twice).
    if (!ended_ && (!submitted_ || !finished_)) {
        nghttp2_submit_rst_stream(
            session_.session(), NGHTTP2_FLAG_NONE, id_,
            submitted_ || handed_ ? NGHTTP2_INTERNAL_ERROR : NGHTTP2_REFUSED_STREAM);
        session_.kick();
    }
    readable_.notify();
}

ssize_t H2Stream::readData(nghttp2_session*, int32_t, uint8_t* buf, std::size_t length,
                           uint32_t* flags, nghttp2_data_source* source, void*) {
    auto* s = static_cast<H2Stream*>(source->ptr);
    return s->send_.take(buf, length, flags, s->finished_, s->writable_, kSendHighWater);
}

// ---- H2Session -----------------------------------------------------------------------------

const nghttp2_session_callbacks* H2Session::callbacks() {
    static nghttp2_session_callbacks* cbs =
        ztunnel::hbone::newCallbacks({.begin_headers = onBeginHeaders,
                                      .header = onHeader,
                                      .frame_recv = onFrameRecv,
                                      .data_chunk = onDataChunk,
                                      .stream_close = onStreamClose});
    return cbs;
}

int H2Session::onBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* ud) {
    auto* self = static_cast<H2Session*>(ud);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    auto stream = std::make_shared<H2Stream>(*self, frame->hd.stream_id, self->executor_);
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, stream.get());
    self->streams_[frame->hd.stream_id] = std::move(stream);
    return 0;
}

int H2Session::onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                        std::size_t namelen, const uint8_t* value, std::size_t valuelen, uint8_t,
                        void* ud) {
    auto* self = static_cast<H2Session*>(ud);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;  // trailers are dropped
    H2Stream* s = self->find(frame->hd.stream_id);
    if (s == nullptr)
        return 0;
    // Beyond twice the header limit the stream is reset; up to it the HTTP/1.1 parser answers
    // 431 as on the plain listener.
    if (s->field_bytes_ > 2 * self->limits_.max_header_bytes)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->addHeader({reinterpret_cast<const char*>(name), namelen},
                 {reinterpret_cast<const char*>(value), valuelen});
    return 0;
}

int H2Session::onFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* ud) {
    auto* self = static_cast<H2Session*>(ud);
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    H2Stream* s = self->find(frame->hd.stream_id);
    if (s == nullptr)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        auto it = self->streams_.find(frame->hd.stream_id);
        if (it != self->streams_.end()) {
            s->requestStarted();
            if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
                self->admit(*s);
            asio::co_spawn(self->executor_, self->serveStream(it->second), asio::detached);
        }
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
        s->requestComplete(self->limits_.max_body_bytes);
    return 0;
}

int H2Session::onDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                           const uint8_t* data, std::size_t len, void* ud) {
    auto* self = static_cast<H2Session*>(ud);
    // The connection's window follows what arrives; a stream's only while it is admitted (or
    // its bytes are dropped: a body over the limit, data after the request or for a finished
    // stream). A waiting stream stops at its initial window.
    nghttp2_session_consume_connection(session, len);
    H2Stream* s = self->find(stream_id);
    if (s != nullptr && !s->request_ready_ && !s->closed_ && !s->body_too_large_ &&
        s->body_.size() + len > self->limits_.max_body_bytes) {
        s->body_too_large_ = true;
        std::string().swap(s->body_);
        self->release(*s);
    }
    if (s == nullptr || s->request_ready_ || s->closed_ || s->body_too_large_) {
        nghttp2_session_consume_stream(session, stream_id, len);
        return 0;
    }
    s->body_.append(reinterpret_cast<const char*>(data), len);
    if (s->admitted_)
        nghttp2_session_consume_stream(session, stream_id, len);
    else
        s->unconsumed_ += len;
    return 0;
}

int H2Session::onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* ud) {
    auto* self = static_cast<H2Session*>(ud);
    auto it = self->streams_.find(stream_id);
    if (it == self->streams_.end())
        return 0;
    auto keep = std::move(it->second);  // its waiters hold their own references
    self->streams_.erase(it);
    self->last_activity_ = std::chrono::steady_clock::now();  // idle from the last stream's end
    self->release(*keep);
    keep->ended(error_code != NGHTTP2_NO_ERROR);
    return 0;
}

void H2Session::admit(H2Stream& s) {
    // The body's size when declared (one over the limit is refused whole: nothing to hold),
    // else the largest allowed.
    if (s.declared_length_ && *s.declared_length_ > limits_.max_body_bytes) {
        s.body_too_large_ = true;
        s.admitted_ = true;
        return;
    }
    if (waiting_.empty() && reserved_ + need(s) <= h2BodyBudget(limits_))
        grant(s);
    else
        waiting_.push_back(s.id_);
}

void H2Session::grant(H2Stream& s) {
    s.admitted_ = true;
    s.reserved_ = need(s);
    reserved_ += s.reserved_;
    if (s.unconsumed_ > 0)
        nghttp2_session_consume_stream(session_, s.id_, std::exchange(s.unconsumed_, 0));
    kick();
}

void H2Session::admitWaiting() {
    while (!waiting_.empty()) {
        H2Stream* next = find(waiting_.front());
        if (next == nullptr || next->request_ready_ || next->closed_) {
            waiting_.pop_front();  // ended, or its whole body fit in the initial window
            continue;
        }
        if (reserved_ + need(*next) > h2BodyBudget(limits_))
            return;
        waiting_.pop_front();
        grant(*next);
    }
}

void H2Session::release(H2Stream& s) {
    s.admitted_ = true;  // from now on its bytes are dropped or there are none
    if (s.reserved_ > 0) {
        reserved_ -= std::exchange(s.reserved_, 0);
        if (open_)
            admitWaiting();
    }
}

awaitable<void> H2Session::serveStream(std::shared_ptr<H2Stream> stream) {
    auto self = shared_from_this();
    ClientStream client(*stream, executor_);
    co_await serveHttp1(client, limits_, handler_, downstream_);
}

bool H2Session::upgrade(const H2cUpgraded& upgraded) {
    Request& request = upgraded.request;
    // The payload was checked as a SETTINGS frame already: a refusal here is not the client's.
    const int rv = nghttp2_session_upgrade2(
        session_, reinterpret_cast<const uint8_t*>(upgraded.settings.data()),
        upgraded.settings.size(), request.method() == http::verb::head, nullptr);
    if (rv != 0) {
        spdlog::warn("h2c: upgrade refused by nghttp2: {}", nghttp2_strerror(rv));
        return false;
    }
    // The request as if it had come as HEADERS and DATA with END_STREAM (the same fields the
    // HTTP/1.1 side would see; addHeader drops the connection-specific ones and the chunked
    // coding the body was read through).
    auto stream = std::make_shared<H2Stream>(*this, 1, executor_);
    nghttp2_session_set_stream_user_data(session_, 1, stream.get());
    stream->addHeader(":method", sv(request.method_string()));
    stream->addHeader(":path", sv(request.target()));
    if (auto host = request.find(http::field::host); host != request.end())
        stream->addHeader(":authority", sv(host->value()));
    for (const auto& field : request) {
        const std::string name = lower(sv(field.name_string()));
        if (name != "host" && name != "http2-settings")
            stream->addHeader(name, sv(field.value()));
    }
    stream->body_ = std::move(request.body());  // not held twice for the connection's life
    stream->requestStarted();
    stream->requestComplete(limits_.max_body_bytes);
    streams_[1] = stream;
    asio::co_spawn(executor_, serveStream(std::move(stream)), asio::detached);
    return true;
}

awaitable<void> H2Session::run(std::string_view received, const H2cUpgraded* upgraded) {
    auto self = shared_from_this();
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, kH2MaxConcurrentStreams},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(limits_.max_header_bytes)},
    };
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
    nghttp2_session_set_local_window_size(
        session_, NGHTTP2_FLAG_NONE, 0,
        static_cast<int32_t>(std::min<std::size_t>(h2BodyBudget(limits_), kMaxWindow)));
    if (registry_ != nullptr)
        registry_->add(*this);
    if ((upgraded != nullptr && !upgrade(*upgraded)) || !feed(received)) {
        close(false);
        error_code ec;
        transport_.close(ec);
        co_return;
    }
    write_loop_running_ = true;
    asio::co_spawn(
        executor_, [self] { return self->writeLoop(); },
        [self](std::exception_ptr) {
            self->write_loop_running_ = false;
            self->write_ended_.notify();
        });
    asio::co_spawn(executor_, idleWatch(), asio::detached);
    co_await readLoop();
    // The transport is the caller's: neither loop may touch it once this returns.
    while (write_loop_running_)
        co_await write_ended_.wait();
    if (end_after_writes_) {
        error_code ec;
        co_await transport_.finishSend(ec);
        transport_.close(ec);
    }
}

awaitable<void> H2Session::readLoop() {
    std::array<char, kReadChunk> buf;
    bool eof = false;
    while (open_) {
        error_code ec;
        const std::size_t n = co_await transport_.async_read_some(asio::buffer(buf), noThrow(ec));
        last_activity_ = std::chrono::steady_clock::now();
        eof = ec == asio::error::eof;
        if (ec || !feed({buf.data(), n}))
            break;
    }
    close(eof);
    if (linger_ && eof) {
        // The client ended first: run() ends our side once the write loop's last write is
        // done (a TLS close_notify must not go out between two parts of one write).
        end_after_writes_ = true;
        co_return;
    }
    if (linger_)
        co_await lingerBeforeClose(transport_);  // the GOAWAY must not be lost to a RST
    error_code ec;
    transport_.close(ec);
}

awaitable<void> H2Session::writeLoop() {
    std::string out;
    bool done = false;
    while (open_) {
        out.clear();
        if (!ztunnel::hbone::gatherFrames(session_, out, kWriteBatch))
            break;
        if (!out.empty()) {
            error_code ec;
            co_await asio::async_write(transport_, asio::buffer(out), noThrow(ec));
            if (ec)
                break;
            continue;
        }
        if (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0) {
            done = true;  // GOAWAY sent and its streams ended, or the client's GOAWAY
            break;
        }
        co_await write_ready_.wait();
    }
    close(done);
}

awaitable<void> H2Session::idleWatch() {
    auto self = shared_from_this();
    while (open_ && !goaway_sent_) {
        const auto limit = nghttp2_session_get_last_proc_stream_id(session_) > 0
                               ? limits_.idle_timeout
                               : limits_.request_timeout;
        const auto now = std::chrono::steady_clock::now();
        if (streams_.empty() && now >= last_activity_ + limit) {
            spdlog::debug("h2c: idle for {} ms; GOAWAY", limit.count());
            goaway();  // the write loop ends the connection once it is sent
            co_return;
        }
        idle_timer_.expires_at(streams_.empty() ? last_activity_ + limit : now + limit);
        error_code ec;
        co_await idle_timer_.async_wait(noThrow(ec));
    }
}

void H2Session::close(bool graceful) {
    if (!std::exchange(open_, false))
        return;
    idle_timer_.cancel();
    if (registry_ != nullptr)
        registry_->remove(*this);
    error_code ec;
    // The read loop closes the transport once it ended (run() does when the client ended
    // first); on TCP after a graceful end the send side is shut first (TLS: the close_notify,
    // waiting for room) and what the client still sends is drained (an HBONE stream has no
    // reset to fear: it ends with END_STREAM here).
    linger_ = graceful && transport_.overTcp();
    if (graceful && !linger_)
        transport_.shutdown_send(ec);
    transport_.cancel(ec);
    auto streams = std::move(streams_);
    streams_.clear();
    for (auto& [id, s] : streams)
        s->ended(true);
    kick();
}

}  // namespace

std::size_t h2BodyBudget(const ServerLimits& limits) {
    return std::max(limits.max_connection_body_bytes, limits.max_body_bytes);
}

void H2Connections::add(Member& m) {
    members_.insert(&m);
    if (draining_)
        m.goaway();
}

void H2Connections::remove(Member& m) {
    members_.erase(&m);
    if (draining_ && members_.empty())
        idle_.cancel();
}

awaitable<void> H2Connections::drain(std::chrono::milliseconds grace) {
    draining_ = true;
    const std::vector<Member*> now(members_.begin(), members_.end());
    for (Member* m : now)
        m->goaway();
    if (members_.empty())
        co_return;
    idle_.expires_after(grace);
    error_code ec;
    co_await idle_.async_wait(noThrow(ec));
}

bool isH2Preface(const beast::flat_buffer& buffer) {
    const auto data = buffer.data();
    return std::string_view(static_cast<const char*>(data.data()), data.size())
        .starts_with(kPrefaceHead);
}

awaitable<void> serveH2c(ClientStream& transport, const beast::flat_buffer& received,
                         const ServerLimits& limits, const Handler& handler,
                         const Downstream& downstream, const H2cUpgraded* upgraded) {
    auto session = std::make_shared<H2Session>(transport, limits, handler, downstream);
    const auto data = received.data();
    co_await session->run({static_cast<const char*>(data.data()), data.size()}, upgraded);
}

}  // namespace sluice::waypoint
