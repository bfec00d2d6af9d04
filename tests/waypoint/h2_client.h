#pragma once

// An HTTP/2 client (nghttp2, prior knowledge) for the waypoint's h2c tests, over any byte
// transport: a TCP socket, or an HBONE CONNECT stream opened with ztunnel's client. Records per
// stream what arrived, the GOAWAY, and how many bytes of incomplete request bodies were out at
// most.
#include <nghttp2/nghttp2.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "waypoint/http/asio.h"

namespace sluice::waypoint::test {

class H2Client {
  public:
    struct Stream {
        unsigned status = 0;
        std::map<std::string, std::string> headers;
        std::string body;
        std::string to_send;  // the request body
        std::size_t sent = 0;
        bool end_request = true;  // false: the body never ends (END_STREAM is not sent)
        bool ended = false;       // END_STREAM or RST_STREAM received, or the stream closed
        uint32_t reset_code = 0;
    };
    // `read` returns 0 at the end of the transport; `write` false when it is gone.
    using Read = std::function<awaitable<std::size_t>(asio::mutable_buffer)>;
    using Write = std::function<awaitable<bool>(std::string)>;

    // `read_nothing`: response bytes are never taken (no WINDOW_UPDATE is sent), as a client
    // that stopped reading.
    explicit H2Client(bool read_nothing = false);
    ~H2Client();
    H2Client(const H2Client&) = delete;
    H2Client& operator=(const H2Client&) = delete;

    // A request on a new stream; its id.
    int32_t submit(const std::string& method, const std::string& path, const std::string& body,
                   bool end_request = true,
                   const std::map<std::string, std::string>& headers = {
                       {"content-type", "application/json"}});
    // The connection was switched from HTTP/1.1 by `Upgrade: h2c` with `settings` (the decoded
    // HTTP2-Settings): the upgrading request is stream 1, whose response is awaited.
    void upgraded(std::string_view settings);
    // Runs the connection until every stream ended, the transport ended or `stop` says so.
    // `on_event` runs after every read (it may submit more requests).
    awaitable<void> run(Read read, Write write, std::function<void(H2Client&)> on_event = {});

    nghttp2_session* session() { return session_; }
    bool allEnded() const;
    // The request-body bytes sent on streams whose body is not complete yet (what the server
    // holds of bodies it cannot hand on).
    std::size_t partial() const;

    std::map<int32_t, Stream> streams;
    std::vector<int32_t> ended_order;
    std::optional<int32_t> goaway_last_stream;  // set when a GOAWAY arrived
    uint32_t goaway_error = 0;
    std::size_t max_partial = 0;

  private:
    static int onHeader(nghttp2_session*, const nghttp2_frame*, const uint8_t*, std::size_t,
                        const uint8_t*, std::size_t, uint8_t, void*);
    static int onFrameRecv(nghttp2_session*, const nghttp2_frame*, void*);
    static int onDataChunk(nghttp2_session*, uint8_t, int32_t, const uint8_t*, std::size_t, void*);
    static int onStreamClose(nghttp2_session*, int32_t, uint32_t, void*);
    static ssize_t readBody(nghttp2_session*, int32_t, uint8_t*, std::size_t, uint32_t*,
                            nghttp2_data_source*, void*);
    void ended(int32_t id);

    nghttp2_session* session_ = nullptr;
};

// An on_event that calls `stop` (Gateway::stop) on a thread of its own once stream `id` has its
// response headers; took() joins that thread and says how long `stop` took.
class StopWhenAnswered {
  public:
    StopWhenAnswered(int32_t id, std::function<void()> stop) : id_(id), stop_(std::move(stop)) {}
    ~StopWhenAnswered() {
        if (thread_.joinable())
            thread_.join();
    }
    void operator()(H2Client& c);
    std::optional<std::chrono::steady_clock::duration> took();

  private:
    int32_t id_;
    std::function<void()> stop_;
    std::thread thread_;
    std::chrono::steady_clock::time_point began_, ended_;
};

// Stream `id` was answered in full (a streamed chat) while a stop sent its GOAWAY, and the stop
// waited for it (a few hundred ms of tokens), not for its 5 s drain timeout.
void expectDrained(const H2Client& client, int32_t id,
                   std::optional<std::chrono::steady_clock::duration> stop_took);

// An H2Client's connection over TCP to 127.0.0.1:port, run on its own io_context by the caller's
// thread; the connection stays open across run() calls.
class H2OverTcp {
  public:
    explicit H2OverTcp(unsigned short port);
    // Runs `client` until its streams ended (or `timeout`); false on a timeout.
    bool run(H2Client& client, std::function<void(H2Client&)> on_event = {},
             std::chrono::milliseconds timeout = std::chrono::seconds(20));

  private:
    asio::io_context io_;
    tcp::socket socket_{io_};
};

}  // namespace sluice::waypoint::test
