#include "tests/waypoint/h2_client.h"

#include <gtest/gtest.h>

#include <array>
#include <cstring>

#include <boost/asio/write.hpp>

namespace sluice::waypoint::test {
namespace {

nghttp2_nv nv(const std::string& name, const std::string& value) {
    return {reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
            reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(), value.size(),
            NGHTTP2_NV_FLAG_NONE};
}

}  // namespace

H2Client::H2Client(bool read_nothing) {
    nghttp2_session_callbacks* cbs = nullptr;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, onHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, onFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, onDataChunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, onStreamClose);
    nghttp2_option* opt = nullptr;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, read_nothing ? 1 : 0);
    nghttp2_session_client_new2(&session_, cbs, this, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, nullptr, 0);
}

H2Client::~H2Client() {
    nghttp2_session_del(session_);
}

int32_t H2Client::submit(const std::string& method, const std::string& path,
                         const std::string& body, bool end_request,
                         const std::map<std::string, std::string>& headers) {
    const std::string m = ":method", p = ":path", s = ":scheme", a = ":authority", http = "http",
                      host = "waypoint";
    std::vector<nghttp2_nv> nva{nv(m, method), nv(p, path), nv(s, http), nv(a, host)};
    for (const auto& [name, value] : headers)
        nva.push_back(nv(name, value));
    nghttp2_data_provider provider{};
    provider.read_callback = readBody;
    const int32_t id =
        nghttp2_submit_request(session_, nullptr, nva.data(), nva.size(), &provider, nullptr);
    if (id > 0) {
        streams[id].to_send = body;
        streams[id].end_request = end_request;
    }
    return id;
}

void H2Client::upgraded(std::string_view settings) {
    const int rv = nghttp2_session_upgrade2(
        session_, reinterpret_cast<const uint8_t*>(settings.data()), settings.size(), 0, nullptr);
    ASSERT_EQ(rv, 0) << nghttp2_strerror(rv);
    streams[1];
}

bool H2Client::allEnded() const {
    for (const auto& [id, s] : streams) {
        if (!s.ended)
            return false;
    }
    return true;
}

std::size_t H2Client::partial() const {
    std::size_t n = 0;
    for (const auto& [id, s] : streams) {
        if (!s.ended && s.sent < s.to_send.size())
            n += s.sent;
    }
    return n;
}

awaitable<void> H2Client::run(Read read, Write write, std::function<void(H2Client&)> on_event) {
    std::array<char, 16384> buf;
    for (;;) {
        std::string out;
        for (;;) {
            const uint8_t* data = nullptr;
            const ssize_t n = nghttp2_session_mem_send(session_, &data);
            if (n <= 0)
                break;
            out.append(reinterpret_cast<const char*>(data), static_cast<std::size_t>(n));
        }
        max_partial = std::max(max_partial, partial());
        if (!out.empty() && !co_await write(std::move(out)))
            co_return;
        if (allEnded() && nghttp2_session_want_write(session_) == 0)
            co_return;
        const std::size_t n = co_await read(asio::buffer(buf));
        if (n == 0) {
            for (auto& [id, s] : streams) {
                if (!s.ended)
                    ended(id);
            }
            co_return;
        }
        if (nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(buf.data()), n) < 0)
            co_return;
        if (on_event)
            on_event(*this);
    }
}

void H2Client::ended(int32_t id) {
    auto it = streams.find(id);
    if (it == streams.end() || it->second.ended)
        return;
    it->second.ended = true;
    ended_order.push_back(id);
}

int H2Client::onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                       std::size_t namelen, const uint8_t* value, std::size_t valuelen, uint8_t,
                       void* ud) {
    auto* self = static_cast<H2Client*>(ud);
    auto it = self->streams.find(frame->hd.stream_id);
    if (it == self->streams.end())
        return 0;
    const std::string n(reinterpret_cast<const char*>(name), namelen);
    const std::string v(reinterpret_cast<const char*>(value), valuelen);
    if (n == ":status")
        it->second.status = static_cast<unsigned>(std::stoul(v));
    else
        it->second.headers[n] = v;
    return 0;
}

