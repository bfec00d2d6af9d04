// h2c connection limits and graceful stop on the plain listener, with an nghttp2 client
// (tests/waypoint/h2_client.h): the request bodies one connection may hold (streams admitted
// within the connection's body budget, the others wait at their initial window), the 408 that
// frees the budget held by bodies that never end, and the GOAWAY of Gateway::stop while a
// stream is in flight.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>

#include <nlohmann/json.hpp>

#include <cstring>
#include <optional>
#include <thread>

#include "tests/waypoint/h2_client.h"
#include "tests/waypoint/harness.h"

namespace sluice::waypoint::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

constexpr std::size_t kMaxBody = 1 << 20;
constexpr std::size_t kConnectionBodies = 2 << 20;

// Appends what arrives on `s` to `got` until the peer ends the connection (eof), an error, or
// 5 s without a byte (timed_out); returns which.
error_code readToEnd(tcp::socket& s, std::string& got) {
    char buf[65536];
    error_code ec;
    while (!ec) {
        pollfd p{.fd = s.native_handle(), .events = POLLIN, .revents = 0};
        if (::poll(&p, 1, 5000) != 1)
            return asio::error::timed_out;
        got.append(buf, s.read_some(asio::buffer(buf), ec));
    }
    return ec;
}

// A streamed chat whose prompt makes the body about `size` bytes.
std::string chatOfSize(std::size_t size, bool stream = true) {
    json body{{"model", "gpt-4o"}, {"max_tokens", 3}, {"stream", stream}};
    std::string prompt;
    while (prompt.size() + 200 < size)
        prompt += "hello mesh ";
    body["messages"] = {{{"role", "user"}, {"content", prompt}}};
    return body.dump();
}

TEST(WaypointH2Limits, BodiesAreAdmittedWithinTheConnectionsBudget) {
    Emulator backend("a");
    auto gw = startGateway(limitsConfig(
        backend, "maxBodyBytes: " + std::to_string(kMaxBody) +
                     ", maxConnectionBodyBytes: " + std::to_string(kConnectionBodies)));
    H2OverTcp conn(gw->gatewayPort());
    H2Client client;
    // Ten bodies of ~1 MB at once, no content-length: nghttp2 sends them round-robin.
    const std::string big = chatOfSize(kMaxBody - 1000);
    constexpr int kStreams = 10;
    for (int i = 0; i < kStreams; ++i)
        client.submit("POST", "/v1/chat/completions", big);
    ASSERT_TRUE(conn.run(client, {}, 60s));
    for (const auto& [id, s] : client.streams) {
        EXPECT_EQ(s.status, 200u) << "stream " << id << ": " << s.body;
        EXPECT_NE(s.body.find("data: [DONE]"), std::string::npos) << "stream " << id;
    }
    // Unbounded, every stream's body would be in flight at once (~10 MB). Bounded, two bodies
    // (the 2 MiB budget) are admitted at a time and each waiting stream stops at its initial
    // window (64 KiB).
    EXPECT_LE(client.max_partial, kConnectionBodies + kStreams * 65535);
    EXPECT_GE(client.max_partial, kConnectionBodies / 2) << "the budget was used";
    EXPECT_EQ(json::parse(backend.stats())["requests"], kStreams);

    // A small request on the same connection afterwards.
    const int32_t small = client.submit("POST", "/v1/chat/completions", chatOfSize(300, false));
    ASSERT_TRUE(conn.run(client));
    EXPECT_EQ(client.streams[small].status, 200u) << client.streams[small].body;
    EXPECT_TRUE(json::parse(client.streams[small].body)["usage"].is_object());
}

