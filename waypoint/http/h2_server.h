#pragma once

#include <chrono>
#include <set>

#include "waypoint/http/asio.h"
#include "waypoint/http/server.h"

namespace sluice::waypoint {

// HTTP/2 settings of the waypoint's h2c connections (docs/waypoint.md, "HTTP/2").
inline constexpr std::uint32_t kH2MaxConcurrentStreams = 100;

// The request-body bytes the admitted streams of one h2c connection may reserve together
// (ServerLimits::max_connection_body_bytes, never below one whole body).
std::size_t h2BodyBudget(const ServerLimits& limits);

// The live client connections of one worker, h2c and HTTP/1.1 (plain and inside HBONE streams),
// so that a stop can send each a GOAWAY (HTTP/1.1: close once the exchange in flight is done, at
// once when between requests) and wait for what is in flight. Used on the worker's thread only.
class H2Connections {
  public:
    class Member {
      public:
        virtual void goaway() = 0;  // no new streams; the ones in flight finish

      protected:
        ~Member() = default;
    };

    explicit H2Connections(asio::any_io_executor ex) : idle_(std::move(ex)) {}
    // A connection that joins while draining gets its GOAWAY at once.
    void add(Member& m);
    void remove(Member& m);
    // GOAWAY to every connection (and to later ones); returns once none is left or after `grace`.
    awaitable<void> drain(std::chrono::milliseconds grace);
    std::size_t size() const { return members_.size(); }

  private:
    std::set<Member*> members_;
    bool draining_ = false;
    asio::steady_timer idle_;
};

// The HTTP/1.1 parser refuses the HTTP/2 client preface's request line "PRI * HTTP/2.0" as a
// bad version, with the whole line and its empty header block read into `buffer`: only that
// error path tells h2c with prior knowledge apart, so HTTP/1.1 requests pay nothing for it.
bool isH2Preface(const beast::flat_buffer& buffer);

// The HTTP/1.1 request that switched its connection with `Upgrade: h2c` (the 101 is sent).
struct H2cUpgraded {
    Request& request;           // whole; its body is moved into stream 1
    std::string_view settings;  // its HTTP2-Settings, decoded and valid (h2cUpgradeOffer)
};

// Serves h2c on `transport` (a TCP connection or an HBONE stream); `received` holds the bytes
// read so far (the preface's start and maybe the client's first frames). Every HTTP/2 stream is
// served as one HTTP/1.1 request through serveHttp1 and `handler`, translated at the stream
// boundary, with `downstream`'s peer identity and authority. Registers with `downstream.h2`.
// With `upgraded`, the client's settings are in effect from the start and its request is stream
// 1 (half-closed remote), answered like any other; the client's preface follows in `received`
// or on the transport. Returns when the connection ended (streams still running hold no
// reference to `transport` or `upgraded`).
awaitable<void> serveH2c(ClientStream& transport, const beast::flat_buffer& received,
                         const ServerLimits& limits, const Handler& handler,
                         const Downstream& downstream, const H2cUpgraded* upgraded = nullptr);

}  // namespace sluice::waypoint
