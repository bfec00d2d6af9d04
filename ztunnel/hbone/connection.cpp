#include "ztunnel/hbone/connection.h"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <memory>

namespace sluice::ztunnel::hbone {
namespace {

// Data waiting in a stream's send queue beyond this makes Stream::write wait.
constexpr size_t kSendHighWater = 256 * 1024;
// One TLS record at most comes out of one read.
constexpr size_t kReadChunk = 16 * 1024;
// Records read in a row before the read loop lets other work on the worker run.
constexpr unsigned kRecordsPerTurn = 16;
// Frames are gathered into one TLS write up to about this size.
constexpr size_t kWriteBatch = 64 * 1024;

}  // namespace

// ---- SessionMemory -------------------------------------------------------------------------

void* SessionMemory::allocate(size_t size, void* ud) {
    auto* self = static_cast<SessionMemory*>(ud);
    if (size >= kMapFrom) {
        for (Block& b : self->mapped_) {
            if (b.ptr != nullptr)
                continue;
            void* p =
                ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED)
                break;
            b = {p, size};
            return p;
        }
    }
    return std::malloc(size);
}

void SessionMemory::release(void* ptr, void* ud) {
    if (ptr == nullptr)
        return;
    auto* self = static_cast<SessionMemory*>(ud);
    for (Block& b : self->mapped_) {
        if (b.ptr == ptr) {
            ::munmap(b.ptr, b.size);
            b = {};
            return;
        }
    }
    std::free(ptr);
}

void* SessionMemory::zeroed(size_t n, size_t size, void* ud) {
    const size_t total = n * size;
    if (size != 0 && total / size != n)
        return nullptr;
    void* p = allocate(total, ud);
    // Fresh mappings are zero already; only malloc's blocks need clearing.
    if (p != nullptr && !static_cast<SessionMemory*>(ud)->is_mapped(p))
        std::memset(p, 0, total);
    return p;
}

void* SessionMemory::resize(void* ptr, size_t size, void* ud) {
    auto* self = static_cast<SessionMemory*>(ud);
    for (Block& b : self->mapped_) {
        if (b.ptr != ptr || ptr == nullptr)
            continue;
        void* p = allocate(size, ud);
        if (p != nullptr) {
            std::memcpy(p, ptr, std::min(size, b.size));
            release(ptr, ud);
        }
        return p;
    }
    // A malloc block stays with malloc, however large it grows (its old size is not known here,
    // so it could not be copied into a mapping).
    return ptr == nullptr ? allocate(size, ud) : std::realloc(ptr, size);
}

bool SessionMemory::is_mapped(const void* p) const {
    for (const Block& b : mapped_) {
        if (b.ptr == p)
            return true;
    }
    return false;
}

nghttp2_mem SessionMemory::table() {
    return nghttp2_mem{this, allocate, release, zeroed, resize};
}

const char* to_string(Error e) {
    switch (e) {
        case Error::ConnectFailed:
            return "connect_failed";
        case Error::HandshakeFailed:
            return "handshake_failed";
        case Error::PeerRejected:
            return "peer_rejected";
        case Error::ProtocolError:
            return "protocol_error";
        case Error::StreamRefused:
            return "stream_refused";
        case Error::ConnectionLost:
            return "connection_lost";
        case Error::Timeout:
            return "timeout";
    }
    return "unknown";
}

// ---- Stream --------------------------------------------------------------------------------

Stream::Stream(std::shared_ptr<Connection> conn) : conn_(std::move(conn)) {}

Stream::~Stream() {
    // Bytes that arrived and were never taken (the stream was reset or abandoned): the
    // connection's window counts them until they are reported, so each such stream would
    // shrink it for good, until no stream of the connection could receive at all.
    if (io_ && io_->received.size() > io_->received_offset)
        conn_->consumed(*this, io_->received.size() - io_->received_offset);
}

asio::awaitable<size_t> Stream::read(asio::mutable_buffer buf) {
    while (!readable() && !read_cancelled_)
        co_await readable_.wait();
    read_cancelled_ = false;
    co_return read_now(buf);
}

size_t Stream::read_now(asio::mutable_buffer buf) {
    const size_t copied = std::min(buf.size(), received().size());
    if (copied > 0)
        std::memcpy(buf.data(), received().data(), copied);
    consume(copied);
    return copied;
}

