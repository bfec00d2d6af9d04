// The gateway's TLS listener (docs/waypoint.md, "TLS"): HTTP/2 by ALPN and HTTP/1.1 without it,
// as curl and a hand-made OpenSSL client see them; no h2c over TLS; handshakes that fail or
// never come; a renewed certificate served to new connections while old ones keep going; a
// broken renewal that keeps the certificate in use; files that cannot make a context.
#include <gtest/gtest.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <boost/asio/ssl.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/waypoint/harness.h"

namespace sluice::waypoint::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace ssl = asio::ssl;

std::string tlsConfig(const Emulator& backend, const std::string& cert, const std::string& key,
                      const std::string& limits = "{}") {
    return R"(
apiVersion: sluice.dev/v1alpha1
kind: Waypoint
metadata: {name: tls}
spec:
  tls: {listen: "127.0.0.1:0", certificateFile: ")" +
           cert + R"(", privateKeyFile: ")" + key + R"(", reloadInterval: 100ms}
  limits: )" +
           limits +
           R"(
  pools: [{name: main, endpoints: [")" +
           backend.address() + R"("]}]
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {name: all}
spec: {models: ["*"], backends: [{pool: main}]}
)";
}

// A gateway whose TLS listener serves a certificate for CN "sluice-gateway" from the test CA,
// with one emulator behind it.
struct TlsGateway {
    explicit TlsGateway(const std::string& limits = "{}") {
        pki.issue("server", "sluice-gateway");
        const auto dir = pki.dir().string();
        gw = startGateway(tlsConfig(backend, dir + "/server.pem", dir + "/server.key", limits));
    }
    TestPki pki;
    Emulator backend{"a"};
    std::unique_ptr<Gateway> gw;
};

std::string chat(bool stream) {
    return json{{"model", "gpt-4o"},
                {"max_tokens", 3},
                {"stream", stream},
                {"messages", {{{"role", "user"}, {"content", "Say hello to the mesh"}}}}}
        .dump();
}

std::string metricsOf(Gateway& gw) {
    return request(gw.metricsPort(), "GET", "/metrics").body;
}

// A TLS client connection made with OpenSSL through Asio, verifying the server against the
// test CA; every step bounded in time.
class TlsClient {
  public:
    // With `cert` and `key` (PEM files), presents that client certificate; with
    // `receive_buffer`, the socket's receive buffer is that small (a slow reader's window).
    TlsClient(unsigned short port, const std::string& ca, const std::string& alpn = "",
              const std::string& cert = "", const std::string& key = "", int receive_buffer = 0)
        : ctx_(ssl::context::tls_client), stream_(io_, ctx_) {
        ctx_.load_verify_file(ca);
        if (!cert.empty() &&  // on the connection: it took the context's settings when made
            (SSL_use_certificate_chain_file(stream_.native_handle(), cert.c_str()) != 1 ||
             SSL_use_PrivateKey_file(stream_.native_handle(), key.c_str(), SSL_FILETYPE_PEM) != 1))
            throw std::runtime_error("client certificate " + cert + " cannot be used");
        stream_.set_verify_mode(ssl::verify_peer);
        if (!alpn.empty()) {
            std::string wire(1, char(alpn.size()));
            wire += alpn;
            SSL_set_alpn_protos(stream_.native_handle(),
                                reinterpret_cast<const unsigned char*>(wire.data()),
                                unsigned(wire.size()));
        }
        stream_.next_layer().open(tcp::v4());
        if (receive_buffer > 0)
            stream_.next_layer().set_option(asio::socket_base::receive_buffer_size(receive_buffer));
        stream_.next_layer().connect({asio::ip::make_address("127.0.0.1"), port});
        error_code ec = asio::error::timed_out;
        stream_.async_handshake(ssl::stream_base::client, [&ec](error_code e) { ec = e; });
        io_.run_for(5s);
        if (ec)
            throw std::runtime_error("TLS handshake: " + ec.message());
    }

