// The Authorizer backed by the policies library: AuthorizationPolicy (L4), PeerAuthentication
// and IsolationBoundary with Istio's semantics, compiled from the policies folder and the
// registry, re-read when either changes (the last good set stays on error).
#include <spdlog/spdlog.h>

#include <mutex>

#include "policies/evaluate.h"
#include "policies/loader.h"
#include "ztunnel/state/authz.h"

namespace sluice::ztunnel::state {
namespace {

class PolicyAuthorizer : public Authorizer {
  public:
    PolicyAuthorizer(std::string policies_dir, std::string registry_dir, MtlsMode default_mode,
                     std::string trust_domain)
        : policies_dir_(std::move(policies_dir)),
          registry_dir_(std::move(registry_dir)),
          default_mode_(default_mode),
          trust_domain_(std::move(trust_domain)) {
        refresh();
    }

    bool refresh() override {
        const std::string fp =
            directory_fingerprint(policies_dir_) + "|" + directory_fingerprint(registry_dir_);
        if (fp == fingerprint_)
            return false;
        fingerprint_ = fp;
        policies::CompileOptions options;
        options.trust_domain = trust_domain_;
        auto loaded = policies::load_and_compile(policies_dir_, registry_dir_, options);
        std::shared_ptr<const policies::CompiledPolicy> next = loaded.compiled;
        if (!loaded.ok()) {
            for (const auto& d : loaded.diagnostics)
                spdlog::warn("policies: {}", d.to_string());
            spdlog::warn("policies: keeping the last good set");
            // For the pods the registry holds now: one created while the folder is broken gets
            // the policies in force (else every connection to it is refused as unknown).
            std::shared_ptr<const policies::CompiledPolicy> in_force;
            {
                std::lock_guard lock(mutex_);
                in_force = compiled_;
            }
            next = in_force ? policies::recompile_for_registry(*in_force, registry_dir_, options)
                            : nullptr;
            if (!next)
                return false;
        }
        std::lock_guard lock(mutex_);
        compiled_ = next;
        spdlog::info("policies: {} {} authorization rule(s) from {}",
                     loaded.ok() ? "loaded" : "kept", compiled_->rules.size(), policies_dir_);
        return true;
    }

    AuthzDecision authorize(const AuthzRequest& request) const override {
        std::shared_ptr<const policies::CompiledPolicy> compiled;
        {
            std::lock_guard lock(mutex_);
            compiled = compiled_;
        }
        const bool plaintext = request.peer_identity.empty();
        if (!compiled)
            return fallback(plaintext);
        policies::Connection c;
        c.peer_identity = request.peer_identity;
        if (auto ip = datapath::parse_ip(request.source.to_string()))
            c.source = *ip;
        c.destination = request.destination->key();
        c.port = request.port;
        if (auto ip = datapath::parse_ip(request.destination_address.to_string()))
            c.destination_address = *ip;
        const policies::Decision d = policies::evaluate(*compiled, c);
        if (d.verdict == policies::Verdict::Deny)
            return {false, d.rule.empty() ? "policy" : d.rule, d.reason};
        // No PeerAuthentication decided for this workload: the node's default applies.
        const policies::WorkloadRules* rules = compiled->workload(c.destination);
        if (plaintext && default_mode_ == MtlsMode::Strict &&
            (rules == nullptr || rules->mtls_source.starts_with("default"))) {
            return fallback(plaintext);
        }
        return {true, d.rule.empty() ? "allow" : d.rule, d.reason};
    }

    std::string describe() const override {
        std::lock_guard lock(mutex_);
        return compiled_ ? "policies from " + policies_dir_ + " (" +
                               std::to_string(compiled_->rules.size()) + " rules)"
                         : "no valid policies yet (defaults apply)";
    }

  private:
    AuthzDecision fallback(bool plaintext) const {
        if (plaintext && default_mode_ == MtlsMode::Strict)
            return {false, "default mtls STRICT", "plaintext refused: mutual TLS is required"};
        return {true, "default allow", "no authorization policy applies"};
    }

    std::string policies_dir_, registry_dir_;
    MtlsMode default_mode_;
    std::string trust_domain_;
    std::string fingerprint_;
    mutable std::mutex mutex_;
    std::shared_ptr<const policies::CompiledPolicy> compiled_;
};

}  // namespace

std::unique_ptr<Authorizer> policy_authorizer(std::string policies_dir, std::string registry_dir,
                                              MtlsMode default_mode, std::string trust_domain) {
    return std::make_unique<PolicyAuthorizer>(std::move(policies_dir), std::move(registry_dir),
                                              default_mode, std::move(trust_domain));
}

}  // namespace sluice::ztunnel::state
