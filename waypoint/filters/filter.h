#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "waypoint/http/asio.h"
#include "waypoint/http/openai_error.h"
#include "waypoint/json/document.h"

namespace sluice::waypoint {

class BackendPool;
struct Endpoint;

// Token counts the backend reported (OpenAI `usage`), or our estimate when it reported none.
struct Usage {
    std::uint64_t prompt_tokens = 0;
    std::uint64_t completion_tokens = 0;
    bool reported = false;  // false: the numbers are the pre-admission estimate
    std::uint64_t total() const { return prompt_tokens + completion_tokens; }
};

// One upstream target the route chose: a pool and how long to wait for it.
struct RouteTarget {
    BackendPool* pool = nullptr;
    std::string model;  // model name sent upstream (a route may rewrite it)
    std::chrono::milliseconds timeout{30'000};
};

// Everything filters know about one request, from admission to settlement.
struct RequestContext {
    explicit RequestContext(Request& r) : request(r) {}

    Request& request;  // as read from the client; filters may rewrite `body`
    // OpenAI API of the path: "chat", "completions", "embeddings", "models", or "" (pass-through).
    std::string api;
    std::optional<json::Document> body;  // parsed JSON body of an OpenAI call
    bool body_modified = false;          // re-serialize `body` before sending it upstream
    // Members the filters added to `body` (so it stays what is sent), spliced into the client's
    // text at `body_insert_at` instead of re-serializing the whole document; "" = none.
    std::string body_insert;
    std::size_t body_insert_at = 0;
    std::string model;  // as the client asked for it
    bool stream = false;
    bool client_wants_usage = false;  // the client itself set stream_options.include_usage

    std::string tenant;         // who is paying; "" when no TokenBudget identifies one
    std::string priority;       // admission class (critical, standard, sheddable); "" = none
    std::string peer_identity;  // SPIFFE id of the peer (HBONE); empty on the plain listener
    std::string destination;    // HBONE: the CONNECT :authority (service VIP:port), for the log
    std::string traceparent;    // W3C trace context sent upstream and logged
    std::uint64_t estimated_prompt_tokens = 0;
    std::uint64_t max_output_tokens = 0;  // max_tokens / max_completion_tokens or a default
    Usage usage;
    std::string sent_model;  // the attempt's model when its target rewrote the client's, else ""
    std::uint64_t reserved_tokens = 0;  // what the budget took at admission, settled on completion
    double reserved_minute_tokens = 0;  // of which the tokens/min bucket (≤ its capacity)
    std::int64_t reserved_day = 0;      // the UTC day the daily quota was charged on
    std::string budget_state;           // the budget state it was taken from; "" = none taken
    std::string budget_model_label;     // that state's model label for the remaining-tokens gauge

    std::string route;  // name of the ModelRoute that matched
    // The route table this request was routed with: keeps its routes and pools (which
    // `targets` point into) alive when a policy reload replaces the table mid-request.
    std::shared_ptr<const void> route_table;
    std::string route_decision;        // which rule decided (x-sluice-route header)
    std::vector<RouteTarget> targets;  // primary first, then fallbacks
    std::string backend;               // endpoint that answered
    unsigned status = 0;               // status sent to the client
    std::string result = "ok";         // for the access log: ok, rate_limited, upstream_error, …
    std::vector<std::pair<std::string, std::string>> response_headers;  // added to the reply

    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::optional<std::chrono::steady_clock::time_point> first_token;
};

// A waypoint filter (Envoy's shape: one folder each under waypoint/filters/). Filters run in
// configuration order on the request and in reverse on completion; they are shared by all
// worker threads, so any state they keep must be thread-safe.
class HttpFilter {
  public:
    virtual ~HttpFilter() = default;
    virtual std::string_view name() const = 0;
    // The request is complete (headers and body). A LocalReply answers it without upstream.
    virtual std::optional<LocalReply> onRequest(RequestContext&) { return std::nullopt; }
    // Called for each SSE event of a streamed response with its `data:` payload, before the
    // event is relayed. A filter may edit `raw` (the event's bytes as relayed); returning false
    // drops the event.
    virtual bool onStreamEvent(RequestContext&, std::string_view /*data*/, std::string& /*raw*/) {
        return true;
    }
    // The complete body of a non-streamed response (when it fit the inspection limit).
    virtual void onResponseBody(RequestContext&, std::string_view /*body*/) {}
    // Exactly once for every request whose onRequest ran without a reply, after the response
    // ended in any way (also errors and client disconnects): settle reservations here.
    virtual void onComplete(RequestContext&) {}
};

// Calls onComplete, newest first, on every filter whose onRequest let the request through,
// once: at settle(), or when it is destroyed. A handler that throws after admission must not
// keep a tenant's concurrency slot or the tokens reserved for it.
class FilterSettlement {
  public:
    FilterSettlement(const std::vector<HttpFilter*>& filters, RequestContext& ctx)
        : filters_(filters), ctx_(ctx) {}
    FilterSettlement(const FilterSettlement&) = delete;
    FilterSettlement& operator=(const FilterSettlement&) = delete;
    ~FilterSettlement() { settle(); }
    void admitted() { ++admitted_; }  // the next filter's onRequest let the request through
    // Never throws (it runs in a destructor, maybe while unwinding): a filter whose onComplete
    // throws is logged, and the ones before it are still settled.
    void settle() noexcept {
        while (admitted_ > 0) {
            HttpFilter* filter = filters_[--admitted_];
            try {
                filter->onComplete(ctx_);
            } catch (const std::exception& e) {
                spdlog::error("filter {}: onComplete: {}", filter->name(), e.what());
            } catch (...) {
                spdlog::error("filter {}: onComplete threw", filter->name());
            }
        }
    }

  private:
    const std::vector<HttpFilter*>& filters_;
    RequestContext& ctx_;
    std::size_t admitted_ = 0;
};

}  // namespace sluice::waypoint
