#include "ztunnel/identity/ca.h"

#include <openssl/ec.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace sluice::ztunnel::identity {
namespace {

constexpr auto kClockSkewSlack = std::chrono::minutes(1);

void write_file(const std::string& path, const std::string& text, mode_t mode) {
    std::ofstream f(path, std::ios::trunc);
    f << text;
    f.close();
    if (!f || ::chmod(path.c_str(), mode) != 0)
        throw std::runtime_error("cannot write " + path);
}

void set_random_serial(X509* x) {
    unsigned char bytes[16];
    RAND_bytes(bytes, sizeof(bytes));
    bytes[0] &= 0x7f;  // positive
    BIGNUM* bn = BN_bin2bn(bytes, sizeof(bytes), nullptr);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
}

void set_validity(X509* x, Clock::time_point not_before, std::chrono::seconds lifetime) {
    const time_t nb = Clock::to_time_t(not_before);
    const time_t na = Clock::to_time_t(not_before + lifetime);
    ASN1_TIME_set(X509_getm_notBefore(x), nb);
    ASN1_TIME_set(X509_getm_notAfter(x), na);
}

bool add_extension(X509* x, X509* issuer, int nid, const std::string& value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    if (ext == nullptr)
        return false;
    X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return true;
}

}  // namespace

std::expected<std::string, std::string> read_text_file(const std::string& path) {
    std::ifstream f(path);
    if (!f)
        return std::unexpected("cannot read " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

PkeyPtr generate_p256_key() {
    return PkeyPtr(EVP_EC_gen("P-256"));
}

Clock::time_point asn1_to_time(const ASN1_TIME* t) {
    struct tm tm {};
    ASN1_TIME_to_tm(t, &tm);
    return Clock::from_time_t(timegm(&tm));
}

std::string format_time(Clock::time_point t) {
    const time_t tt = Clock::to_time_t(t);
    struct tm tm {};
    gmtime_r(&tt, &tm);
    char buf[32];
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

CertificateAuthority CertificateAuthority::create(const std::string& trust_domain,
                                                  std::chrono::seconds lifetime) {
    PkeyPtr key = generate_p256_key();
    X509Ptr cert(X509_new());
    if (!key || !cert)
        throw std::runtime_error("cannot create CA key: " + openssl_errors());
    X509_set_version(cert.get(), 2);
    set_random_serial(cert.get());
    set_validity(cert.get(), Clock::now() - kClockSkewSlack, lifetime);
    X509_NAME* name = X509_get_subject_name(cert.get());
    const std::string cn = trust_domain + " root";
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>("sluice"), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
    X509_set_issuer_name(cert.get(), name);
    X509_set_pubkey(cert.get(), key.get());
    add_extension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE");
    add_extension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
    add_extension(cert.get(), cert.get(), NID_subject_key_identifier, "hash");
    if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0)
        throw std::runtime_error("cannot sign CA certificate: " + openssl_errors());
    return CertificateAuthority(std::move(cert), std::move(key));
}

std::expected<CertificateAuthority, std::string> CertificateAuthority::load(
    const std::string& cert_path, const std::string& key_path) {
    auto cert_text = read_text_file(cert_path);
    if (!cert_text)
        return std::unexpected(cert_text.error());
    auto key_text = read_text_file(key_path);
    if (!key_text)
        return std::unexpected(key_text.error());
    auto certs = parse_certificates(*cert_text);
    if (certs.empty())
        return std::unexpected("no PEM certificate in " + cert_path);
    PkeyPtr key = parse_private_key(*key_text);
    if (!key)
        return std::unexpected("no PEM private key in " + key_path + ": " + openssl_errors());
    if (X509_check_private_key(certs.front().get(), key.get()) != 1)
        return std::unexpected("the key in " + key_path + " does not match " + cert_path);
    return CertificateAuthority(std::move(certs.front()), std::move(key));
}

void CertificateAuthority::write(const std::string& cert_path, const std::string& key_path) const {
    write_file(key_path, to_pem(key_.get()), 0600);
    write_file(cert_path, to_pem(cert_.get()), 0644);
}

std::expected<WorkloadCert, std::string> CertificateAuthority::mint(
    const Identity& id, const MintOptions& options) const {
    PkeyPtr key = generate_p256_key();
    X509Ptr cert(X509_new());
    if (!key || !cert)
        return std::unexpected("cannot create workload key: " + openssl_errors());
    // Back-dated for clock skew, but never by more than a quarter of a (short) lifetime.
    const auto slack = std::min<std::chrono::seconds>(
        std::chrono::duration_cast<std::chrono::seconds>(kClockSkewSlack), options.lifetime / 4);
    const Clock::time_point not_before = options.not_before.value_or(Clock::now() - slack);
    X509_set_version(cert.get(), 2);
    set_random_serial(cert.get());
    set_validity(cert.get(), not_before, options.lifetime);
    // Istio workload certificates carry an empty subject and the identity only in the SAN.
    X509_set_issuer_name(cert.get(), X509_get_subject_name(cert_.get()));
    X509_set_pubkey(cert.get(), key.get());
    bool ok =
        add_extension(cert.get(), cert_.get(), NID_basic_constraints, "critical,CA:FALSE") &&
        add_extension(cert.get(), cert_.get(), NID_key_usage,
                      "critical,digitalSignature,keyEncipherment") &&
        add_extension(cert.get(), cert_.get(), NID_ext_key_usage, "serverAuth,clientAuth") &&
        add_extension(cert.get(), cert_.get(), NID_authority_key_identifier, "keyid") &&
        add_extension(cert.get(), cert_.get(), NID_subject_alt_name, "critical,URI:" + id.uri());
    if (!ok)
        return std::unexpected("cannot add certificate extensions: " + openssl_errors());
    if (X509_sign(cert.get(), key_.get(), EVP_sha256()) == 0)
        return std::unexpected("cannot sign workload certificate: " + openssl_errors());
    WorkloadCert out;
    out.identity = id;
    out.cert_pem = to_pem(cert.get());
    out.chain_pem = cert_pem();
    out.key_pem = to_pem(key.get());
    out.not_before = asn1_to_time(X509_get0_notBefore(cert.get()));
    out.not_after = asn1_to_time(X509_get0_notAfter(cert.get()));
    return out;
}

}  // namespace sluice::ztunnel::identity
