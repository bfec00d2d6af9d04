#pragma once

#include <nghttp2/nghttp2.h>

#include <boost/asio/ip/tcp.hpp>

#include <array>
#include <chrono>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "ztunnel/hbone/error.h"
#include "ztunnel/hbone/event.h"
#include "ztunnel/hbone/nghttp2_io.h"
#include "ztunnel/hbone/tls_socket.h"
#include "ztunnel/identity/spiffe.h"

namespace sluice::ztunnel::hbone {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// Flow control of DESIGN.md §4.
inline constexpr int32_t kStreamWindow = 4 << 20;
inline constexpr int32_t kConnectionWindow = 16 << 20;
inline constexpr uint32_t kMaxStreamsPerConnection = 100;

// The CONNECT request of one HBONE stream (headers as Istio ambient sends them).
struct ConnectRequest {
    std::string authority;    // "<dst ip>:<port>" (IPv6 in brackets)
    std::string forwarded;    // for="<src ip:port>"
    std::string baggage;      // W3C baggage with the source workload's attributes
    std::string traceparent;  // W3C trace context
    std::string method;       // server side: what the peer sent
};

class Connection;

// nghttp2's allocator for one HBONE session. Its large blocks (at least kMapFrom bytes: the
// 16 KiB buffer outgoing frames are built in) are mapped on their own instead of coming from
// malloc: DATA frames bypass that buffer (NO_COPY), so only its first page is ever written and
// the untouched rest takes no memory (~12 KiB per HBONE connection: 100 connections carry 10k
// streams). Everything else is malloc's.
class SessionMemory {
  public:
    nghttp2_mem table();

  private:
    static constexpr size_t kMapFrom = 8192;
    static void* allocate(size_t size, void* ud);
    static void release(void* ptr, void* ud);
    static void* zeroed(size_t n, size_t size, void* ud);
    static void* resize(void* ptr, size_t size, void* ud);
    bool is_mapped(const void* p) const;

    struct Block {
        void* ptr = nullptr;
        size_t size = 0;
    };
    std::array<Block, 2> mapped_{};  // more large blocks than this come from malloc
};

// One HTTP/2 CONNECT stream: a byte pipe in both directions. All calls on the connection's
// executor. Reads consume flow-control window only when the caller takes the bytes, so a slow
// reader slows the sender down instead of growing a buffer.
class Stream {
  public:
    explicit Stream(std::shared_ptr<Connection> conn);
    ~Stream();
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;

    // Up to buf.size() bytes; 0 at end of stream (the peer's END_STREAM, a reset or a lost
    // connection: see reset()).
    asio::awaitable<size_t> read(asio::mutable_buffer buf);
    // Queues the bytes; waits while too much is queued. False when the stream is gone.
    asio::awaitable<bool> write(asio::const_buffer buf);

    // The same without waiting, for the callback-driven relay (no coroutine frame while a
    // connection idles). read_now: what is there (0 when nothing or at the end). write_now:
    // queues the bytes whatever is queued already (false when the stream is gone); callers
    // check write_blocked() first. when_readable/when_writable call h() after the next change
    // (bytes, end of stream, send queue below the mark) or spuriously: h checks again.
    size_t read_now(asio::mutable_buffer buf);
    // What arrived and was not taken yet, in place: valid until the connection runs again.
    asio::const_buffer received() const {
        if (!io_)
            return {};
        return {io_->received.data() + io_->received_offset,
                io_->received.size() - io_->received_offset};
    }
    // Takes the front `n` bytes of received() (and opens the flow-control window by as much).
    void consume(size_t n);
    bool write_now(asio::const_buffer buf);
    bool write_blocked() const;
    template <typename H>
    void when_readable(H h);
    template <typename H>
    void when_writable(H h);
    // Sends END_STREAM after what is queued (TCP half-close).
    void close_write();
    // RST_STREAM(CANCEL).
    void reset();
    // Makes a pending read() return 0 now (without data) even though the stream is still open.
    void cancel_read();

    // Bytes or the end of the stream are there: read() returns without waiting.
    bool readable() const { return received().size() > 0 || remote_closed_ || closed_; }
    // nghttp2 closed the stream (both sides ended, reset or connection lost).
    bool is_closed() const { return closed_; }
    bool write_closed() const { return local_closed_; }
    bool was_reset() const { return reset_; }
    // nghttp2 holds a DATA item for the stream: it has bytes or its END_STREAM to send.
    bool sending() const { return data_attached_; }
    int32_t id() const { return id_; }
    int status() const { return status_; }
    // Server side: what the peer asked for (empty once taken, and on the client side).
    const ConnectRequest& request() const {
        static const ConnectRequest kNone;
        return request_ ? *request_ : kNone;
    }
    // Hands the request over and frees the stream's copy: a relaying stream needs none.
    ConnectRequest take_request() {
        ConnectRequest r = request_ ? std::move(*request_) : ConnectRequest{};
        request_.reset();
        return r;
    }
    Connection& connection() { return *conn_; }

