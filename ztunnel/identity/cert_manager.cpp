#include "ztunnel/identity/cert_manager.h"

#include <spdlog/spdlog.h>

namespace sluice::ztunnel::identity {

namespace {
constexpr auto kForgottenFor = std::chrono::minutes(10);
}  // namespace

bool needs_renewal(const WorkloadCert& cert, Clock::time_point now) {
    return now >= cert.not_before + (cert.not_after - cert.not_before) / 2;
}

CertManager::CertManager(std::shared_ptr<const CertificateAuthority> ca,
                         std::shared_ptr<TrustBundle> bundle, std::string trust_domain,
                         std::chrono::seconds lifetime)
    : ca_(std::move(ca)),
      bundle_(std::move(bundle)),
      trust_domain_(std::move(trust_domain)),
      lifetime_(lifetime) {}

std::expected<std::shared_ptr<const WorkloadCert>, std::string> CertManager::certificate(
    const Identity& id) {
    std::lock_guard lock(mutex_);
    auto it = certs_.find(id);
    if (it != certs_.end() && !needs_renewal(*it->second, Clock::now()))
        return it->second;
    if (forgotten_.contains(id))
        return std::unexpected("no workload with identity " + id.uri() +
                               " is enrolled on this node");
    if (id.trust_domain != trust_domain_)
        return std::unexpected("identity " + id.uri() + " is outside trust domain " +
                               trust_domain_);
    auto minted = ca_->mint(id, {.lifetime = lifetime_});
    if (!minted && it != certs_.end() && Clock::now() < it->second->not_after) {
        // A renewal that failed: the current certificate is still good for the rest of its
        // life (the next use tries again), and handshakes must not fail meanwhile.
        spdlog::warn(
            "renewing the certificate of {} failed ({}); the current one stays, valid "
            "until {}",
            id.uri(), minted.error(), format_time(it->second->not_after));
        return it->second;
    }
    if (!minted)
        return std::unexpected(minted.error());
    auto cert = std::make_shared<const WorkloadCert>(std::move(*minted));
    spdlog::info("{} certificate for {}, valid until {}", it == certs_.end() ? "minted" : "renewed",
                 id.uri(), format_time(cert->not_after));
    certs_[id] = cert;
    return cert;
}

void CertManager::forget(const Identity& id) {
    const auto now = Clock::now();
    std::lock_guard lock(mutex_);
    certs_.erase(id);
    std::erase_if(forgotten_, [&](const auto& f) { return now - f.second > kForgottenFor; });
    forgotten_[id] = now;
}

void CertManager::enroll(const Identity& id) {
    std::lock_guard lock(mutex_);
    forgotten_.erase(id);
}

std::vector<std::shared_ptr<const WorkloadCert>> CertManager::certificates() const {
    std::lock_guard lock(mutex_);
    std::vector<std::shared_ptr<const WorkloadCert>> out;
    for (const auto& [id, c] : certs_)
        out.push_back(c);
    return out;
}

}  // namespace sluice::ztunnel::identity
