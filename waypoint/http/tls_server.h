#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/ssl/context.hpp>

#include "waypoint/http/asio.h"
#include "waypoint/http/server.h"

namespace sluice::waypoint {

class H2Connections;

// The gateway's TLS listener (docs/waypoint.md, "TLS"): what clients outside the mesh use.
struct GatewayTlsConfig {
    std::string listen;            // ip:port; "" = no TLS listener
    std::string certificate_file;  // PEM: the server certificate, then its intermediates
    std::string private_key_file;  // PEM
    // Mutual TLS: clients present a certificate that chains to a root in this PEM bundle; its
    // SPIFFE id (URI SAN), if it has one, is the connection's peer identity, as HBONE's is.
    // "" = no client certificate asked.
    std::string client_ca_file;
    bool require_client_certificate = true;  // false: verified when presented, else anonymous
    // When set, a client certificate must carry a SPIFFE id in one of these trust domains (a
    // CA bundle alone does not say whose names it may vouch for).
    std::vector<std::string> client_trust_domains;
    // How often the two files are checked for a change (a renewed certificate is served to new
    // connections without a restart; connections already up keep theirs).
    std::chrono::milliseconds reload_interval{10'000};
};

// A server context for the config's files: TLS 1.2 and 1.3 (1.2 only with ECDHE and an AEAD,
// which also makes it acceptable to HTTP/2, RFC 9113 §9.2.2), ALPN h2 preferred over
// http/1.1, no renegotiation; client certificates as `client_ca_file` says. `not_after` gets
// the certificate's expiry.
std::expected<std::shared_ptr<asio::ssl::context>, std::string> makeGatewayTlsContext(
    const GatewayTlsConfig& config, std::chrono::system_clock::time_point* not_after = nullptr);

// What tells a changed file: inode, size and modification time (all 0: missing).
struct FileStamp {
    std::uint64_t inode = 0, size = 0;
    std::int64_t mtime_ns = 0;
    bool operator==(const FileStamp&) const = default;
};

// The context new TLS connections get; rebuilt when the certificate or key file changes.
// Thread-safe: workers take current() on every accept, the admin thread reloads.
class GatewayTlsContext {
  public:
    // Throws std::runtime_error (naming the file and OpenSSL's reason) when the files cannot
    // make a context.
    explicit GatewayTlsContext(GatewayTlsConfig config);

    std::shared_ptr<asio::ssl::context> current() const;
    std::chrono::system_clock::time_point notAfter() const;
    const GatewayTlsConfig& config() const { return config_; }

    enum class Reload { Unchanged, Reloaded, Failed };
    // Rebuilds the context when any of its files differs from the last load (inode, size or
    // modification time: a Kubernetes Secret volume swaps a symlink, an editor rewrites in
    // place). A failure keeps the current context; `problem` says why. A failed version is
    // tried again at every call but reported (Failed) only the first time.
    Reload reloadIfChanged(std::string& problem);

  private:
    using Stamps = std::array<FileStamp, 3>;  // certificate, key, client CA
    static Stamps stamps(const GatewayTlsConfig& c);

    GatewayTlsConfig config_;
    mutable std::mutex mutex_;
    std::shared_ptr<asio::ssl::context> context_;
    std::chrono::system_clock::time_point not_after_;
    Stamps loaded_;  // the files the context was made from
    Stamps failed_;  // the files of the last failed reload
};

// How one TLS connection's handshake ended, for metrics: "h2" or "http/1.1" (the protocol it
// will speak), or "failed", "timeout", "no_client_certificate", "client_certificate_refused".
using TlsHandshakeResult = std::function<void(std::string_view result)>;

// Serves one accepted connection of the TLS listener: the handshake (within the request
// timeout), then HTTP/2 when ALPN chose h2, else HTTP/1.1 (no h2c over TLS: RFC 9113 §3.2
// and §3.3), both through `handler` as on the plain listener, registered with `h2` for a
// graceful stop. The connection keeps `context` for its lifetime. A client certificate
// outside `config.client_trust_domains` (when set) is refused after the handshake.
awaitable<void> serveTlsConnection(tcp::socket socket, std::shared_ptr<asio::ssl::context> context,
                                   const GatewayTlsConfig& config, const ServerLimits& limits,
                                   const Handler& handler, H2Connections* h2,
                                   const TlsHandshakeResult& result);

}  // namespace sluice::waypoint
