#include "waypoint/hbone/listener.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <utility>

#include "ztunnel/hbone/handshake.h"

namespace sluice::waypoint {
namespace {

// An HBONE CONNECT stream as the client side of an HTTP/1.1 (or h2c) connection.
class HbonePipe final : public ByteStream {
  public:
    // A write that waits longer than `write_timeout` for the peer's flow control resets the
    // stream (a client that stopped reading must not hold the request forever).
    HbonePipe(std::shared_ptr<hbone::Stream> stream, asio::any_io_executor ex,
              std::chrono::milliseconds write_timeout)
        : stream_(std::move(stream)), write_timeout_(write_timeout), watchdog_(std::move(ex)) {}
    ~HbonePipe() override { *alive_ = false; }
    HbonePipe(const HbonePipe&) = delete;
    HbonePipe& operator=(const HbonePipe&) = delete;

    awaitable<IoResult> write(std::string data) override {
        const std::size_t n = data.size();
        bool written = false;
        if (!closed_) {
            // The watchdog checks the write that is pending when it fires: a write costs a clock
            // read here, not a timer of its own.
            write_since_ = std::chrono::steady_clock::now();
            writing_ = true;
            if (!watching_)
                watch(write_since_ + write_timeout_);
            written = co_await stream_->write(asio::buffer(data));
            writing_ = false;
        }
        co_return written ? IoResult{error_code{}, n} : IoResult{asio::error::broken_pipe, 0};
    }
    void shutdown_send() override { stream_->close_write(); }
    void close() override {
        if (std::exchange(closed_, true))
            return;
        // After a clean shutdown_send the queued response still goes out with END_STREAM;
        // otherwise (client gone, upstream reset mid-response) the stream is reset.
        if (!stream_->write_closed())
            stream_->reset();
        if (reading_)
            stream_->cancel_read();
    }
    bool is_open() const override { return !closed_ && !stream_->is_closed(); }

  protected:
    awaitable<IoResult> readSome(asio::mutable_buffer buf) override {
        if (closed_)
            co_return IoResult{asio::error::bad_descriptor, 0};
        if (readCancelled())
            co_return IoResult{asio::error::operation_aborted, 0};
        if (buf.size() == 0)
            co_return IoResult{error_code{}, 0};
        reading_ = true;
        const std::size_t n = co_await stream_->read(buf);
        reading_ = false;
        if (n > 0)
            co_return IoResult{error_code{}, n};
        if (readCancelled())
            co_return IoResult{asio::error::operation_aborted, 0};
        const error_code end = stream_->was_reset() ? error_code(asio::error::connection_reset)
                                                    : error_code(asio::error::eof);
        co_return IoResult{end, 0};
    }
    void interruptRead() override {
        if (reading_)
            stream_->cancel_read();
    }

  private:
    void watch(std::chrono::steady_clock::time_point at) {
        watching_ = true;
        watchdog_.expires_at(at);
        watchdog_.async_wait([this, alive = alive_](error_code ec) {
            if (ec || !*alive)
                return;
            watching_ = false;
            if (!writing_)
                return;  // the next write starts watching again
            if (std::chrono::steady_clock::now() < write_since_ + write_timeout_)
                return watch(write_since_ + write_timeout_);
            spdlog::info("hbone: stream {}: the peer took no response bytes for {} ms; reset",
                         stream_->id(), write_timeout_.count());
            stream_->reset();  // the pending write ends when the stream closes
        });
    }

    std::shared_ptr<hbone::Stream> stream_;
    std::chrono::milliseconds write_timeout_;
    asio::steady_timer watchdog_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    std::chrono::steady_clock::time_point write_since_;
    bool writing_ = false;
    bool watching_ = false;
    bool reading_ = false;
    bool closed_ = false;
};

}  // namespace

HboneServer::HboneServer(hbone::TlsContexts& tls, identity::Identity local,
                         const ServerLimits& limits, const Handler& handler, Hooks hooks,
                         H2Connections* h2)
    : tls_(tls),
      local_(std::move(local)),
      limits_(limits),
      handler_(handler),
      hooks_(std::move(hooks)),
      h2_(h2) {}

awaitable<void> HboneServer::acceptLoop(tcp::acceptor& acceptor) {
    co_await acceptEach(acceptor,
                        [this](tcp::socket socket) { return serveConnection(std::move(socket)); });
}

awaitable<void> HboneServer::serveConnection(tcp::socket socket) {
    error_code ec;
    const auto peer = socket.remote_endpoint(ec);
    socket.set_option(tcp::no_delay(true), ec);
    // The current certificate: renewed by the CertManager at half its lifetime, so a long-running
    // waypoint's new connections always get a valid one; live connections keep theirs.
    auto ctx = tls_.server(local_);
    if (!ctx) {
        spdlog::error("hbone: no TLS context for {}: {}", local_.uri(), ctx.error());
        if (hooks_.refused)
            hooks_.refused("no_certificate_of_our_own");
        co_return;
    }
    std::shared_ptr<asio::ssl::context> keep = *ctx;
    auto executor = socket.get_executor();
    auto on_request = [this, executor](std::shared_ptr<hbone::Stream> stream) {
        asio::co_spawn(executor, serveStream(std::move(stream)), asio::detached);
    };
    auto conn = co_await hbone::handshake_server(std::move(socket), *keep, on_request);
    if (!conn) {
        const hbone::Failure& f = conn.error();
        const std::string reason = f.error == hbone::Error::PeerRejected
                                       ? f.detail.substr(0, f.detail.find(':'))
                                       : hbone::to_string(f.error);
        spdlog::warn("hbone: refused connection from {}:{}: {}", peer.address().to_string(),
                     peer.port(), f.message());
        if (hooks_.refused)
            hooks_.refused(reason);
        co_return;
    }
    std::erase_if(connections_, [](const auto& c) { return c.expired(); });
    connections_.push_back(*conn);
}

awaitable<void> HboneServer::serveStream(std::shared_ptr<hbone::Stream> stream) {
    hbone::Connection& conn = stream->connection();
    const auto& request = stream->request();
    if (request.method != "CONNECT" || request.authority.empty()) {
        // DESIGN.md §4: a malformed HBONE request is a 400, as ztunnel answers it.
        conn.respond(*stream, hbone::kStatusBadRequest);
        spdlog::warn("hbone: refused {} {} from {}: not a CONNECT with an authority",
                     request.method, request.authority, conn.peer().uri());
        if (hooks_.stream)
            hooks_.stream(hbone::kStatusBadRequest);
        co_return;
    }
    conn.respond(*stream, hbone::kStatusOk);
    if (hooks_.stream)
        hooks_.stream(hbone::kStatusOk);
    HbonePipe pipe(stream, conn.executor(), limits_.idle_timeout);
    ClientStream client(pipe, conn.executor());
    const Downstream downstream{conn.peer().uri(), request.authority, h2_};
    co_await serveHttp1(client, limits_, handler_, downstream);
}

void HboneServer::drainAll() {
    for (auto& weak : connections_) {
        if (auto c = weak.lock())
            c->drain();
    }
}

void HboneServer::closeAll() {
    for (auto& weak : connections_) {
        if (auto c = weak.lock())
            c->close();
    }
    connections_.clear();
}

}  // namespace sluice::waypoint
