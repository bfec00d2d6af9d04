#pragma once

#include <string>
#include <utility>

#include <boost/asio/async_result.hpp>
#include <boost/asio/buffer.hpp>

#include "waypoint/http/asio.h"

namespace sluice::waypoint {

// A downstream byte stream that is not a TCP socket (an HBONE CONNECT stream). Everything runs on
// the connection's executor; at most one read and one write are pending at a time.
class ByteStream {
  public:
    using IoResult = std::pair<error_code, std::size_t>;
    virtual ~ByteStream() = default;
    // Up to buf.size() bytes; eof at the end of the stream, operation_aborted after cancel().
    // A read is pending from this call (ClientStream posts its coroutine) until that coroutine
    // returns.
    awaitable<IoResult> read(asio::mutable_buffer buf) {
        read_pending_ = true;
        read_cancelled_ = false;
        return readPending(buf);
    }
    // Queues all of `data` (waits while the peer's flow control holds too much back).
    virtual awaitable<IoResult> write(std::string data) = 0;
    // Ends the pending read with operation_aborted, also one whose coroutine has not started
    // yet or whose wait completed but which has not gone on (readSome() checks
    // readCancelled() at each turn). A cancel while no read is pending belongs to none and is
    // dropped, so it cannot end the next read.
    void cancel() {
        if (!read_pending_)
            return;
        read_cancelled_ = true;
        interruptRead();
    }
    virtual void shutdown_send() = 0;  // end of the response bytes (FIN / END_STREAM)
    // The same, for a stream whose end must wait for room to be sent (TLS: the close_notify
    // behind a full socket buffer). Call once nothing more is to be written.
    virtual awaitable<void> finishSend() {
        shutdown_send();
        co_return;
    }
    virtual void close() = 0;  // abort (RST) unless the send side was shut down cleanly
    virtual bool is_open() const = 0;
    // A TCP connection of its own (TLS): closing it with unread bytes would send a RST, so a
    // graceful end lingers (lingerBeforeClose). An HBONE stream has no such reset to fear.
    virtual bool overTcp() const { return false; }

  protected:
    // One read, as read() describes it; ends with operation_aborted once readCancelled().
    virtual awaitable<IoResult> readSome(asio::mutable_buffer buf) = 0;
    // Wakes the pending read's wait, which then sees readCancelled().
    virtual void interruptRead() = 0;
    bool readCancelled() const { return read_cancelled_; }

  private:
    awaitable<IoResult> readPending(asio::mutable_buffer buf) {
        const IoResult r = co_await readSome(buf);
        read_pending_ = false;
        read_cancelled_ = false;
        co_return r;
    }

    bool read_pending_ = false;
    bool read_cancelled_ = false;
};

// The client side of one HTTP/1.1 connection: a TCP socket (the plain listener's hot path, calls
// go straight to the socket) or a ByteStream (HBONE). Satisfies Beast's AsyncReadStream and
// AsyncWriteStream, so the same parser, serializer and relay code serve both.
class ClientStream {
  public:
    using executor_type = asio::any_io_executor;

    explicit ClientStream(tcp::socket& socket)
        : socket_(&socket), executor_(socket.get_executor()) {}
    ClientStream(ByteStream& other, executor_type executor)
        : other_(&other), executor_(std::move(executor)) {}
    ClientStream(const ClientStream&) = delete;
    ClientStream& operator=(const ClientStream&) = delete;

    executor_type get_executor() const noexcept { return executor_; }
    tcp::socket* socket() { return socket_; }

    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& buffers, Token&& token) {
        if (socket_)
            return socket_->async_read_some(buffers, std::forward<Token>(token));
        return asio::async_initiate<Token, void(error_code, std::size_t)>(
            [this](auto handler, asio::mutable_buffer b) {
                complete(other_->read(b), std::move(handler));
            },
            token, firstBuffer(buffers));
    }

    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& buffers, Token&& token) {
        if (socket_)
            return socket_->async_write_some(buffers, std::forward<Token>(token));
        std::string data(asio::buffer_size(buffers), '\0');
        asio::buffer_copy(asio::buffer(data), buffers);
        return asio::async_initiate<Token, void(error_code, std::size_t)>(
            [this](auto handler, std::string d) {
                complete(other_->write(std::move(d)), std::move(handler));
            },
            token, std::move(data));
    }

    void cancel(error_code& ec) {
        if (socket_)
            socket_->cancel(ec);
        else
            other_->cancel();
    }
    void shutdown_send(error_code& ec) {
        if (socket_)
            socket_->shutdown(tcp::socket::shutdown_send, ec);
        else
            other_->shutdown_send();
    }
    // shutdown_send that waits until the end can be sent (ByteStream::finishSend).
    awaitable<void> finishSend(error_code& ec) {
        if (socket_)
            socket_->shutdown(tcp::socket::shutdown_send, ec);
        else
            co_await other_->finishSend();
    }
    void close(error_code& ec) {
        if (socket_)
            socket_->close(ec);
        else
            other_->close();
    }
    bool is_open() const { return socket_ ? socket_->is_open() : other_->is_open(); }
    bool overTcp() const { return socket_ != nullptr || other_->overTcp(); }

  private:
    template <class MutableBuffers>
    static asio::mutable_buffer firstBuffer(const MutableBuffers& buffers) {
        for (auto it = asio::buffer_sequence_begin(buffers);
             it != asio::buffer_sequence_end(buffers); ++it) {
            asio::mutable_buffer b(*it);
            if (b.size() > 0)
                return b;
        }
        return {};
    }
    // Runs one ByteStream operation and hands its result to an Asio completion handler.
    template <class Handler>
    void complete(awaitable<ByteStream::IoResult> op, Handler handler) {
        asio::co_spawn(
            executor_, std::move(op),
            [h = std::move(handler)](std::exception_ptr e, ByteStream::IoResult r) mutable {
                if (e)
                    r = {asio::error::operation_aborted, 0};
                std::move(h)(r.first, r.second);
            });
    }

    tcp::socket* socket_ = nullptr;
    ByteStream* other_ = nullptr;
    executor_type executor_;
};

}  // namespace sluice::waypoint
