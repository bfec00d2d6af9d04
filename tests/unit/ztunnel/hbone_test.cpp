#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "ztunnel/hbone/handshake.h"
#include "ztunnel/hbone/pool.h"
#include "ztunnel/hbone/tls.h"
#include "ztunnel/hbone/tls_socket.h"
#include "ztunnel/proxy/relay.h"

namespace sluice::ztunnel::hbone {
namespace {

using identity::Identity;
using namespace std::chrono_literals;

const Identity kClient{"cluster.local", "tenant-a", "rag"};
const Identity kServer{"cluster.local", "tenant-a", "llm"};

// An HBONE server on 127.0.0.1:<ephemeral> whose CONNECT handler answers `status` and then
// echoes the stream, and a client side with its own pool, all on one io_context.
class HboneFixture : public ::testing::Test {
  protected:
    explicit HboneFixture(std::chrono::seconds cert_lifetime)
        : ca_(std::make_shared<identity::CertificateAuthority>(
              identity::CertificateAuthority::create("cluster.local"))),
          bundle_(std::make_shared<identity::TrustBundle>()),
          certs_(std::make_shared<identity::CertManager>(ca_, bundle_, "cluster.local",
                                                         cert_lifetime)),
          contexts_(certs_),
          acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
        bundle_->add(ca_->certificate());
    }

    void serve(Identity as) {
        server_identity_ = as;
        asio::co_spawn(io_, accept_loop(), asio::detached);
    }

    asio::awaitable<void> accept_loop() {
        for (;;) {
            boost::system::error_code ec;
            tcp::socket s =
                co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                co_return;
            // A fresh context per connection, as the proxy does: renewals take effect at once.
            auto ctx = contexts_.server(server_identity_);
            EXPECT_TRUE(ctx);
            if (!ctx)
                co_return;
            server_ctx_ = *ctx;
            auto conn = co_await handshake_server(std::move(s), *server_ctx_,
                                                  [this](std::shared_ptr<Stream> st) {
                                                      requests_.push_back(st->request());
                                                      asio::co_spawn(io_, echo(st), asio::detached);
                                                  });
            if (!conn)
                server_failures_.push_back(conn.error());
            else
                server_conns_.push_back(*conn);
        }
    }

    asio::awaitable<void> echo(std::shared_ptr<Stream> st) {
        st->connection().respond(*st, status_);
        if (status_ != kStatusOk)
            co_return;
        std::array<char, 16384> buf;
        for (;;) {
            size_t n = co_await st->read(asio::buffer(buf));
            if (n == 0)
                break;
            if (!co_await st->write(asio::buffer(buf.data(), n)))
                co_return;
        }
        st->close_write();
    }