TEST(WaypointH2Limits, BodiesThatNeverEndGet408AndGiveTheirBudgetBack) {
    Emulator backend("a");
    auto gw = startGateway(limitsConfig(
        backend, "maxBodyBytes: " + std::to_string(kMaxBody) + ", maxConnectionBodyBytes: " +
                     std::to_string(kConnectionBodies) + ", requestTimeout: 1s"));
    H2OverTcp conn(gw->gatewayPort());
    H2Client client;
    // Three bodies of 900 KB that never end: two are admitted (the budget), one waits.
    const std::string part(900 * 1000, 'x');
    std::vector<int32_t> stuck;
    for (int i = 0; i < 3; ++i)
        stuck.push_back(client.submit("POST", "/v1/chat/completions", part, false));
    // A small body fits its stream's initial window: it needs no budget and does not wait.
    const int32_t small = client.submit("POST", "/v1/chat/completions", chatOfSize(300, false));
    // Once the 408s came, a whole body of ~1 MB on the same connection gets the budget back.
    int32_t big = 0;
    ASSERT_TRUE(conn.run(client, [&](H2Client& c) {
        if (big == 0 && c.streams[stuck[0]].status != 0) {
            big = c.submit("POST", "/v1/chat/completions", chatOfSize(kMaxBody - 1000, false));
        }
    }));
    ASSERT_NE(big, 0);
    for (int32_t id : stuck) {
        EXPECT_EQ(client.streams[id].status, 408u) << client.streams[id].body;
        EXPECT_EQ(json::parse(client.streams[id].body)["error"]["message"],
                  "request not received in time");
    }
    EXPECT_EQ(client.streams[small].status, 200u) << client.streams[small].body;
    EXPECT_EQ(client.streams[big].status, 200u) << client.streams[big].body;
    // The small request did not wait for the stuck ones.
    ASSERT_EQ(client.ended_order.size(), 5u);
    EXPECT_EQ(client.ended_order.front(), small);
    EXPECT_EQ(client.ended_order.back(), big);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2);
}

