#pragma once

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>

#include <memory>

#include "ztunnel/hbone/connection.h"
#include "ztunnel/hbone/event.h"

namespace sluice::ztunnel::proxy {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// The same four operations over a TCP socket and an HBONE stream, so one relay serves
// plaintext↔plaintext and plaintext↔HBONE.
class TcpPipe {
  public:
    explicit TcpPipe(tcp::socket& s) : s_(s) {}
    // Returns once bytes, EOF or an error are there (read then tells which).
    // Not a coroutine: no frame of its own while a connection idles.
    asio::awaitable<void> wait_readable() {
        return s_.async_wait(tcp::socket::wait_read,
                             asio::redirect_error(asio::use_awaitable, wait_ec_));
    }
    // Bytes (or EOF) can be read without waiting.
    bool ready() {
        boost::system::error_code ec;
        return s_.available(ec) > 0 && !ec;
    }
    // Reads what is there without giving up the thread in between, so a buffer taken for it is
    // not held across a wait (10k connections closing at once would otherwise each hold one).
    asio::awaitable<size_t> read(asio::mutable_buffer b, bool& failed) {
        boost::system::error_code ec;
        if (!s_.non_blocking())
            s_.non_blocking(true, ec);
        size_t n = s_.read_some(b, ec);
        while (ec == asio::error::would_block || ec == asio::error::try_again) {
            co_await s_.async_wait(tcp::socket::wait_read,
                                   asio::redirect_error(asio::use_awaitable, ec));
            if (!ec)
                n = s_.read_some(b, ec);
        }
        failed = ec && ec != asio::error::eof;
        co_return ec ? 0 : n;
    }
    asio::awaitable<bool> write(asio::const_buffer b) {
        boost::system::error_code ec;
        co_await asio::async_write(s_, b, asio::redirect_error(asio::use_awaitable, ec));
        co_return !ec;
    }
    void close_write() {
        boost::system::error_code ec;
        s_.shutdown(tcp::socket::shutdown_send, ec);
    }
    void abort() {
        boost::system::error_code ec;
        // RST instead of FIN: the peer learns the connection failed.
        s_.set_option(asio::socket_base::linger(true, 0), ec);
        s_.close(ec);
    }

  private:
    tcp::socket& s_;
    boost::system::error_code wait_ec_;  // read tells what happened
};

class StreamPipe {
  public:
    explicit StreamPipe(hbone::Stream& s) : s_(s) {}
    // An empty read waits for data or the end of the stream and consumes nothing.
    asio::awaitable<void> wait_readable() { return s_.wait_readable(); }
    bool ready() const { return s_.readable(); }
    asio::awaitable<size_t> read(asio::mutable_buffer b, bool& failed) {
        size_t n = co_await s_.read(b);
        failed = n == 0 && s_.was_reset();
        co_return n;
    }
    asio::awaitable<bool> write(asio::const_buffer b) { return s_.write(b); }
    void close_write() { s_.close_write(); }
    void abort() { s_.reset(); }

  private:
    hbone::Stream& s_;
};

struct RelayResult {
    uint64_t a_to_b = 0;  // bytes read from a and written to b
    uint64_t b_to_a = 0;
    bool failed = false;  // a side reset or errored instead of closing cleanly
};

namespace detail {

constexpr size_t kRelayChunk = 64 * 1024;

struct RelayState {
    explicit RelayState(asio::any_io_executor ex) : done(std::move(ex)) {}
    int running = 2;
    bool failed = false;
    hbone::Event done;
};

template <typename From, typename To>
asio::awaitable<void> copy(From& from, To& to, uint64_t& counter, std::shared_ptr<RelayState> st,
                           std::function<void()> abort_both) {
    for (bool ended = false; !ended;) {
        // An idle connection holds no buffer: it is taken once bytes are there and given back
        // when no more are waiting (10k open connections would otherwise pin 2 × 64 KiB each).
        // While bytes keep coming, one buffer serves them without a wait per chunk.
        co_await from.wait_readable();
        auto buf = std::make_unique_for_overwrite<char[]>(kRelayChunk);
        do {
            bool failed = false;
            const size_t n = co_await from.read(asio::buffer(buf.get(), kRelayChunk), failed);
            if (n == 0) {
                if (failed || st->failed) {
                    st->failed = true;
                    abort_both();
                } else {
                    to.close_write();  // half-close travels on
                }
                ended = true;
                break;
            }
            if (!co_await to.write(asio::buffer(buf.get(), n))) {
                st->failed = true;
                abort_both();
                ended = true;
                break;
            }
            counter += n;
        } while (from.ready());
    }
    if (--st->running == 0)
        st->done.notify();
}

}  // namespace detail

// Copies both ways until both directions ended: EOF travels as a half-close, an error on either
// side resets both. Both pipes must live on the calling coroutine's executor.
template <typename A, typename B>
asio::awaitable<RelayResult> relay(A a, B b) {
    auto ex = co_await asio::this_coro::executor;
    auto st = std::make_shared<detail::RelayState>(ex);
    RelayResult result;
    // Named, not a temporary of the co_await expression (the g++ 12 caveat of docs/ztunnel.md).
    std::function<void()> abort_both = [&a, &b] {
        a.abort();
        b.abort();
    };
    // One direction runs in this coroutine, the other in its own: one spawn less per connection.
    asio::co_spawn(ex, detail::copy(b, a, result.b_to_a, st, abort_both), asio::detached);
    co_await detail::copy(a, b, result.a_to_b, st, abort_both);
    while (st->running > 0)
        co_await st->done.wait();
    result.failed = st->failed;
    co_return result;
}

}  // namespace sluice::ztunnel::proxy
