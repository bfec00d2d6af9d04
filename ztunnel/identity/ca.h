#pragma once

#include <chrono>
#include <expected>
#include <optional>
#include <string>

#include "ztunnel/identity/openssl.h"
#include "ztunnel/identity/spiffe.h"

namespace sluice::ztunnel::identity {

using Clock = std::chrono::system_clock;

inline constexpr std::chrono::seconds kDefaultWorkloadCertLifetime = std::chrono::hours(24);
inline constexpr std::chrono::seconds kDefaultCaLifetime = std::chrono::hours(24 * 365 * 10);

// A minted workload certificate: ECDSA P-256 leaf with the identity as its only URI SAN.
struct WorkloadCert {
    Identity identity;
    std::string cert_pem;   // the leaf
    std::string chain_pem;  // issuing CA certificate(s), sent after the leaf
    std::string key_pem;
    Clock::time_point not_before, not_after;
};

struct MintOptions {
    std::chrono::seconds lifetime = kDefaultWorkloadCertLifetime;
    // Default: now minus a minute of clock-skew slack. Tests set it to mint not-yet-valid or
    // expired certificates.
    std::optional<Clock::time_point> not_before;
};

// A signing CA held in memory (the embedded default of DESIGN.md §4: files now, a Kubernetes
// Secret in a cluster). Self-signed root, ECDSA P-256.
class CertificateAuthority {
  public:
    // A new self-signed root for `trust_domain` (subject O=sluice, CN=<td> root).
    static CertificateAuthority create(const std::string& trust_domain,
                                       std::chrono::seconds lifetime = kDefaultCaLifetime);
    static std::expected<CertificateAuthority, std::string> load(const std::string& cert_path,
                                                                 const std::string& key_path);
    // Writes cert (0644) and key (0600); throws std::runtime_error on failure.
    void write(const std::string& cert_path, const std::string& key_path) const;

    std::expected<WorkloadCert, std::string> mint(const Identity& id,
                                                  const MintOptions& options = {}) const;
    std::string cert_pem() const { return to_pem(cert_.get()); }
    X509* certificate() const { return cert_.get(); }

  private:
    CertificateAuthority(X509Ptr cert, PkeyPtr key)
        : cert_(std::move(cert)), key_(std::move(key)) {}
    X509Ptr cert_;
    PkeyPtr key_;
};

// The whole text of a (PEM) file, or why it cannot be read.
std::expected<std::string, std::string> read_text_file(const std::string& path);

// A fresh ECDSA P-256 key.
PkeyPtr generate_p256_key();

Clock::time_point asn1_to_time(const ASN1_TIME* t);
// RFC 3339 in UTC, seconds precision: 2026-11-26T21:00:00Z.
std::string format_time(Clock::time_point t);

}  // namespace sluice::ztunnel::identity
