// Inbound HBONE (:15008 in the destination pod's netns): mutual TLS with the pod's certificate,
// then one CONNECT stream per proxied connection: check the authority is this pod, authorize the
// peer's SPIFFE identity, connect to the app, answer 200/400/401/503 (DESIGN.md §4).
#include "ztunnel/proxy/inbound.h"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "ztunnel/hbone/handshake.h"

namespace sluice::ztunnel::proxy {
namespace {

std::optional<tcp::endpoint> parse_authority(const std::string& authority) {
    std::string host;
    uint16_t port = 0;
    if (!split_host_port(authority, host, port) || port == 0)
        return std::nullopt;
    boost::system::error_code ec;
    auto ip = asio::ip::make_address(host, ec);
    if (ec)
        return std::nullopt;
    return tcp::endpoint(ip, port);
}

asio::awaitable<void> hbone_stream(Proxy& p, std::shared_ptr<EnrolledWorkload> dst, Worker& w,
                                   std::shared_ptr<hbone::Stream> st) {
    Proxy::ActiveGuard active(p);
    hbone::Connection& conn = st->connection();
    const tcp::endpoint peer = conn.remote_endpoint();
    const hbone::ConnectRequest request = st->take_request();
    auto target = parse_authority(request.authority);
    const bool ours = target && addressed_to(p, *dst, *target);
    InboundCall call =
        authorize_inbound(p, dst, conn.peer().uri(), peer, target.value_or(tcp::endpoint()));
    call.record.direction = "inbound";
    call.labels->connection_security_policy = "mutual_tls";
    if (request.method != "CONNECT" || !ours) {
        conn.respond(*st, hbone::kStatusBadRequest);
        finish_inbound(p, call, false,
                       "bad request: " + request.method + " " + request.authority +
                           " is not a CONNECT to this pod");
        co_return;
    }
    if (!call.decision.allowed) {
        conn.respond(*st, hbone::kStatusUnauthorized);
        deny_inbound(p, call, "inbound");
        co_return;
    }
    auto app = co_await connect_app(p, *dst, w, *target, peer);
    if (!app) {
        conn.respond(*st, hbone::kStatusUnavailable);
        call.labels->response_flags = "UF";
        finish_inbound(p, call, false, app.error());
        co_return;
    }
    conn.respond(*st, hbone::kStatusOk);
    relay_inbound(p, std::move(call), StreamPipe(std::move(st)), std::move(*app));
}

asio::awaitable<void> hbone_connection(Proxy& p, std::shared_ptr<EnrolledWorkload> dst, Worker& w,
                                       tcp::socket s) {
    boost::system::error_code ec;
    const tcp::endpoint peer = s.remote_endpoint(ec);
    auto ctx = p.tls().server(dst->id);
    if (!ctx) {
        spdlog::error("no TLS context for {}: {}", dst->id.uri(), ctx.error());
        co_return;
    }
    std::shared_ptr<asio::ssl::context> keep = *ctx;
    auto on_request = [&p, dst, &w](std::shared_ptr<hbone::Stream> st) {
        asio::co_spawn(w.io, hbone_stream(p, dst, w, std::move(st)), asio::detached);
    };
    auto conn = co_await hbone::handshake_server(std::move(s), *keep, on_request);
    if (!conn) {
        const hbone::Failure& f = conn.error();
        spdlog::warn("refused HBONE connection from {} to {}: {}", to_string(peer), dst->id.uri(),
                     f.message());
        p.metrics().handshake_failed(f.error == hbone::Error::PeerRejected
                                         ? f.detail.substr(0, f.detail.find(':'))
                                         : hbone::to_string(f.error));
        co_return;
    }
    p.track_server_connection(w, *conn);
}

state::AuthzDecision decide_again(Proxy& p, const InboundConnections::Entry& e) {
    static const std::string kPlaintext;
    return authorize_inbound(p, e.destination, e.peer_identity ? *e.peer_identity : kPlaintext,
                             e.source, e.target)
        .decision;
}

}  // namespace

InboundCall authorize_inbound(Proxy& p, std::shared_ptr<EnrolledWorkload> dst_ptr,
                              const std::string& peer_identity, const tcp::endpoint& source,
                              const tcp::endpoint& destination) {
    InboundCall call;
    const EnrolledWorkload& dst = *dst_ptr;
    call.destination = std::move(dst_ptr);
    call.peer_identity = peer_identity;
    call.source = source;
    call.target = destination;
    auto snap = p.registry().current();
    call.labels->reporter = "destination";
    call.record.src_addr = source;
    call.record.dst_addr = destination;
    call.labels->source_principal = peer_identity;
    if (const state::Workload* src = snap->workload_by_ip(source.address())) {
        call.labels->source_workload = src->name;
        call.labels->source_workload_namespace = src->namespace_name;
        call.labels->source_app = src->name;
    }
    // The destination as the policies see it: the registry's entry, or what enrollment said.
    state::Workload fallback;
    const state::Workload* reg = snap->workload(dst.info.namespace_name, dst.info.name);
    if (reg == nullptr) {
        fallback.name = dst.info.name;
        fallback.namespace_name = dst.info.namespace_name;
        fallback.service_account = dst.info.service_account;
        fallback.uid = dst.info.uid;
        fallback.ips = dst.ips;
        reg = &fallback;
    }
    call.labels->destination_workload = dst.info.name;
    call.labels->destination_workload_namespace = dst.info.namespace_name;
    call.labels->destination_principal = dst.id.uri();
    call.labels->destination_app = dst.info.name;
    call.policy_epoch = p.inbound_connections().epoch();
    call.decision = p.authorizer().authorize(state::AuthzRequest{
        .peer_identity = peer_identity,
        .source = source.address(),
        .destination = reg,
        .port = destination.port(),
        .destination_address = destination.address(),
    });
    return call;
}

bool is_own_port(const Proxy& p, uint16_t port) {
    const Config& config = p.config();
    return port == config.hbone_port || port == config.inbound_plaintext_port ||
           port == config.outbound_port;
}

bool addressed_to(const Proxy& p, const EnrolledWorkload& dst, const tcp::endpoint& target) {
    asio::ip::address address = target.address();
    if (address.is_v6() && address.to_v6().is_v4_mapped())  // on a dual-stack socket
        address = asio::ip::make_address_v4(asio::ip::v4_mapped, address.to_v6());
    return std::find(dst.ips.begin(), dst.ips.end(), address) != dst.ips.end() &&
           !is_own_port(p, target.port());
}

void finish_inbound(Proxy& p, InboundCall& call, bool opened, const std::string& error) {
    if (opened)
        p.metrics().connection_closed(*call.labels, call.record.bytes_sent,
                                      call.record.bytes_received);
    if (!error.empty() && call.record.result == "ok")
        call.record.result = "error";
    p.access_log().write(call.record, *call.labels, error);
}

void deny_inbound(Proxy& p, InboundCall& call, const std::string& direction) {
    p.metrics().authz_denied(direction, call.decision.rule);
    call.record.result = "denied";
    finish_inbound(p, call, false, call.decision.reason + " (" + call.decision.rule + ")");
}

OpenInboundGuard::OpenInboundGuard(Proxy& p, const InboundCall& call,
                                   std::shared_ptr<const std::string> peer_identity,
                                   asio::io_context::executor_type ex,
                                   std::function<void(const state::AuthzDecision&)> close)
    : p_(p) {
    id_ = p.inbound_connections().add(
        {
            .destination = call.destination,
            .peer_identity = std::move(peer_identity),
            .source = call.source,
            .target = call.target,
            .executor = std::move(ex),
            .close = std::move(close),
        },
        call.policy_epoch, [&p](const InboundConnections::Entry& e) { return decide_again(p, e); });
}

OpenInboundGuard::~OpenInboundGuard() {
    if (id_ != 0)  // 0: moved from (registrations count from 1)
        p_.inbound_connections().remove(id_);
}

void InboundRelayEnd::open(const InboundCall& call, std::weak_ptr<RelayControl> control,
                           asio::io_context::executor_type ex) {
    relay = std::move(control);
    // The peer identity is the shared labels' source principal (the same string, kept alive
    // by them). The close runs on the relay's worker while the registration exists, so `this`
    // is alive; capturing only `this` keeps it in std::function's own storage.
    guard.emplace(p, call, std::shared_ptr<const std::string>(labels, &labels->source_principal),
                  std::move(ex), [this](const state::AuthzDecision& d) {
                      closed_by = std::make_unique<state::AuthzDecision>(d);
                      if (auto r = relay.lock())
                          r->abort();
                  });
}

void InboundRelayEnd::operator()(const RelayResult& r) {
    guard.reset();
    InboundCall call;
    call.record = std::move(record);
    *call.labels = *labels;
    call.record.bytes_received = r.a_to_b;
    call.record.bytes_sent = r.b_to_a;
    if (closed_by) {
        call.decision = std::move(*closed_by);
        finish_closed_by_policy(p, call);
    } else {
        finish_inbound(p, call, true, r.failed ? "connection reset" : "");
    }
}

void finish_closed_by_policy(Proxy& p, InboundCall& call) {
    p.metrics().authz_denied(std::string(call.record.direction), "closed_by_policy");
    p.metrics().connection_closed(*call.labels, call.record.bytes_sent, call.record.bytes_received);
    call.record.result = "closed_by_policy";
    p.access_log().write(
        call.record, *call.labels,
        "policy changed: " + call.decision.reason + " (" + call.decision.rule + ")");
}

size_t close_denied_inbound(Proxy& p) {
    const size_t n = p.inbound_connections().close_denied(
        [&p](const InboundConnections::Entry& e) { return decide_again(p, e); });
    if (n > 0)
        spdlog::info("policy refresh: closing {} open inbound connection(s) it denies", n);
    return n;
}

asio::awaitable<std::expected<WorkerSocket, std::string>> connect_app(Proxy& p,
                                                                      const EnrolledWorkload& dst,
                                                                      Worker& w,
                                                                      const tcp::endpoint& target,
                                                                      const tcp::endpoint& client) {
    std::optional<asio::ip::address> source;
    if (p.config().transparent_inbound)
        source = client.address();
    auto app = co_await connect_from(p, dst, w, target, source, source.has_value());
    co_return app;
}

std::optional<WorkerSocket> accepted_socket(Worker& w, AcceptedFd c, const char* listener) {
    auto s = std::move(c).socket(w.io);
    if (!s) {
        spdlog::warn("{}: cannot serve a connection: {}", listener, s.error().message());
        return std::nullopt;
    }
    return std::move(*s);
}

void serve_hbone(Proxy& p, std::shared_ptr<EnrolledWorkload> dst, Worker& w, AcceptedFd c) {
    if (auto s = accepted_socket(w, std::move(c), "hbone"))
        asio::co_spawn(w.io, hbone_connection(p, std::move(dst), w, std::move(*s)), asio::detached);
}

}  // namespace sluice::ztunnel::proxy