int H2Client::onFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* ud) {
    auto* self = static_cast<H2Client*>(ud);
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        self->goaway_last_stream = frame->goaway.last_stream_id;
        self->goaway_error = frame->goaway.error_code;
    } else if (frame->hd.type == NGHTTP2_RST_STREAM) {
        auto it = self->streams.find(frame->hd.stream_id);
        if (it != self->streams.end())
            it->second.reset_code = frame->rst_stream.error_code;
        self->ended(frame->hd.stream_id);
    } else if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
               (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        self->ended(frame->hd.stream_id);
    }
    return 0;
}

int H2Client::onDataChunk(nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data,
                          std::size_t len, void* ud) {
    auto* self = static_cast<H2Client*>(ud);
    auto it = self->streams.find(stream_id);
    if (it != self->streams.end())
        it->second.body.append(reinterpret_cast<const char*>(data), len);
    return 0;
}

int H2Client::onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t, void* ud) {
    static_cast<H2Client*>(ud)->ended(stream_id);
    return 0;
}

ssize_t H2Client::readBody(nghttp2_session*, int32_t stream_id, uint8_t* buf, std::size_t length,
                           uint32_t* flags, nghttp2_data_source*, void* ud) {
    auto* self = static_cast<H2Client*>(ud);
    Stream& s = self->streams[stream_id];
    const std::size_t n = std::min(length, s.to_send.size() - s.sent);
    std::memcpy(buf, s.to_send.data() + s.sent, n);
    s.sent += n;
    if (s.sent == s.to_send.size()) {
        if (s.end_request)
            *flags |= NGHTTP2_DATA_FLAG_EOF;
        else if (n == 0)
            return NGHTTP2_ERR_DEFERRED;  // the body never ends
    }
    return static_cast<ssize_t>(n);
}

void StopWhenAnswered::operator()(H2Client& c) {
    if (thread_.joinable() || c.streams[id_].status == 0)
        return;
    began_ = std::chrono::steady_clock::now();
    thread_ = std::thread([this] {
        stop_();
        ended_ = std::chrono::steady_clock::now();
    });
}

std::optional<std::chrono::steady_clock::duration> StopWhenAnswered::took() {
    if (!thread_.joinable())
        return std::nullopt;
    thread_.join();
    return ended_ - began_;
}

void expectDrained(const H2Client& client, int32_t id,
                   std::optional<std::chrono::steady_clock::duration> stop_took) {
    using namespace std::chrono_literals;
    ASSERT_TRUE(stop_took) << "no response headers, no stop";
    const auto& s = client.streams.at(id);
    EXPECT_EQ(s.status, 200u);
    EXPECT_EQ(s.reset_code, 0u);
    EXPECT_NE(s.body.find("data: [DONE]"), std::string::npos) << s.body;
    ASSERT_TRUE(client.goaway_last_stream) << "no GOAWAY";
    EXPECT_EQ(*client.goaway_last_stream, id);
    EXPECT_EQ(client.goaway_error, uint32_t(NGHTTP2_NO_ERROR));
    EXPECT_GE(*stop_took, 300ms);
    EXPECT_LT(*stop_took, 4s);
}

H2OverTcp::H2OverTcp(unsigned short port) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
}

bool H2OverTcp::run(H2Client& client, std::function<void(H2Client&)> on_event,
                    std::chrono::milliseconds timeout) {
    bool done = false;
    // Named std::functions: g++ 12 mishandles temporaries passed by value to a coroutine.
    const H2Client::Read read = [this](asio::mutable_buffer buf) -> awaitable<std::size_t> {
        error_code ec;
        const std::size_t n = co_await socket_.async_read_some(buf, noThrow(ec));
        co_return ec ? 0 : n;
    };
    const H2Client::Write write = [this](std::string data) -> awaitable<bool> {
        error_code ec;
        co_await asio::async_write(socket_, asio::buffer(data), noThrow(ec));
        co_return !ec;
    };
    asio::co_spawn(
        io_,
        [&]() -> awaitable<void> {
            co_await client.run(read, write, on_event);
            done = true;
        },
        asio::detached);
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (!done && std::chrono::steady_clock::now() < until)
        io_.run_for(std::chrono::milliseconds(50));
    const bool in_time = done;
    if (!done) {
        error_code ec;
        socket_.close(ec);  // the coroutine ends before its references go away
        for (int i = 0; i < 40 && !done; ++i)
            io_.run_for(std::chrono::milliseconds(50));
    }
    io_.restart();
    return in_time;
}

}  // namespace sluice::waypoint::test
