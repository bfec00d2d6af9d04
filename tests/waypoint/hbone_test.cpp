// The waypoint's HBONE listener (:15008 behind ztunnel), over loopback: a real Gateway with an
// emulator backend, clients with certificates minted from a test CA (ztunnel/identity) that
// open HBONE streams with ztunnel's own HBONE client (Connection Role::Client + open_stream)
// and speak HTTP/1.1 on them. Assertions: what arrives on the stream, the budget per SPIFFE id,
// handshake refusals and their reason metric.
#include <gtest/gtest.h>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include <boost/asio/connect.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/base64.h"
#include "tests/waypoint/h2_client.h"
#include "tests/waypoint/harness.h"
#include "ztunnel/hbone/handshake.h"
#include "ztunnel/hbone/tls.h"

namespace sluice::waypoint::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using identity::Identity;

const Identity kWaypoint{"cluster.local", "ai", "waypoint"};
const Identity kApp{"cluster.local", "rag", "app"};
const Identity kOther{"cluster.local", "batch", "job"};
constexpr const char* kVip = "198.18.0.10:8000";  // the service the client dialled

// The waypoint's signing CA, written to files for --ca-cert/--ca-key.
struct TestCa {
    TempDir dir;
    std::shared_ptr<identity::CertificateAuthority> ca =
        std::make_shared<identity::CertificateAuthority>(
            identity::CertificateAuthority::create("cluster.local"));
    std::string cert = (dir.path / "ca.pem").string();
    std::string key = (dir.path / "ca-key.pem").string();
    TestCa() { ca->write(cert, key); }
};

std::string hboneConfig(const std::string& backend_address, const TestCa& ca,
                        const std::string& extra = "", const std::string& limits = "") {
    return R"(
kind: Waypoint
spec:
  limits: {)" +
           limits +
           R"(}
  hboneListen: 127.0.0.1:0
  identity: )" +
           kWaypoint.uri() + "\n  caCert: " + ca.cert + "\n  caKey: " + ca.key + R"(
  pools: [{name: main, endpoints: [")" +
           backend_address + R"("]}]
---
kind: ModelRoute
metadata: {name: chat}
spec:
  models: ["*"]
  timeout: 5s
  backends: [{pool: main}]
)" + extra;
}

std::string hboneConfig(const Emulator& backend, const TestCa& ca, const std::string& extra = "",
                        const std::string& limits = "") {
    return hboneConfig(backend.address(), ca, extra, limits);
}

// 400 tokens per minute for every SPIFFE id.
constexpr const char* kSpiffeBudget = R"(---
kind: TokenBudget
metadata: {name: tenants}
spec:
  tenantFrom: [{spiffe: {}}]
  limits:
    - {tenant: "*", tokensPerMinute: 400, requestsPerMinute: 100}
)";

std::string chatBody(bool stream, int max_tokens = 5) {
    json body{{"model", "gpt-4o"},
              {"max_tokens", max_tokens},
              {"messages", {{{"role", "user"}, {"content", "Say hello to the mesh"}}}}};
    if (stream)
        body["stream"] = true;
    return body.dump();
}

std::string rawRequest(const std::string& body) {
    return "POST /v1/chat/completions HTTP/1.1\r\nHost: llm\r\nContent-Type: application/json\r\n"
           "Connection: close\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + body;
}

Reply parseReply(const std::string& raw) {
    http::response_parser<http::string_body> parser;
    parser.eager(true);
    parser.body_limit(64 << 20);
    error_code ec;
    std::size_t offset = 0;
    while (!parser.is_done() && offset < raw.size()) {
        const std::size_t n =
            parser.put(asio::buffer(raw.data() + offset, raw.size() - offset), ec);
        if (ec || n == 0)
            break;
        offset += n;
    }
    return parser.is_done() ? replyOf(parser.get()) : Reply{};
}