// A response its backend cut mid-body (a chunked body, then the connection's end) is reset
// (RST_STREAM INTERNAL_ERROR), not ended with END_STREAM: an HTTP/2 client without a
// content-length could not tell it from a whole one. (The bytes already sent arrive; nghttp2
// sends the reset ahead of DATA still held back by flow control, which is then dropped.)
TEST(WaypointH2Cut, AResponseTheBackendCutIsResetNotEnded) {
    RawBackend backend("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 1);
    auto gw = startGateway(backendConfig(backend.address()));
    H2OverTcp conn(gw->gatewayPort());
    H2Client client;
    const int32_t id = client.submit("POST", "/v1/chat/completions", chatOfSize(200, false));
    ASSERT_TRUE(conn.run(client));
    EXPECT_EQ(client.streams[id].status, 200u);
    EXPECT_EQ(client.streams[id].body, "hello");
    EXPECT_EQ(client.streams[id].reset_code, uint32_t(NGHTTP2_INTERNAL_ERROR));
}

// A client that stops reading one stream's response: the waypoint's writes wait on that
// stream's window, and after the idle timeout the stream is reset and the upstream abandoned.
TEST(WaypointH2Limits, AStalledStreamIsResetAfterTheIdleTimeout) {
    Emulator backend("a");
    backend.configure(R"({"completion_tokens": 200000})");  // ~25 MB of events, no delay
    auto gw = startGateway(limitsConfig(backend, "idleTimeout: 1s"));
    H2OverTcp conn(gw->gatewayPort());
    H2Client client(true);
    json body{{"model", "gpt-4o"},
              {"max_tokens", 200000},
              {"stream", true},
              {"messages", {{{"role", "user"}, {"content", "hello"}}}}};
    const int32_t id = client.submit("POST", "/v1/chat/completions", body.dump());
    std::optional<std::chrono::steady_clock::time_point> answered;
    ASSERT_TRUE(conn.run(client, [&](H2Client& c) {
        if (!answered && c.streams[id].status != 0)
            answered = std::chrono::steady_clock::now();
    }));
    ASSERT_TRUE(answered);
    const auto after = std::chrono::steady_clock::now() - *answered;
    EXPECT_EQ(client.streams[id].status, 200u);
    EXPECT_EQ(client.streams[id].reset_code, uint32_t(NGHTTP2_CANCEL));
    EXPECT_GE(after, 1s);
    EXPECT_LT(after, 6s);
    EXPECT_EQ(backend.streamsAborted(), 1);
}

// A client that stops reading the whole connection (its TCP window fills, not a stream's) is cut
// off after the idle timeout. The stream's own write bound abandons the upstream stream either
// way; without the connection's bound the connection itself stayed open for ever.
TEST(WaypointH2Limits, AConnectionThatStopsReadingIsCutOffAfterTheIdleTimeout) {
    Emulator backend("a");
    backend.configure(R"({"completion_tokens": 200000})");  // ~25 MB of events, no delay
    auto gw = startGateway(limitsConfig(backend, "idleTimeout: 1s"));
    // The preface, SETTINGS with the largest windows and the request, as bytes for a socket that
    // is then never read: the waypoint may send all it has, and only TCP holds it back.
    H2Client client;
    const nghttp2_settings_entry window{NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
                                        NGHTTP2_MAX_WINDOW_SIZE};
    nghttp2_submit_settings(client.session(), NGHTTP2_FLAG_NONE, &window, 1);
    nghttp2_session_set_local_window_size(client.session(), NGHTTP2_FLAG_NONE, 0,
                                          NGHTTP2_MAX_WINDOW_SIZE);
    json body{{"model", "gpt-4o"},
              {"max_tokens", 200000},
              {"stream", true},
              {"messages", {{{"role", "user"}, {"content", "hello"}}}}};
    client.submit("POST", "/v1/chat/completions", body.dump());
    std::string bytes;
    const uint8_t* data = nullptr;
    for (ssize_t n; (n = nghttp2_session_mem_send(client.session(), &data)) > 0;)
        bytes.append(reinterpret_cast<const char*>(data), std::size_t(n));
    asio::io_context io;
    tcp::socket s = connectWithSmallWindow(io, gw->gatewayPort());
    const auto sent = std::chrono::steady_clock::now();
    asio::write(s, asio::buffer(bytes));
    while (backend.streamsAborted() == 0 && std::chrono::steady_clock::now() - sent < 20s)
        std::this_thread::sleep_for(50ms);
    ASSERT_EQ(backend.streamsAborted(), 1) << "the stream was not abandoned within 20 s";
    EXPECT_GE(std::chrono::steady_clock::now() - sent, 1s);
    // The waypoint's end of the connection is gone: reading on ends in a reset, not an END_STREAM.
    char buf[65536];
    error_code ec;
    std::size_t got = 0;
    while (!ec && got < (64u << 20)) {
        pollfd p{.fd = s.native_handle(), .events = POLLIN, .revents = 0};
        if (::poll(&p, 1, 5000) != 1) {
            ec = asio::error::timed_out;
            break;
        }
        got += s.read_some(asio::buffer(buf), ec);
    }
    EXPECT_EQ(ec, asio::error::connection_reset) << ec.message();
}

// A connection that sends the preface and then nothing is ended with a GOAWAY after the request
// timeout (before, it was held for ever: a descriptor, a session and buffers per silent peer);
// the same after its last stream, once the idle timeout has passed.
TEST(WaypointH2Limits, ASilentConnectionIsEndedWithAGoaway) {
    Emulator backend("a");
    auto gw = startGateway(limitsConfig(backend, "requestTimeout: 300ms, idleTimeout: 600ms"));
    for (const bool after_a_stream : {false, true}) {
        asio::io_context io;
        tcp::socket s(io);
        s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), gw->gatewayPort()));
        std::string received;
        auto started = std::chrono::steady_clock::now();
        if (after_a_stream) {
            H2Client client;
            client.submit("POST", "/v1/chat/completions", chatOfSize(300, false));
            asio::co_spawn(io,
                           client.run(
                               [&](asio::mutable_buffer b) -> awaitable<std::size_t> {
                                   error_code ec;
                                   co_return co_await s.async_read_some(b, noThrow(ec));
                               },
                               [&](std::string out) -> awaitable<bool> {
                                   error_code ec;
                                   co_await asio::async_write(s, asio::buffer(out), noThrow(ec));
                                   co_return !ec;
                               }),
                           asio::detached);
            io.run_for(5s);
            ASSERT_TRUE(client.allEnded());
            started = std::chrono::steady_clock::now();
        } else {
            asio::write(s, asio::buffer(std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") +
                                        std::string("\0\0\0\x04\0\0\0\0\0", 9)));
        }
        const error_code ec = readToEnd(s, received);
        const auto took = std::chrono::steady_clock::now() - started;
        EXPECT_EQ(ec, asio::error::eof) << ec.message();
        const auto limit = after_a_stream ? 600ms : 300ms;
        EXPECT_GE(took, limit - 50ms);
        EXPECT_LT(took, limit + 1s);
        // The last frame before the end is the GOAWAY (type 7).
        ASSERT_GE(received.size(), 17u);
        EXPECT_EQ(received[received.size() - 17 + 3], char(0x7)) << "no GOAWAY at the end";
    }
}

