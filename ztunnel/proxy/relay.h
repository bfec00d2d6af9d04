#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

#include <atomic>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "ztunnel/hbone/connection.h"

namespace sluice::ztunnel::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// What a pipe's read found.
enum class ReadStatus {
    Data,    // n bytes
    Wait,    // nothing yet: wait until readable
    End,     // the peer closed its side cleanly
    Failed,  // reset or error
};
struct ReadResult {
    size_t n = 0;
    ReadStatus status = ReadStatus::Wait;
};
// What a write that does not wait did.
struct WriteNowResult {
    size_t n = 0;         // bytes the pipe took (maybe fewer than offered: wait, then try again)
    bool failed = false;  // the pipe is gone
};
enum class WriteStatus {
    Done,     // all bytes taken at once
    Failed,   // the pipe is gone
    Pending,  // the handler runs once they are (handler(true)) or the pipe failed (false)
};

// Closes with RST instead of FIN: the peer learns the connection failed.
template <typename Socket>
void reset_socket(Socket& s) {
    boost::system::error_code ec;
    s.set_option(asio::socket_base::linger(true, 0), ec);
    s.close(ec);
}

// The same operations over a TCP socket and an HBONE stream, so one relay serves
// plaintext↔plaintext and plaintext↔HBONE. A pipe owns its end. Handlers run on the pipe's
// executor; nothing completes inline (a wait or a pending write always runs its handler later).
// `Socket`: tcp::socket or WorkerSocket (sockets.h; smaller, for connections ztunnel accepted).
template <typename Socket>
class TcpPipe {
  public:
    // A read shorter than asked for drained the socket, as far as it knows: waiting right away
    // loses nothing, because Asio's wait re-arms the descriptor (EPOLL_CTL_MOD), which reports
    // bytes that came in between. Saves the read that would find nothing (one recv per message).
    static constexpr bool kShortReadDrains = true;

    explicit TcpPipe(Socket s) : s_(std::move(s)) {}
    Socket& socket() { return s_; }
    asio::any_io_executor executor() { return s_.get_executor(); }

    // Calls h() once bytes, EOF or an error are there (read then tells which).
    template <typename H>
    void wait_readable(H h) {
        s_.async_wait(
            Socket::wait_read,
            hbone::Exact{[h = std::move(h)](const boost::system::error_code&) mutable { h(); }});
    }
    // Reads what is there without waiting.
    ReadResult read(asio::mutable_buffer b) {
        boost::system::error_code ec;
        set_non_blocking();
        const size_t n = s_.read_some(b, ec);
        if (!ec)
            return {n, ReadStatus::Data};
        if (ec == asio::error::would_block || ec == asio::error::try_again)
            return {0, ReadStatus::Wait};
        return {0, ec == asio::error::eof ? ReadStatus::End : ReadStatus::Failed};
    }
    // Writes all of b: at once when the socket takes it, else the rest in the background.
    template <typename H>
    WriteStatus write(asio::const_buffer b, H h) {
        boost::system::error_code ec;
        set_non_blocking();
        size_t n = s_.write_some(b, ec);
        if (!ec && n == b.size())
            return WriteStatus::Done;
        if (ec && ec != asio::error::would_block && ec != asio::error::try_again)
            return WriteStatus::Failed;
        if (ec)
            n = 0;
        asio::async_write(
            s_, b + n,
            [h = std::move(h)](const boost::system::error_code& wec, size_t) mutable { h(!wec); });
        return WriteStatus::Pending;
    }
    // Writes what the socket takes now, without waiting.
    WriteNowResult write_now(asio::const_buffer b) {
        boost::system::error_code ec;
        set_non_blocking();
        const size_t n = s_.write_some(b, ec);
        if (!ec)
            return {n};
        return {0, ec != asio::error::would_block && ec != asio::error::try_again};
    }
    // Calls h() once the socket takes bytes again (or failed: write_now then tells).
    template <typename H>
    void wait_writable(H h) {
        s_.async_wait(
            Socket::wait_write,
            hbone::Exact{[h = std::move(h)](const boost::system::error_code&) mutable { h(); }});
    }
    void close_write() {
        boost::system::error_code ec;
        s_.shutdown(Socket::shutdown_send, ec);
    }
    void abort() { reset_socket(s_); }

  private:
    void set_non_blocking() {
        if (!s_.non_blocking()) {
            boost::system::error_code ec;
            s_.non_blocking(true, ec);
        }
    }
    Socket s_;
};

class StreamPipe {
  public:
    // A short read takes all that arrived, but the end of the stream may have come with it
    // (a Signal wait reports only what comes later): read again.
    static constexpr bool kShortReadDrains = false;

    explicit StreamPipe(std::shared_ptr<hbone::Stream> s) : s_(std::move(s)) {}
    hbone::Stream& stream() { return *s_; }
    asio::any_io_executor executor() { return s_->connection().executor(); }