// A workload behind ztunnel: its own certificate (from `ca`, or given), ztunnel's HBONE client.
class HboneClient {
  public:
    HboneClient(std::shared_ptr<identity::CertificateAuthority> ca, const Identity& as,
                std::shared_ptr<identity::CertificateAuthority> trusted = nullptr)
        : bundle_(std::make_shared<identity::TrustBundle>()),
          certs_(std::make_shared<identity::CertManager>(ca, bundle_, as.trust_domain, 1h)) {
        bundle_->add((trusted ? trusted : ca)->certificate());
        auto cert = certs_->certificate(as);
        if (!cert)
            throw std::runtime_error(cert.error());
        auto ctx = hbone::make_context(**cert, *certs_, false);
        if (!ctx)
            throw std::runtime_error(ctx.error());
        ctx_ = *ctx;
    }
    // Presents `cert` but verifies the server as a workload of `trust_domain` under `root`.
    HboneClient(const identity::WorkloadCert& cert, identity::CertificateAuthority& root)
        : bundle_(std::make_shared<identity::TrustBundle>()) {
        bundle_->add(root.certificate());
        certs_ = std::make_shared<identity::CertManager>(nullptr, bundle_, "cluster.local", 1h);
        auto ctx = hbone::make_context(cert, *certs_, false);
        if (!ctx)
            throw std::runtime_error(ctx.error());
        ctx_ = *ctx;
    }
    ~HboneClient() {
        if (conn_)
            conn_->close();
        io_.run_for(100ms);  // lets the closed connection's loops end
    }

