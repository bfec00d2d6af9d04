#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "ztunnel/identity/ca.h"
#include "ztunnel/identity/verify.h"

namespace sluice::ztunnel::identity {

// Holds one certificate per identity of a workload enrolled on this node, minted from the
// signing CA on first use and renewed once half of its lifetime has passed. A renewed
// certificate only affects new TLS handshakes: established connections keep the certificate
// they were made with, so a rotation never drops a connection.
class CertManager {
  public:
    CertManager(std::shared_ptr<const CertificateAuthority> ca, std::shared_ptr<TrustBundle> bundle,
                std::string trust_domain, std::chrono::seconds lifetime);

    // The current certificate for `id` (minting or renewing it as needed), or why there is none.
    std::expected<std::shared_ptr<const WorkloadCert>, std::string> certificate(const Identity& id);
    // Drops the certificate of an identity no enrolled workload uses any more. Until enroll()
    // names it again, certificate() refuses it: a handshake racing the pod's removal must not
    // mint a certificate for an identity that has left the node (to stay until a restart).
    void forget(const Identity& id);
    // A workload with identity `id` is enrolled on this node (again): certificate() may mint it.
    void enroll(const Identity& id);
    std::vector<std::shared_ptr<const WorkloadCert>> certificates() const;

    const TrustBundle& trust_bundle() const { return *bundle_; }
    const std::string& trust_domain() const { return trust_domain_; }
    std::chrono::seconds lifetime() const { return lifetime_; }

  private:
    std::shared_ptr<const CertificateAuthority> ca_;
    std::shared_ptr<TrustBundle> bundle_;
    std::string trust_domain_;
    std::chrono::seconds lifetime_;
    mutable std::mutex mutex_;
    std::map<Identity, std::shared_ptr<const WorkloadCert>> certs_;
    // Refused until enrolled again, with when they were forgotten: kept for ten minutes, long
    // past any handshake that raced the removal, so namespaces that come and go (CI clusters)
    // do not grow it for the life of the process.
    std::map<Identity, Clock::time_point> forgotten_;
};

// True once half of the certificate's lifetime has passed (Istio's default renewal point).
bool needs_renewal(const WorkloadCert& cert, Clock::time_point now);

}  // namespace sluice::ztunnel::identity