    template <typename H>
    void wait_readable(H h) {
        s_->when_readable(std::move(h));
    }
    ReadResult read(asio::mutable_buffer b) {
        if (!s_->readable())
            return {0, ReadStatus::Wait};
        const size_t n = s_->read_now(b);
        if (n > 0)
            return {n, ReadStatus::Data};
        return {0, s_->was_reset() ? ReadStatus::Failed : ReadStatus::End};
    }
    // The bytes that arrived, in place (Data and a non-empty `view`, valid until the stream's
    // connection runs again), or what read() would tell; consume() takes them.
    ReadStatus peek(asio::const_buffer& view) {
        if (!s_->readable())
            return ReadStatus::Wait;
        view = s_->received();
        if (view.size() > 0)
            return ReadStatus::Data;
        return s_->was_reset() ? ReadStatus::Failed : ReadStatus::End;
    }
    void consume(size_t n) { s_->consume(n); }
    // Queues the bytes, or waits while the stream's send queue is full (the peer's flow-control
    // window slows this side down instead of growing the queue).
    template <typename H>
    WriteStatus write(asio::const_buffer b, H h) {
        if (!s_->write_blocked())
            return s_->write_now(b) ? WriteStatus::Done : WriteStatus::Failed;
        write_later(b, std::move(h));
        return WriteStatus::Pending;
    }
    void close_write() { s_->close_write(); }
    void abort() { s_->reset(); }

  private:
    template <typename H>
    void write_later(asio::const_buffer b, H h) {
        s_->when_writable([this, b, h = std::move(h)]() mutable {
            if (s_->write_blocked())
                write_later(b, std::move(h));
            else
                h(s_->write_now(b));
        });
    }
    std::shared_ptr<hbone::Stream> s_;
};

struct RelayResult {
    uint64_t a_to_b = 0;  // bytes read from a and written to b
    uint64_t b_to_a = 0;
    bool failed = false;  // a side reset or errored instead of closing cleanly
};

// A running relay, as the code that may have to stop it (a policy refresh) sees it.
class RelayControl {
  public:
    virtual ~RelayControl() = default;
    // Resets both sides; the relay then ends (failed) and reports as usual.
    virtual void abort() = 0;
};

namespace detail {

constexpr size_t kRelayChunk = 64 * 1024;
constexpr size_t kCachedChunks = 4;
// Chunks one direction moves before it lets the worker's other handlers run: a TCP→TCP transfer
// whose writes never have to wait would otherwise keep the thread for as long as it lasts.
constexpr size_t kChunksPerTurn = 16;

// The 64 KiB buffers of the relays of one thread. A relay holds one only while bytes are
// waiting and gives it back before it waits; the few a thread uses over and over stay here
// instead of going back to malloc between bursts (a large block freed amid the small long-lived
// objects of new connections is what fragments the heap).
class ChunkCache {
  public:
    static std::unique_ptr<char[]> take() {
        in_use_.fetch_add(1, std::memory_order_relaxed);
        auto& free = list();
        if (free.empty())
            return std::make_unique_for_overwrite<char[]>(kRelayChunk);
        auto chunk = std::move(free.back());
        free.pop_back();
        return chunk;
    }
    static void give(std::unique_ptr<char[]>& chunk) {
        if (!chunk)
            return;
        in_use_.fetch_sub(1, std::memory_order_relaxed);
        auto& free = list();
        if (free.size() < kCachedChunks)
            free.push_back(std::move(chunk));
        chunk.reset();
    }
    // Chunks held by relays now, all threads (tests: an idle relay holds none).
    static size_t in_use() { return in_use_.load(std::memory_order_relaxed); }

  private:
    static std::vector<std::unique_ptr<char[]>>& list() {
        static thread_local std::vector<std::unique_ptr<char[]>> free;
        return free;
    }
    static inline std::atomic<size_t> in_use_{0};
};

}  // namespace detail

// Copies both ways until both directions ended: EOF travels as a half-close, an error on either
// side resets both, and then `done(RelayResult)` runs once. One object per connection, driven
// by completion handlers: while a connection idles it is this object, one pending wait per
// direction and no buffer (no coroutine frame, nothing else). Both pipes must be on the same
// single-threaded executor.
template <typename A, typename B, typename Done>
class Relay : public RelayControl, public std::enable_shared_from_this<Relay<A, B, Done>> {
  public:
    Relay(A a, B b, Done done) : a_(std::move(a)), b_(std::move(b)), done_(std::move(done)) {}
    ~Relay() {
        detail::ChunkCache::give(a_to_b_.buf);  // torn down with a write pending
        detail::ChunkCache::give(b_to_a_.buf);
    }

    // Reads first (bytes may be waiting already), but later: `done` never runs inside start().
    void start() {
        asio::post(a_.executor(), [self = this->shared_from_this()] {
            self->template pump<true>();
            self->template pump<false>();
        });
    }
    void abort() override {
        a_.abort();
        b_.abort();
    }
    // What runs at the end, kept inside the relay (one allocation per connection, not two).
    Done& done() { return done_; }

  private:
    struct Direction {
        uint64_t bytes = 0;
        std::unique_ptr<char[]> buf;
        bool ended = false;
    };

    template <bool AtoB>
    auto& from() {
        if constexpr (AtoB)
            return a_;
        else
            return b_;
    }
    template <bool AtoB>
    auto& to() {
        if constexpr (AtoB)
            return b_;
        else
            return a_;
    }
    template <bool AtoB>
    Direction& dir() {
        return AtoB ? a_to_b_ : b_to_a_;
    }