    // The server certificate's subject CN as this connection got it.
    std::string peerCommonName() {
        X509* cert = SSL_get1_peer_certificate(stream_.native_handle());
        if (cert == nullptr)
            return "";
        char cn[256] = {};
        X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
        X509_free(cert);
        return cn;
    }
    std::string alpn() {
        const unsigned char* p = nullptr;
        unsigned int n = 0;
        SSL_get0_alpn_selected(stream_.native_handle(), &p, &n);
        return {reinterpret_cast<const char*>(p), n};
    }

    // Writes `bytes`, then reads until `done(received)` or the end of the connection (5 s at
    // most).
    std::string exchange(const std::string& bytes,
                         const std::function<bool(const std::string&)>& done = {}) {
        bool written = false;
        asio::async_write(stream_, asio::buffer(bytes),
                          [&written](error_code, std::size_t) { written = true; });
        std::string received;
        std::array<char, 4096> buf;
        bool finished = false;
        std::function<void(error_code, std::size_t)> on_read = [&](error_code ec, std::size_t n) {
            received.append(buf.data(), n);
            if (!ec && !(done && done(received)))
                stream_.async_read_some(asio::buffer(buf), on_read);
            else
                finished = true;
        };
        stream_.async_read_some(asio::buffer(buf), on_read);
        io_.restart();
        const auto until = std::chrono::steady_clock::now() + 5s;
        while (!(finished && written) && io_.run_one_until(until) > 0) {
        }
        if (!(finished && written)) {  // nothing may be left pending on this frame's locals
            error_code ignored;
            stream_.lowest_layer().cancel(ignored);
            io_.restart();
            io_.run_for(1s);
        }
        return received;
    }

    // Writes `bytes`, lets `pause` pass (the buffers on the way fill up), then reads until the
    // connection ends: what arrived, and why it ended.
    std::pair<std::string, std::string> readToEnd(const std::string& bytes,
                                                  std::chrono::milliseconds pause) {
        asio::write(stream_, asio::buffer(bytes));
        std::this_thread::sleep_for(pause);
        return readUntilEnd(10s);
    }

    // Reads, sending nothing, until the connection ends: why it ended (an alert's text).
    std::string endReason() { return readUntilEnd(5s).second; }

    // GET `target` on this keep-alive connection; the whole response (it has a Content-Length).
    std::string get(const std::string& target) {
        return exchange("GET " + target + " HTTP/1.1\r\nHost: localhost\r\n\r\n",
                        [](const std::string& r) {
                            const auto head_end = r.find("\r\n\r\n");
                            const auto cl = r.find("Content-Length: ");
                            if (head_end == std::string::npos || cl == std::string::npos)
                                return false;
                            return r.size() >= head_end + 4 + std::stoul(r.substr(cl + 16));
                        });
    }

  private:
    // What arrives until the connection ends, and why it ended ("still open" after `within`).
    std::pair<std::string, std::string> readUntilEnd(std::chrono::seconds within) {
        std::string received;
        std::array<char, 4096> buf;
        error_code ec;
        std::function<void(error_code, std::size_t)> on_read = [&](error_code e, std::size_t n) {
            received.append(buf.data(), n);
            if (e)
                ec = e;
            else
                stream_.async_read_some(asio::buffer(buf), on_read);
        };
        stream_.async_read_some(asio::buffer(buf), on_read);
        io_.restart();
        io_.run_for(within);
        if (!ec) {
            error_code ignored;
            stream_.lowest_layer().cancel(ignored);
            io_.restart();
            io_.run_for(1s);
            return {received, "still open"};
        }
        return {received, ec.message()};
    }

    asio::io_context io_;
    ssl::context ctx_;
    ssl::stream<tcp::socket> stream_;
};

