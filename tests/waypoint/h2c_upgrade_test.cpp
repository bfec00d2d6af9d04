// HTTP/1.1 `Upgrade: h2c` (RFC 7540 §3.2) on the plain listener: the offer rules
// (h2cUpgradeOffer), the real `curl --http2`, a hand-written client that checks the 101, stream 1
// and the settings taken from HTTP2-Settings, an offer with a body, and the offers that are not
// taken (none or several HTTP2-Settings) or refused (a malformed payload: 400).
#include <gtest/gtest.h>
#include <poll.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <optional>

#include "tests/waypoint/harness.h"
#include "waypoint/http/h2c_upgrade.h"

namespace sluice::waypoint::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;
using Verdict = H2cUpgradeOffer::Verdict;

// SETTINGS_INITIAL_WINDOW_SIZE = 10 (00 04 00 00 00 0a), base64url.
const std::string kWindow10 = "AAQAAAAK";

Request bodilessOffer(const std::string& settings,
                      const std::string& connection = "Upgrade, HTTP2-Settings",
                      const std::string& upgrade = "h2c") {
    Request r{http::verb::get, "/v1/models", 11};
    r.set(http::field::host, "waypoint");
    r.set(http::field::connection, connection);
    r.set(http::field::upgrade, upgrade);
    r.set(http::field::http2_settings, settings);
    return r;
}

TEST(WaypointH2cUpgradeOffer, TakenOnlyWithEverythingRfc7540AsksFor) {
    auto taken = h2cUpgradeOffer(bodilessOffer(kWindow10));
    ASSERT_EQ(taken.verdict, Verdict::Upgrade);
    EXPECT_EQ(taken.settings, std::string("\0\x04\0\0\0\x0a", 6));
    EXPECT_EQ(
        h2cUpgradeOffer(bodilessOffer("", "upgrade,http2-settings", "websocket, H2C")).verdict,
        Verdict::Upgrade)
        << "an empty SETTINGS payload, tokens in any case and order";
    EXPECT_EQ(h2cUpgradeOffer(bodilessOffer("AAQAAAAK==")).verdict, Verdict::Upgrade)
        << "padding is tolerated";
    EXPECT_EQ(h2cUpgradeOffer(bodilessOffer("AP8AAAAB")).verdict, Verdict::Upgrade)
        << "an unknown setting (0xff) is ignored";

    EXPECT_EQ(h2cUpgradeOffer(bodilessOffer(kWindow10, "Upgrade")).verdict, Verdict::Http1)
        << "HTTP2-Settings not a connection option";
    EXPECT_EQ(h2cUpgradeOffer(bodilessOffer(kWindow10, "HTTP2-Settings")).verdict, Verdict::Http1);
    EXPECT_EQ(h2cUpgradeOffer(bodilessOffer(kWindow10, "Upgrade, HTTP2-Settings", "h2")).verdict,
              Verdict::Http1);
    auto http10 = bodilessOffer(kWindow10);
    http10.version(10);
    EXPECT_EQ(h2cUpgradeOffer(http10).verdict, Verdict::Http1);
    auto none = bodilessOffer(kWindow10);
    none.erase(http::field::http2_settings);
    EXPECT_EQ(h2cUpgradeOffer(none).verdict, Verdict::Http1);
    auto two = bodilessOffer(kWindow10);
    two.insert(http::field::http2_settings, kWindow10);
    EXPECT_EQ(h2cUpgradeOffer(two).verdict, Verdict::Http1);
    auto body = bodilessOffer(kWindow10);
    body.body() = "{}";
    EXPECT_EQ(h2cUpgradeOffer(body).verdict, Verdict::Upgrade) << "a body read whole";
    auto chunked = bodilessOffer(kWindow10);
    chunked.set(http::field::transfer_encoding, "chunked");
    EXPECT_EQ(h2cUpgradeOffer(chunked).verdict, Verdict::Upgrade);
    // A malformed payload in an offer that is not taken is not looked at.
    auto not_taken_bad = bodilessOffer("!!", "Upgrade");
    EXPECT_EQ(h2cUpgradeOffer(not_taken_bad).verdict, Verdict::Http1);

    for (std::string_view bad : {
             "AAQA+AAK",  // '+' is base64, not base64url
             "AAQAA",     // 5 characters: no encoding is that long
             "AAQAAAA",   // 5 bytes: not whole 6-byte entries
             "AAIAAAAC",  // ENABLE_PUSH = 2
             "AASAAAAA",  // INITIAL_WINDOW_SIZE = 2^31
             "AAUAAD__",  // MAX_FRAME_SIZE = 16383
             "AAgAAAAC",  // ENABLE_CONNECT_PROTOCOL = 2
         }) {
        auto offer = h2cUpgradeOffer(bodilessOffer(std::string(bad)));
        EXPECT_EQ(offer.verdict, Verdict::Malformed) << bad;
        EXPECT_TRUE(offer.problem.starts_with("HTTP2-Settings")) << offer.problem;
    }
}

