#include "ztunnel/hbone/tls.h"

#include <openssl/err.h>
#include <spdlog/spdlog.h>

#include <cstring>

namespace sluice::ztunnel::hbone {
namespace {

namespace ssl = boost::asio::ssl;
using identity::VerifyError;
using identity::VerifyFailure;

constexpr const char* kCipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384";
constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};

int verification_index() {
    static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
    return index;
}

// Replaces OpenSSL's chain verification: identity::verify_peer checks chain, validity, SAN and
// trust domain and names the reason.
int verify_certificate(X509_STORE_CTX* store_ctx, void* arg) {
    const auto* manager = static_cast<const identity::CertManager*>(arg);
    auto* ssl = static_cast<SSL*>(
        X509_STORE_CTX_get_ex_data(store_ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
    auto* v = static_cast<PeerVerification*>(SSL_get_ex_data(ssl, verification_index()));
    identity::VerifyRequest request{.leaf = X509_STORE_CTX_get0_cert(store_ctx),
                                    .intermediates = X509_STORE_CTX_get0_untrusted(store_ctx),
                                    .trust_domain = manager->trust_domain()};
    if (v != nullptr)
        request.expected = v->expected;
    auto result = identity::verify_peer(manager->trust_bundle(), request);
    if (!result) {
        if (v != nullptr)
            v->error = result.error();
        X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_APPLICATION_VERIFICATION);
        return 0;
    }
    if (v != nullptr)
        v->peer = *result;
    return 1;
}

int select_h2(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
              unsigned int inlen, void*) {
    unsigned char* selected = nullptr;
    if (SSL_select_next_proto(&selected, outlen, kAlpnH2, sizeof(kAlpnH2), in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    *out = selected;
    return SSL_TLSEXT_ERR_OK;
}

}  // namespace

void attach_verification(SSL* ssl, PeerVerification* v) {
    SSL_set_ex_data(ssl, verification_index(), v);
}

std::expected<std::shared_ptr<ssl::context>, std::string> make_context(
    const identity::WorkloadCert& cert, const identity::CertManager& verify, bool server) {
    SSL_CTX* raw = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (raw == nullptr)
        return std::unexpected("SSL_CTX_new: " + identity::openssl_errors());
    auto ctx = std::make_shared<ssl::context>(raw);  // takes ownership
    SSL_CTX_set_min_proto_version(raw, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(raw, TLS1_3_VERSION);
    SSL_CTX_set_ciphersuites(raw, kCipherSuites);
    SSL_CTX_set_session_cache_mode(raw, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(raw, 0);
    // OpenSSL's record buffers (~2 × 17 KiB) are freed while a connection has nothing in flight.
    SSL_CTX_set_mode(raw, SSL_MODE_RELEASE_BUFFERS);
    auto leaf = identity::parse_certificates(cert.cert_pem);
    auto chain = identity::parse_certificates(cert.chain_pem);
    auto key = identity::parse_private_key(cert.key_pem);
    if (leaf.empty() || !key)
        return std::unexpected("unusable certificate for " + cert.identity.uri());
    if (SSL_CTX_use_certificate(raw, leaf.front().get()) != 1 ||
        SSL_CTX_use_PrivateKey(raw, key.get()) != 1) {
        return std::unexpected("cannot load certificate: " + identity::openssl_errors());
    }
    for (auto& c : chain) {
        if (SSL_CTX_add1_chain_cert(raw, c.get()) != 1)
            return std::unexpected("cannot add chain: " + identity::openssl_errors());
    }
    SSL_CTX_set_verify(raw, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    SSL_CTX_set_cert_verify_callback(raw, verify_certificate,
                                     const_cast<identity::CertManager*>(&verify));
    if (server)
        SSL_CTX_set_alpn_select_cb(raw, select_h2, nullptr);
    else
        SSL_CTX_set_alpn_protos(raw, kAlpnH2, sizeof(kAlpnH2));
    return ctx;
}

TlsContexts::TlsContexts(std::shared_ptr<identity::CertManager> certs) : certs_(std::move(certs)) {}

std::expected<TlsContexts::Entry*, std::string> TlsContexts::entry(
    const identity::Identity& local) {
    auto cert = certs_->certificate(local);
    if (!cert)
        return std::unexpected(cert.error());
    Entry& e = entries_[local];
    if (e.cert != *cert) {
        auto server = make_context(**cert, *certs_, true);
        auto client = make_context(**cert, *certs_, false);
        if (!server)
            return std::unexpected(server.error());
        if (!client)
            return std::unexpected(client.error());
        e = Entry{*cert, *server, *client};
    }
    return &e;
}

void TlsContexts::forget(const identity::Identity& local) {
    // Both under the lock (entry() takes the manager's inside it too): a server() or client()
    // between the two would mint and build the contexts again, to stay until a restart.
    std::lock_guard lock(mutex_);
    entries_.erase(local);
    certs_->forget(local);
}

std::size_t TlsContexts::size() const {
    std::lock_guard lock(mutex_);
    return entries_.size();
}

std::expected<std::shared_ptr<ssl::context>, std::string> TlsContexts::server(
    const identity::Identity& local) {
    std::lock_guard lock(mutex_);
    auto e = entry(local);
    if (!e)
        return std::unexpected(e.error());
    return (*e)->server;
}

std::expected<std::shared_ptr<ssl::context>, std::string> TlsContexts::client(
    const identity::Identity& local) {
    std::lock_guard lock(mutex_);
    auto e = entry(local);
    if (!e)
        return std::unexpected(e.error());
    return (*e)->client;
}

}  // namespace sluice::ztunnel::hbone