    // TLS + HTTP/2 to the waypoint; false when the handshake or the first stream failed.
    bool connect(unsigned short port) {
        run([&]() -> awaitable<void> {
            tcp::socket s(io_);
            error_code ec;
            co_await s.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port),
                                     noThrow(ec));
            if (ec)
                co_return;
            auto conn = co_await hbone::handshake_client(std::move(s), *ctx_, kWaypoint);
            if (conn)
                conn_ = *conn;
            else
                failure_ = conn.error().message();
        });
        return conn_ != nullptr;
    }

    // One CONNECT stream to `authority`: sends `bytes`, then reads until the waypoint ends the
    // stream (lastStreamReset() tells how). `on_read` sees each read as it arrives.
    std::optional<std::string> exchange(const std::string& bytes,
                                        std::function<void(std::string_view)> on_read = {},
                                        const std::string& authority = kVip) {
        std::optional<std::string> got;
        run([&]() -> awaitable<void> {
            // A named request: g++ 12 destroys a braced temporary passed by value to a
            // coroutine twice.
            const hbone::ConnectRequest request{.authority = authority};
            auto st = co_await conn_->open_stream(request);
            if (!st) {
                failure_ = st.error().message();
                status_ = st.error().status;
                co_return;
            }
            const bool written = co_await (*st)->write(asio::buffer(bytes));
            EXPECT_TRUE(written);
            std::string out;
            std::array<char, 16384> buf;
            for (;;) {
                const std::size_t n = co_await (*st)->read(asio::buffer(buf));
                if (n == 0)
                    break;
                out.append(buf.data(), n);
                if (on_read)
                    on_read({buf.data(), n});
            }
            last_stream_reset_ = (*st)->was_reset();
            got = std::move(out);
        });
        return got;
    }
    // Sends `bytes`, waits for the first response bytes, then resets the stream (RST_STREAM).
    bool abandon(const std::string& bytes) {
        bool started = false;
        run([&]() -> awaitable<void> {
            auto st = co_await answered(bytes);
            started = st != nullptr;
            if (st)
                st->reset();
        });
        io_.run_for(50ms);  // the RST_STREAM goes out
        return started;
    }
    // h2c with prior knowledge inside one CONNECT stream (opened by the first call, kept for
    // the next): runs `h2` until its streams ended.
    bool h2(H2Client& h2, std::function<void(H2Client&)> on_event = {}) {
        bool ok = false;
        run([&]() -> awaitable<void> {
            if (!h2_stream_) {
                const hbone::ConnectRequest request{.authority = kVip};
                auto st = co_await conn_->open_stream(request);
                if (!st) {
                    failure_ = st.error().message();
                    co_return;
                }
                h2_stream_ = *st;
            }
            // Named: g++ 12 mishandles temporaries passed by value to a coroutine.
            auto stream = h2_stream_;
            const H2Client::Read read = [stream](asio::mutable_buffer b) -> awaitable<std::size_t> {
                co_return co_await stream->read(b);
            };
            const H2Client::Write write = [stream](std::string d) -> awaitable<bool> {
                co_return co_await stream->write(asio::buffer(d));
            };
            co_await h2.run(read, write, on_event);
            ok = true;
        });
        return ok;
    }
    // HTTP/1.1 `upgrade` (a request offering h2c) on a new CONNECT stream: its answer up to the
    // end of the head, and once that is a 101, `h2` (told of the upgrade) runs on the stream
    // until its streams ended.
    std::string h2Upgrade(const std::string& upgrade, H2Client& h2) {
        std::string head;
        run([&]() -> awaitable<void> {
            const hbone::ConnectRequest request{.authority = kVip};
            auto st = co_await conn_->open_stream(request);
            if (!st) {
                failure_ = st.error().message();
                co_return;
            }
            auto stream = *st;
            co_await stream->write(asio::buffer(upgrade));
            std::string in;
            std::array<char, 16384> buf;
            while (in.find("\r\n\r\n") == std::string::npos) {
                const std::size_t n = co_await stream->read(asio::buffer(buf));
                if (n == 0)
                    co_return;
                in.append(buf.data(), n);
            }
            const auto end = in.find("\r\n\r\n") + 4;
            head = in.substr(0, end);
            if (!head.starts_with("HTTP/1.1 101 "))
                co_return;
            // The frames that came with the 101 first.
            auto early = std::make_shared<std::string>(in.substr(end));
            const H2Client::Read read = [stream,
                                         early](asio::mutable_buffer b) -> awaitable<std::size_t> {
                if (early->empty())
                    co_return co_await stream->read(b);
                const std::size_t n = asio::buffer_copy(b, asio::buffer(*early));
                early->erase(0, n);
                co_return n;
            };
            const H2Client::Write write = [stream](std::string d) -> awaitable<bool> {
                co_return co_await stream->write(asio::buffer(d));
            };
            co_await h2.run(read, write);
        });
        return head;
    }
    // Sends `bytes`, reads the first response bytes, then reads no more: whether the waypoint
    // reset the stream within `within`, and how long after the first bytes it did.
    std::pair<bool, std::chrono::steady_clock::duration> stall(const std::string& bytes,
                                                               std::chrono::seconds within) {
        bool reset = false;
        std::chrono::steady_clock::duration after{};
        run(
            [&]() -> awaitable<void> {
                auto st = co_await answered(bytes);
                if (!st)
                    co_return;
                const auto first = std::chrono::steady_clock::now();
                asio::steady_timer tick(io_);
                while (!st->is_closed() && std::chrono::steady_clock::now() - first < within) {
                    tick.expires_after(50ms);
                    error_code ec;
                    co_await tick.async_wait(noThrow(ec));
                }
                reset = st->was_reset();
                after = std::chrono::steady_clock::now() - first;
            },
            within + 5s);
        return {reset, after};
    }
    Reply chat(const std::string& body) {
        auto raw = exchange(rawRequest(body));
        return raw ? parseReply(*raw) : Reply{};
    }
    const std::string& failure() const { return failure_; }
    // Whether the waypoint reset the last exchange()'s stream instead of ending it.
    bool lastStreamReset() const { return last_stream_reset_; }
    int status() const { return status_; }

  private:
    // A new stream that got `bytes` and whose first response bytes arrived (null otherwise).
    awaitable<std::shared_ptr<hbone::Stream>> answered(const std::string& bytes) {
        const hbone::ConnectRequest request{.authority = kVip};
        auto st = co_await conn_->open_stream(request);
        if (!st)
            co_return nullptr;
        co_await (*st)->write(asio::buffer(bytes));
        std::array<char, 4096> buf;
        if (co_await (*st)->read(asio::buffer(buf)) == 0)
            co_return nullptr;
        co_return *st;
    }
    template <class Fn>
    void run(Fn fn, std::chrono::seconds limit = 10s) {
        bool done = false;
        asio::co_spawn(
            io_,
            [&]() -> awaitable<void> {
                co_await fn();
                done = true;
            },
            asio::detached);
        const auto until = std::chrono::steady_clock::now() + limit;
        while (!done && std::chrono::steady_clock::now() < until)
            io_.run_for(50ms);
        io_.restart();
        ASSERT_TRUE(done) << "HBONE client did not finish within " << limit.count() << " s";
    }

    asio::io_context io_;
    std::shared_ptr<identity::TrustBundle> bundle_;
    std::shared_ptr<identity::CertManager> certs_;
    std::shared_ptr<asio::ssl::context> ctx_;
    std::shared_ptr<hbone::Connection> conn_;
    std::shared_ptr<hbone::Stream> h2_stream_;
    std::string failure_;
    int status_ = 0;
    bool last_stream_reset_ = false;
};