  private:
    friend class Connection;
    std::shared_ptr<Connection> conn_;
    int32_t id_ = -1;
    std::unique_ptr<ConnectRequest> request_;  // on the heap: 10k relaying streams hold none
    int status_ = 0;
    // The bytes a stream is moving: what arrived and the reader has not taken yet (from
    // received_offset on), and what waits for the peer. Made with the first byte and dropped
    // once both are drained: 10k idle streams hold a null pointer each, not two buffers.
    struct Io {
        std::string received;
        size_t received_offset = 0;
        SendQueue send;  // its `deferred` is unused: send_deferred_
    };
    Io& io() {
        if (!io_)
            io_ = std::make_unique<Io>();
        return *io_;
    }
    size_t queued() const { return io_ ? io_->send.queued() : 0; }
    void drop_drained_io();

    std::unique_ptr<Io> io_;
    bool remote_closed_ = false;  // END_STREAM seen
    bool closed_ = false;         // nghttp2 closed the stream
    bool reset_ = false;          // closed with an error code
    bool send_deferred_ = false;  // read_data deferred the DATA item: resume_data wakes it
    bool local_closed_ = false;
    bool data_attached_ = false;  // nghttp2 holds a DATA item for the stream (Connection::resume)
    bool responded_ = false;
    bool refused_ = false;  // answered with a non-200 status: reset once the answer is sent
    bool read_cancelled_ = false;
    // readable_ also wakes open_stream() when the response headers arrived.
    // Signals, not Events: no timer per stream (10k open streams).
    Signal readable_, writable_;
};

// One TLS + HTTP/2 connection carrying HBONE streams, client or server side. Lives on one
// io_context (a worker's); never touched from another thread. It exists only after the TLS
// handshake verified the peer, so no stream can be opened to an unverified peer.
class Connection : public std::enable_shared_from_this<Connection> {
  public:
    enum class Role { Client, Server };
    // Server: called for every CONNECT request; must eventually call respond().
    using RequestHandler = std::function<void(std::shared_ptr<Stream>)>;

    Connection(TlsSocket tls, Role role, identity::Identity peer, RequestHandler on_request = {});
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    // Sends the SETTINGS and starts the read and write loops.
    void start();
    // Client: opens a CONNECT stream and waits for the response headers. A non-200 status is
    // Failure{StreamRefused, status}.
    asio::awaitable<std::expected<std::shared_ptr<Stream>, Failure>> open_stream(
        ConnectRequest request);
    // Server: the response to a CONNECT; 200 keeps the stream open for data, others end it.
    void respond(Stream& stream, int status);
    // GOAWAY: streams in flight finish, no new ones. Client: the connection closes when the
    // last ends. Server: a shutdown notice (last stream id 2^31-1), so streams the client sent
    // before reading it are still served.
    void drain();
    // Closes at once, ending every stream.
    void close();

    // The client pool may add a stream: open, not draining, below the stream limits.
    bool accepts_streams() const;
    bool is_open() const { return open_; }
    size_t active_streams() const { return streams_.size(); }
    std::chrono::steady_clock::time_point idle_since() const { return idle_since_; }
    const identity::Identity& peer() const { return peer_; }
    asio::any_io_executor executor() { return executor_; }
    tcp::endpoint remote_endpoint() const { return remote_; }

  private:
    friend class Stream;
    static const nghttp2_session_callbacks* callbacks();
    static int on_begin_headers(nghttp2_session*, const nghttp2_frame*, void*);
    static int on_header(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t,
                         const uint8_t*, size_t, uint8_t, void*);
    static int on_frame_recv(nghttp2_session*, const nghttp2_frame*, void*);
    static int on_data_chunk(nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t, void*);
    static int on_stream_close(nghttp2_session*, int32_t, uint32_t, void*);
    static int on_frame_send(nghttp2_session*, const nghttp2_frame*, void*);
    static ssize_t read_data(nghttp2_session*, int32_t, uint8_t*, size_t, uint32_t*,
                             nghttp2_data_source*, void*);
    static int send_data(nghttp2_session*, nghttp2_frame*, const uint8_t*, size_t,
                         nghttp2_data_source*, void*);

    asio::awaitable<void> read_loop();
    asio::awaitable<void> write_loop();
    void kick() { write_ready_.notify(); }
    void consumed(Stream& s, size_t n);
    void resume(Stream& s);
    void submit_data(Stream& s);
    void stream_ended(Stream& s);

    asio::any_io_executor executor_;
    TlsSocket tls_;
    Role role_;
    identity::Identity peer_;
    RequestHandler on_request_;
    SessionMemory memory_;  // outlives session_ (nghttp2_session_del in ~Connection)
    nghttp2_session* session_ = nullptr;
    std::map<int32_t, std::shared_ptr<Stream>> streams_;
    bool open_ = true;
    bool draining_ = false;
    Event write_ready_;
    std::string* batch_ = nullptr;  // write_loop's batch while it gathers frames (send_data)
    tcp::endpoint remote_;
    std::chrono::steady_clock::time_point idle_since_;
};

template <typename H>
void Stream::when_readable(H h) {
    readable_.async_wait(conn_->executor(), std::move(h));
}

template <typename H>
void Stream::when_writable(H h) {
    writable_.async_wait(conn_->executor(), std::move(h));
}

}  // namespace sluice::ztunnel::hbone