std::string upgradeRequest(std::string_view target, const std::string& more_fields) {
    return "GET " + std::string(target) +
           " HTTP/1.1\r\nHost: waypoint\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           "Upgrade: h2c\r\n" +
           more_fields + "\r\n";
}

struct Frame {
    std::uint8_t type = 0;
    std::uint8_t flags = 0;
    std::uint32_t stream = 0;
    std::string payload;
};

std::string frame(std::uint8_t type, std::uint8_t flags, std::uint32_t stream,
                  std::string_view payload) {
    std::string f{char(payload.size() >> 16),
                  char(payload.size() >> 8),
                  char(payload.size()),
                  char(type),
                  char(flags),
                  char(stream >> 24),
                  char(stream >> 16),
                  char(stream >> 8),
                  char(stream)};
    return f.append(payload);
}

// A blocking loopback client that reads HTTP/1.1 heads and HTTP/2 frames by hand, each read
// bounded by 5 s.
class RawClient {
  public:
    explicit RawClient(unsigned short port) : socket_(io_) {
        socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    }
    void send(std::string_view bytes) { asio::write(socket_, asio::buffer(bytes)); }
    // Up to and including the first empty line; nullopt when it did not come.
    std::optional<std::string> head() {
        while (in_.find("\r\n\r\n") == std::string::npos) {
            if (!fill())
                return std::nullopt;
        }
        const auto end = in_.find("\r\n\r\n") + 4;
        std::string out = in_.substr(0, end);
        in_.erase(0, end);
        return out;
    }
    std::optional<Frame> next() {
        while (in_.size() < 9 || in_.size() < 9 + length()) {
            if (!fill())
                return std::nullopt;
        }
        Frame f{.type = std::uint8_t(in_[3]),
                .flags = std::uint8_t(in_[4]),
                .stream = (byte(5) << 24 | byte(6) << 16 | byte(7) << 8 | byte(8)) & 0x7fffffffu,
                .payload = in_.substr(9, length())};
        in_.erase(0, 9 + length());
        return f;
    }

  private:
    std::uint32_t byte(std::size_t i) const { return std::uint8_t(in_[i]); }
    std::size_t length() const { return byte(0) << 16 | byte(1) << 8 | byte(2); }
    bool fill() {
        pollfd p{.fd = socket_.native_handle(), .events = POLLIN, .revents = 0};
        if (::poll(&p, 1, 5000) != 1)
            return false;
        char buf[16384];
        error_code ec;
        const std::size_t n = socket_.read_some(asio::buffer(buf), ec);
        in_.append(buf, n);
        return !ec;
    }

    asio::io_context io_;
    tcp::socket socket_;
    std::string in_;
};

constexpr std::uint8_t kData = 0x0, kHeaders = 0x1, kSettings = 0x4, kWindowUpdate = 0x8;
constexpr std::uint8_t kEndStream = 0x1, kAck = 0x1;