TEST(WaypointTls, CurlGetsHttp2ByAlpnAndHttp11WithoutIt) {
    TlsGateway t;
    auto& [pki, backend, gw] = t;
    ASSERT_NE(gw->tlsPort(), 0);
    const std::string url = "https://127.0.0.1:" + std::to_string(gw->tlsPort());

    // HTTP/2 (curl offers h2 and http/1.1 by ALPN): a streamed chat, event by event.
    const auto [h2_status, h2_out] = runCommand(
        "curl -sS -m 10 --cacert " + pki.ca() + " -H 'content-type: application/json' -d '" +
        chat(true) + "' -w '\\n%{http_code} %{http_version} %{ssl_verify_result}' " + url +
        "/v1/chat/completions 2>&1");
    ASSERT_EQ(h2_status, 0) << h2_out;
    EXPECT_TRUE(h2_out.ends_with("\n200 2 0")) << h2_out;
    EXPECT_NE(h2_out.find("\"content\""), std::string::npos) << h2_out;
    EXPECT_NE(h2_out.find("data: [DONE]"), std::string::npos) << h2_out;

    // HTTP/1.1 (ALPN offers only http/1.1): a whole chat with its usage, by name (localhost).
    const auto [h1_status, h1_out] = runCommand(
        "curl -sS -m 10 --http1.1 --cacert " + pki.ca() +
        " -H 'content-type: application/json' -d '" + chat(false) +
        "' -w '\\n%{http_code} %{http_version} %{ssl_verify_result}' https://localhost:" +
        std::to_string(gw->tlsPort()) + "/v1/chat/completions 2>&1");
    ASSERT_EQ(h1_status, 0) << h1_out;
    EXPECT_TRUE(h1_out.ends_with("\n200 1.1 0")) << h1_out;
    const json reply = json::parse(h1_out.substr(0, h1_out.rfind('\n')));
    EXPECT_GT(reply["usage"]["completion_tokens"].get<int>(), 0) << h1_out;
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2);

    // The certificate on the wire is the configured one.
    // With ALPN h2 the server speaks HTTP/2 at once: its SETTINGS answer our preface.
    TlsClient h2(gw->tlsPort(), pki.ca(), "h2");
    EXPECT_EQ(h2.peerCommonName(), "sluice-gateway");
    EXPECT_EQ(h2.alpn(), "h2");
    const std::string settings = h2.exchange(
        std::string("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") + std::string("\0\0\0\4\0\0\0\0\0", 9),
        [](const std::string& r) { return r.size() >= 9; });
    ASSERT_GE(settings.size(), 9u);
    EXPECT_EQ(settings[3], 4) << "a SETTINGS frame";
    // Without ALPN: HTTP/1.1.
    TlsClient none(gw->tlsPort(), pki.ca());
    EXPECT_EQ(none.alpn(), "") << "no ALPN offered, none chosen";
    EXPECT_TRUE(none.get("/v1/models").starts_with("HTTP/1.1 200"));

    const std::string metrics = metricsOf(*gw);
    EXPECT_EQ(metricValue(metrics, "sluice_gateway_tls_handshakes_total", {{"result", "h2"}}), 2);
    EXPECT_EQ(metricValue(metrics, "sluice_gateway_tls_handshakes_total", {{"result", "http/1.1"}}),
              2);
    const double not_after =
        metricValue(metrics, "sluice_gateway_tls_certificate_not_after_seconds", {});
    const double now = double(std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());
    EXPECT_GT(not_after, now + 23 * 3600);  // issued for one day
    EXPECT_LT(not_after, now + 25 * 3600);
}