    Pool::Dialer dialer(Identity local) {
        return [this, local](const PoolKey& key)
                   -> asio::awaitable<std::expected<std::shared_ptr<Connection>, Failure>> {
            ++dials_;
            tcp::socket s(io_);
            boost::system::error_code ec;
            co_await s.async_connect(acceptor_.local_endpoint(),
                                     asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                co_return std::unexpected(Failure{Error::ConnectFailed, ec.message()});
            auto ctx = contexts_.client(local);
            if (!ctx)
                co_return std::unexpected(Failure{Error::HandshakeFailed, ctx.error()});
            client_ctx_ = *ctx;
            co_return co_await handshake_client(std::move(s), *client_ctx_, key.destination);
        };
    }

    // Runs `fn` to completion on the io_context, bounded in time.
    template <typename Fn>
    void run(Fn fn) {
        bool done = false;
        asio::co_spawn(
            io_,
            [&]() -> asio::awaitable<void> {
                co_await fn();
                done = true;
                acceptor_.close();
                for (auto& c : server_conns_)
                    c->close();
            },
            asio::detached);
        io_.run_for(10s);
        ASSERT_TRUE(done) << "test coroutine did not finish within 10 s";
    }

    // Opens one stream through `pool` and returns why it failed (nullopt: it opened).
    std::optional<Failure> open_failure(Pool& pool) {
        std::optional<Failure> failure;
        run([&]() -> asio::awaitable<void> {
            auto st = co_await pool.open(key_, request_);
            if (!st)
                failure = st.error();
        });
        return failure;
    }

    // A dialer that takes 20 ms and then fails (or throws), counting its dials.
    Pool::Dialer slow_failing_dialer(int& dials, bool throws) {
        return [this, &dials, throws](const PoolKey&)
                   -> asio::awaitable<std::expected<std::shared_ptr<Connection>, Failure>> {
            ++dials;
            asio::steady_timer slow(io_);
            slow.expires_after(20ms);
            co_await slow.async_wait(asio::use_awaitable);
            if (throws)
                throw std::runtime_error("dialer bug");
            co_return std::unexpected(Failure{Error::ConnectFailed, "refused"});
        };
    }

    // Polls `done` every 5 ms, for at most a second.
    asio::awaitable<void> until(std::function<bool()> done) {
        asio::steady_timer wait(io_);
        for (int i = 0; i < 200 && !done(); ++i) {
            wait.expires_after(5ms);
            co_await wait.async_wait(asio::use_awaitable);
        }
    }

    asio::awaitable<std::string> round_trip(Stream& st, std::string data) {
        const bool written = co_await st.write(asio::buffer(data));
        EXPECT_TRUE(written);
        st.close_write();
        std::string got;
        std::array<char, 65536> buf;
        for (;;) {
            size_t n = co_await st.read(asio::buffer(buf));
            if (n == 0)
                break;
            got.append(buf.data(), n);
        }
        co_return got;
    }

    asio::io_context io_;
    std::shared_ptr<identity::CertificateAuthority> ca_;
    std::shared_ptr<identity::TrustBundle> bundle_;
    std::shared_ptr<identity::CertManager> certs_;
    TlsContexts contexts_;
    tcp::acceptor acceptor_;
    std::shared_ptr<asio::ssl::context> server_ctx_, client_ctx_;
    std::vector<std::shared_ptr<Connection>> server_conns_;
    std::vector<Failure> server_failures_;
    std::vector<ConnectRequest> requests_;
    int status_ = kStatusOk;
    Identity server_identity_;
    // Named, not braced temporaries in co_await expressions: g++ 12 destroys those twice.
    PoolKey key_{kClient, kServer, "127.0.0.1:15008"};
    ConnectRequest request_{.authority = "198.18.1.2:80"};
    int dials_ = 0;
};

class HboneTest : public HboneFixture {
  protected:
    HboneTest() : HboneFixture(1h) {}
};

// Certificates live 2 s and renew after 1 s.
class HboneRotationTest : public HboneFixture {
  protected:
    HboneRotationTest() : HboneFixture(2s) {}
};

TEST_F(HboneRotationTest, RenewalKeepsEstablishedStreamsAndNewHandshakesUseTheNewCert) {
    serve(kServer);
    Pool pool(io_.get_executor(), dialer(kClient));
    std::shared_ptr<asio::ssl::context> first_ctx, second_ctx;
    std::string before, after, fresh;
    run([&]() -> asio::awaitable<void> {
        auto st = co_await pool.open(key_, request_);
        EXPECT_TRUE(st);
        if (!st)
            co_return;
        first_ctx = client_ctx_;
        std::array<char, 16> buf;
        co_await (*st)->write(asio::buffer(std::string_view("one")));
        before.assign(buf.data(), co_await (*st)->read(asio::buffer(buf)));
        asio::steady_timer t(io_, 1200ms);  // past the renewal point
        co_await t.async_wait(asio::use_awaitable);
        // A new connection (another key) handshakes with renewed certificates...
        PoolKey other{kClient, kServer, "127.0.0.1:15008/other"};
        auto st2 = co_await pool.open(other, request_);
        EXPECT_TRUE(st2);
        second_ctx = client_ctx_;
        if (st2)
            fresh = co_await round_trip(**st2, "fresh");
        // ...while the stream from before the renewal still carries bytes.
        co_await (*st)->write(asio::buffer(std::string_view("two")));
        after.assign(buf.data(), co_await (*st)->read(asio::buffer(buf)));
        (*st)->close_write();
        EXPECT_EQ(pool.connections(), 2u);
    });
    EXPECT_EQ(before, "one");
    EXPECT_EQ(after, "two") << "rotation must not drop an established connection";
    EXPECT_EQ(fresh, "fresh");
    EXPECT_NE(first_ctx, second_ctx) << "the client context was rebuilt with the renewed cert";
}

TEST_F(HboneTest, ConnectStreamCarriesBytesBothWaysWithHeaders) {
    serve(kServer);
    Pool pool(io_.get_executor(), dialer(kClient));
    std::string echoed;
    const std::string payload(3 << 20, 'x');  // above the 256 KiB send queue, below windows
    run([&]() -> asio::awaitable<void> {
        PoolKey key{kClient, kServer, "127.0.0.1:15008"};
        ConnectRequest req{.authority = "198.18.1.2:8080",
                           .forwarded = "for=\"198.18.0.2:40000\"",
                           .baggage = "k8s.namespace.name=tenant-a",
                           .traceparent = "00-abc-def-01"};
        auto st = co_await pool.open(key, req);
        EXPECT_TRUE(st) << st.error().message();
        if (st)
            echoed = co_await round_trip(**st, payload);
    });
    EXPECT_EQ(echoed.size(), payload.size());
    EXPECT_TRUE(echoed == payload);
    ASSERT_EQ(requests_.size(), 1u);
    EXPECT_EQ(requests_[0].method, "CONNECT");
    EXPECT_EQ(requests_[0].authority, "198.18.1.2:8080");
    EXPECT_EQ(requests_[0].forwarded, "for=\"198.18.0.2:40000\"");
    EXPECT_EQ(requests_[0].baggage, "k8s.namespace.name=tenant-a");
    EXPECT_EQ(requests_[0].traceparent, "00-abc-def-01");
}

// The relay between an HBONE stream and a TCP socket, as the proxy runs it: 8 MiB each way
// through the echo server and back to a reader that takes its time behind small socket
// buffers, so the stream-to-socket side often finds the socket full and must wait for it.
TEST_F(HboneTest, RelayBetweenAStreamAndASlowSocketCarriesBulkBothWays) {
    serve(kServer);
    Pool pool(io_.get_executor(), dialer(kClient));
    std::string payload(8 << 20, '\0');
    for (size_t i = 0; i < payload.size(); ++i)
        payload[i] = static_cast<char>((i * 2654435761u) >> 13);
    std::string got;
    std::optional<proxy::RelayResult> result;
    run([&]() -> asio::awaitable<void> {
        auto st = co_await pool.open(key_, request_);
        EXPECT_TRUE(st);
        if (!st)
            co_return;
        tcp::acceptor acceptor(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        tcp::socket app(io_, tcp::v4());
        app.set_option(asio::socket_base::receive_buffer_size(8192));
        co_await app.async_connect(acceptor.local_endpoint(), asio::use_awaitable);
        tcp::socket relayed = co_await acceptor.async_accept(asio::use_awaitable);
        relayed.set_option(asio::socket_base::send_buffer_size(8192));
        proxy::start_relay(proxy::TcpPipe(std::move(relayed)), proxy::StreamPipe(*st),
                           [&](proxy::RelayResult r) { result = r; });
        asio::co_spawn(
            io_,
            [&]() -> asio::awaitable<void> {
                co_await asio::async_write(app, asio::buffer(payload), asio::use_awaitable);
                app.shutdown(tcp::socket::shutdown_send);
            },
            asio::detached);
        std::array<char, 16384> buf;
        asio::steady_timer pause(io_);
        for (;;) {
            boost::system::error_code ec;
            const size_t n = co_await app.async_read_some(
                asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                break;
            got.append(buf.data(), n);
            pause.expires_after(100us);
            co_await pause.async_wait(asio::use_awaitable);
        }
        while (!result) {
            pause.expires_after(1ms);
            co_await pause.async_wait(asio::use_awaitable);
        }
    });
    EXPECT_EQ(got.size(), payload.size());
    EXPECT_TRUE(got == payload) << "the echo came back changed";
    ASSERT_TRUE(result);
    EXPECT_FALSE(result->failed);
    EXPECT_EQ(result->a_to_b, payload.size());
    EXPECT_EQ(result->b_to_a, payload.size());
    EXPECT_EQ(proxy::detail::ChunkCache::in_use(), 0u);
}

// A stream holds a DATA item in nghttp2 only while it has bytes to send: the item ends with the
// frame that empties the queue and the next write submits a new one. Small request/response
// exchanges (an item per message each way) share the connection with a bulk transfer, whose
// full batches make an ended item wait in nghttp2's send path while the next bytes come; then
// both sides half-close after idling, which takes an item of its own (END_STREAM alone).
TEST_F(HboneTest, StreamsSendAgainAfterIdlingAndHoldNoDataItemWhileIdle) {
    serve(kServer);
    Pool pool(io_.get_executor(), dialer(kClient));
    constexpr int kTalkers = 4, kMessages = 200;
    const std::string bulk((8 << 20) + 123, 'b');
    std::string bulk_echo;
    std::vector<int> answered(kTalkers, 0);
    std::vector<bool> idle_without_item(kTalkers, false), ended(kTalkers, false);
    int finished = 0;
    auto talker = [&](int i) -> asio::awaitable<void> {
        auto st = co_await pool.open(key_, request_);
        EXPECT_TRUE(st);
        if (st) {
            std::array<char, 256> buf;
            for (int m = 0; m < kMessages; ++m) {
                const std::string msg = "talker " + std::to_string(i) + " message " +
                                        std::to_string(m) + std::string(m % 97, '.');
                EXPECT_TRUE(co_await (*st)->write(asio::buffer(msg)));
                std::string got;
                while (got.size() < msg.size()) {
                    const size_t n = co_await (*st)->read(asio::buffer(buf));
                    if (n == 0)
                        break;
                    got.append(buf.data(), n);
                }
                if (got != msg)
                    break;
                ++answered[i];
            }
            asio::steady_timer settle(io_, 20ms);  // the echo's frames have all left by now
            co_await settle.async_wait(asio::use_awaitable);
            idle_without_item[i] = !(*st)->sending();
            (*st)->close_write();
            ended[i] = co_await (*st)->read(asio::buffer(buf)) == 0 && !(*st)->was_reset();
        }
        ++finished;
    };
    // Writes small pieces without waiting for the echo, yielding between them: its queue
    // empties with almost every frame, and the next piece often comes while a full batch is
    // being written (the ended item still in nghttp2's send path).
    std::string streamed, streamed_echo;
    bool streamer_done = false;
    auto streamer = [&]() -> asio::awaitable<void> {
        auto st = co_await pool.open(key_, request_);
        EXPECT_TRUE(st);
        if (st) {
            asio::co_spawn(
                io_,
                [&, s = *st]() -> asio::awaitable<void> {
                    std::array<char, 4096> buf;
                    for (;;) {
                        const size_t n = co_await s->read(asio::buffer(buf));
                        if (n == 0)
                            break;
                        streamed_echo.append(buf.data(), n);
                    }
                    streamer_done = true;
                },
                asio::detached);
            for (int piece = 0; piece < 2000; ++piece) {
                const std::string bytes =
                    std::to_string(piece) + std::string(700 + piece % 300, 's');
                streamed += bytes;
                EXPECT_TRUE(co_await (*st)->write(asio::buffer(bytes)));
                co_await asio::post(io_, asio::use_awaitable);
            }
            (*st)->close_write();
        } else {
            streamer_done = true;
        }
    };
    run([&]() -> asio::awaitable<void> {
        auto st = co_await pool.open(key_, request_);
        EXPECT_TRUE(st);
        for (int i = 0; i < kTalkers; ++i)
            asio::co_spawn(io_, talker(i), asio::detached);
        asio::co_spawn(io_, streamer(), asio::detached);
        if (st)
            bulk_echo = co_await round_trip(**st, bulk);
        asio::steady_timer wait(io_);
        while (finished < kTalkers || !streamer_done) {
            wait.expires_after(1ms);
            co_await wait.async_wait(asio::use_awaitable);
        }
        EXPECT_EQ(pool.connections(), 1u) << "all streams share one connection";
    });
    EXPECT_EQ(bulk_echo.size(), bulk.size());
    EXPECT_TRUE(bulk_echo == bulk);
    EXPECT_EQ(streamed_echo.size(), streamed.size());
    EXPECT_TRUE(streamed_echo == streamed);
    for (int i = 0; i < kTalkers; ++i) {
        EXPECT_EQ(answered[i], kMessages) << "talker " << i;
        EXPECT_TRUE(idle_without_item[i]) << "talker " << i << " kept its DATA item while idle";
        EXPECT_TRUE(ended[i]) << "talker " << i << ": the half-close after idling was not echoed";
    }
}

// Bytes a stream received and never delivered (the app left, the relay reset the stream) give
// their share of the connection's flow-control window back: five abandoned 4 MiB downloads
// are more than its 16 MiB, and the pooled connection still carries the next stream.
TEST_F(HboneTest, AbandonedStreamsGiveTheirWindowBack) {
    serve(kServer);
    Pool pool(io_.get_executor(), dialer(kClient));
    const std::string chunk(kStreamWindow - (64 << 10), 'x');
    std::string echoed;
    run([&]() -> asio::awaitable<void> {
        for (int i = 0; i < 5; ++i) {
            auto st = co_await pool.open(key_, request_);
            EXPECT_TRUE(st);
            if (!st)
                co_return;
            EXPECT_TRUE(co_await (*st)->write(asio::buffer(chunk)));
            // The echo fills what the stream's window lets through; nothing is read.
            co_await until([&] { return (*st)->received().size() >= chunk.size() - 65536; });
            EXPECT_GE((*st)->received().size(), chunk.size() - 65536);
            (*st)->reset();
        }
        auto st = co_await pool.open(key_, request_);
        EXPECT_TRUE(st);
        if (st)
            echoed = co_await round_trip(**st, "after five abandoned downloads");
    });
    EXPECT_EQ(dials_, 1) << "one pooled connection throughout";
    EXPECT_EQ(echoed, "after five abandoned downloads");
}

TEST_F(HboneTest, ServerStatusReachesTheClient) {
    serve(kServer);
    status_ = kStatusUnauthorized;
    Pool pool(io_.get_executor(), dialer(kClient));
    std::optional<Failure> failure = open_failure(pool);
    ASSERT_TRUE(failure);
    EXPECT_EQ(failure->error, Error::StreamRefused);
    EXPECT_EQ(failure->status, kStatusUnauthorized);
}

// A refused CONNECT ends its stream on both sides: the server's answer carries END_STREAM,
// but the client's side stays open until something closes it, and a stream left open counts
// against the connection's 100 forever (a client that policy keeps refusing would pile up
// pooled connections that never go idle).
TEST_F(HboneTest, ARefusedStreamIsClosedOnBothSides) {
    serve(kServer);
    status_ = kStatusUnauthorized;
    Pool pool(io_.get_executor(), dialer(kClient));
    run([&]() -> asio::awaitable<void> {
        for (int i = 0; i < 3; ++i) {
            auto st = co_await pool.open(key_, request_);
            EXPECT_FALSE(st);
        }
        co_await until([&] {
            return pool.streams() == 0 && !server_conns_.empty() &&
                   server_conns_[0]->active_streams() == 0;
        });
        EXPECT_EQ(pool.connections(), 1u);
        EXPECT_EQ(pool.streams(), 0u) << "the client's refused streams are still open";
        EXPECT_EQ(server_conns_.size(), 1u);
        if (!server_conns_.empty()) {
            EXPECT_EQ(server_conns_[0]->active_streams(), 0u)
                << "the server's refused streams are still open";
        }
    });
}

// A CONNECT submitted on a connection that may start no new stream any more (the peer's GOAWAY
// came in before the request was written) fails at once as lost, so the pool can try a fresh
// connection, rather than wait for an answer until the whole connection ends. (The pool asks
// accepts_streams() first; the GOAWAY can still land between that and the write. nghttp2
// closes such a stream itself: this holds it to that.)
TEST_F(HboneTest, AStreamThatCouldNotStartFailsAtOnce) {
    serve(kServer);
    run([&]() -> asio::awaitable<void> {
        auto conn = co_await dialer(kClient)(key_);
        EXPECT_TRUE(conn);
        if (!conn)
            co_return;
        // The server's GOAWAY (a drain) reaches the client: no stream may start any more.
        co_await until([&] { return !server_conns_.empty(); });
        EXPECT_EQ(server_conns_.size(), 1u);
        if (!server_conns_.empty())
            server_conns_[0]->drain();
        asio::steady_timer wait(io_);
        wait.expires_after(50ms);
        co_await wait.async_wait(asio::use_awaitable);
        const auto started = std::chrono::steady_clock::now();
        auto st = co_await (*conn)->open_stream(request_);
        EXPECT_FALSE(st);
        if (!st) {
            EXPECT_EQ(st.error().error, Error::ConnectionLost) << st.error().detail;
        }
        EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::seconds(1));
        EXPECT_EQ((*conn)->active_streams(), 0u);
        (*conn)->close();
    });
}

// A pod that leaves the node takes its TLS contexts and certificate with it: nothing of its
// key stays in memory (and the certificate views no longer list it).
TEST_F(HboneTest, ForgettingAnIdentityDropsItsContextsAndCertificate) {
    ASSERT_TRUE(contexts_.server(kServer));
    ASSERT_TRUE(contexts_.client(kClient));
    EXPECT_EQ(contexts_.size(), 2u);
    EXPECT_EQ(certs_->certificates().size(), 2u);
    contexts_.forget(kServer);
    EXPECT_EQ(contexts_.size(), 1u);
    ASSERT_EQ(certs_->certificates().size(), 1u);
    EXPECT_EQ(certs_->certificates()[0]->identity, kClient);
    // A connection that races the removal builds nothing for it again.
    EXPECT_FALSE(contexts_.server(kServer));
    EXPECT_EQ(contexts_.size(), 1u);
    EXPECT_EQ(certs_->certificates().size(), 1u);
}

TEST_F(HboneTest, PoolReusesOneConnectionPerKey) {
    serve(kServer);
    Pool pool(io_.get_executor(), dialer(kClient));
    run([&]() -> asio::awaitable<void> {
        for (int i = 0; i < 3; ++i) {
            auto st = co_await pool.open(key_, request_);
            EXPECT_TRUE(st);
            if (st) {
                std::string got = co_await round_trip(**st, "ping");
                EXPECT_EQ(got, "ping");
            }
        }
        EXPECT_EQ(pool.connections(), 1u);
        // Another source identity never shares the connection.
        PoolKey other_key{Identity{"cluster.local", "tenant-b", "x"}, kServer, "a"};
        auto other = co_await pool.open(other_key, request_);
        EXPECT_TRUE(other);
        EXPECT_EQ(pool.connections(), 2u);
    });
    EXPECT_EQ(dials_, 2);
}

// Streams an app opens all at once share the dial in progress instead of each dialling: 150 at
// once make two connections (100 streams each at most), and a dial that fails fails them all
// with one attempt.
TEST_F(HboneTest, ConcurrentOpensShareTheDialInProgress) {
    serve(kServer);
    Pool pool(io_.get_executor(), dialer(kClient));
    int failing_dials = 0;
    Pool failing(io_.get_executor(), slow_failing_dialer(failing_dials, false));
    std::vector<std::shared_ptr<Stream>> streams;
    std::vector<Error> errors;
    size_t connections = 0;
    run([&]() -> asio::awaitable<void> {
        int done = 0;
        auto open_on = [&](Pool& p) -> asio::awaitable<void> {
            auto st = co_await p.open(key_, request_);
            if (st)
                streams.push_back(*st);
            else
                errors.push_back(st.error().error);
            ++done;
        };
        for (int i = 0; i < 150; ++i)
            asio::co_spawn(io_, open_on(pool), asio::detached);
        for (int i = 0; i < 20; ++i)
            asio::co_spawn(io_, open_on(failing), asio::detached);
        co_await until([&] { return done == 170; });
        connections = pool.connections();
        for (auto& st : streams)
            st->reset();
    });
    EXPECT_EQ(streams.size(), 150u);
    EXPECT_EQ(dials_, 2);
    EXPECT_EQ(connections, 2u);
    EXPECT_EQ(errors, std::vector<Error>(20, Error::ConnectFailed));
    EXPECT_EQ(failing_dials, 1);
}

// A dialer that throws still wakes the opens waiting on its dial, and the key can be dialled
// again: nothing waits for ever on a dial that is gone.
TEST_F(HboneTest, ADialThatThrowsReleasesItsWaiters) {
    int dials = 0;
    Pool pool(io_.get_executor(), slow_failing_dialer(dials, true));
    int thrown = 0, failed = 0;
    for (int round = 0; round < 2; ++round) {
        for (int i = 0; i < 3; ++i) {
            asio::co_spawn(
                io_,
                [&]() -> asio::awaitable<void> {
                    auto st = co_await pool.open(key_, request_);
                    if (!st)
                        ++failed;
                },
                [&](std::exception_ptr e) { thrown += e ? 1 : 0; });
        }
        io_.restart();
        io_.run_for(1s);
    }
    EXPECT_EQ(dials, 2) << "one dial per round";
    EXPECT_EQ(thrown, 2) << "the dialling open gets the exception";
    EXPECT_EQ(failed, 4) << "its waiters get a failure";
}

TEST_F(HboneTest, IdleConnectionsAreClosed) {
    serve(kServer);
    Pool pool(io_.get_executor(), dialer(kClient), 1h);
    run([&]() -> asio::awaitable<void> {
        auto st = co_await pool.open(key_, request_);
        EXPECT_TRUE(st);
        if (st)
            co_await round_trip(**st, "x");
        st = {};
        pool.close_idle(std::chrono::steady_clock::now());
        EXPECT_EQ(pool.connections(), 1u) << "not idle long enough";
        pool.close_idle(std::chrono::steady_clock::now() + 2h);
        EXPECT_EQ(pool.connections(), 0u);
    });
}

TEST_F(HboneTest, ClientRefusesAServerWithTheWrongIdentity) {
    serve(Identity{"cluster.local", "tenant-a", "impostor"});
    Pool pool(io_.get_executor(), dialer(kClient));
    std::optional<Failure> failure = open_failure(pool);
    ASSERT_TRUE(failure);
    EXPECT_EQ(failure->error, Error::PeerRejected) << failure->message();
    EXPECT_NE(failure->detail.find("wrong_identity"), std::string::npos) << failure->detail;
    EXPECT_EQ(pool.connections(), 0u);
}

TEST_F(HboneTest, ServerRefusesAClientFromAnotherCa) {
    serve(kServer);
    // The client's certificate comes from a CA the server does not trust.
    auto foreign_ca = std::make_shared<identity::CertificateAuthority>(
        identity::CertificateAuthority::create("cluster.local"));
    auto foreign =
        std::make_shared<identity::CertManager>(foreign_ca, bundle_, "cluster.local", 1h);
    TlsContexts foreign_contexts(foreign);
    auto ctx = foreign_contexts.client(kClient);
    ASSERT_TRUE(ctx);
    std::optional<Failure> failure;
    run([&]() -> asio::awaitable<void> {
        tcp::socket s(io_);
        co_await s.async_connect(acceptor_.local_endpoint(), asio::use_awaitable);
        auto conn = co_await handshake_client(std::move(s), **ctx, kServer);
        if (!conn) {
            failure = conn.error();
        } else {
            auto st = co_await (*conn)->open_stream(request_);
            if (!st)
                failure = st.error();
        }
        asio::steady_timer t(io_, 100ms);
        co_await t.async_wait(asio::use_awaitable);
    });
    ASSERT_TRUE(failure) << "the server must not serve an unknown CA";
    ASSERT_EQ(server_failures_.size(), 1u);
    EXPECT_EQ(server_failures_[0].error, Error::PeerRejected);
    EXPECT_NE(server_failures_[0].detail.find("unknown_ca"), std::string::npos)
        << server_failures_[0].detail;
}

// TlsSocket::shutdown behind a write that waits for room (the peer reads nothing yet): the
// close_notify leaves after the write's records, not before them and not lost, and shutdown
// returns only once it is on the socket, so the FIN that follows cannot overtake it.
TEST_F(HboneTest, TlsShutdownSendsTheCloseNotifyBehindAWriteThatWaitsForRoom) {
    auto server_ctx = contexts_.server(kServer);
    auto client_ctx = contexts_.client(kClient);
    ASSERT_TRUE(server_ctx && client_ctx);
    std::string payload(4u << 20, '\0');
    for (std::size_t i = 0; i < payload.size(); ++i)
        payload[i] = char('a' + (i * 13 + i / 1000) % 26);
    bool write_done = false, shutdown_done = false, shutdown_done_before_reading = false;
    boost::system::error_code write_ec, shutdown_ec, read_ec;
    std::string got;
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> {
            tcp::socket s = co_await acceptor_.async_accept(asio::use_awaitable);
            TlsSocket tls(std::move(s), **server_ctx);
            if (co_await tls.handshake(TlsSocket::Role::Server))
                co_return;
            asio::co_spawn(
                io_,
                [&]() -> asio::awaitable<void> {
                    co_await tls.write(asio::buffer(payload), write_ec);
                    write_done = true;
                },
                asio::detached);
            asio::steady_timer pause(io_, 100ms);
            co_await pause.async_wait(asio::use_awaitable);
            EXPECT_FALSE(write_done) << "the write did not wait: the buffers took 4 MiB";
            co_await tls.shutdown(shutdown_ec);
            shutdown_done = true;
            boost::system::error_code ec;
            tls.socket().shutdown(tcp::socket::shutdown_send, ec);
            while (!write_done) {
                pause.expires_after(10ms);
                co_await pause.async_wait(asio::use_awaitable);
            }
        },
        asio::detached);
    asio::co_spawn(
        io_,
        [&]() -> asio::awaitable<void> {
            tcp::socket s(io_);
            s.open(tcp::v4());
            s.set_option(asio::socket_base::receive_buffer_size(4096));
            co_await s.async_connect(acceptor_.local_endpoint(), asio::use_awaitable);
            TlsSocket tls(std::move(s), **client_ctx);
            if (co_await tls.handshake(TlsSocket::Role::Client))
                co_return;
            asio::steady_timer pause(io_, 300ms);
            co_await pause.async_wait(asio::use_awaitable);
            shutdown_done_before_reading = shutdown_done;
            std::array<char, 16384> buf;
            for (;;) {
                const size_t n = co_await tls.read_some(asio::buffer(buf), read_ec);
                got.append(buf.data(), n);
                if (read_ec)
                    break;
            }
        },
        asio::detached);
    io_.run_for(10s);
    EXPECT_TRUE(write_done) << write_ec.message();
    EXPECT_TRUE(shutdown_done);
    EXPECT_FALSE(shutdown_done_before_reading) << "shutdown returned with no room for the alert";
    EXPECT_FALSE(write_ec) << write_ec.message();
    EXPECT_FALSE(shutdown_ec) << shutdown_ec.message();
    EXPECT_EQ(read_ec, asio::error::eof) << "the client read " << read_ec.message();
    EXPECT_EQ(got.size(), payload.size());
    EXPECT_TRUE(got == payload) << "bytes differ";
}

// nghttp2's allocator of an HBONE session: a block as large as the outgoing frame buffer is a
// mapping of its own whose pages take memory only once written; small blocks, zeroed blocks and
// resizing keep their contents and meaning.
TEST(SessionMemoryTest, LargeBlocksTakeOnlyThePagesThatWereWritten) {
    const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
    auto resident = [page](void* p, size_t size) {
        std::vector<unsigned char> pages((size + page - 1) / page);
        EXPECT_EQ(::mincore(p, size, pages.data()), 0);
        size_t n = 0;
        for (unsigned char v : pages)
            n += v & 1;
        return n;
    };
    SessionMemory memory;
    nghttp2_mem mem = memory.table();
    const size_t frame_buffer = 16394;  // nghttp2's NGHTTP2_FRAMEBUF_CHUNKLEN
    auto* big = static_cast<char*>(mem.malloc(frame_buffer, mem.mem_user_data));
    ASSERT_NE(big, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(big) % page, 0u) << "a mapping of its own";
    EXPECT_EQ(resident(big, frame_buffer), 0u);
    std::memset(big, 'h', 300);  // a HEADERS frame
    EXPECT_EQ(resident(big, frame_buffer), 1u);

    auto* zeroed = static_cast<unsigned char*>(mem.calloc(4, 4096, mem.mem_user_data));
    ASSERT_NE(zeroed, nullptr);
    EXPECT_EQ(std::count(zeroed, zeroed + 4 * 4096, 0), 4 * 4096);
    auto* small = static_cast<char*>(mem.calloc(3, 100, mem.mem_user_data));
    ASSERT_NE(small, nullptr);
    EXPECT_EQ(std::count(small, small + 300, 0), 300);
    std::memset(small, 's', 300);

    // Resizing a mapped block keeps what it held.
    big = static_cast<char*>(mem.realloc(big, 2 * frame_buffer, mem.mem_user_data));
    ASSERT_NE(big, nullptr);
    EXPECT_EQ(std::count(big, big + 300, 'h'), 300);
    small = static_cast<char*>(mem.realloc(small, 600, mem.mem_user_data));
    ASSERT_NE(small, nullptr);
    EXPECT_EQ(std::count(small, small + 300, 's'), 300);
    mem.free(big, mem.mem_user_data);
    mem.free(zeroed, mem.mem_user_data);
    mem.free(small, mem.mem_user_data);
    mem.free(nullptr, mem.mem_user_data);
}

// hbone::Signal, the streams' wake-up: notify() posts every current waiter (callbacks on their
// executor, coroutines) in the order they came; a wait that starts after it needs the next one.
TEST(SignalTest, NotifyWakesEveryCurrentWaiterOnceInOrder) {
    asio::io_context io;
    Signal s;
    std::vector<int> woke;
    bool coroutine_woke = false;
    s.async_wait(io.get_executor(), [&] { woke.push_back(1); });
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            co_await s.wait();
            coroutine_woke = true;
        },
        asio::detached);
    io.poll();  // the coroutine reaches its wait
    s.async_wait(io.get_executor(), [&] { woke.push_back(2); });
    EXPECT_TRUE(woke.empty());
    EXPECT_FALSE(coroutine_woke);
    s.notify();
    EXPECT_TRUE(woke.empty()) << "notify() runs no waiter itself";
    io.restart();
    io.poll();
    EXPECT_EQ(woke, (std::vector<int>{1, 2}));
    EXPECT_TRUE(coroutine_woke);
    s.async_wait(io.get_executor(), [&] { woke.push_back(3); });
    io.restart();
    io.poll();
    EXPECT_EQ(woke.size(), 2u) << "a wait after notify() waits for the next one";
    s.notify();
    io.restart();
    io.poll();
    EXPECT_EQ(woke, (std::vector<int>{1, 2, 3}));
}

// Waiters still pending when the signal goes are destroyed without running, and what they hold
// is released with them (a stream destroyed with waiters does not keep their relays alive).
TEST(SignalTest, PendingWaitersAreDestroyedWithIt) {
    asio::io_context io;
    auto held = std::make_shared<int>(0);
    bool ran = false;
    {
        Signal s;
        s.async_wait(io.get_executor(), [&ran, held] { ran = true; });
        EXPECT_EQ(held.use_count(), 2);
    }
    EXPECT_EQ(held.use_count(), 1);
    io.poll();
    EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace sluice::ztunnel::hbone
