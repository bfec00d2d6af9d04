#pragma once

#include <boost/asio/ssl/context.hpp>

#include <expected>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "ztunnel/identity/cert_manager.h"

namespace sluice::ztunnel::hbone {

// What the verify hook learned about the peer of one TLS connection. Set on the SSL object
// before the handshake (attach_verification); read after it.
struct PeerVerification {
    std::optional<identity::Identity> expected;  // client side: the destination's identity
    std::optional<identity::Identity> peer;      // the verified peer identity
    std::optional<identity::VerifyError> error;  // why the handshake was refused
};

// Builds and caches the TLS contexts of each local identity: TLS 1.3 only, the two AES-GCM
// suites, ALPN h2, both sides present and verify certificates. A context is rebuilt when the
// CertManager renews the certificate; live connections keep the context they started with.
class TlsContexts {
  public:
    explicit TlsContexts(std::shared_ptr<identity::CertManager> certs);

    std::expected<std::shared_ptr<boost::asio::ssl::context>, std::string> server(
        const identity::Identity& local);
    std::expected<std::shared_ptr<boost::asio::ssl::context>, std::string> client(
        const identity::Identity& local);

    identity::CertManager& certs() { return *certs_; }
    // Drops the identity's contexts and its certificate (a pod that left the node): neither its
    // key nor its certificate stays in memory.
    void forget(const identity::Identity& local);
    std::size_t size() const;  // identities with contexts

  private:
    struct Entry {
        std::shared_ptr<const identity::WorkloadCert> cert;
        std::shared_ptr<boost::asio::ssl::context> server, client;
    };
    std::expected<Entry*, std::string> entry(const identity::Identity& local);

    std::shared_ptr<identity::CertManager> certs_;
    mutable std::mutex mutex_;
    std::map<identity::Identity, Entry> entries_;
};

// Builds one context from a certificate; `verify` checks peers against the manager's bundle.
std::expected<std::shared_ptr<boost::asio::ssl::context>, std::string> make_context(
    const identity::WorkloadCert& cert, const identity::CertManager& verify, bool server);

// Must be called on every SSL before its handshake; `v` must outlive the handshake.
void attach_verification(SSL* ssl, PeerVerification* v);

}  // namespace sluice::ztunnel::hbone