std::string metricsWhen(Gateway& gw, const std::string& name,
                        const std::map<std::string, std::string>& labels, double at_least) {
    std::string text;
    for (int i = 0; i < 200; ++i) {
        text = request(gw.metricsPort(), "GET", "/metrics").body;
        if (metricValue(text, name, labels) >= at_least)
            break;
        std::this_thread::sleep_for(10ms);
    }
    return text;
}

TEST(WaypointHbone, ChatOverHboneIsServedWithThePeerIdentity) {
    Emulator backend("a");
    TestCa ca;
    LogCapture log;
    auto gw = startGateway(hboneConfig(backend, ca), true);
    ASSERT_NE(gw->hbonePort(), 0);
    HboneClient client(ca.ca, kApp);
    ASSERT_TRUE(client.connect(gw->hbonePort())) << client.failure();
    const auto reply = client.chat(chatBody(false));
    ASSERT_EQ(reply.status, 200u) << reply.body;
    const auto body = json::parse(reply.body);
    EXPECT_EQ(body["object"], "chat.completion");
    EXPECT_EQ(body["usage"]["completion_tokens"], 5);
    // Two requests on one stream (keep-alive) and a second stream on the same connection.
    const std::string keep_alive =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: llm\r\n"
        "Content-Length: " +
        std::to_string(chatBody(false).size()) + "\r\n\r\n" + chatBody(false);
    auto two = client.exchange(keep_alive + rawRequest(chatBody(false)));
    ASSERT_TRUE(two) << client.failure();
    EXPECT_FALSE(client.lastStreamReset()) << "a whole response ends the stream";
    std::size_t ok = 0;
    for (std::size_t at = 0; (at = two->find("HTTP/1.1 200 OK", at)) != std::string::npos; ++at)
        ++ok;
    EXPECT_EQ(ok, 2u) << *two;

    const auto metrics =
        metricsWhen(*gw, "istio_requests_total", {{"source_principal", kApp.uri()}}, 3);
    EXPECT_EQ(metricValue(metrics, "istio_requests_total",
                          {{"source_principal", kApp.uri()}, {"response_code", "200"}}),
              3);
    EXPECT_EQ(metricValue(metrics, "sluice_hbone_streams_total", {{"response_code", "200"}}), 2);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 3);
    gw->stop();
    const auto entries = accessEntries(log.text());
    for (const auto& entry : entries) {
        EXPECT_EQ(entry["peer"], kApp.uri());
        EXPECT_EQ(entry["authority"], kVip);
        EXPECT_EQ(entry["status"], 200);
    }
    EXPECT_EQ(entries.size(), 3u);
}

