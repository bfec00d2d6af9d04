#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "waypoint/http/server.h"
#include "ztunnel/hbone/connection.h"
#include "ztunnel/hbone/tls.h"

namespace sluice::waypoint {

namespace hbone = ztunnel::hbone;
namespace identity = ztunnel::identity;

// One worker's HBONE listener (:15008, the waypoint behind ztunnel): mutual TLS 1.3 with the
// waypoint's own workload certificate, HTTP/2, and one CONNECT stream per proxied client
// connection, whose bytes are HTTP/1.1 (or h2c with prior knowledge, registered with `h2`)
// served through the same handler as the plain listener, with the peer's SPIFFE id and the
// CONNECT :authority attached to every request. Lives on the worker's io_context and is only
// touched from its thread (and from stop() after the join).
class HboneServer {
  public:
    struct Hooks {
        std::function<void(const std::string& reason)> refused;  // a handshake was refused
        std::function<void(int status)> stream;                  // a CONNECT was answered
    };
    HboneServer(hbone::TlsContexts& tls, identity::Identity local, const ServerLimits& limits,
                const Handler& handler, Hooks hooks, H2Connections* h2 = nullptr);

    // Accepts on `acceptor` until it is closed.
    awaitable<void> acceptLoop(tcp::acceptor& acceptor);
    // GOAWAY (a shutdown notice) to every connection: ztunnel opens no new stream here; the
    // streams in flight go on.
    void drainAll();
    // Closes every connection (ends their streams); breaks the connection/stream references.
    void closeAll();

  private:
    awaitable<void> serveConnection(tcp::socket socket);
    awaitable<void> serveStream(std::shared_ptr<hbone::Stream> stream);

    hbone::TlsContexts& tls_;
    identity::Identity local_;
    const ServerLimits& limits_;
    const Handler& handler_;
    Hooks hooks_;
    H2Connections* h2_;
    std::vector<std::weak_ptr<hbone::Connection>> connections_;
};

}  // namespace sluice::waypoint
