// Inbound plaintext (:15006): connections for a pod port that did not come over HBONE, steered
// here by sk_lookup (sidecarless) or iptables REDIRECT (sidecar). STRICT mTLS refuses them;
// PERMISSIVE authorizes them by source address and forwards them to the app.
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include "ztunnel/proxy/inbound.h"

namespace sluice::ztunnel::proxy {
namespace {

asio::awaitable<void> inbound_plaintext(Proxy& p, std::shared_ptr<EnrolledWorkload> dst, Worker& w,
                                        WorkerSocket client) {
    Proxy::ActiveGuard active(p);
    boost::system::error_code ec;
    const tcp::endpoint peer = client.remote_endpoint(ec);
    // REDIRECT records the original destination in conntrack; sk_lookup keeps it as the
    // socket's local address.
    auto orig = original_destination(client.native_handle());
    tcp::endpoint target = orig ? *orig : client.local_endpoint(ec);
    InboundCall call = authorize_inbound(p, dst, "", peer, target);
    call.record.direction = "inbound_plaintext";
    call.labels->connection_security_policy = "none";
    if (target.port() == p.config().inbound_plaintext_port) {
        reset_socket(client);
        finish_inbound(p, call, false, "no original destination: direct connection to :15006");
        co_return;
    }
    if (!addressed_to(p, *dst, target)) {
        // Routed to the pod for another address (a peer that uses it as its gateway): not
        // forwarded onward from inside the pod.
        reset_socket(client);
        finish_inbound(p, call, false,
                       "original destination " + target.address().to_string() + ":" +
                           std::to_string(target.port()) + " is not an app port of this pod");
        co_return;
    }
    if (!call.decision.allowed) {
        reset_socket(client);
        deny_inbound(p, call, "inbound_plaintext");
        co_return;
    }
    auto app = co_await connect_app(p, *dst, w, target, peer);
    if (!app) {
        reset_socket(client);
        call.labels->response_flags = "UF";
        finish_inbound(p, call, false, app.error());
        co_return;
    }
    relay_inbound(p, std::move(call), TcpPipe(std::move(client)), std::move(*app));
}

}  // namespace

void serve_inbound_plaintext(Proxy& p, std::shared_ptr<EnrolledWorkload> dst, Worker& w,
                             AcceptedFd c) {
    if (auto s = accepted_socket(w, std::move(c), "inbound plaintext"))
        asio::co_spawn(w.io, inbound_plaintext(p, std::move(dst), w, std::move(*s)),
                       asio::detached);
}

}  // namespace sluice::ztunnel::proxy