// Lingering close: after its graceful end (here the client's GOAWAY, with no stream open) the
// waypoint shuts its side down and keeps reading what the client still sends, until the client's
// end. Closing at once would answer those bytes with a RST, which can throw away what the client
// had not read yet.
TEST(WaypointH2Drain, AGracefulEndReadsWhatTheClientStillSends) {
    Emulator backend("a");
    auto gw = startGateway(limitsConfig(backend, "idleTimeout: 5s"));
    auto frame = [](std::uint8_t type, std::string_view payload) {
        std::string f{char(0),
                      char(payload.size() >> 8),
                      char(payload.size() & 0xff),
                      char(type),
                      char(0),
                      char(0),
                      char(0),
                      char(0),
                      char(0)};
        return f.append(payload);
    };
    asio::io_context io;
    tcp::socket s(io);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), gw->gatewayPort()));
    // Preface, empty SETTINGS, GOAWAY (last stream 0, NO_ERROR): the session is done at once.
    asio::write(s, asio::buffer("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, "") +
                                frame(0x7, std::string(8, '\0'))));
    std::string got;
    error_code ec = readToEnd(s, got);
    ASSERT_EQ(ec, asio::error::eof) << ec.message();
    ASSERT_GE(got.size(), 9u);
    EXPECT_EQ(got[3], char(0x4)) << "the waypoint's SETTINGS come first";
    // Our side after the waypoint's FIN: 64 KiB of connection WINDOW_UPDATEs (+1 each, no answer
    // needed), then our own FIN. The waypoint reads them and closes when it sees our end.
    std::string late;
    while (late.size() < (64u << 10))
        late += frame(0x8, std::string("\0\0\0\1", 4));
    asio::write(s, asio::buffer(late), ec);
    ASSERT_FALSE(ec) << ec.message();
    s.shutdown(tcp::socket::shutdown_send, ec);
    // Wait for the connection to be closed on both sides (a RST closes it too), then ask how.
    tcp_info info{};
    for (int i = 0; i < 500; ++i) {
        socklen_t len = sizeof info;
        ASSERT_EQ(::getsockopt(s.native_handle(), IPPROTO_TCP, TCP_INFO, &info, &len), 0);
        if (info.tcpi_state == TCP_CLOSE || info.tcpi_state == TCP_TIME_WAIT)
            break;
        std::this_thread::sleep_for(10ms);
    }
    EXPECT_TRUE(info.tcpi_state == TCP_CLOSE || info.tcpi_state == TCP_TIME_WAIT)
        << "state " << int(info.tcpi_state);
    int error = 0;
    socklen_t len = sizeof error;
    ASSERT_EQ(::getsockopt(s.native_handle(), SOL_SOCKET, SO_ERROR, &error, &len), 0);
    EXPECT_EQ(error, 0) << std::strerror(error) << " (ECONNRESET: the late bytes met a RST)";
}

TEST(WaypointH2Drain, StopSendsGoawayAndTheStreamInFlightFinishes) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 200, "completion_tokens": 5})");
    auto gw = startGateway(limitsConfig(backend, "drainTimeout: 5s"));
    H2OverTcp conn(gw->gatewayPort());
    H2Client client;
    const int32_t id = client.submit("POST", "/v1/chat/completions", chatOfSize(300));
    StopWhenAnswered stop(id, [&] { gw->stop(); });
    ASSERT_TRUE(conn.run(client, std::ref(stop)));
    expectDrained(client, id, stop.took());
    EXPECT_EQ(backend.streamsAborted(0ms), 0);
}

}  // namespace
}  // namespace sluice::waypoint::test