// The 101's exact bytes, the server's SETTINGS first, the response to the upgrading request on
// stream 1, and the client's HTTP2-Settings in effect from the start: with an initial window of
// 10 the server sends 10 bytes of the body and waits for a WINDOW_UPDATE (the client's own
// SETTINGS after the preface is empty, so only the header can have set that window).
TEST(WaypointH2cUpgrade, The101ThenStreamOneUnderTheClientsHttp2Settings) {
    Emulator backend("a");
    auto gw = startGateway(limitsConfig(backend, ""));
    RawClient client(gw->gatewayPort());
    client.send(upgradeRequest("/v1/models", "HTTP2-Settings: " + kWindow10 + "\r\n"));
    const auto switched = client.head();
    ASSERT_TRUE(switched);
    EXPECT_EQ(*switched,
              "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    client.send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(kSettings, 0, 0, ""));

    auto first = client.next();
    ASSERT_TRUE(first);
    EXPECT_EQ(first->type, kSettings) << "the server's SETTINGS come first";
    EXPECT_EQ(first->flags & kAck, 0);
    bool headers = false, ended = false;
    std::string body;
    while (!ended && body.size() < 10) {
        auto f = client.next();
        ASSERT_TRUE(f) << "the response stopped after " << body.size() << " bytes";
        if (f->type == kHeaders) {
            EXPECT_EQ(f->stream, 1u);
            ASSERT_FALSE(f->payload.empty());
            EXPECT_EQ(std::uint8_t(f->payload[0]), 0x88) << ":status 200 (HPACK static entry 8)";
            headers = true;
        } else if (f->type == kData) {
            EXPECT_EQ(f->stream, 1u);
            body += f->payload;
            ended = f->flags & kEndStream;
        }
    }
    EXPECT_TRUE(headers);
    EXPECT_EQ(body.size(), 10u) << "the initial window of HTTP2-Settings was not applied: " << body;
    EXPECT_FALSE(ended);
    // More window for stream 1: the rest of the body follows.
    client.send(frame(kSettings, kAck, 0, "") +
                frame(kWindowUpdate, 0, 1, std::string("\0\0\xff\xff", 4)));
    while (!ended) {
        auto f = client.next();
        ASSERT_TRUE(f) << "the response stopped after " << body.size() << " bytes";
        if (f->type == kData && f->stream == 1) {
            body += f->payload;
            ended = f->flags & kEndStream;
        }
    }
    EXPECT_EQ(json::parse(body)["object"], "list");
    EXPECT_EQ(body, request(gw->gatewayPort(), "GET", "/v1/models").body) << "as over HTTP/1.1";
}

// `curl --http2` against http:// offers the upgrade; the connection is then HTTP/2 and carries
// the next request too (a chat, whose body needs no upgrade), both logged as requests. A POST
// with a body on a fresh connection upgrades too, its body the upgrading request's.
TEST(WaypointH2cUpgrade, CurlHttp2UpgradesAndReusesTheConnection) {
    Emulator backend("a");
    LogCapture log;
    auto gw = startGateway(limitsConfig(backend, ""), true);
    TempDir dir;
    const std::string chat =
        R"({"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}]})";
    std::ofstream(dir.path / "chat.json") << chat;
    const std::string url = "http://127.0.0.1:" + std::to_string(gw->gatewayPort());
    const std::string out = (dir.path / "out").string();
    const std::string format = " -w '%{http_version} %{num_connects} %{response_code}\\n' ";
    const std::string post =
        "-H 'content-type: application/json' --data-binary @" + (dir.path / "chat.json").string();
    const auto [rc, got] = runCommand("curl -sS --http2 -m 10 -o " + out + "1" + format + url +
                                      "/v1/models --next" + " -sS --http2 -m 10 -o " + out + "2" +
                                      format + post + " " + url + "/v1/chat/completions");
    ASSERT_EQ(rc, 0) << got;
    EXPECT_EQ(got, "2 1 200\n2 0 200\n") << "HTTP version, new connections, status";
    std::stringstream models, answer;
    models << std::ifstream(out + "1").rdbuf();
    answer << std::ifstream(out + "2").rdbuf();
    EXPECT_EQ(json::parse(models.str())["object"], "list");
    EXPECT_TRUE(json::parse(answer.str())["usage"].is_object()) << answer.str();

    const auto [rc_post, got_post] = runCommand("curl -sS --http2 -m 10 -o /dev/null" + format +
                                                post + " " + url + "/v1/chat/completions");
    ASSERT_EQ(rc_post, 0) << got_post;
    EXPECT_EQ(got_post, "2 1 200\n");
    EXPECT_EQ(json::parse(backend.stats())["requests"], 2);
    gw->stop();
    std::vector<std::string> paths;
    for (const auto& entry : accessEntries(log.text())) {
        EXPECT_EQ(entry["status"], 200);
        paths.push_back(entry["path"]);
    }
    EXPECT_EQ(paths, (std::vector<std::string>{"/v1/models", "/v1/chat/completions",
                                               "/v1/chat/completions"}));
}