void Stream::consume(size_t n) {
    if (n == 0)
        return;
    io_->received_offset += n;
    if (io_->received_offset == io_->received.size())
        release(io_->received, io_->received_offset);
    drop_drained_io();
    // After the stream closed too: nghttp2 then opens the connection's window alone.
    conn_->consumed(*this, n);
}

void Stream::drop_drained_io() {
    if (io_ && io_->received.empty() && io_->send.queued() == 0)
        io_.reset();
}

asio::awaitable<bool> Stream::write(asio::const_buffer buf) {
    while (write_blocked())
        co_await writable_.wait();
    co_return write_now(buf);
}

bool Stream::write_blocked() const {
    return queued() >= kSendHighWater && !closed_;
}

bool Stream::write_now(asio::const_buffer buf) {
    if (closed_ || local_closed_)
        return false;
    if (buf.size() > 0)
        io().send.append({static_cast<const char*>(buf.data()), buf.size()});
    conn_->resume(*this);
    return true;
}

void Stream::close_write() {
    if (local_closed_ || closed_)
        return;
    local_closed_ = true;
    conn_->resume(*this);
}

void Stream::cancel_read() {
    read_cancelled_ = true;
    readable_.notify();
}

void Stream::reset() {
    if (closed_ || conn_->session_ == nullptr)
        return;
    nghttp2_submit_rst_stream(conn_->session_, NGHTTP2_FLAG_NONE, id_, NGHTTP2_CANCEL);
    conn_->kick();
}

// ---- Connection ----------------------------------------------------------------------------

const nghttp2_session_callbacks* Connection::callbacks() {
    static nghttp2_session_callbacks* cbs = [] {
        nghttp2_session_callbacks* c = newCallbacks({.begin_headers = on_begin_headers,
                                                     .header = on_header,
                                                     .frame_recv = on_frame_recv,
                                                     .data_chunk = on_data_chunk,
                                                     .stream_close = on_stream_close});
        // DATA frames are NO_COPY: their bytes go from the stream's queue to the batch at once.
        nghttp2_session_callbacks_set_send_data_callback(c, send_data);
        nghttp2_session_callbacks_set_on_frame_send_callback(c, on_frame_send);
        return c;
    }();
    return cbs;
}

Connection::Connection(TlsSocket tls, Role role, identity::Identity peer, RequestHandler on_request)
    : executor_(tls.get_executor()),
      tls_(std::move(tls)),
      role_(role),
      peer_(std::move(peer)),
      on_request_(std::move(on_request)),
      write_ready_(executor_),
      idle_since_(std::chrono::steady_clock::now()) {
    boost::system::error_code ec;
    remote_ = tls_.socket().remote_endpoint(ec);
    nghttp2_option* opt = nullptr;
    nghttp2_option_new(&opt);
    // Window updates follow what the application consumed (Stream::read), not what arrived.
    nghttp2_option_set_no_auto_window_update(opt, 1);
    // No HPACK dynamic table either way (SETTINGS_HEADER_TABLE_SIZE 0 in start()): a CONNECT's
    // headers are unique per stream (forwarded, traceparent), so the tables hold entries
    // that are seldom used again, 4 KiB each way per HBONE connection.
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 0);
    nghttp2_mem mem = memory_.table();
    if (role_ == Role::Client)
        nghttp2_session_client_new3(&session_, callbacks(), this, opt, &mem);
    else
        nghttp2_session_server_new3(&session_, callbacks(), this, opt, &mem);
    nghttp2_option_del(opt);
}

Connection::~Connection() {
    nghttp2_session_del(session_);
}

void Connection::start() {
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, kMaxStreamsPerConnection},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, static_cast<uint32_t>(kStreamWindow)},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 0},
    };
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
    nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
    auto self = shared_from_this();
    asio::co_spawn(
        executor_, [self]() { return self->read_loop(); }, asio::detached);
    asio::co_spawn(
        executor_, [self]() { return self->write_loop(); }, asio::detached);
}

bool Connection::accepts_streams() const {
    if (!open_ || draining_ || nghttp2_session_check_request_allowed(session_) == 0)
        return false;
    const uint32_t remote_max =
        nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return streams_.size() < std::min(remote_max, kMaxStreamsPerConnection);
}

