#pragma once

#include <chrono>
#include <span>
#include <string>

#include "waypoint/filters/filter.h"
#include "waypoint/http/asio.h"
#include "waypoint/http/client_stream.h"
#include "waypoint/http/upstream.h"

namespace sluice::waypoint {

// What happened to one attempt to forward a request to one endpoint.
enum class ForwardOutcome {
    Completed,        // the response was relayed to the client in full
    ConnectFailed,    // no connection to the endpoint
    Timeout,          // no response header within the route's timeout, or a stalled body
    UpstreamFailed,   // the endpoint reset, closed early or sent a malformed response
    RetryableStatus,  // 5xx or 429 before anything was sent to the client (nothing relayed)
    ClientGone,       // the client went away; the upstream request was abandoned
};
std::string_view toString(ForwardOutcome outcome);

struct ForwardResult {
    ForwardOutcome outcome = ForwardOutcome::UpstreamFailed;
    unsigned status = 0;           // upstream status, when a header arrived
    bool committed = false;        // bytes reached the client: no retry, no local error reply
    bool close_delimited = false;  // the body's end is the connection's: the client must close
    std::chrono::steady_clock::duration header_latency{};
};

// The client side of one exchange.
struct ClientSide {
    ClientStream& socket;
    unsigned version = 11;
    bool keep_alive = true;
};

struct ForwardOptions {
    std::chrono::milliseconds timeout{30'000};  // until the response header, and per body read
    bool hold_retryable_status = false;   // on 5xx/429 return RetryableStatus without relaying
    std::size_t inspect_limit = 4 << 20;  // largest non-streamed body handed to onResponseBody
};

// Sends `ctx.request` (with `body`) to `address` and relays the response to the client:
// SSE event by event through the filters' onStreamEvent, other bodies chunk by chunk as read.
// `upstream_socket` is set while an upstream connection is in use, so a ClientWatch can close it.
awaitable<ForwardResult> forward(ClientSide client, RequestContext& ctx, const std::string& body,
                                 const tcp::endpoint& address, const ForwardOptions& options,
                                 std::span<HttpFilter* const> filters, UpstreamPool& pool,
                                 tcp::socket** upstream_socket);

}  // namespace sluice::waypoint