// A response its backend cut mid-body resets the CONNECT stream after the bytes that came (the
// client's ztunnel sees a reset, not an end it would take for a whole response).
TEST(WaypointHbone, AResponseTheBackendCutResetsTheStream) {
    RawBackend backend("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", 1);
    TestCa ca;
    auto gw = startGateway(hboneConfig(backend.address(), ca));
    HboneClient client(ca.ca, kApp);
    ASSERT_TRUE(client.connect(gw->hbonePort())) << client.failure();
    const auto got = client.exchange(rawRequest(chatBody(false)));
    ASSERT_TRUE(got) << client.failure();
    EXPECT_TRUE(got->starts_with("HTTP/1.1 200 OK\r\n")) << *got;
    EXPECT_TRUE(got->ends_with("\r\n\r\n5\r\nhello\r\n")) << *got;
    EXPECT_TRUE(client.lastStreamReset());
}

TEST(WaypointHbone, BudgetByPeerSpiffeIdentity) {
    Emulator backend("a");
    TestCa ca;
    auto gw = startGateway(hboneConfig(backend, ca, kSpiffeBudget));
    backend.configure(R"({"completion_tokens": 150})");
    const std::string body = chatBody(false, 150);
    HboneClient app(ca.ca, kApp);
    ASSERT_TRUE(app.connect(gw->hbonePort())) << app.failure();
    EXPECT_EQ(app.chat(body).status, 200u);
    EXPECT_EQ(app.chat(body).status, 200u);
    auto third = app.chat(body);
    ASSERT_EQ(third.status, 429u) << third.body;
    EXPECT_EQ(json::parse(third.body)["error"]["code"], "rate_limit_exceeded");
    EXPECT_EQ(third.headers["x-ratelimit-limit-tokens"], "400");

    HboneClient other(ca.ca, kOther);
    ASSERT_TRUE(other.connect(gw->hbonePort())) << other.failure();
    EXPECT_EQ(other.chat(body).status, 200u);
    const auto metrics =
        metricsWhen(*gw, "istio_requests_total", {{"source_principal", kOther.uri()}}, 1);
    EXPECT_EQ(metricValue(metrics, "sluice_requests_rejected_total",
                          {{"reason", "tokens per min (TPM)"}, {"tenant", kApp.uri()}}),
              1);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 3);
}

TEST(WaypointHbone, UnknownCaAndWrongTrustDomainAreRefusedAtTheHandshake) {
    Emulator backend("a");
    TestCa ca;
    auto gw = startGateway(hboneConfig(backend, ca));
    {
        // A certificate from a CA the waypoint does not trust (the client trusts the waypoint).
        auto foreign = std::make_shared<identity::CertificateAuthority>(
            identity::CertificateAuthority::create("cluster.local"));
        HboneClient client(foreign, kApp, ca.ca);
        if (client.connect(gw->hbonePort())) {
            EXPECT_FALSE(client.exchange(rawRequest(chatBody(false))));
        }
    }
    {
        // Signed by the right CA, but for another trust domain.
        auto cert = ca.ca->mint({"evil.local", "rag", "app"});
        ASSERT_TRUE(cert);
        HboneClient client(*cert, *ca.ca);
        if (client.connect(gw->hbonePort())) {
            EXPECT_FALSE(client.exchange(rawRequest(chatBody(false))));
        }
    }
    const auto metrics = metricsWhen(*gw, "sluice_tls_handshake_failures_total",
                                     {{"reason", "wrong_trust_domain"}}, 1);
    EXPECT_EQ(
        metricValue(metrics, "sluice_tls_handshake_failures_total", {{"reason", "unknown_ca"}}), 1);
    EXPECT_EQ(metricValue(metrics, "sluice_tls_handshake_failures_total",
                          {{"reason", "wrong_trust_domain"}}),
              1);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 0);
}

