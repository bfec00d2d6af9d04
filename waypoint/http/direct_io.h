#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>
#include <optional>

#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>

#include "waypoint/http/asio.h"

// I/O steps that finish without a trip through the worker's queue when they can.
//
// An Asio or Beast operation that completes at once (a write the socket buffer takes whole, a
// parse of bytes already buffered) does not resume its coroutine directly: it posts the
// completion to the io_context, and the worker, finding work queued behind the reactor, calls
// epoll_wait(0) before it runs it. That is one syscall and one pass through the scheduler per
// step, four per proxied request (docs/waypoint.md, "Latency"). These helpers do the immediate
// part inline and leave only what has to wait to the reactor. A write is
//     std::size_t sent = sendNow(socket, buffers, ec);
//     if (!ec && sent < asio::buffer_size(buffers))
//         ec = co_await writeRest(socket, buffers, sent);
namespace sluice::waypoint {

// Sends what the socket buffer of a TCP socket takes of `buffers` now (one sendmsg,
// MSG_DONTWAIT) and returns how many bytes that was; `ec` is set on an error other than
// EAGAIN. No other write may be pending on the socket (true for every writer here: one exchange
// at a time per connection). Not a coroutine: the common case, everything sent, allocates no
// coroutine frame either.
template <class ConstBuffers>
std::size_t sendNow(tcp::socket& socket, const ConstBuffers& buffers, error_code& ec) {
    std::array<iovec, 16> iov;
    std::size_t count = 0;
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers);
         ++it) {
        const asio::const_buffer b(*it);
        if (b.size() == 0)
            continue;
        if (count == iov.size())
            return 0;  // more pieces than this takes: the reactor writes them all
        iov[count++] = {const_cast<void*>(b.data()), b.size()};
    }
    if (count == 0)
        return 0;
    msghdr msg{};
    msg.msg_iov = iov.data();
    msg.msg_iovlen = count;
    ssize_t n;
    do {
        n = ::sendmsg(socket.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n >= 0)
        return std::size_t(n);
    if (errno != EAGAIN && errno != EWOULDBLOCK)
        ec = error_code(errno, asio::error::get_system_category());
    return 0;
}

// What sendNow() left of `buffers` after `sent` bytes, written through the reactor.
template <class ConstBuffers>
awaitable<error_code> writeRest(tcp::socket& socket, const ConstBuffers& buffers,
                                std::size_t sent) {
    beast::buffers_suffix<ConstBuffers> rest(buffers);
    rest.consume(sent);
    error_code ec;
    co_await asio::async_write(socket, rest, noThrow(ec));
    co_return ec;
}

// One step of http::async_read_some over bytes `buffer` already holds: the parser takes what it
// can. nullopt when that was not enough to make progress (the caller reads from the stream
// then, as async_read_some would); else the step's result (need_buffer included).
template <bool isRequest>
std::optional<error_code> parseBuffered(http::basic_parser<isRequest>& parser,
                                        beast::flat_buffer& buffer) {
    if (buffer.size() == 0)
        return std::nullopt;
    error_code ec;
    buffer.consume(parser.put(buffer.data(), ec));
    if (ec == http::error::need_more)
        return std::nullopt;
    return ec;
}

}  // namespace sluice::waypoint
