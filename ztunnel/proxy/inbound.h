#pragma once

#include "ztunnel/proxy/proxy.h"
#include "ztunnel/proxy/relay.h"

namespace sluice::ztunnel::proxy {

// What both inbound paths (HBONE :15008 and plaintext :15006) share: who is calling, the
// authorization decision, and the labels and record of the connection.
struct InboundCall {
    ConnectionRecord record;
    ConnectionLabels labels;
    state::AuthzDecision decision;
};

// Fills in source and destination from the registry and asks the authorizer. `peer_identity`
// is empty for plaintext.
InboundCall authorize_inbound(Proxy& p, const EnrolledWorkload& dst,
                              const std::string& peer_identity, const tcp::endpoint& source,
                              const tcp::endpoint& destination);

// After the app connection ended (or failed): metrics and the access-log line.
void finish_inbound(Proxy& p, InboundCall& call, bool opened, const std::string& error = {});

// A refusal by policy: counted by direction and rule, logged as "denied".
void deny_inbound(Proxy& p, InboundCall& call, const std::string& direction);

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
    p.metrics().connection_opened(call.labels);
    auto r = co_await relay(down, TcpPipe(app));
    call.record.bytes_received = r.a_to_b;
    call.record.bytes_sent = r.b_to_a;
    finish_inbound(p, call, true, r.failed ? "connection reset" : "");
}

}  // namespace sluice::ztunnel::proxy
