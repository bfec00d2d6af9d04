#include "ztunnel/state/authz.h"

namespace sluice::ztunnel::state {
namespace {

class DefaultAuthorizer : public Authorizer {
  public:
    explicit DefaultAuthorizer(MtlsMode mode) : mode_(mode) {}

    AuthzDecision authorize(const AuthzRequest& request) const override {
        if (request.peer_identity.empty() && mode_ == MtlsMode::Strict) {
            return {false, "default mtls STRICT",
                    "plaintext connection refused: mutual TLS is required"};
        }
        return {true, "default allow", "no authorization policy applies"};
    }

    std::string describe() const override {
        return mode_ == MtlsMode::Strict ? "defaults (mtls STRICT, no authorization policies)"
                                         : "defaults (mtls PERMISSIVE, no authorization policies)";
    }

  private:
    MtlsMode mode_;
};

}  // namespace

std::unique_ptr<Authorizer> default_authorizer(MtlsMode mode) {
    return std::make_unique<DefaultAuthorizer>(mode);
}

}  // namespace sluice::ztunnel::state