    template <bool AtoB>
    void wait() {
        from<AtoB>().wait_readable(
            [self = this->shared_from_this()] { self->template pump<AtoB>(); });
    }

    template <bool AtoB>
    void pump() {
        if constexpr (requires(asio::const_buffer v) {
                          from<AtoB>().peek(v);
                          to<AtoB>().write_now(v);
                      }) {
            pump_in_place<AtoB>();
        } else {
            pump_chunks<AtoB>();
        }
    }

    template <bool AtoB>
    void yield() {
        asio::post(a_.executor(),
                   [self = this->shared_from_this()] { self->template pump<AtoB>(); });
    }

    // A source that holds what arrived (an HBONE stream) into a socket: straight from the
    // source's buffer, taking what the socket took; no chunk and no copy in between.
    template <bool AtoB>
    void pump_in_place() {
        Direction& d = dir<AtoB>();
        for (size_t chunks = 0;; ++chunks) {
            if (chunks == detail::kChunksPerTurn) {
                yield<AtoB>();
                return;
            }
            asio::const_buffer view;
            const ReadStatus status = from<AtoB>().peek(view);
            if (status == ReadStatus::Wait) {
                wait<AtoB>();
                return;
            }
            if (source_ended<AtoB>(status))
                return;
            const WriteNowResult w = to<AtoB>().write_now(view);
            if (w.failed) {
                fail();
                end<AtoB>();
                return;
            }
            from<AtoB>().consume(w.n);
            d.bytes += w.n;
            if (w.n < view.size()) {
                to<AtoB>().wait_writable(
                    [self = this->shared_from_this()] { self->template pump<AtoB>(); });
                return;
            }
        }
    }

    // Moves what is waiting, one chunk after the other, until the source has nothing more (then
    // waits again without a buffer), a write has to wait, or the direction ended; after
    // kChunksPerTurn chunks it yields the thread and goes on in a posted handler.
    template <bool AtoB>
    void pump_chunks() {
        Direction& d = dir<AtoB>();
        for (size_t chunks = 0;; ++chunks) {
            if (chunks == detail::kChunksPerTurn) {
                yield<AtoB>();
                return;
            }
            if (!d.buf)
                d.buf = detail::ChunkCache::take();
            const ReadResult r = from<AtoB>().read(asio::buffer(d.buf.get(), detail::kRelayChunk));
            if (r.status == ReadStatus::Wait) {
                detail::ChunkCache::give(d.buf);
                wait<AtoB>();
                return;
            }
            if (source_ended<AtoB>(r.status))
                return;
            const size_t n = r.n;
            const WriteStatus w = to<AtoB>().write(asio::buffer(d.buf.get(), n),
                                                   [self = this->shared_from_this(), n](bool ok) {
                                                       self->template written<AtoB>(n, ok);
                                                   });
            if (w == WriteStatus::Pending)
                return;
            if (w == WriteStatus::Failed) {
                fail();
                end<AtoB>();
                return;
            }
            d.bytes += n;
            if constexpr (std::remove_reference_t<decltype(from<AtoB>())>::kShortReadDrains) {
                if (n < detail::kRelayChunk) {
                    detail::ChunkCache::give(d.buf);
                    wait<AtoB>();
                    return;
                }
            }
        }
    }

    template <bool AtoB>
    void written(size_t n, bool ok) {
        if (!ok) {
            fail();
            end<AtoB>();
            return;
        }
        dir<AtoB>().bytes += n;
        pump<AtoB>();
    }

    void fail() {
        failed_ = true;
        abort();
    }

    // What a read that found no data means for the direction: a clean close travels on as a
    // half-close, a failure resets both sides; either way the direction ends (true). Wait and
    // Data leave it running (false).
    template <bool AtoB>
    bool source_ended(ReadStatus status) {
        if (status == ReadStatus::End && !failed_)
            to<AtoB>().close_write();
        else if (status == ReadStatus::End || status == ReadStatus::Failed)
            fail();
        else
            return false;
        end<AtoB>();
        return true;
    }

    template <bool AtoB>
    void end() {
        Direction& d = dir<AtoB>();
        detail::ChunkCache::give(d.buf);
        d.ended = true;
        if (a_to_b_.ended && b_to_a_.ended)
            done_(RelayResult{a_to_b_.bytes, b_to_a_.bytes, failed_});
    }

    A a_;
    B b_;
    Done done_;
    Direction a_to_b_, b_to_a_;
    bool failed_ = false;
};

// Starts relaying between `a` and `b`; `done(RelayResult)` runs when both directions ended. The
// returned handle may abort it (RelayControl); the relay keeps itself alive while it runs.
template <typename A, typename B, typename Done>
std::shared_ptr<Relay<A, B, Done>> start_relay(A a, B b, Done done) {
    auto r = std::make_shared<Relay<A, B, Done>>(std::move(a), std::move(b), std::move(done));
    r->start();
    return r;
}

}  // namespace sluice::ztunnel::proxy