TEST(WaypointHbone, SseIsRelayedEventByEventAndDisconnectCancels) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 400, "completion_tokens": 4})");
    TestCa ca;
    auto gw = startGateway(hboneConfig(backend, ca));
    HboneClient client(ca.ca, kApp);
    ASSERT_TRUE(client.connect(gw->hbonePort())) << client.failure();
    const auto start = std::chrono::steady_clock::now();
    std::optional<std::chrono::steady_clock::duration> first_token;
    std::string seen;
    auto raw = client.exchange(rawRequest(chatBody(true, 4)), [&](std::string_view got) {
        seen.append(got);
        if (!first_token && seen.find("tok0") != std::string::npos) {
            first_token = std::chrono::steady_clock::now() - start;
            EXPECT_EQ(seen.find("tok1"), std::string::npos);  // not batched with the next one
        }
    });
    ASSERT_TRUE(raw);
    const auto total = std::chrono::steady_clock::now() - start;
    ASSERT_TRUE(first_token);
    EXPECT_LT(*first_token, 300ms);  // the first event did not wait for the ~1.2 s rest
    EXPECT_GE(total, 1000ms);
    auto reply = parseReply(*raw);
    EXPECT_EQ(reply.status, 200u);
    EXPECT_EQ(reply.headers["content-type"].rfind("text/event-stream", 0), 0u);
    EXPECT_NE(reply.body.find("data: [DONE]"), std::string::npos);

    // A client that resets its stream mid-response: the backend sees its stream aborted.
    backend.configure(R"({"token_delay_ms": 100, "completion_tokens": 50})");
    HboneClient leaver(ca.ca, kApp);
    ASSERT_TRUE(leaver.connect(gw->hbonePort()));
    EXPECT_TRUE(leaver.abandon(rawRequest(chatBody(true, 50))));
    EXPECT_EQ(backend.streamsAborted(), 1);
}

// Runs the independent HBONE client (python3-h2 + ssl, tests/waypoint/hbone_client.py) as
// `cert` and returns its JSON report.
json pythonHbone(unsigned short port, const TestCa& ca, const identity::WorkloadCert& cert,
                 const std::string& method) {
    TempDir dir;
    auto write = [&](const std::string& name, const std::string& text) {
        std::ofstream(dir.path / name) << text;
        return (dir.path / name).string();
    };
    const std::string cmd = "/usr/bin/python3 " SLUICE_HBONE_CLIENT " --port " +
                            std::to_string(port) + " --ca " + ca.cert + " --cert " +
                            write("cert.pem", cert.cert_pem + cert.chain_pem) + " --key " +
                            write("key.pem", cert.key_pem) + " --authority " + kVip + " --method " +
                            method + " --request " + write("request", rawRequest(chatBody(false)));
    const auto [rc, out] = runCommand(cmd);
    EXPECT_EQ(rc, 0) << out;
    return json::parse(out, nullptr, false);
}

// Interop: an independent HBONE client; a request other than CONNECT is answered 400 (§4).
TEST(WaypointHbone, PythonH2ClientIsServedAndNonConnectIsRefused) {
    Emulator backend("a");
    TestCa ca;
    auto gw = startGateway(hboneConfig(backend, ca));
    auto cert = ca.ca->mint(kApp);
    ASSERT_TRUE(cert);
    const auto result = pythonHbone(gw->hbonePort(), ca, *cert, "CONNECT");
    ASSERT_TRUE(result.is_object());
    EXPECT_EQ(result["tls_version"], "TLSv1.3");
    EXPECT_EQ(result["alpn"], "h2");
    EXPECT_EQ(result["server_uris"], json::array({kWaypoint.uri()}));
    EXPECT_EQ(result["status"], 200);
    auto reply = parseReply(result["body"].get<std::string>());
    ASSERT_EQ(reply.status, 200u) << result["body"];
    EXPECT_EQ(json::parse(reply.body)["usage"]["completion_tokens"], 5);

    const auto refused = pythonHbone(gw->hbonePort(), ca, *cert, "GET");
    ASSERT_TRUE(refused.is_object());
    EXPECT_EQ(refused["status"], 400);
    EXPECT_EQ(refused["body"], "");
    const auto metrics =
        metricsWhen(*gw, "sluice_hbone_streams_total", {{"response_code", "400"}}, 1);
    EXPECT_EQ(metricValue(metrics, "istio_requests_total", {{"source_principal", kApp.uri()}}), 1);
    EXPECT_EQ(metricValue(metrics, "sluice_hbone_streams_total", {{"response_code", "400"}}), 1);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 1);
}

