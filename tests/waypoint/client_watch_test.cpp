// ClientWatch: a client's pipelined bytes are kept, a hang-up is noticed, and around() leaves no
// read behind however the watched work ends (a handler that throws costs its connection, whose
// stream and buffer are freed right after).
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>

#include "waypoint/http/client_watch.h"

namespace sluice::waypoint {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kPipelined = "GET /v1/models HTTP/1.1\r\nhost: w\r\n\r\n";

// A plaintext TCP socket as a ByteStream: the path HBONE and TLS clients take through
// ClientStream (a coroutine per read, cancelled through cancel()).
class SocketByteStream final : public ByteStream {
  public:
    explicit SocketByteStream(tcp::socket& socket) : socket_(socket) {}
    awaitable<IoResult> write(std::string data) override {
        error_code ec;
        const std::size_t n = co_await asio::async_write(socket_, asio::buffer(data), noThrow(ec));
        co_return IoResult{ec, n};
    }
    void shutdown_send() override {
        error_code ec;
        socket_.shutdown(tcp::socket::shutdown_send, ec);
    }
    void close() override {
        error_code ec;
        socket_.close(ec);
    }
    bool is_open() const override { return socket_.is_open(); }

  protected:
    awaitable<IoResult> readSome(asio::mutable_buffer buf) override {
        IoResult r{asio::error::operation_aborted, 0};
        if (!readCancelled())
            r.second = co_await socket_.async_read_some(buf, noThrow(r.first));
        co_return r;
    }
    void interruptRead() override {
        error_code ec;
        socket_.cancel(ec);
    }

  private:
    tcp::socket& socket_;
};

// One accepted loopback connection: `server` is what the waypoint would hold, `peer` the client.
struct Connection {
    asio::io_context io;
    tcp::socket server{io};
    tcp::socket peer{io};

    Connection() {
        tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        peer.connect(acceptor.local_endpoint());
        acceptor.accept(server);
    }
    void runFor(std::chrono::milliseconds d) {
        io.restart();
        io.run_for(d);
    }
};

// The client stream and buffer a connection's handler uses; freed when the connection ends.
struct Exchange {
    std::unique_ptr<SocketByteStream> bytes;
    ClientStream stream;
    beast::flat_buffer buffer;

    Exchange(Connection& c, bool over_byte_stream)
        : bytes(over_byte_stream ? std::make_unique<SocketByteStream>(c.server) : nullptr),
          stream(over_byte_stream ? ClientStream(*bytes, c.io.get_executor())
                                  : ClientStream(c.server)) {}
};

// Waits until the watch has read `n` bytes (or 2 s), then throws as a buggy handler would.
awaitable<void> throwOnceRead(const beast::flat_buffer& buffer, std::size_t n) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (int i = 0; i < 200 && buffer.size() < n; ++i) {
        timer.expires_after(10ms);
        co_await timer.async_wait(asio::use_awaitable);
    }
    throw std::runtime_error("handler bug");
}

class ClientWatchTest : public ::testing::TestWithParam<bool> {};

TEST_P(ClientWatchTest, AroundLeavesNoReadBehindWhenTheWorkThrows) {
    Connection c;
    auto ex = std::make_unique<Exchange>(c, GetParam());
    asio::write(c.peer, asio::buffer(kPipelined));  // makes the watch read, not only wait

    std::optional<ClientWatch> watch;
    watch.emplace(ex->stream, ex->buffer, 64 * 1024);
    bool gone = false;
    watch->start([&gone] { gone = true; });
    std::string thrown;
    bool running_after = true;
    asio::co_spawn(
        c.io,
        [&]() -> awaitable<void> {
            try {
                co_await watch->around(throwOnceRead(ex->buffer, kPipelined.size()));
            } catch (const std::runtime_error& e) {
                thrown = e.what();
            }
            running_after = watch->running();
            // What the server does after a handler threw: the connection and all it held go.
            watch.reset();
            ex.reset();
            c.server.close();
        },
        asio::detached);
    c.runFor(3s);

    EXPECT_EQ(thrown, "handler bug");
    EXPECT_FALSE(running_after) << "a read was still pending on the stream about to be freed";
    EXPECT_FALSE(gone);
    // The peer may write more: nothing reads into the freed buffer (AddressSanitizer in CI).
    error_code ec;
    asio::write(c.peer, asio::buffer(kPipelined), ec);
    c.runFor(100ms);
}

TEST_P(ClientWatchTest, AroundKeepsThePipelinedBytesAndTheResult) {
    Connection c;
    Exchange ex(c, GetParam());
    asio::write(c.peer, asio::buffer(kPipelined));

    ClientWatch watch(ex.stream, ex.buffer, 64 * 1024);
    watch.start([] {});
    std::optional<int> result;
    asio::co_spawn(
        c.io,
        [&]() -> awaitable<void> {
            result = co_await watch.around([&]() -> awaitable<int> {
                asio::steady_timer timer(co_await asio::this_coro::executor);
                for (int i = 0; i < 200 && ex.buffer.size() < kPipelined.size(); ++i) {
                    timer.expires_after(10ms);
                    co_await timer.async_wait(asio::use_awaitable);
                }
                co_return 42;
            }());
        },
        asio::detached);
    c.runFor(3s);

    EXPECT_EQ(result, 42);
    EXPECT_FALSE(watch.running());
    EXPECT_FALSE(watch.gone());
    EXPECT_EQ(beast::buffers_to_string(ex.buffer.data()), kPipelined);
}

TEST_P(ClientWatchTest, NoticesAClientThatHangsUp) {
    Connection c;
    Exchange ex(c, GetParam());
    ClientWatch watch(ex.stream, ex.buffer, 64 * 1024);
    int gone = 0;
    watch.start([&gone] { ++gone; });
    c.runFor(50ms);
    EXPECT_EQ(gone, 0);
    c.peer.shutdown(tcp::socket::shutdown_send);
    c.runFor(500ms);
    EXPECT_EQ(gone, 1);
    EXPECT_TRUE(watch.gone());
}

INSTANTIATE_TEST_SUITE_P(Streams, ClientWatchTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "ByteStream" : "TcpSocket"; });

}  // namespace
}  // namespace sluice::waypoint