asio::awaitable<std::expected<std::shared_ptr<Stream>, Failure>> Connection::open_stream(
    ConnectRequest request) {
    if (!open_)
        co_return std::unexpected(Failure{Error::ConnectionLost, "connection closed"});
    auto stream = std::make_shared<Stream>(shared_from_this());
    // nghttp2 copies the headers: the stream keeps no copy of the request.
    const ConnectRequest& r = request;
    std::vector<nghttp2_nv> nva = {header(":method", "CONNECT"), header(":authority", r.authority)};
    if (!r.forwarded.empty())
        nva.push_back(header("forwarded", r.forwarded));
    if (!r.baggage.empty())
        nva.push_back(header("baggage", r.baggage));
    if (!r.traceparent.empty())
        nva.push_back(header("traceparent", r.traceparent));
    // HEADERS without END_STREAM; DATA items come and go with the bytes (submit_data).
    const int32_t id = nghttp2_submit_headers(session_, NGHTTP2_FLAG_NONE, -1, nullptr, nva.data(),
                                              nva.size(), stream.get());
    if (id < 0) {
        co_return std::unexpected(Failure{Error::ProtocolError, nghttp2_strerror(id)});
    }
    stream->id_ = id;
    streams_[id] = stream;
    kick();
    while (stream->status_ == 0 && !stream->closed_)
        co_await stream->readable_.wait();
    if (stream->status_ == 0) {
        co_return std::unexpected(
            Failure{Error::ConnectionLost, "stream closed before the response headers"});
    }
    if (stream->status_ != kStatusOk) {
        // The answer ended the peer's side; ours would stay open (and count against the
        // connection's streams) until something closes it.
        stream->reset();
        co_return std::unexpected(Failure{Error::StreamRefused,
                                          "peer answered " + std::to_string(stream->status_),
                                          stream->status_});
    }
    co_return stream;
}

void Connection::respond(Stream& stream, int status) {
    if (stream.responded_ || stream.closed_ || !open_)
        return;
    stream.responded_ = true;
    const std::string code = std::to_string(status);
    nghttp2_nv nva[] = {header(":status", code)};
    if (status == kStatusOk) {
        nghttp2_submit_headers(session_, NGHTTP2_FLAG_NONE, stream.id_, nullptr, nva, 1, nullptr);
        resume(stream);  // bytes queued before the answer
        return;
    }
    // The answer ends our side (END_STREAM); the client's stays open until it sends one, which
    // a refused client need not do. Once the answer is out, a RST_STREAM with NO_ERROR asks it
    // to stop (RFC 9113 §8.1) and closes the stream here (on_frame_send). Not submitted with
    // the answer: a stream with a reset queued counts as closing, and nghttp2 may drop the
    // answer still queued for it.
    stream.refused_ = true;
    nghttp2_submit_response(session_, stream.id_, nva, 1, nullptr);
    kick();
}

void Connection::drain() {
    if (!open_ || draining_)
        return;
    draining_ = true;
    if (role_ == Role::Server) {
        // GOAWAY with the largest stream id (RFC 9113 §6.8, graceful shutdown): the client opens
        // no new stream here, and a stream it opened before it read this is still served, so a
        // drain refuses nothing. The connection ends with the process.
        nghttp2_submit_shutdown_notice(session_);
    } else {
        nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                              nullptr, 0);
    }
    kick();
}

void Connection::close() {
    if (!open_)
        return;
    open_ = false;
    boost::system::error_code ec;
    tls_.socket().cancel(ec);
    tls_.socket().close(ec);
    // Wake every stream: they see closed_ and end.
    auto streams = std::move(streams_);
    streams_.clear();
    for (auto& [id, s] : streams) {
        s->closed_ = true;
        s->reset_ = true;
        s->readable_.notify();
        s->writable_.notify();
    }
    kick();
}

void Connection::consumed(Stream& s, size_t n) {
    nghttp2_session_consume(session_, s.id_, n);
    kick();
}

// A stream has a DATA item in nghttp2 only while it has bytes (or its END_STREAM) to send: the
// item ends with the frame that empties the queue (read_data), and the next bytes submit a new
// one. 10k idle streams keep no item (~0.15 KiB each).
void Connection::resume(Stream& s) {
    if (s.send_deferred_) {
        s.send_deferred_ = false;
        nghttp2_session_resume_data(session_, s.id_);
    }
    const bool answered = role_ == Role::Client || s.responded_;
    if (!s.data_attached_ && answered && (s.queued() > 0 || s.local_closed_))
        submit_data(s);
    kick();
}

