#pragma once

#include <functional>
#include <memory>
#include <string>

#include "ztunnel/proxy/proxy.h"
#include "ztunnel/proxy/relay.h"

namespace sluice::ztunnel::proxy {

// What both inbound paths (HBONE :15008 and plaintext :15006) share: who is calling, the
// authorization decision, and the labels and record of the connection.
struct InboundCall {
    ConnectionRecord record;
    // On the heap: while the connection relays they are handed to SharedLabels and this is
    // empty, so an open connection's frame does not carry a second, unused label set.
    std::unique_ptr<ConnectionLabels> labels = std::make_unique<ConnectionLabels>();
    state::AuthzDecision decision;
    // What authorize_inbound decided on, kept so a policy refresh can decide again.
    std::shared_ptr<EnrolledWorkload> destination;
    std::string peer_identity;
    tcp::endpoint source, target;
    uint64_t policy_epoch = 0;      // InboundConnections::epoch() when it was decided
    bool closed_by_policy = false;  // a policy refresh denied it while it was open
};

// Fills in source and destination from the registry and asks the authorizer. `peer_identity`
// is empty for plaintext.
InboundCall authorize_inbound(Proxy& p, std::shared_ptr<EnrolledWorkload> dst,
                              const std::string& peer_identity, const tcp::endpoint& source,
                              const tcp::endpoint& destination);

// After the app connection ended (or failed): metrics and the access-log line.
void finish_inbound(Proxy& p, InboundCall& call, bool opened, const std::string& error = {});

// A refusal by policy: counted by direction and rule, logged as "denied".
void deny_inbound(Proxy& p, InboundCall& call, const std::string& direction);

// Registers the relaying connection with Proxy::inbound_connections() (a policy refresh that
// denies it calls `abort`), and unregisters it when destroyed, on the same worker. A refresh
// that came while the app connection was being opened is caught up with here: the connection is
// decided again and, if denied, aborted before it relays a byte.
class OpenInboundGuard {
  public:
    OpenInboundGuard(Proxy& p, InboundCall& call, asio::any_io_executor ex,
                     std::function<void()> abort);
    ~OpenInboundGuard();
    OpenInboundGuard(const OpenInboundGuard&) = delete;
    OpenInboundGuard& operator=(const OpenInboundGuard&) = delete;

  private:
    Proxy& p_;
    uint64_t id_;
};

// The end of a connection that a policy refresh closed: counted as an authorization denial
// (reason "closed_by_policy"), logged with result "closed_by_policy" and the deciding rule.
void finish_closed_by_policy(Proxy& p, InboundCall& call);

// Connects to the app at `target` from inside the pod, from the client's own address when
// --transparent-inbound is on.
asio::awaitable<std::expected<tcp::socket, std::string>> connect_app(Proxy& p,
                                                                     const EnrolledWorkload& dst,
                                                                     Worker& w,
                                                                     const tcp::endpoint& target,
                                                                     const tcp::endpoint& client);

// Relays between the downstream and the app, then records bytes and finishes the call.
template <typename Downstream>
asio::awaitable<void> relay_inbound(Proxy& p, InboundCall& call, Downstream down,
                                    tcp::socket& app) {
    p.metrics().connection_opened(*call.labels);
    // While it relays, the connection holds one copy of its labels shared with every connection
    // that has the same (10k open connections between two workloads: one copy, not 10k).
    const std::shared_ptr<const ConnectionLabels> labels =
        p.metrics().shared_labels().get(std::move(*call.labels));
    call.labels.reset();
    // Named before use: g++ 12 may destroy temporaries inside co_await expressions twice.
    auto ex = co_await asio::this_coro::executor;
    std::function<void()> abort = [down, &app]() mutable {
        down.abort();
        TcpPipe(app).abort();
    };
    RelayResult r;
    {
        OpenInboundGuard open(p, call, ex, std::move(abort));
        r = co_await relay(down, TcpPipe(app));
    }
    call.labels = std::make_unique<ConnectionLabels>(*labels);
    call.record.bytes_received = r.a_to_b;
    call.record.bytes_sent = r.b_to_a;
    if (call.closed_by_policy)
        finish_closed_by_policy(p, call);
    else
        finish_inbound(p, call, true, r.failed ? "connection reset" : "");
}

}  // namespace sluice::ztunnel::proxy
