#include "ztunnel/identity/verify.h"

#include <openssl/x509v3.h>

namespace sluice::ztunnel::identity {
namespace {

struct StoreFree {
    void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct StoreCtxFree {
    void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};

VerifyFailure classify(int x509_error) {
    switch (x509_error) {
        case X509_V_ERR_CERT_HAS_EXPIRED:
            return VerifyFailure::Expired;
        case X509_V_ERR_CERT_NOT_YET_VALID:
            return VerifyFailure::NotYetValid;
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
            return VerifyFailure::UnknownCa;
        default:
            return VerifyFailure::BadChain;
    }
}

}  // namespace

const char* to_string(VerifyFailure f) {
    switch (f) {
        case VerifyFailure::NoCertificate:
            return "no_certificate";
        case VerifyFailure::UnknownCa:
            return "unknown_ca";
        case VerifyFailure::Expired:
            return "expired";
        case VerifyFailure::NotYetValid:
            return "not_yet_valid";
        case VerifyFailure::BadChain:
            return "bad_chain";
        case VerifyFailure::NoSpiffeIdentity:
            return "no_spiffe_identity";
        case VerifyFailure::WrongTrustDomain:
            return "wrong_trust_domain";
        case VerifyFailure::WrongIdentity:
            return "wrong_identity";
    }
    return "unknown";
}

std::string VerifyError::message() const {
    return std::string(to_string(failure)) + ": " + detail;
}

std::expected<size_t, std::string> TrustBundle::add_pem(std::string_view pem) {
    auto certs = parse_certificates(pem);
    if (certs.empty())
        return std::unexpected(std::string("no PEM certificate in trust bundle text"));
    std::lock_guard lock(mutex_);
    const size_t n = certs.size();
    for (auto& c : certs)
        roots_.push_back(std::move(c));
    return n;
}

void TrustBundle::add(X509* root) {
    X509_up_ref(root);
    std::lock_guard lock(mutex_);
    roots_.emplace_back(root);
}

size_t TrustBundle::size() const {
    std::lock_guard lock(mutex_);
    return roots_.size();
}

std::string TrustBundle::pem() const {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& r : roots_)
        out += to_pem(r.get());
    return out;
}

X509_STORE* TrustBundle::new_store() const {
    X509_STORE* store = X509_STORE_new();
    std::lock_guard lock(mutex_);
    for (const auto& r : roots_)
        X509_STORE_add_cert(store, r.get());
    return store;
}

std::expected<Identity, VerifyError> spiffe_identity(X509* cert) {
    auto* names =
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    if (names == nullptr)
        return std::unexpected(VerifyError{VerifyFailure::NoSpiffeIdentity, "no SAN extension"});
    std::vector<std::string> uris;
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
        const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
        if (n->type != GEN_URI)
            continue;
        const ASN1_IA5STRING* s = n->d.uniformResourceIdentifier;
        uris.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                          static_cast<size_t>(ASN1_STRING_length(s)));
    }
    GENERAL_NAMES_free(names);
    // SPIFFE X.509-SVID: exactly one URI SAN.
    if (uris.size() != 1) {
        return std::unexpected(VerifyError{VerifyFailure::NoSpiffeIdentity,
                                           std::to_string(uris.size()) + " URI SANs, want 1"});
    }
    auto id = Identity::parse(uris.front());
    if (!id)
        return std::unexpected(VerifyError{VerifyFailure::NoSpiffeIdentity, id.error()});
    return *id;
}

std::expected<Identity, VerifyError> verify_peer(const TrustBundle& bundle,
                                                 const VerifyRequest& request) {
    if (request.leaf == nullptr)
        return std::unexpected(VerifyError{VerifyFailure::NoCertificate, "peer sent none"});
    std::unique_ptr<X509_STORE, StoreFree> store(bundle.new_store());
    std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
    X509_STORE_CTX_init(ctx.get(), store.get(), request.leaf, request.intermediates);
    if (request.now) {
        X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
        X509_VERIFY_PARAM_set_time(param, std::chrono::system_clock::to_time_t(*request.now));
    }
    if (X509_verify_cert(ctx.get()) != 1) {
        const int err = X509_STORE_CTX_get_error(ctx.get());
        return std::unexpected(VerifyError{classify(err), X509_verify_cert_error_string(err)});
    }
    auto id = spiffe_identity(request.leaf);
    if (!id)
        return id;
    if (id->trust_domain != request.trust_domain) {
        return std::unexpected(VerifyError{
            VerifyFailure::WrongTrustDomain,
            "peer is " + id->uri() + ", trust domain " + request.trust_domain + " expected"});
    }
    if (request.expected && *id != *request.expected) {
        return std::unexpected(
            VerifyError{VerifyFailure::WrongIdentity,
                        "peer is " + id->uri() + ", expected " + request.expected->uri()});
    }
    return id;
}

}  // namespace sluice::ztunnel::identity