void Connection::submit_data(Stream& s) {
    nghttp2_data_provider provider{};
    provider.source.ptr = &s;
    provider.read_callback = read_data;
    // END_STREAM goes with the frame that ends the item once the stream's write side is closed.
    if (nghttp2_submit_data(session_, NGHTTP2_FLAG_END_STREAM, s.id_, &provider) == 0)
        s.data_attached_ = true;
}

asio::awaitable<void> Connection::read_loop() {
    auto self = shared_from_this();
    // Decrypted bytes go straight into nghttp2, which is done with them before anything else
    // runs on this thread: one buffer per worker thread serves all its connections, and a
    // waiting connection holds none. On the heap, made on first use: an array in thread-local
    // storage would be zeroed into every thread's TLS block at thread start (8 threads × 16 KiB
    // resident in an idle ztunnel).
    static thread_local std::unique_ptr<std::array<uint8_t, kReadChunk>> worker_buf;
    if (!worker_buf)
        worker_buf = std::make_unique_for_overwrite<std::array<uint8_t, kReadChunk>>();
    std::array<uint8_t, kReadChunk>& buf = *worker_buf;
    unsigned records = 0;
    while (open_) {
        boost::system::error_code ec;
        TlsSocket::Next next = TlsSocket::Next::Fail;
        const size_t n = tls_.read_now(asio::buffer(buf), next, ec);
        if (n == 0 && next != TlsSocket::Next::Fail) {
            records = 0;
            if (co_await tls_.wait(next, ec))
                continue;
        }
        if (ec) {
            if (ec != asio::error::eof && ec != asio::error::operation_aborted &&
                ec != asio::ssl::error::stream_truncated) {
                spdlog::debug("hbone: read from {} failed: {}", peer_.uri(), ec.message());
            }
            break;
        }
        const ssize_t rv = nghttp2_session_mem_recv(session_, buf.data(), n);
        if (rv < 0) {
            spdlog::warn("hbone: HTTP/2 error from {}: {}", peer_.uri(),
                         nghttp2_strerror(static_cast<int>(rv)));
            break;
        }
        kick();
        if (++records == kRecordsPerTurn) {  // a busy connection lets the others on the worker in
            records = 0;
            co_await asio::post(executor_, asio::use_awaitable);
        }
    }
    close();
}

asio::awaitable<void> Connection::write_loop() {
    auto self = shared_from_this();
    std::string out;
    while (open_) {
        out.clear();
        batch_ = &out;
        const bool gathered = gatherFrames(session_, out, kWriteBatch);
        batch_ = nullptr;
        if (!gathered) {
            spdlog::warn("hbone: HTTP/2 send error");
            close();
            co_return;
        }
        if (!out.empty()) {
            boost::system::error_code ec;
            co_await tls_.write(asio::buffer(out), ec);
            if (ec)
                break;
            continue;
        }
        if (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0)
            break;                // GOAWAY exchanged and no stream left
        std::string().swap(out);  // an idle connection holds no batch buffer
        tls_.release_buffers();
        co_await write_ready_.wait();
    }
    close();
}

void Connection::stream_ended(Stream& s) {
    s.closed_ = true;
    s.readable_.notify();
    s.writable_.notify();
    streams_.erase(s.id_);
    if (streams_.empty())
        idle_since_ = std::chrono::steady_clock::now();
}

int Connection::on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* ud) {
    auto* self = static_cast<Connection*>(ud);
    if (self->role_ != Role::Server || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        return 0;
    }
    auto stream = std::make_shared<Stream>(self->shared_from_this());
    stream->id_ = frame->hd.stream_id;
    nghttp2_session_set_stream_user_data(session, stream->id_, stream.get());
    self->streams_[stream->id_] = std::move(stream);
    return 0;
}

int Connection::on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                          size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void*) {
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    auto* s =
        static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
    if (s == nullptr)
        return 0;
    const std::string_view n(reinterpret_cast<const char*>(name), namelen);
    const std::string v(reinterpret_cast<const char*>(value), valuelen);
    auto request = [s]() -> ConnectRequest& {
        if (!s->request_)
            s->request_ = std::make_unique<ConnectRequest>();
        return *s->request_;
    };
    if (n == ":status")
        s->status_ = std::atoi(v.c_str());
    else if (n == ":method")
        request().method = v;
    else if (n == ":authority")
        request().authority = v;
    else if (n == "forwarded")
        request().forwarded = v;
    else if (n == "baggage")
        request().baggage = v;
    else if (n == "traceparent")
        request().traceparent = v;
    return 0;
}

