// proxy::Relay between two loopback TCP connections: the test holds the outer ends (blocking
// sockets on this thread), the relay the inner ends (an io_context on its own thread).
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <future>
#include <thread>

#include "ztunnel/proxy/relay.h"
#include "ztunnel/proxy/sockets.h"

namespace sluice::ztunnel::proxy {
namespace {

using namespace std::chrono_literals;

// A connected pair on 127.0.0.1: first on `outer`'s context (the test's), second on `inner`'s.
std::pair<tcp::socket, tcp::socket> loopback_pair(asio::io_context& outer,
                                                  asio::io_context& inner) {
    tcp::acceptor acceptor(outer, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    tcp::socket a(outer);
    a.connect(acceptor.local_endpoint());
    tcp::socket b(inner);
    acceptor.accept(b);
    return {std::move(a), std::move(b)};
}

class RelayTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto [c, ca] = loopback_pair(test_io_, relay_io_);
        auto [s, sb] = loopback_pair(test_io_, relay_io_);
        client_ = std::move(c);
        server_ = std::move(s);
        // Bounded in time: a reset would otherwise leave a blocking read hanging, and a relay
        // that stopped moving bytes a blocking write.
        for (tcp::socket* sock : {&client_, &server_}) {
            setsockopt(sock->native_handle(), SOL_SOCKET, SO_RCVTIMEO, &kTimeout, sizeof kTimeout);
            setsockopt(sock->native_handle(), SOL_SOCKET, SO_SNDTIMEO, &kTimeout, sizeof kTimeout);
        }
        relay_ = start_relay(TcpPipe(std::move(ca)), TcpPipe(std::move(sb)),
                             [this](const RelayResult& r) { result_.set_value(r); });
        work_ = std::thread([this] { relay_io_.run_for(20s); });
    }
    void TearDown() override {
        relay_.reset();
        relay_io_.stop();
        work_.join();
    }

    RelayResult result() {
        auto f = result_.get_future();
        EXPECT_EQ(f.wait_for(10s), std::future_status::ready) << "the relay did not end";
        return f.valid() ? f.get() : RelayResult{};
    }

    // Reads until EOF or an error; returns what came and the error.
    static std::pair<std::string, boost::system::error_code> read_all(tcp::socket& s) {
        std::string out;
        boost::system::error_code ec;
        std::array<char, 65536> buf;
        for (;;) {
            const size_t n = s.read_some(asio::buffer(buf), ec);
            if (ec)
                return {out, ec};
            out.append(buf.data(), n);
        }
    }