TEST(WaypointTls, NoH2cOverTls) {
    TlsGateway t;
    auto& [pki, backend, gw] = t;

    // The HTTP/2 preface without ALPN h2 is not HTTP/2 here (RFC 9113 §3.3): a 400, then close.
    TlsClient preface(gw->tlsPort(), pki.ca());
    const std::string refused = preface.exchange("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    EXPECT_TRUE(refused.starts_with("HTTP/1.1 400")) << refused;

    // Upgrade: h2c is a cleartext mechanism (RFC 7540 §3.2): answered over HTTP/1.1, no 101.
    TlsClient upgrade(gw->tlsPort(), pki.ca(), "http/1.1");
    EXPECT_EQ(upgrade.alpn(), "http/1.1");
    const std::string answered = upgrade.exchange(
        "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        [](const std::string& r) { return r.find("\r\n\r\n") != std::string::npos; });
    EXPECT_TRUE(answered.starts_with("HTTP/1.1 200")) << answered;
}

TEST(WaypointTls, FailedAndSilentHandshakesAreCountedAndClosedOthersAreServed) {
    TlsGateway t("{requestTimeout: 1s}");
    auto& [pki, backend, gw] = t;

    // Plain HTTP on the TLS port: no HTTP answer, the connection ends.
    const std::string plain =
        rawExchange(gw->tlsPort(), "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    EXPECT_EQ(plain.find("HTTP/1.1"), std::string::npos) << plain;

    // A client that never starts the handshake is closed after the request timeout.
    const auto start = std::chrono::steady_clock::now();
    const std::string silent = rawExchange(gw->tlsPort(), "", 5s);
    const auto waited = std::chrono::steady_clock::now() - start;
    EXPECT_TRUE(silent.empty());
    EXPECT_GE(waited, 900ms);
    EXPECT_LT(waited, 4s) << "closed by the handshake timeout, not by the client";

    // Meanwhile a real client is served.
    TlsClient client(gw->tlsPort(), pki.ca());
    EXPECT_TRUE(client.get("/v1/models").starts_with("HTTP/1.1 200"));

    const std::string metrics = metricsOf(*gw);
    EXPECT_EQ(metricValue(metrics, "sluice_gateway_tls_handshakes_total", {{"result", "failed"}}),
              1);
    EXPECT_EQ(metricValue(metrics, "sluice_gateway_tls_handshakes_total", {{"result", "timeout"}}),
              1);
    EXPECT_EQ(metricValue(metrics, "sluice_gateway_tls_handshakes_total", {{"result", "http/1.1"}}),
              1);
}

// Points the `current` symlink of `dir` at `version` in one rename, as a Kubernetes Secret
// volume swaps its ..data link: the certificate and the key change together.
void publish(const fs::path& dir, const std::string& version) {
    fs::create_symlink(version, dir / "next");
    fs::rename(dir / "next", dir / "current");
}

void installVersion(const TestPki& pki, const std::string& issued, const fs::path& version_dir) {
    fs::create_directories(version_dir);
    fs::copy_file(pki.dir() / (issued + ".pem"), version_dir / "tls.crt");
    fs::copy_file(pki.dir() / (issued + ".key"), version_dir / "tls.key");
}

TEST(WaypointTls, RenewedCertificateReachesNewConnectionsOldOnesKeepTheirsBrokenOneIsRefused) {
    TestPki pki;
    pki.issue("first", "first");
    pki.issue("renewed", "renewed");
    Emulator backend("a");
    const fs::path secret = pki.dir() / "secret";
    installVersion(pki, "first", secret / "v1");
    publish(secret, "v1");
    auto gw = startGateway(tlsConfig(backend, (secret / "current/tls.crt").string(),
                                     (secret / "current/tls.key").string()));

    TlsClient old(gw->tlsPort(), pki.ca());
    EXPECT_EQ(old.peerCommonName(), "first");
    EXPECT_TRUE(old.get("/v1/models").starts_with("HTTP/1.1 200"));

    installVersion(pki, "renewed", secret / "v2");
    publish(secret, "v2");
    std::string seen;
    for (auto until = std::chrono::steady_clock::now() + 5s;
         std::chrono::steady_clock::now() < until && seen != "renewed";
         std::this_thread::sleep_for(50ms)) {
        seen = TlsClient(gw->tlsPort(), pki.ca()).peerCommonName();
    }
    EXPECT_EQ(seen, "renewed") << "a new connection gets the renewed certificate";
    // The connection made before the renewal goes on.
    EXPECT_TRUE(old.get("/v1/models").starts_with("HTTP/1.1 200"));

    // A broken renewal (the key of another certificate) is refused; the renewed one stays.
    fs::create_directories(secret / "v3");
    fs::copy_file(pki.dir() / "first.pem", secret / "v3/tls.crt");
    fs::copy_file(pki.dir() / "renewed.key", secret / "v3/tls.key");
    publish(secret, "v3");
    double failures = 0;
    for (auto until = std::chrono::steady_clock::now() + 5s;
         std::chrono::steady_clock::now() < until && failures < 1;
         std::this_thread::sleep_for(50ms)) {
        failures = metricValue(metricsOf(*gw), "sluice_gateway_tls_reloads_total",
                               {{"result", "failure"}});
    }
    EXPECT_EQ(failures, 1);
    EXPECT_EQ(TlsClient(gw->tlsPort(), pki.ca()).peerCommonName(), "renewed");
    // Retried at every check, reported once.
    std::this_thread::sleep_for(500ms);
    EXPECT_EQ(
        metricValue(metricsOf(*gw), "sluice_gateway_tls_reloads_total", {{"result", "failure"}}),
        1);
    EXPECT_EQ(
        metricValue(metricsOf(*gw), "sluice_gateway_tls_reloads_total", {{"result", "success"}}),
        1);
}

constexpr const char* kTeamA = "spiffe://example.org/ns/team-a/sa/app";

std::string clientExtensions(const std::string& spiffe) {
    return "subjectAltName=URI:" + spiffe + "\nextendedKeyUsage=clientAuth";
}

// curl to the TLS listener with `extra` (client certificate flags); "<status> <body>", or
// "error <curl's exit status>: <message>" when no response came.
std::string curlTls(unsigned short port, const TestPki& pki, const std::string& extra = "") {
    const auto [status, out] =
        runCommand("curl -sS -m 10 --cacert " + pki.ca() + " " + extra +
                   " -H 'content-type: application/json' -d '" + chat(false) +
                   "' -w '\n%{http_code}' https://127.0.0.1:" + std::to_string(port) +
                   "/v1/chat/completions 2>&1");
    if (status != 0)
        return "error " + std::to_string(status) + ": " + out;
    const auto nl = out.rfind('\n');
    return out.substr(nl + 1) + " " + out.substr(0, nl);
}

TEST(WaypointTls, ClientCertificatesNameTheTenantOthersAreRefused) {
    TestPki pki;
    pki.issue("server", "sluice-gateway");
    pki.issue("team-a", "team-a", clientExtensions(kTeamA));
    // The same CA vouching for a name in a trust domain the gateway does not take.
    pki.issue("foreign", "foreign", clientExtensions("spiffe://other.org/ns/team-a/sa/app"));
    TestPki other;  // a CA the gateway does not trust
    other.issue("stranger", "stranger", clientExtensions(kTeamA));
    Emulator backend("a");
    const auto dir = pki.dir().string();
    // Team-a's namespace, from its certificate's SPIFFE id, may send one request a minute.
    const std::string config = tlsConfig(backend, dir + "/server.pem", dir + "/server.key") + R"(
---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {name: by-namespace}
spec:
  tenantFrom: [{namespace: {}}]
  limits: [{tenant: team-a, requestsPerMinute: 1}]
)";
    auto gw = startGateway(config, false, [&pki](Config& c) {
        c.tls.client_ca_file = pki.ca();
        c.tls.client_trust_domains = {"example.org"};
    });
    const unsigned short port = gw->tlsPort();
    const std::string team_a = "--cert " + dir + "/team-a.pem --key " + dir + "/team-a.key";

    const std::string first = curlTls(port, pki, team_a);
    EXPECT_TRUE(first.starts_with("200 ")) << first;
    const std::string second = curlTls(port, pki, team_a + " -i");
    EXPECT_TRUE(second.starts_with("429 ")) << second;
    EXPECT_NE(second.find("x-ratelimit-limit-requests: 1"), std::string::npos) << second;

    // A client that resumes its TLS session on a new connection (libcurl and Node keep
    // sessions) is served: resumption needs a session id context under client auth.
    const std::string s_client =
        "printf 'GET /v1/models HTTP/1.1\\r\\nHost: x\\r\\nConnection: "
        "close\\r\\n\\r\\n' | timeout 10 openssl s_client -ign_eof -connect "
        "127.0.0.1:" +
        std::to_string(port) + " -CAfile " + pki.ca() + " -cert " + dir + "/team-a.pem -key " +
        dir + "/team-a.key ";
    const auto [first_status, first_out] =
        runCommand(s_client + "-sess_out " + dir + "/session.pem 2>&1");
    EXPECT_NE(first_out.find("HTTP/1.1 200"), std::string::npos) << first_out;
    const auto [again_status, again_out] =
        runCommand(s_client + "-sess_in " + dir + "/session.pem 2>&1");
    EXPECT_NE(again_out.find("Reused, TLSv1.3"), std::string::npos) << again_out;
    EXPECT_NE(again_out.find("HTTP/1.1 200"), std::string::npos) << again_out;

    const std::string none = curlTls(port, pki);
    EXPECT_TRUE(none.starts_with("error ")) << none;
    const std::string stranger = curlTls(port, pki,
                                         "--cert " + other.dir().string() + "/stranger.pem --key " +
                                             other.dir().string() + "/stranger.key");
    EXPECT_TRUE(stranger.starts_with("error ")) << stranger;
    const std::string foreign =
        curlTls(port, pki, "--cert " + dir + "/foreign.pem --key " + dir + "/foreign.key");
    EXPECT_TRUE(foreign.starts_with("error ")) << foreign;
    // Refused in the handshake with an alert that says why, not with a bare EOF after it. Under
    // TLS 1.3 the client has finished its handshake when the alert comes, so curl, which sends
    // its request at once, may meet the closed connection first; a client that reads reads it.
    std::string why;
    try {
        TlsClient client(port, pki.ca(), "", dir + "/foreign.pem", dir + "/foreign.key");
        why = client.endReason();
    } catch (const std::exception& e) {  // TLS 1.2 would fail the handshake itself
        why = e.what();
    }
    EXPECT_NE(why.find("bad certificate"), std::string::npos) << why;
    EXPECT_EQ(json::parse(backend.stats())["requests"], 1) << "only team-a's first request";

    const std::string metrics = metricsOf(*gw);
    EXPECT_EQ(metricValue(metrics, "sluice_gateway_tls_handshakes_total",
                          {{"result", "no_client_certificate"}}),
              1);
    EXPECT_EQ(metricValue(metrics, "sluice_gateway_tls_handshakes_total",
                          {{"result", "client_certificate_refused"}}),
              3);
    gw->stop();

    // Optional client certificates: without one the client is served as nobody in particular
    // (no tenant limit applies), with one it is still team-a.
    auto optional = startGateway(config, false, [&pki](Config& c) {
        c.tls.client_ca_file = pki.ca();
        c.tls.require_client_certificate = false;
    });
    EXPECT_TRUE(curlTls(optional->tlsPort(), pki).starts_with("200 "));
    EXPECT_TRUE(curlTls(optional->tlsPort(), pki).starts_with("200 "));
    EXPECT_TRUE(curlTls(optional->tlsPort(), pki, team_a).starts_with("200 "));
    EXPECT_TRUE(curlTls(optional->tlsPort(), pki, team_a).starts_with("429 "));
}

// Admission control over TLS: the queued request's client watch reads and is stopped on the
// TLS stream, while the request in flight streams its answer.
TEST(WaypointTls, QueuedRequestsAreAdmittedOverTls) {
    TlsGateway t;
    auto& [pki, backend, first_gw] = t;
    first_gw->stop();
    backend.configure(R"({"token_delay_ms": 150})");
    const auto dir = pki.dir().string();
    auto gw = startGateway(tlsConfig(backend, dir + "/server.pem", dir + "/server.key",
                                     "{}\n  admission: {maxConcurrent: 1, maxQueued: 4}"));
    const std::string curl = "curl -sS -m 10 --cacert " + pki.ca() +
                             " -H 'content-type: application/json' -d '" + chat(true) +
                             "' https://127.0.0.1:" + std::to_string(gw->tlsPort()) +
                             "/v1/chat/completions";
    const auto [status, out] =
        runCommand("(" + curl + " > " + dir + "/a.out & " + curl + " > " + dir +
                   "/b.out & wait) 2>&1; cat " + dir + "/a.out " + dir + "/b.out");
    EXPECT_EQ(status, 0) << out;
    std::size_t done = 0;
    for (auto at = out.find("data: [DONE]"); at != std::string::npos;
         at = out.find("data: [DONE]", at + 1))
        ++done;
    EXPECT_EQ(done, 2u) << out;
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2);
}

// A TLS gateway in front of `backend` (any backend), with its own test CA.
struct TlsGatewayFor {
    explicit TlsGatewayFor(const RawBackend& backend) {
        pki.issue("server", "sluice-gateway");
        const auto dir = pki.dir().string();
        gw = startGateway(backendConfig(
            backend.address(), "  tls: {listen: \"127.0.0.1:0\", certificateFile: \"" + dir +
                                   "/server.pem\", privateKeyFile: \"" + dir + "/server.key\"}\n"));
    }
    TestPki pki;
    std::unique_ptr<Gateway> gw;
};

std::string chatRequest(const std::string& version, const std::string& extra = "") {
    const std::string body = chat(false);
    return "POST /v1/chat/completions HTTP/" + version + "\r\nHost: x\r\n" + extra +
           "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

// The end of a response is the close_notify, then the FIN, also when the client reads slowly
// and the socket buffer is full as the last bytes go: the close_notify waits for room instead
// of being lost, so the client can tell a complete response from a cut one. (The wait itself
// is shown by HboneTest.TlsShutdownSendsTheCloseNotifyBehindAWriteThatWaitsForRoom: a full
// buffer at this moment is rare.)
TEST(WaypointTls, TheCloseNotifyReachesASlowReader) {
    const std::string payload = patternedBytes(8u << 20);
    RawBackend backend(okWithBody(payload), 1);
    TlsGatewayFor tls(backend);
    TlsClient client(tls.gw->tlsPort(), tls.pki.ca(), "http/1.1", "", "", 4096);
    const auto [got, end] = client.readToEnd(chatRequest("1.1", "Connection: close\r\n"), 300ms);
    EXPECT_EQ(end, "End of file") << "the response did not end with a close_notify";
    EXPECT_TRUE(isOkWithBody(got, payload));
}

// An HTTP/1.0 client reads a body of unknown length to the end of the connection, where only
// the close_notify tells a whole body from one its backend cut (a chunked body, then the
// backend's end): the whole one ends with it, the cut one without (the stream is truncated).
TEST(WaypointTls, OnlyAWholeBodyEndsWithACloseNotify) {
    struct Case {
        std::string backend_reply, body, end;
    };
    for (const Case& c :
         {Case{"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it", "all of it", "End of file"},
          Case{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", "hello",
               "stream truncated"}}) {
        RawBackend backend(c.backend_reply, 1);
        TlsGatewayFor tls(backend);
        TlsClient client(tls.gw->tlsPort(), tls.pki.ca(), "http/1.1");
        const auto [got, end] = client.readToEnd(chatRequest("1.0"), 0ms);
        EXPECT_EQ(end, c.end) << c.body;
        EXPECT_TRUE(got.starts_with("HTTP/1.0 200 OK\r\n")) << got;
        EXPECT_TRUE(got.ends_with("\r\n\r\n" + c.body)) << got;
    }
}

TEST(WaypointTls, FilesThatCannotServeFailTheStartNamingTheFile) {
    TestPki pki;
    pki.issue("a", "a");
    pki.issue("b", "b");
    Emulator backend("a");
    const auto dir = pki.dir().string();
    try {
        startGateway(tlsConfig(backend, dir + "/missing.pem", dir + "/a.key"));
        ADD_FAILURE() << "started without a certificate";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find(dir + "/missing.pem"), std::string::npos) << e.what();
    }
    try {
        startGateway(tlsConfig(backend, dir + "/a.pem", dir + "/b.key"));
        ADD_FAILURE() << "started with a key that is not the certificate's";
    } catch (const std::runtime_error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find(dir + "/b.key (for " + dir + "/a.pem)"), std::string::npos) << what;
        EXPECT_NE(what.find("key values mismatch"), std::string::npos) << what;
    }
    std::string scalar = tlsConfig(backend, dir + "/a.pem", dir + "/a.key");
    scalar.replace(scalar.find("reloadInterval: 100ms"), 21,
                   "reloadInterval: 100ms, clientCaFile: x, clientTrustDomains: example.org");
    try {
        parseConfig(scalar);
        ADD_FAILURE() << "a scalar clientTrustDomains was taken";
    } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "tls.clientTrustDomains must be a list of trust domains");
    }
    const Config half = parseConfig(tlsConfig(backend, dir + "/a.pem", ""));
    ASSERT_FALSE(half.validate().empty());
    EXPECT_EQ(half.validate().front(),
              "tls.listen needs tls.certificateFile and tls.privateKeyFile");
}

}  // namespace
}  // namespace sluice::waypoint::test