int Connection::on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* ud) {
    auto* self = static_cast<Connection*>(ud);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        self->draining_ = true;
        return 0;
    }
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    auto* s =
        static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
    if (s == nullptr)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS) {
        if (self->role_ == Role::Server && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            auto it = self->streams_.find(s->id_);
            if (it != self->streams_.end() && self->on_request_)
                self->on_request_(it->second);
            else
                self->respond(*s, kStatusUnavailable);
        } else {
            s->readable_.notify();  // the response headers
        }
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        s->remote_closed_ = true;
        s->readable_.notify();
    }
    return 0;
}

int Connection::on_data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id,
                              const uint8_t* data, size_t len, void*) {
    auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
    if (s == nullptr) {
        // DATA of a stream we no longer hold still counts against the connection's window.
        nghttp2_session_consume_connection(session, len);
        return 0;
    }
    Stream::Io& io = s->io();
    compact(io.received, io.received_offset);
    io.received.append(reinterpret_cast<const char*>(data), len);
    s->readable_.notify();
    return 0;
}

int Connection::on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                                void* ud) {
    auto* self = static_cast<Connection*>(ud);
    auto* s = static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, stream_id));
    if (s == nullptr)
        return 0;
    if (error_code != NGHTTP2_NO_ERROR)
        s->reset_ = true;
    // Keep the stream alive until its waiters have run; they hold their own references.
    auto keep = self->streams_.count(stream_id) ? self->streams_[stream_id] : nullptr;
    self->stream_ended(*s);
    return 0;
}

int Connection::on_frame_send(nghttp2_session* session, const nghttp2_frame* frame, void* ud) {
    if (frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    auto* s =
        static_cast<Stream*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
    if (s != nullptr && s->refused_ && !s->closed_) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_NO_ERROR);
        static_cast<Connection*>(ud)->kick();
    }
    return 0;
}

ssize_t Connection::read_data(nghttp2_session*, int32_t, uint8_t*, size_t length, uint32_t* flags,
                              nghttp2_data_source* source, void* ud) {
    auto* self = static_cast<Connection*>(ud);
    auto* s = static_cast<Stream*>(source->ptr);
    const size_t queued = s->queued();
    const size_t n = std::min(length, queued);
    // nghttp2 hands this frame to send_data() at once, which sends it now unless the batch is
    // full (then later, with no further read_data call).
    const bool sent_now = self->batch_ != nullptr && self->batch_->size() < kWriteBatch;
    if (n == queued && (s->local_closed_ || sent_now)) {
        // The frame that empties the queue ends the item: with END_STREAM once the write side
        // is closed, else without (resume() submits a new item for the next bytes). Only a
        // frame sent now ends it: an item still in nghttp2's send path could not be replaced.
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (!s->local_closed_)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        s->data_attached_ = false;
    } else if (n == 0) {
        // Nothing to send and the batch full: wait for the next write (resume()).
        s->send_deferred_ = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;  // send_data() appends the bytes to the batch
    return static_cast<ssize_t>(n);
}

int Connection::send_data(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd,
                          size_t length, nghttp2_data_source* source, void* ud) {
    auto* self = static_cast<Connection*>(ud);
    if (self->batch_ == nullptr || frame->data.padlen > 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;  // only write_loop sends, and never with padding
    if (self->batch_->size() >= kWriteBatch)
        return NGHTTP2_ERR_WOULDBLOCK;  // nghttp2 asks again for the next batch
    auto* s = static_cast<Stream*>(source->ptr);
    if (length > 0) {
        s->io_->send.emit(framehd, length, *self->batch_, s->writable_, kSendHighWater);
        s->drop_drained_io();
    } else {  // END_STREAM alone, or the empty frame that ends an item (read_data)
        self->batch_->append(reinterpret_cast<const char*>(framehd), SendQueue::kFrameHeaderBytes);
    }
    return 0;
}

}  // namespace sluice::ztunnel::hbone
