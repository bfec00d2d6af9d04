#pragma once

#include <memory>
#include <string>

#include "ztunnel/state/registry.h"

namespace sluice::ztunnel::state {

// One inbound connection as ztunnel authorizes it (the shape of the policies library's
// evaluate(): DESIGN.md §5).
struct AuthzRequest {
    std::string peer_identity;  // "spiffe://…" from a verified certificate; empty: plaintext
    IpAddress source;
    const Workload* destination = nullptr;
    uint16_t port = 0;              // destination (target) port
    IpAddress destination_address;  // the address the client connected to
};

struct AuthzDecision {
    bool allowed = false;
    std::string rule;    // the deciding rule or PeerAuthentication, for logs and metrics
    std::string reason;  // one sentence
};

// L4 authorization and PeerAuthentication in one decision, in Istio's order: STRICT refuses
// plaintext, then DENY policies, then ALLOW policies. The proxy knows only this interface; the
// implementation behind it comes from the policies library (policy_authorizer.cpp).
class Authorizer {
  public:
    virtual ~Authorizer() = default;
    virtual AuthzDecision authorize(const AuthzRequest& request) const = 0;
    // Re-reads policies if they changed; the last good set stays on error. True when a new set is
    // in force: decisions may differ from before, so open connections must be authorized again.
    virtual bool refresh() { return false; }
    virtual std::string describe() const = 0;
};

// Until policies are configured: mTLS traffic is allowed, plaintext is refused in STRICT mode
// and allowed in PERMISSIVE mode (Istio's defaults with no AuthorizationPolicy at all).
enum class MtlsMode { Strict, Permissive };
std::unique_ptr<Authorizer> default_authorizer(MtlsMode mode);

// The policies library (DESIGN.md §5): policies + registry compiled and evaluated; `default_mode`
// applies where no PeerAuthentication decides.
std::unique_ptr<Authorizer> policy_authorizer(std::string policies_dir, std::string registry_dir,
                                              MtlsMode default_mode, std::string trust_domain);

}  // namespace sluice::ztunnel::state
