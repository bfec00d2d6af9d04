#pragma once

#include <openssl/x509.h>

#include <expected>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "ztunnel/identity/ca.h"

namespace sluice::ztunnel::identity {

// Why a peer certificate was refused; the name goes into logs and the
// sluice_tls_handshake_failures_total{reason} metric.
enum class VerifyFailure {
    NoCertificate,
    UnknownCa,
    Expired,
    NotYetValid,
    BadChain,
    NoSpiffeIdentity,
    WrongTrustDomain,
    WrongIdentity,
};
const char* to_string(VerifyFailure f);

struct VerifyError {
    VerifyFailure failure;
    std::string detail;
    std::string message() const;
};

// The roots a peer chain may end in. Several at once, so a CA rotation can overlap: add the new
// root everywhere first, then switch the signing CA, then drop the old root.
class TrustBundle {
  public:
    TrustBundle() = default;
    // Adds every certificate of a PEM text; returns how many, or an error for malformed text.
    std::expected<size_t, std::string> add_pem(std::string_view pem);
    void add(X509* root);
    size_t size() const;
    std::string pem() const;
    // A snapshot for one verification (X509_STORE is reference counted).
    X509_STORE* new_store() const;

  private:
    mutable std::mutex mutex_;
    std::vector<X509Ptr> roots_;
};

struct VerifyRequest {
    X509* leaf = nullptr;
    STACK_OF(X509) * intermediates = nullptr;  // as sent by the peer, may be null
    std::string trust_domain;                  // the peer's identity must be in it
    std::optional<Identity> expected;          // the client side knows whom it dials
    std::optional<Clock::time_point> now;      // tests; default the current time
};

// Checks chain to a bundle root, validity, the single SPIFFE URI SAN, its trust domain and, when
// given, that it is exactly the expected identity.
std::expected<Identity, VerifyError> verify_peer(const TrustBundle& bundle,
                                                 const VerifyRequest& request);

// The SPIFFE identity in a certificate's URI SAN, without any chain checks.
std::expected<Identity, VerifyError> spiffe_identity(X509* cert);

}  // namespace sluice::ztunnel::identity