// HEAD as the upgrading request (nghttp2 is told) and with prior knowledge: answered as over
// HTTP/1.1 and without DATA, though the answer here (502: the backend is gone) is a local reply
// whose body the HTTP/1.1 side writes even for HEAD; a client takes DATA on a HEAD for a
// protocol error.
TEST(WaypointH2cUpgrade, HeadIsAnsweredWithoutABody) {
    std::optional<Emulator> backend;
    backend.emplace("gone");
    const std::string config = limitsConfig(*backend, "");
    backend.reset();  // its port is closed now: connections to it are refused
    auto gw = startGateway(config);
    const std::string head =
        "curl -sS -m 10 -I -o /dev/null -w '%{http_version} %{response_code}' "
        "http://127.0.0.1:" +
        std::to_string(gw->gatewayPort()) + "/v1/models ";
    const auto [rc1, http1] = runCommand(head + "--http1.1");
    ASSERT_EQ(rc1, 0) << http1;
    ASSERT_EQ(http1, "1.1 502");
    const auto [rc_upgrade, upgraded] = runCommand(head + "--http2");
    EXPECT_EQ(rc_upgrade, 0) << upgraded;
    EXPECT_EQ(upgraded, "2 " + http1.substr(4));
    const auto [rc_prior, prior] = runCommand(head + "--http2-prior-knowledge");
    EXPECT_EQ(rc_prior, 0) << prior;
    EXPECT_EQ(prior, "2 " + http1.substr(4));
}

