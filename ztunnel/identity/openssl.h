#pragma once

// Owning handles for the OpenSSL objects identity/ and hbone/ pass around, and the text of the
// thread's OpenSSL error queue for log lines.

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::ztunnel::identity {

struct X509Free {
    void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
    void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct SslCtxFree {
    void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

// Drains the thread's OpenSSL error queue into one line ("" when empty).
std::string openssl_errors();

// Every certificate in a PEM text, in order; empty on malformed input.
std::vector<X509Ptr> parse_certificates(std::string_view pem);
PkeyPtr parse_private_key(std::string_view pem);
std::string to_pem(X509* cert);
std::string to_pem(EVP_PKEY* key);

}  // namespace sluice::ztunnel::identity