// HTTP/2 with prior knowledge inside a CONNECT stream (a gRPC-style or h2 OpenAI client behind
// ztunnel): served as HTTP/2, with the peer's SPIFFE id for the budget, metrics and access log,
// and the CONNECT authority in the log.
TEST(WaypointHbone, H2InsideConnectIsServedWithThePeerIdentity) {
    Emulator backend("a");
    TestCa ca;
    LogCapture log;
    auto gw = startGateway(hboneConfig(backend, ca, kSpiffeBudget), true);
    backend.configure(R"({"completion_tokens": 150})");
    HboneClient app(ca.ca, kApp);
    ASSERT_TRUE(app.connect(gw->hbonePort())) << app.failure();
    H2Client h2;
    std::vector<int32_t> ids;
    for (int i = 0; i < 3; ++i) {  // one after the other on the same HTTP/2 connection
        ids.push_back(h2.submit("POST", "/v1/chat/completions", chatBody(false, 150)));
        ASSERT_TRUE(app.h2(h2)) << app.failure();
    }
    const auto& first = h2.streams[ids[0]];
    ASSERT_EQ(first.status, 200u) << first.body;
    EXPECT_EQ(json::parse(first.body)["usage"]["completion_tokens"], 150);
    EXPECT_EQ(first.headers.at("x-ratelimit-limit-tokens"), "400");
    EXPECT_EQ(h2.streams[ids[1]].status, 200u);
    const auto& over = h2.streams[ids[2]];
    ASSERT_EQ(over.status, 429u) << over.body;
    EXPECT_EQ(json::parse(over.body)["error"]["code"], "rate_limit_exceeded");
    EXPECT_EQ(over.headers.at("x-ratelimit-limit-tokens"), "400");
    EXPECT_FALSE(over.headers.at("retry-after").empty());
    EXPECT_EQ(over.headers.count("connection"), 0u);

    const auto metrics =
        metricsWhen(*gw, "istio_requests_total",
                    {{"source_principal", kApp.uri()}, {"response_code", "429"}}, 1);
    EXPECT_EQ(metricValue(metrics, "istio_requests_total",
                          {{"source_principal", kApp.uri()}, {"response_code", "200"}}),
              2);
    EXPECT_EQ(metricValue(metrics, "sluice_requests_rejected_total",
                          {{"reason", "tokens per min (TPM)"}, {"tenant", kApp.uri()}}),
              1);
    EXPECT_EQ(metricValue(metrics, "sluice_hbone_streams_total", {{"response_code", "200"}}), 1);
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2);
    gw->stop();
    std::vector<int> statuses;
    for (const auto& entry : accessEntries(log.text())) {
        EXPECT_EQ(entry["peer"], kApp.uri());
        EXPECT_EQ(entry["authority"], kVip);
        statuses.push_back(entry["status"].get<int>());
    }
    EXPECT_EQ(statuses, (std::vector<int>{200, 200, 429}));
}