// An offer with a body is taken once the body is read (RFC 7540 §3.2: the client sends it
// whole before any HTTP/2 frame): stream 1 carries it to the backend, which sees neither
// Upgrade nor HTTP2-Settings, with its length, whether the client sent a length or chunks, or
// waited for a 100 Continue first (curl does for large bodies: 100, then 101).
TEST(WaypointH2cUpgrade, AnOfferWithABodyIsTakenAndTheBodyIsStreamOnes) {
    RawBackend backend("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 3);
    auto gw = startGateway(backendConfig(backend.address()));
    const std::string chat =
        R"({"model":"gpt-4o","max_tokens":5,"messages":[{"role":"user","content":"hi"}]})";
    const std::string head =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: waypoint\r\nConnection: Upgrade, "
        "HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"
        "Content-Type: application/json\r\n";
    std::ostringstream chunked;
    chunked << std::hex << 10 << "\r\n"
            << chat.substr(0, 10) << "\r\n"
            << chat.size() - 10 << "\r\n"
            << chat.substr(10) << "\r\n0\r\n\r\n";
    struct Framing {
        std::string fields_and_body;
        std::string after_100;  // sent once the 100 Continue came
    };
    const std::string length = "Content-Length: " + std::to_string(chat.size()) + "\r\n";
    for (const Framing& framing :
         {Framing{length + "\r\n" + chat, ""},
          Framing{"Transfer-Encoding: chunked\r\n\r\n" + chunked.str(), ""},
          Framing{"Expect: 100-continue\r\n" + length + "\r\n", chat}}) {
        RawClient client(gw->gatewayPort());
        client.send(head + framing.fields_and_body);
        if (!framing.after_100.empty()) {
            const auto interim = client.head();
            ASSERT_TRUE(interim);
            EXPECT_EQ(*interim, "HTTP/1.1 100 Continue\r\n\r\n");
            client.send(framing.after_100);
        }
        const auto switched = client.head();
        ASSERT_TRUE(switched);
        EXPECT_TRUE(switched->starts_with("HTTP/1.1 101 Switching Protocols\r\n")) << *switched;
        client.send("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(kSettings, 0, 0, ""));
        std::string body;
        for (bool ended = false; !ended;) {
            auto f = client.next();
            ASSERT_TRUE(f) << "stream 1 did not end; body so far: " << body;
            if (f->type == kData && f->stream == 1) {
                body += f->payload;
                ended = f->flags & kEndStream;
            }
        }
        EXPECT_EQ(body, "ok");
    }
    const auto upstream = backend.requests();
    ASSERT_EQ(upstream.size(), 3u);
    for (const std::string& r : upstream) {
        EXPECT_TRUE(
            r.ends_with("Content-Length: " + std::to_string(chat.size()) + "\r\n\r\n" + chat))
            << r;
        EXPECT_EQ(r.find("pgrade"), std::string::npos) << r;
        EXPECT_EQ(r.find("HTTP2-Settings"), std::string::npos) << r;
        EXPECT_EQ(r.find("hunked"), std::string::npos) << r;
    }
}

// The connection stays HTTP/1.1 when the offer is not taken: no HTTP2-Settings or several
// (RFC 7540 §3.2.1: MUST NOT upgrade). A malformed payload is the connection error RFC 7540
// makes an invalid SETTINGS frame: 400, and the connection is closed.
TEST(WaypointH2cUpgrade, OffersNotTakenStayHttp11AndAMalformedPayloadIs400) {
    auto gw = startGateway(backendConfig("127.0.0.1:9"));
    const std::string close = "Connection: Upgrade, HTTP2-Settings, close\r\n";
    for (const std::string& fields :
         {std::string{}, std::string{"HTTP2-Settings: AAQAAAAK\r\nHTTP2-Settings: AAQAAAAK\r\n"}}) {
        const std::string got =
            rawExchange(gw->gatewayPort(), "GET /v1/models HTTP/1.1\r\nHost: waypoint\r\n" + close +
                                               "Upgrade: h2c\r\n" + fields + "\r\n");
        EXPECT_TRUE(got.starts_with("HTTP/1.1 200 OK\r\n")) << got;
        EXPECT_NE(got.find("\"object\":\"list\""), std::string::npos) << got;
    }

    for (std::string_view bad : {"AAQA+AAK", "AAQAAAA", "AAIAAAAC"}) {
        // Followed by a preface: none of it is taken as HTTP/2.
        const std::string got = rawExchange(
            gw->gatewayPort(),
            upgradeRequest("/v1/models", "HTTP2-Settings: " + std::string(bad) + "\r\n") +
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(kSettings, 0, 0, ""));
        EXPECT_TRUE(got.starts_with("HTTP/1.1 400 Bad Request\r\n")) << bad << ": " << got;
        EXPECT_NE(got.find("Connection: close\r\n"), std::string::npos) << got;
        const auto body = got.substr(std::min(got.size(), got.find("\r\n\r\n") + 4));
        ASSERT_TRUE(json::accept(body)) << got;
        const auto error = json::parse(body)["error"];
        EXPECT_EQ(error["type"], "invalid_request_error");
        EXPECT_TRUE(error["message"].get<std::string>().starts_with("HTTP2-Settings")) << body;
    }
}

}  // namespace
}  // namespace sluice::waypoint::test
