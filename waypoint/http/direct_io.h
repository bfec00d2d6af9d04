#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <cerrno>
#include <optional>

#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>

#include "waypoint/http/asio.h"
#include "waypoint/http/client_stream.h"

// I/O steps that finish without a trip through the worker's queue when they can.
//
// An Asio or Beast operation that completes at once (a write the socket buffer takes whole, a
// parse of bytes already buffered) does not resume its coroutine directly: it posts the
// completion to the io_context, and the worker, finding work queued behind the reactor, calls
// epoll_wait(0) before it runs it. That is one syscall and one pass through the scheduler per
// step, four per proxied request (docs/waypoint.md, "Latency"). These helpers do the immediate
// part inline and leave only what has to wait to the reactor.
namespace sluice::waypoint {

// Writes all of `buffers` to a TCP socket: what the socket buffer takes now leaves from this
// call (one sendmsg, MSG_DONTWAIT), only a rest goes through the reactor. No other write may be
// pending on the socket (true for every writer here: one exchange at a time per connection).
template <class ConstBuffers>
awaitable<error_code> writeAll(tcp::socket& socket, const ConstBuffers& buffers) {
    std::array<iovec, 16> iov;
    std::size_t count = 0;
    std::size_t total = 0;
    bool fits = true;
    for (auto it = asio::buffer_sequence_begin(buffers); it != asio::buffer_sequence_end(buffers);
         ++it) {
        const asio::const_buffer b(*it);
        if (b.size() == 0)
            continue;
        if (count == iov.size()) {
            fits = false;
            break;
        }
        iov[count++] = {const_cast<void*>(b.data()), b.size()};
        total += b.size();
    }
    std::size_t sent = 0;
    if (fits && count > 0) {
        msghdr msg{};
        msg.msg_iov = iov.data();
        msg.msg_iovlen = count;
        ssize_t n;
        do {
            n = ::sendmsg(socket.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            co_return error_code(errno, asio::error::get_system_category());
        sent = n < 0 ? 0 : std::size_t(n);
        if (sent == total)
            co_return error_code{};
    }
    beast::buffers_suffix<ConstBuffers> rest(buffers);
    rest.consume(sent);
    error_code ec;
    co_await asio::async_write(socket, rest, noThrow(ec));
    co_return ec;
}

// The same for a client: straight to the socket for TCP, through the ByteStream otherwise.
template <class ConstBuffers>
awaitable<error_code> writeAll(ClientStream& client, const ConstBuffers& buffers) {
    if (tcp::socket* socket = client.socket())
        co_return co_await writeAll(*socket, buffers);
    error_code ec;
    co_await asio::async_write(client, buffers, noThrow(ec));
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
