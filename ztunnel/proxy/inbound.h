#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

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
    uint64_t policy_epoch = 0;  // InboundConnections::epoch() when it was decided
};

// Fills in source and destination from the registry and asks the authorizer. `peer_identity`
// is empty for plaintext.
InboundCall authorize_inbound(Proxy& p, std::shared_ptr<EnrolledWorkload> dst,
                              const std::string& peer_identity, const tcp::endpoint& source,
                              const tcp::endpoint& destination);

// After the app connection ended (or failed): metrics and the access-log line.
void finish_inbound(Proxy& p, InboundCall& call, bool opened, const std::string& error = {});
// One of ztunnel's own listeners in a pod (:15001, :15006, :15008): never an app's port, and a
// connection to it from the inbound side would loop the peer's bytes back into ztunnel.
bool is_own_port(const Proxy& p, uint16_t port);
// An app port at one of the pod's own addresses: the only target an inbound connection may be
// forwarded to. Anything else would make ztunnel connect onward from inside the pod (an open
// proxy past the pod's capture: its sockets carry the bypass mark).
bool addressed_to(const Proxy& p, const EnrolledWorkload& dst, const tcp::endpoint& target);

// A refusal by policy: counted by direction and rule, logged as "denied".
void deny_inbound(Proxy& p, InboundCall& call, const std::string& direction);

// Registers the relaying connection with Proxy::inbound_connections() (a policy refresh that
// denies it calls `close` with the new decision), and unregisters it when destroyed, on the same
// worker. A refresh that came while the app connection was being opened is caught up with here:
// the connection is decided again and, if denied, closed before it relays a byte.
class OpenInboundGuard {
  public:
    OpenInboundGuard(Proxy& p, const InboundCall& call,
                     std::shared_ptr<const std::string> peer_identity,
                     asio::io_context::executor_type ex,
                     std::function<void(const state::AuthzDecision&)> close);
    ~OpenInboundGuard();
    OpenInboundGuard(OpenInboundGuard&& o) noexcept : p_(o.p_), id_(std::exchange(o.id_, 0)) {}
    OpenInboundGuard& operator=(OpenInboundGuard&&) = delete;

  private:
    Proxy& p_;
    uint64_t id_;
};

// The end of a connection that a policy refresh closed: counted as an authorization denial
// (reason "closed_by_policy"), logged with result "closed_by_policy" and the deciding rule.
void finish_closed_by_policy(Proxy& p, InboundCall& call);

// The socket of a connection an inbound listener accepted, made on `w`; nullopt (logged as
// `listener`'s, the connection reset) when it cannot be made.
std::optional<WorkerSocket> accepted_socket(Worker& w, AcceptedFd c, const char* listener);

// Connects to the app at `target` from inside the pod, from the client's own address when
// --transparent-inbound is on.
asio::awaitable<std::expected<WorkerSocket, std::string>> connect_app(Proxy& p,
                                                                      const EnrolledWorkload& dst,
                                                                      Worker& w,
                                                                      const tcp::endpoint& target,
                                                                      const tcp::endpoint& client);

// What the end of a relaying inbound connection needs, held by its relay: the access-log
// record, one copy of the labels shared with every connection that has the same (10k open
// connections between two workloads: one copy, not 10k), the drain count and the registration
// with Proxy::inbound_connections() (which keeps what a refresh decides on).
struct InboundRelayEnd {
    InboundRelayEnd(Proxy& proxy, ConnectionRecord r, std::shared_ptr<const ConnectionLabels> l)
        : p(proxy), record(std::move(r)), labels(std::move(l)), active(proxy) {}
    // Registers `call` with Proxy::inbound_connections(): a policy refresh that denies the
    // connection aborts `relay`.
    void open(const InboundCall& call, std::weak_ptr<RelayControl> control,
              asio::io_context::executor_type ex);
    // The relay ended: unregisters, records the bytes and finishes the call.
    void operator()(const RelayResult& r);

    Proxy& p;
    ConnectionRecord record;
    std::shared_ptr<const ConnectionLabels> labels;
    std::unique_ptr<state::AuthzDecision> closed_by;  // the refresh's decision that closed it
    std::weak_ptr<RelayControl> relay;                // what a refresh's close aborts
    Proxy::ActiveGuard active;
    std::optional<OpenInboundGuard> guard;
};

// Relays between the downstream and the app in the background (the calling coroutine may end),
// then records bytes and finishes the call.
template <typename Downstream>
void relay_inbound(Proxy& p, InboundCall call, Downstream down, WorkerSocket app) {
    p.metrics().connection_opened(*call.labels);
    auto ex = app.get_executor();
    // The relay's first step is posted: a close during open() (a policy refresh that came while
    // the app connection was being opened) aborts it before it relays a byte. The end lives in
    // the relay, so open() registers it where it stays.
    auto relay =
        start_relay(std::move(down), TcpPipe(std::move(app)),
                    InboundRelayEnd(p, std::move(call.record),
                                    p.metrics().shared_labels().get(std::move(*call.labels))));
    relay->done().open(call, relay, std::move(ex));
}

}  // namespace sluice::ztunnel::proxy
