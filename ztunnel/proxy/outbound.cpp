// Outbound (:15001 in the source pod's netns): find where the app meant to connect, resolve it in
// the registry, and carry it over HBONE to the destination pod's ztunnel (or to a pod of the
// waypoint the destination service uses), or pass it through when the destination is outside
// the mesh. A destination pod enrolled on this node is served by this process's inbound side
// directly (the same-node fast path).
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <random>

#include "ztunnel/proxy/inbound.h"
#include "ztunnel/proxy/proxy.h"
#include "ztunnel/proxy/relay.h"

namespace sluice::ztunnel::proxy {
namespace {

std::string random_hex(size_t n) {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    static constexpr char kHex[] = "0123456789abcdef";
    std::string s(n, '0');
    for (auto& c : s)
        c = kHex[rng() & 0xf];
    return s;
}

// W3C trace context: a new trace per connection, sampled flag off.
std::string new_traceparent() {
    return "00-" + random_hex(32) + "-" + random_hex(16) + "-00";
}

std::string app_label(const state::Labels& labels, const std::string& fallback) {
    for (const char* key : {"app.kubernetes.io/name", "app"}) {
        if (auto it = labels.find(key); it != labels.end())
            return it->second;
    }
    return fallback;
}

// W3C baggage with the source's attributes, as Istio ambient sends them.
std::string baggage(const EnrolledWorkload& src, const std::string& app) {
    return "k8s.cluster.name=Kubernetes,k8s.namespace.name=" + src.info.namespace_name +
           ",k8s.pod.name=" + src.info.name + ",service.name=" + app;
}

std::optional<asio::ip::address> same_family(const std::vector<asio::ip::address>& ips, bool v6) {
    for (const auto& ip : ips) {
        if (ip.is_v6() == v6)
            return ip;
    }
    return std::nullopt;
}

void finish(Proxy& p, ConnectionRecord& rec, const ConnectionLabels& labels, bool opened,
            const std::string& level_error = {}) {
    if (opened)
        p.metrics().connection_closed(labels, rec.bytes_sent, rec.bytes_received);
    if (!level_error.empty() && rec.result == "ok")
        rec.result = "error";
    p.access_log().write(rec, labels, level_error);
}

// Fail closed: the client is reset, the refusal counted, logged and written to the access log.
void refuse(Proxy& p, ConnectionRecord& rec, ConnectionLabels& labels, AcceptedFd& client,
            const char* reason, const std::string& detail) {
    labels.response_flags = "UH";  // Envoy: no healthy upstream
    p.metrics().outbound_refused(reason);
    spdlog::warn("outbound {} -> {} refused ({}): {}", to_string(rec.src_addr),
                 to_string(rec.dst_addr), reason, detail);
    finish(p, rec, labels, false, detail);
    client.reset();
}

// Everything the tunnel needs once the destination is known.
struct Tunnel {
    std::optional<Proxy::ActiveGuard> active;
    ConnectionRecord rec;
    ConnectionLabels labels;
    hbone::PoolKey key;
    hbone::ConnectRequest request;
    std::optional<asio::ip::address> lb_endpoint;
};

void release_endpoint(Proxy& p, const std::optional<asio::ip::address>& lb_endpoint) {
    if (lb_endpoint)
        p.load_balancer().closed(*lb_endpoint);
}

// For a relaying connection only what its end needs stays (the relay holds this): the record,
// one copy of the labels shared with every connection that has the same, the load-balancer pick
// and the drain count.
struct OutboundEnd {
    Proxy* p;
    ConnectionRecord rec;
    std::shared_ptr<const ConnectionLabels> labels;
    std::optional<asio::ip::address> lb_endpoint;
    Proxy::ActiveGuard active;
    bool tunnelled;  // a reset is logged as an error (HBONE); passthrough logs it as ok