// `Upgrade: h2c` inside a CONNECT stream: the upgrading request is stream 1 and the next one
// stream 3, both with the peer's identity (budget, access log) as with prior knowledge.
TEST(WaypointHbone, H2cUpgradeInsideConnectKeepsThePeerIdentity) {
    Emulator backend("a");
    TestCa ca;
    LogCapture log;
    auto gw = startGateway(hboneConfig(backend, ca, kSpiffeBudget), true);
    HboneClient app(ca.ca, kApp);
    ASSERT_TRUE(app.connect(gw->hbonePort())) << app.failure();
    // curl's HTTP2-Settings (MAX_CONCURRENT_STREAMS 100, INITIAL_WINDOW_SIZE 32 MiB, no push).
    const std::string settings = "AAMAAABkAAQCAAAAAAIAAAAA";
    H2Client h2;
    h2.upgraded(decodeBase64(settings, Base64Alphabet::Url).value());
    const int32_t chat = h2.submit("POST", "/v1/chat/completions", chatBody(false, 150));
    const std::string head = app.h2Upgrade(
        "GET /v1/models HTTP/1.1\r\nHost: waypoint\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        "Upgrade: h2c\r\nHTTP2-Settings: " +
            settings + "\r\n\r\n",
        h2);
    ASSERT_EQ(head,
              "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        << app.failure();
    ASSERT_EQ(h2.streams[1].status, 200u) << h2.streams[1].body;
    EXPECT_EQ(json::parse(h2.streams[1].body)["object"], "list");
    ASSERT_EQ(chat, 3);
    ASSERT_EQ(h2.streams[chat].status, 200u) << h2.streams[chat].body;
    EXPECT_EQ(h2.streams[chat].headers.at("x-ratelimit-limit-tokens"), "400");
    gw->stop();
    std::vector<std::string> paths;
    for (const auto& entry : accessEntries(log.text())) {
        EXPECT_EQ(entry["peer"], kApp.uri());
        EXPECT_EQ(entry["authority"], kVip);
        paths.push_back(entry["path"]);
    }
    EXPECT_EQ(paths, (std::vector<std::string>{"/v1/models", "/v1/chat/completions"}));
}

TEST(WaypointHbone, StopSendsGoawayToH2InsideConnectAndTheStreamInFlightFinishes) {
    Emulator backend("slow");
    backend.configure(R"({"token_delay_ms": 200, "completion_tokens": 5})");
    TestCa ca;
    auto gw = startGateway(hboneConfig(backend, ca, "", "drainTimeout: 5s"));
    HboneClient app(ca.ca, kApp);
    ASSERT_TRUE(app.connect(gw->hbonePort())) << app.failure();
    H2Client h2;
    const int32_t id = h2.submit("POST", "/v1/chat/completions", chatBody(true, 5));
    StopWhenAnswered stop(id, [&] { gw->stop(); });
    ASSERT_TRUE(app.h2(h2, std::ref(stop))) << app.failure();
    expectDrained(h2, id, stop.took());
}

// A client that stops reading its response: the waypoint's writes wait on the stream's flow
// control, and after the idle timeout the stream is reset and the upstream request abandoned.
TEST(WaypointHbone, AStalledClientStreamIsResetAfterTheIdleTimeout) {
    Emulator backend("a");
    backend.configure(R"({"completion_tokens": 200000})");  // ~25 MB of events, no delay
    TestCa ca;
    auto gw = startGateway(hboneConfig(backend, ca, "", "idleTimeout: 1s"));
    HboneClient app(ca.ca, kApp);
    ASSERT_TRUE(app.connect(gw->hbonePort())) << app.failure();
    // Filling ztunnel's 4 MiB stream window takes the emulator a few seconds on a busy machine;
    // then the writes wait, and 1 s later the stream is reset (without the bound: never).
    const auto [reset, after] = app.stall(rawRequest(chatBody(true, 200000)), 20s);
    EXPECT_TRUE(reset) << "the stream was not reset within 20 s";
    EXPECT_GE(after, 1s);
    EXPECT_EQ(backend.streamsAborted(), 1);
}

}  // namespace
}  // namespace sluice::waypoint::test