    static constexpr timeval kTimeout{10, 0};
    asio::io_context test_io_, relay_io_;
    tcp::socket client_{test_io_}, server_{test_io_};
    std::shared_ptr<RelayControl> relay_;
    std::promise<RelayResult> result_;
    std::thread work_;
};

TEST_F(RelayTest, HalfCloseTravelsAndBytesAreCounted) {
    asio::write(client_, asio::buffer(std::string_view("hello relay")));
    client_.shutdown(tcp::socket::shutdown_send);
    // The server sees the bytes, then EOF, while its own direction is still open.
    auto [got, ec] = read_all(server_);
    EXPECT_EQ(got, "hello relay");
    EXPECT_EQ(ec, asio::error::eof);
    asio::write(server_, asio::buffer(std::string_view("answer after the half-close")));
    server_.shutdown(tcp::socket::shutdown_send);
    auto [back, ec2] = read_all(client_);
    EXPECT_EQ(back, "answer after the half-close");
    EXPECT_EQ(ec2, asio::error::eof);
    const RelayResult r = result();
    EXPECT_EQ(r.a_to_b, 11u);
    EXPECT_EQ(r.b_to_a, 27u);
    EXPECT_FALSE(r.failed);
}

TEST_F(RelayTest, ResetOnOneSideResetsTheOther) {
    asio::write(client_, asio::buffer(std::string_view("x")));
    std::array<char, 1> one;
    asio::read(server_, asio::buffer(one));
    server_.set_option(asio::socket_base::linger(true, 0));
    server_.close();  // RST
    auto [got, ec] = read_all(client_);
    EXPECT_EQ(got, "");
    EXPECT_EQ(ec, asio::error::connection_reset);
    const RelayResult r = result();
    EXPECT_EQ(r.a_to_b, 1u);
    EXPECT_TRUE(r.failed);
}

TEST_F(RelayTest, AbortResetsBothSides) {
    asio::post(relay_io_, [r = relay_] { r->abort(); });
    EXPECT_EQ(read_all(client_).second, asio::error::connection_reset);
    EXPECT_EQ(read_all(server_).second, asio::error::connection_reset);
    EXPECT_TRUE(result().failed);
}

// More than socket buffers and the relay's chunk hold, both ways at once, with a reader that
// takes its time: the writes that have to wait complete in order and every byte arrives once.
TEST_F(RelayTest, BulkBothWaysArrivesIntact) {
    constexpr size_t kBytes = 8 << 20;
    std::string up(kBytes, '\0'), down(kBytes, '\0');
    for (size_t i = 0; i < kBytes; ++i) {
        up[i] = static_cast<char>(i * 7 + (i >> 12));
        down[i] = static_cast<char>(i * 13 + (i >> 10));
    }
    // Each end writes and reads at the same time: 8 MiB does not fit in the socket buffers
    // between them, so a writer that waited for its own write before reading would stall.
    auto sent_up = std::async(std::launch::async, [&] {
        asio::write(client_, asio::buffer(up));
        client_.shutdown(tcp::socket::shutdown_send);
    });
    auto sent_down = std::async(std::launch::async, [&] {
        asio::write(server_, asio::buffer(down));
        server_.shutdown(tcp::socket::shutdown_send);
    });
    auto read_at_client = std::async(std::launch::async, [&] { return read_all(client_); });
    auto [at_server, ec1] = read_all(server_);
    auto [at_client, ec2] = read_at_client.get();
    sent_up.get();
    sent_down.get();
    EXPECT_EQ(ec1, asio::error::eof);
    EXPECT_EQ(ec2, asio::error::eof);
    EXPECT_TRUE(at_server == up) << at_server.size() << " bytes arrived at the server";
    EXPECT_TRUE(at_client == down) << at_client.size() << " bytes arrived at the client";
    const RelayResult r = result();
    EXPECT_EQ(r.a_to_b, kBytes);
    EXPECT_EQ(r.b_to_a, kBytes);
    EXPECT_FALSE(r.failed);
}

// An idle connection holds no relay buffer: once the bytes went through and nothing more is
// waiting, the chunk is back (in the thread's cache), and the connection still relays.
TEST_F(RelayTest, IdleConnectionHoldsNoBuffer) {
    for (int i = 0; i < 3; ++i) {
        asio::write(client_, asio::buffer(std::string_view("ping")));
        std::array<char, 4> buf;
        asio::read(server_, asio::buffer(buf));
        EXPECT_EQ(std::string_view(buf.data(), 4), "ping");
        // The relay gives the chunk back right after its write; bounded wait for that moment.
        const auto until = std::chrono::steady_clock::now() + 5s;
        while (detail::ChunkCache::in_use() > 0 && std::chrono::steady_clock::now() < until)
            std::this_thread::yield();
        EXPECT_EQ(detail::ChunkCache::in_use(), 0u) << "round " << i;
    }
    client_.close();
    server_.close();
    EXPECT_EQ(result().a_to_b, 12u);
}

// The HBONE keepalive settings, on a dialled socket and on a listener, whose accepted
// connections inherit them (the :15008 listener's accepted HBONE connections).
TEST(HboneKeepAlive, DialledAndAcceptedSocketsProbeAndTimeOut) {
    auto opt = [](int fd, int level, int name) {
        int v = -1;
        socklen_t len = sizeof(v);
        EXPECT_EQ(::getsockopt(fd, level, name, &v, &len), 0);
        return v;
    };
    auto expect_keepalive = [&](int fd, const char* what) {
        EXPECT_EQ(opt(fd, SOL_SOCKET, SO_KEEPALIVE), 1) << what;
        EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_KEEPIDLE), kHboneKeepIdleSeconds) << what;
        EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_KEEPINTVL), kHboneKeepIntervalSeconds) << what;
        EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_KEEPCNT), kHboneKeepCount) << what;
        EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), int(kHboneUserTimeoutMs)) << what;
    };
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(listener, 0);
    sockaddr_in at{.sin_family = AF_INET, .sin_port = 0, .sin_addr = {htonl(INADDR_LOOPBACK)}};
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&at), sizeof(at)), 0);
    ASSERT_EQ(::listen(listener, 4), 0);
    ASSERT_EQ(keep_hbone_alive(listener), 0);
    socklen_t len = sizeof(at);
    ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&at), &len), 0);
    const int dialled = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(dialled, 0);
    EXPECT_EQ(opt(dialled, SOL_SOCKET, SO_KEEPALIVE), 0) << "off by default";
    ASSERT_EQ(keep_hbone_alive(dialled), 0);
    ASSERT_EQ(::connect(dialled, reinterpret_cast<sockaddr*>(&at), sizeof(at)), 0);
    const int accepted = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    ASSERT_GE(accepted, 0);
    expect_keepalive(dialled, "dialled");
    expect_keepalive(accepted, "accepted");
    ::close(accepted);
    ::close(dialled);
    ::close(listener);
}

}  // namespace
}  // namespace sluice::ztunnel::proxy