    void operator()(const RelayResult& r) {
        rec.bytes_received = r.a_to_b;
        rec.bytes_sent = r.b_to_a;
        finish(*p, rec, *labels, true, tunnelled && r.failed ? "connection reset" : "");
        release_endpoint(*p, lb_endpoint);
    }
};

// Makes the client's socket on this worker, counts the connection open and hands it to a relay;
// the calling coroutine may end.
template <typename Upstream>
void start_outbound_relay(Proxy& p, Worker& w, AcceptedFd client, Upstream upstream, Tunnel& t,
                          bool tunnelled) {
    auto socket = std::move(client).socket(w.io);
    if (!socket) {
        upstream.abort();
        finish(p, t.rec, t.labels, false,
               "cannot relay the connection: " + socket.error().message());
        release_endpoint(p, t.lb_endpoint);
        return;
    }
    auto labels = p.metrics().shared_labels().get(std::move(t.labels));
    p.metrics().connection_opened(*labels);
    start_relay(TcpPipe(std::move(*socket)), std::move(upstream),
                OutboundEnd{&p, std::move(t.rec), std::move(labels), t.lb_endpoint,
                            std::move(*t.active), tunnelled});
}

// The same-node fast path's end: both halves of the connection end with the one relay between
// the client and the app, as the source's outbound connection and the destination's inbound one.
struct SameNodeEnd {
    OutboundEnd outbound;
    InboundRelayEnd inbound;

