#include <gtest/gtest.h>
#include <openssl/x509.h>

#include <filesystem>

#include "ztunnel/identity/cert_manager.h"
#include "ztunnel/identity/verify.h"

namespace sluice::ztunnel::identity {
namespace {

using namespace std::chrono_literals;

const Identity kClient{"cluster.local", "tenant-a", "rag"};
const Identity kServer{"cluster.local", "tenant-a", "llm"};

class IdentityTest : public ::testing::Test {
  protected:
    IdentityTest() : ca_(CertificateAuthority::create("cluster.local")) {
        bundle_.add(ca_.certificate());
    }

    // Verifies a minted certificate against the bundle as a peer would.
    std::expected<Identity, VerifyError> verify(const WorkloadCert& cert,
                                                std::optional<Identity> expected = {},
                                                std::string td = "cluster.local") {
        auto leaf = parse_certificates(cert.cert_pem);
        EXPECT_EQ(leaf.size(), 1u);
        return verify_peer(bundle_, {.leaf = leaf.front().get(),
                                     .trust_domain = std::move(td),
                                     .expected = std::move(expected)});
    }

    CertificateAuthority ca_;
    TrustBundle bundle_;
};

TEST(SpiffeTest, ParsesAndFormatsWorkloadIdentities) {
    auto id = Identity::parse("spiffe://cluster.local/ns/tenant-a/sa/llm");
    ASSERT_TRUE(id) << id.error();
    EXPECT_EQ(*id, kServer);
    EXPECT_EQ(id->uri(), "spiffe://cluster.local/ns/tenant-a/sa/llm");
    EXPECT_FALSE(Identity::parse("https://cluster.local/ns/a/sa/b"));
    EXPECT_FALSE(Identity::parse("spiffe://cluster.local/ns/a"));
    EXPECT_FALSE(Identity::parse("spiffe://cluster.local/ns//sa/b"));
    EXPECT_FALSE(Identity::parse("spiffe://cluster.local/sa/a/ns/b"));
}

TEST_F(IdentityTest, MintedCertificateVerifiesWithItsIdentity) {
    auto cert = ca_.mint(kServer);
    ASSERT_TRUE(cert) << cert.error();
    auto id = verify(*cert, kServer);
    ASSERT_TRUE(id) << id.error().message();
    EXPECT_EQ(*id, kServer);
    EXPECT_NEAR(std::chrono::duration<double>(cert->not_after - cert->not_before).count(),
                (24h).count() * 3600.0, 1.0);
}

TEST_F(IdentityTest, MintedKeyIsEcdsaP256) {
    auto cert = ca_.mint(kServer);
    ASSERT_TRUE(cert);
    auto key = parse_private_key(cert->key_pem);
    ASSERT_TRUE(key);
    EXPECT_EQ(EVP_PKEY_get_base_id(key.get()), EVP_PKEY_EC);
    char group[64] = {};
    size_t len = 0;
    EVP_PKEY_get_group_name(key.get(), group, sizeof(group), &len);
    EXPECT_STREQ(group, "prime256v1");
}

TEST_F(IdentityTest, ExpiredCertificateIsRefused) {
    auto cert = ca_.mint(kServer, {.lifetime = 1h, .not_before = Clock::now() - 2h});
    ASSERT_TRUE(cert);
    auto id = verify(*cert);
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().failure, VerifyFailure::Expired) << id.error().message();
}

TEST_F(IdentityTest, NotYetValidCertificateIsRefused) {
    auto cert = ca_.mint(kServer, {.lifetime = 1h, .not_before = Clock::now() + 1h});
    ASSERT_TRUE(cert);
    auto id = verify(*cert);
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().failure, VerifyFailure::NotYetValid) << id.error().message();
}

TEST_F(IdentityTest, WrongTrustDomainIsRefused) {
    auto cert = ca_.mint(Identity{"evil.example", "tenant-a", "llm"});
    ASSERT_TRUE(cert);
    auto id = verify(*cert);
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().failure, VerifyFailure::WrongTrustDomain) << id.error().message();
}

TEST_F(IdentityTest, WrongSanIsRefusedWhenAnotherIdentityIsExpected) {
    auto cert = ca_.mint(kClient);
    ASSERT_TRUE(cert);
    auto id = verify(*cert, kServer);
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().failure, VerifyFailure::WrongIdentity) << id.error().message();
    EXPECT_NE(id.error().detail.find("sa/rag"), std::string::npos);
}

TEST_F(IdentityTest, UnknownCaIsRefused) {
    CertificateAuthority other = CertificateAuthority::create("cluster.local");
    auto cert = other.mint(kServer);
    ASSERT_TRUE(cert);
    auto id = verify(*cert);
    ASSERT_FALSE(id);
    EXPECT_EQ(id.error().failure, VerifyFailure::UnknownCa) << id.error().message();
}

TEST_F(IdentityTest, BundleWithTwoRootsAcceptsBothDuringRotation) {
    CertificateAuthority next = CertificateAuthority::create("cluster.local");
    ASSERT_TRUE(bundle_.add_pem(next.cert_pem()));
    EXPECT_EQ(bundle_.size(), 2u);
    auto old_cert = ca_.mint(kServer);
    auto new_cert = next.mint(kServer);
    ASSERT_TRUE(old_cert && new_cert);
    EXPECT_TRUE(verify(*old_cert));
    EXPECT_TRUE(verify(*new_cert));
}

TEST_F(IdentityTest, CaRoundTripsThroughFiles) {
    const auto dir =
        std::filesystem::temp_directory_path() / ("sluice-ca-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    ca_.write(dir / "ca.crt", dir / "ca.key");
    auto loaded = CertificateAuthority::load(dir / "ca.crt", dir / "ca.key");
    std::filesystem::remove_all(dir);
    ASSERT_TRUE(loaded) << loaded.error();
    auto cert = loaded->mint(kServer);
    ASSERT_TRUE(cert);
    EXPECT_TRUE(verify(*cert));
    EXPECT_FALSE(CertificateAuthority::load(dir / "missing.crt", dir / "missing.key"));
}

TEST_F(IdentityTest, CertManagerRenewsAtHalfLifetime) {
    auto ca = std::make_shared<CertificateAuthority>(CertificateAuthority::create("cluster.local"));
    auto bundle = std::make_shared<TrustBundle>();
    CertManager manager(ca, bundle, "cluster.local", 24h);
    auto first = manager.certificate(kServer);
    ASSERT_TRUE(first) << first.error();
    auto again = manager.certificate(kServer);
    ASSERT_TRUE(again);
    EXPECT_EQ(first->get(), again->get()) << "a fresh certificate is reused";
    EXPECT_FALSE(needs_renewal(**first, Clock::now()));
    EXPECT_TRUE(needs_renewal(**first, (*first)->not_before + 12h + 1s));
    EXPECT_FALSE(manager.certificate(Identity{"other.td", "a", "b"}));
    manager.forget(kServer);
    EXPECT_TRUE(manager.certificates().empty());
    // A handshake racing the pod's removal gets no certificate minted for the identity that
    // left, until a workload with it is enrolled again.
    auto late = manager.certificate(kServer);
    ASSERT_FALSE(late);
    EXPECT_NE(late.error().find("is enrolled on this node"), std::string::npos) << late.error();
    EXPECT_TRUE(manager.certificates().empty());
    manager.enroll(kServer);
    EXPECT_TRUE(manager.certificate(kServer));
    EXPECT_EQ(manager.certificates().size(), 1u);
}

}  // namespace
}  // namespace sluice::ztunnel::identity