    void operator()(const RelayResult& r) {
        inbound(r);
        outbound(r);
    }
};

// Node mode, destination pod enrolled here: what the destination's HBONE listener would do with
// the stream (authorize the source identity, connect to the app), without TLS, HTTP/2 and the
// TCP hop to :15008. The source identity is the one this ztunnel would present in its
// certificate: enrollment vouches for both ends, and no byte leaves the process in between.
asio::awaitable<void> same_node(Proxy& p, Worker& w, AcceptedFd client, std::unique_ptr<Tunnel> t,
                                std::shared_ptr<EnrolledWorkload> dst, tcp::endpoint target) {
    t->rec.same_node = true;
    InboundCall call =
        authorize_inbound(p, std::move(dst), t->labels.source_principal, t->rec.src_addr, target);
    call.record.direction = "inbound";
    call.record.same_node = true;
    call.labels->connection_security_policy = "mutual_tls";
    auto fail = [&](const char* flags, std::string_view result, const std::string& error) {
        t->labels.response_flags = flags;
        t->rec.result = result;
        finish(p, t->rec, t->labels, false, error);
        client.reset();
        release_endpoint(p, t->lb_endpoint);
    };
    if (is_own_port(p, target.port())) {  // what the HBONE listener answers with a 400
        finish_inbound(p, call, false, "a connection to ztunnel's own port in the pod");
        fail("", "error",
             "a connection to ztunnel's own port " + std::to_string(target.port()) +
                 " in the destination pod");
        co_return;
    }
    if (!call.decision.allowed) {
        deny_inbound(p, call, "inbound");
        fail("UAEX", "denied",
             "denied by the destination's policy: " + call.decision.reason + " (" +
                 call.decision.rule + ")");
        co_return;
    }
    auto app = co_await connect_app(p, *call.destination, w, target, t->rec.src_addr);
    if (!app) {
        call.labels->response_flags = "UF";
        finish_inbound(p, call, false, app.error());
        fail("UF", "error", app.error());
        co_return;
    }
    auto socket = std::move(client).socket(w.io);
    if (!socket) {
        const std::string error = "cannot relay the connection: " + socket.error().message();
        finish_inbound(p, call, false, error);
        fail("UF", "error", error);
        co_return;
    }
    auto out_labels = p.metrics().shared_labels().get(std::move(t->labels));
    p.metrics().connection_opened(*out_labels);
    p.metrics().connection_opened(*call.labels);
    auto ex = app->get_executor();
    auto relay = start_relay(
        TcpPipe(std::move(*socket)), TcpPipe(std::move(*app)),
        SameNodeEnd{OutboundEnd{&p, std::move(t->rec), std::move(out_labels), t->lb_endpoint,
                                std::move(*t->active), true},
                    InboundRelayEnd(p, std::move(call.record),
                                    p.metrics().shared_labels().get(std::move(*call.labels)))});
    relay->done().inbound.open(call, relay, std::move(ex));
}

// Runs on the worker that owns the pool for t.key, so all streams to one destination share one
// HBONE connection (DESIGN.md §4) although connections are accepted on any worker.
asio::awaitable<void> tunnel(Proxy& p, Worker& w, AcceptedFd client, std::unique_ptr<Tunnel> t) {
    auto stream = co_await w.pool->open(t->key, std::move(t->request));
    if (!stream) {
        const hbone::Failure& f = stream.error();
        if (f.status == hbone::kStatusUnauthorized)
            t->rec.result = "denied";
        t->labels.response_flags = f.status == hbone::kStatusUnauthorized ? "UAEX" : "UF";
        finish(p, t->rec, t->labels, false, f.message());
        client.reset();
        release_endpoint(p, t->lb_endpoint);
        co_return;
    }
    start_outbound_relay(p, w, std::move(client), StreamPipe(std::move(*stream)), *t, true);
}

// Decides where the connection goes while it is still a bare descriptor; the socket is made on
// the worker that relays it.
asio::awaitable<void> outbound(Proxy& p, std::shared_ptr<EnrolledWorkload> src, Worker& w,
                               AcceptedFd client) {
    auto owned = std::make_unique<Tunnel>();
    Tunnel& t = *owned;
    t.active.emplace(p);
    ConnectionRecord& rec = t.rec;
    ConnectionLabels& labels = t.labels;
    rec.direction = "outbound";
    labels.reporter = "source";
    labels.source_workload = src->info.name;
    labels.source_workload_namespace = src->info.namespace_name;
    labels.source_principal = src->id.uri();
    auto snap = p.registry().current();
    const state::Workload* src_reg = snap->workload(src->info.namespace_name, src->info.name);
    labels.source_app = app_label(src_reg ? src_reg->labels : state::Labels{}, src->info.name);

    const tcp::endpoint peer = client.remote_endpoint();
    auto orig = original_destination(client.fd());
    if (!orig) {
        rec.src_addr = peer;
        finish(p, rec, labels, false,
               std::string("no original destination (SO_ORIGINAL_DST): ") + strerror(orig.error()));
        client.reset();
        co_return;
    }
    const bool v6 = orig->address().is_v6();
    const auto src_ip = same_family(src->ips, v6);
    // A connection made straight to :15001 has itself as original destination; passing it
    // through would connect to :15001 again, forever.
    if (orig->port() == p.config().outbound_port &&
        (orig->address().is_loopback() ||
         std::find(src->ips.begin(), src->ips.end(), orig->address()) != src->ips.end())) {
        rec.src_addr = peer;
        rec.dst_addr = *orig;
        finish(p, rec, labels, false, "direct connection to the outbound listener refused");
        client.reset();
        co_return;
    }
    // The app connected from its pod address (iptables) or from loopback (eBPF redirect): the
    // tunnel reports the pod address.
    const tcp::endpoint src_ep(src_ip.value_or(peer.address()), peer.port());
    rec.src_addr = src_ep;
    rec.dst_addr = *orig;

    tcp::endpoint target = *orig;               // the :authority of the CONNECT
    std::optional<asio::ip::address> hbone_ip;  // set when the HBONE peer is not target's pod
    const state::Workload* dst = nullptr;       // the HBONE peer
    const state::Service* waypoint = nullptr;
    const state::Service* svc = snap->service_by_vip(orig->address());
    if (svc != nullptr) {
        labels.destination_service = svc->hostname();
        labels.destination_service_name = svc->name;
        labels.destination_service_namespace = svc->namespace_name;
        const state::ServicePort* sp = svc->port(orig->port());
        if (sp == nullptr) {
            refuse(p, rec, labels, client, "no_service_port",
                   "service " + svc->key() + " has no port " + std::to_string(orig->port()));
            co_return;
        }
        auto route = state::waypoint_route(*snap, src_reg, *svc);
        if (!route) {
            refuse(p, rec, labels, client, "waypoint_missing", route.error());
            co_return;
        }
        waypoint = route->waypoint;
        // Istio ambient: through a waypoint, HBONE goes to one of its pods with the original
        // destination as the authority, and the waypoint picks the service's endpoint.
        auto ep = p.load_balancer().pick(waypoint ? *waypoint : *svc, src_ep.address(), v6);
        if (!ep && waypoint == nullptr) {
            refuse(p, rec, labels, client, "no_endpoint",
                   "service " + svc->key() + " has no ready endpoint");
            co_return;
        }
        dst = ep ? snap->workload_by_ip(ep->ip) : nullptr;
        if (waypoint != nullptr) {
            labels.destination_waypoint = waypoint->key();
            if (dst == nullptr) {
                refuse(p, rec, labels, client, "no_waypoint_endpoint",
                       "waypoint " + waypoint->key() + " of service " + svc->key() +
                           " has no ready endpoint pod");
                co_return;
            }
            hbone_ip = ep->ip;
        } else {
            target = tcp::endpoint(ep->ip, sp->target_port);
        }
        t.lb_endpoint = ep->ip;
        p.load_balancer().opened(ep->ip);
    } else {
        dst = snap->workload_by_ip(orig->address());
    }

    // In sidecar mode every pod of the registry has a ztunnel; in node mode the enrollment
    // label says which pods are in the mesh.
    // A waypoint terminates HBONE itself, enrolled or not.
    const bool use_hbone =
        dst != nullptr && (p.config().mode == Mode::Sidecar || dst->ambient || waypoint != nullptr);
    if (!use_hbone) {
        rec.direction = "passthrough";
        labels.connection_security_policy = "none";
        if (dst != nullptr) {
            labels.destination_workload = dst->name;
            labels.destination_workload_namespace = dst->namespace_name;
        }
        auto upstream = co_await connect_from(p, *src, w, target, src_ip, false);
        if (!upstream) {
            labels.response_flags = "UF";
            finish(p, rec, labels, false, upstream.error());
            client.reset();
            release_endpoint(p, t.lb_endpoint);
            co_return;
        }
        start_outbound_relay(p, w, std::move(client), TcpPipe(std::move(*upstream)), t, false);
        co_return;
    }

    const identity::Identity dst_id = dst->identity(p.config().trust_domain);
    if (waypoint != nullptr) {
        // What the connection is for is the service; the waypoint is the verified peer.
        labels.destination_workload = svc->name;
        labels.destination_workload_namespace = svc->namespace_name;
        labels.destination_app = svc->name;
    } else {
        labels.destination_workload = dst->name;
        labels.destination_workload_namespace = dst->namespace_name;
        labels.destination_app = app_label(dst->labels, dst->name);
    }
    labels.destination_principal = dst_id.uri();
    labels.connection_security_policy = "mutual_tls";
    if (p.config().mode == Mode::Node && p.config().same_node_fast_path && waypoint == nullptr) {
        // Enrolled on this node: the pod's netns is one of ours.
        if (auto local = p.find_workload(dst->uid);
            local && local->netns_fd >= 0 &&
            std::find(local->ips.begin(), local->ips.end(), target.address()) != local->ips.end()) {
            asio::co_spawn(
                w.io,
                same_node(p, w, std::move(client), std::move(owned), std::move(local), target),
                asio::detached);
            co_return;
        }
    }
    const tcp::endpoint hbone_ep(hbone_ip.value_or(target.address()), p.config().hbone_port);
    rec.hbone_addr = hbone_ep;
    t.key = hbone::PoolKey{src->id, dst_id, to_string(hbone_ep), src->info.uid};
    t.request.authority = to_string(target);
    t.request.forwarded = "for=\"" + to_string(src_ep) + "\"";
    t.request.baggage = baggage(*src, labels.source_app);
    t.request.traceparent = new_traceparent();

    Worker& owner = p.worker_for(t.key);
    if (&owner == &w) {
        // A coroutine of its own, so this frame (everything the lookups above needed) ends here
        // instead of staying for the connection's lifetime.
        asio::co_spawn(w.io, tunnel(p, w, std::move(client), std::move(owned)), asio::detached);
        co_return;
    }
    // The owning worker takes the connection over; its socket is made there.
    asio::post(owner.io, [&p, &owner, c = std::move(client), t = std::move(owned)]() mutable {
        asio::co_spawn(owner.io, tunnel(p, owner, std::move(c), std::move(t)), asio::detached);
    });
}

}  // namespace

void serve_outbound(Proxy& p, std::shared_ptr<EnrolledWorkload> src, Worker& w, AcceptedFd c) {
    asio::co_spawn(w.io, outbound(p, std::move(src), w, std::move(c)), asio::detached);
}

}  // namespace sluice::ztunnel::proxy
