// Differential test: the kernel's verdict (a faithful model of the map lookups in
// sluice_abi.h's documented order over the compiler's entries) against ztunnel's evaluate(),
// over generated policies, registries and connections. The kernel only ever decides DENY (an
// ALLOW entry passes the connection on to ztunnel), so:
//   1. kernel DENY ⇒ ztunnel DENY, for plaintext and for the source's own mTLS identity, at
//      ingress (sk_lookup) and at egress (connect);
//   2. when no rule uses principals and mTLS is not STRICT, the kernel's ingress verdict equals
//      ztunnel's plaintext verdict exactly (the kernel decides everything it can).
#include <gtest/gtest.h>

#include <random>

#include "policies/compiler.h"
#include "policies/evaluate.h"
#include "policies/kernel_model.h"

namespace sluice::policies {
namespace {

constexpr int kScenarios = 300;
const std::vector<std::string> kNamespaces = {"istio-system", "ns-a", "ns-b", "ns-c", "ns-d"};
const std::vector<std::string> kApps = {"web", "api", "db"};
const std::vector<uint16_t> kPorts = {80, 8080, 6333, 22};
const std::vector<std::string> kCidrs = {"198.18.0.0/16",    "198.18.1.0/24", "203.0.113.0/24",
                                         "10.0.0.0/8",       "198.18.2.5/32", "2001:db8::/32",
                                         "2001:db8:0:1::/64"};
const std::vector<std::string> kWorld = {"203.0.113.5", "10.1.2.3", "8.8.8.8", "2001:db8:9::1"};

class Generator {
  public:
    explicit Generator(uint32_t seed) : rng_(seed) {}

    int pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }
    bool chance(int percent) { return pick(100) < percent; }
    template <typename T>
    const T& one(const std::vector<T>& v) {
        return v[static_cast<std::size_t>(pick(static_cast<int>(v.size())))];
    }
    template <typename T>
    std::vector<T> some(const std::vector<T>& v, int max) {
        std::vector<T> out;
        const int n = 1 + pick(max);
        for (int i = 0; i < n; ++i)
            out.push_back(one(v));
        return out;
    }

    Registry registry() {
        Registry r;
        int host = 10;  // never 5: 198.18.2.5 below must stay unique
        for (std::size_t n = 1; n < kNamespaces.size(); ++n) {
            r.namespaces.push_back({kNamespaces[n], {{"tenant", n % 2 ? "odd" : "even"}}});
            for (int i = 0; i < 3; ++i) {
                Pod p;
                p.namespace_name = kNamespaces[n];
                p.name = "pod" + std::to_string(i);
                p.service_account = "sa" + std::to_string(pick(2));
                p.labels = {{"app", one(kApps)}};
                const int subnet = pick(3);
                p.addresses.push_back(*datapath::parse_ip("198.18." + std::to_string(subnet) + "." +
                                                          std::to_string(host)));
                if (chance(40)) {
                    p.addresses.push_back(*datapath::parse_ip(
                        "2001:db8:0:" + std::to_string(subnet) + "::" + std::to_string(host)));
                }
                ++host;
                r.pods.push_back(p);
            }
        }
        // The /32 in kCidrs is sometimes a pod address.
        if (chance(50))
            r.pods[0].addresses[0] = *datapath::parse_ip("198.18.2.5");
        return r;
    }

    Source source(bool principals) {
        Source s;
        const int fields = 1 + pick(2);
        for (int f = 0; f < fields; ++f) {
            switch (pick(principals ? 6 : 4)) {
                case 0:
                    s.namespaces = some(kNamespaces, 2);
                    if (chance(10))
                        s.namespaces.push_back("ns-*");
                    break;
                case 1:
                    s.not_namespaces = some(kNamespaces, 2);
                    break;
                case 2:
                    for (const auto& c : some(kCidrs, 2))
                        s.ip_blocks.push_back(*datapath::parse_cidr(c));
                    break;
                case 3:
                    for (const auto& c : some(kCidrs, 2))
                        s.not_ip_blocks.push_back(*datapath::parse_cidr(c));
                    break;
                case 4:
                    s.principals = {"cluster.local/ns/" + one(kNamespaces) + "/sa/sa" +
                                    std::to_string(pick(2))};
                    if (chance(20))
                        s.principals = {"*"};
                    break;
                default:
                    s.not_principals = {chance(50)
                                            ? std::string("*")
                                            : "cluster.local/ns/" + one(kNamespaces) + "/sa/sa0"};
                    break;
            }
        }
        return s;
    }

    PolicySet policies(bool principals, bool strict) {
        PolicySet set;
        destination_ips_ = false;
        const int n = 2 + pick(10);
        for (int i = 0; i < n; ++i) {
            AuthorizationPolicy p;
            p.meta = {"AuthorizationPolicy", "p" + std::to_string(i), one(kNamespaces), {}};
            if (chance(60))
                p.selector = Labels{{"app", one(kApps)}};
            p.action = chance(40) ? Action::Deny : Action::Allow;
            const int rules = pick(4);  // 0: allow-nothing / no-op deny
            for (int j = 0; j < rules; ++j) {
                Rule r;
                const int from = pick(3);
                for (int k = 0; k < from; ++k)
                    r.from.push_back(source(principals));
                const int to = pick(3);
                for (int k = 0; k < to; ++k) {
                    Operation op;
                    if (chance(70))
                        op.ports = some(kPorts, 2);
                    else
                        op.not_ports = some(kPorts, 2);
                    if (chance(10))
                        op.l7_fields = {"to.operation.methods"};
                    r.to.push_back(op);
                }
                if (chance(8))
                    r.l7_fields = {"when.request.headers[x-user]"};
                // `when` conditions on L4 keys: ANDed with everything else.
                if (chance(12))
                    r.when_sources.push_back(source(principals));
                if (chance(8)) {
                    Operation op;
                    (chance(60) ? op.ports : op.not_ports) = some(kPorts, 2);
                    r.when_operations.push_back(op);
                }
                if (chance(8)) {
                    DestinationIpCondition d;
                    for (const auto& c : some(kCidrs, 2))
                        (chance(60) ? d.cidrs : d.not_cidrs).push_back(*datapath::parse_cidr(c));
                    r.when_destination_ips.push_back(d);
                    destination_ips_ = true;
                }
                for (const auto& op : r.to)
                    r.l7_fields.insert(r.l7_fields.end(), op.l7_fields.begin(), op.l7_fields.end());
                p.rules.push_back(r);
            }
            set.authorization.push_back(p);
        }
        if (chance(60)) {
            const int nb = 1 + pick(2);
            std::vector<std::string> free(kNamespaces.begin() + 1, kNamespaces.end());
            for (int b = 0; b < nb && !free.empty(); ++b) {
                IsolationBoundary ib;
                ib.meta = {"IsolationBoundary", "b" + std::to_string(b), "", {}};
                const int members = 1 + pick(2);
                for (int m = 0; m < members && !free.empty(); ++m) {
                    const auto idx = static_cast<std::size_t>(pick(static_cast<int>(free.size())));
                    ib.namespaces.push_back(free[idx]);
                    free.erase(free.begin() + static_cast<long>(idx));
                }
                for (auto* peers : {&ib.allow_from, &ib.allow_to}) {
                    if (chance(50)) {
                        BoundaryPeer peer;
                        peer.namespaces = some(kNamespaces, 2);
                        if (b > 0 && chance(50))
                            peer.boundaries = {"b0"};
                        if (chance(50))
                            peer.ports = some(kPorts, 2);
                        peers->push_back(peer);
                    }
                }
                set.boundaries.push_back(ib);
            }
        }
        PeerAuthentication pa;
        pa.meta = {"PeerAuthentication", "default", "istio-system", {}};
        pa.mode = strict ? MtlsMode::Strict : MtlsMode::Permissive;
        set.peer_authentication.push_back(pa);
        return set;
    }

    // Whether the last policies() has a `when` condition on destination.ip.
    bool destination_ips() const { return destination_ips_; }

  private:
    std::mt19937 rng_;
    bool destination_ips_ = false;
};

TEST(PolicyDifferential, KernelNeverContradictsZtunnel) {
    std::size_t checks = 0, kernel_denies = 0, ztunnel_denies = 0, exact_checks = 0;
    for (int seed = 1; seed <= kScenarios; ++seed) {
        Generator g(static_cast<uint32_t>(seed));
        const bool principals = seed % 2 == 0;
        const bool strict = seed % 4 == 0;
        const Registry registry = g.registry();
        const PolicySet set = g.policies(principals, strict);
        const CompiledPolicy c = compile(set, registry);
        ASSERT_FALSE(has_errors(c.diagnostics)) << "seed " << seed;
        const KernelModel kernel(c.kernel);

        struct Src {
            IpAddress ip;
            const Pod* pod;
        };
        std::vector<Src> sources;
        for (const auto& p : registry.pods) {
            for (const auto& a : p.addresses)
                sources.push_back({a, &p});
        }
        for (const auto& w : kWorld)
            sources.push_back({*datapath::parse_ip(w), nullptr});

        for (const auto& dst : registry.pods) {
            const auto* ep = kernel.endpoint_by_pod(dst.key());
            ASSERT_NE(ep, nullptr);
            for (const auto& src : sources) {
                for (uint16_t port :
                     {uint16_t{80}, uint16_t{8080}, uint16_t{6333}, uint16_t{22}, uint16_t{9999}}) {
                    const auto ingress =
                        kernel.lookup(ep->value.endpoint_id, kernel.identity_of(src.ip), port, 6,
                                      SLUICE_DIR_INGRESS);
                    // ztunnel's verdicts for each address of the destination (the kernel's
                    // endpoint covers them all), plaintext and with the source's own identity.
                    std::vector<Decision> zp, zm;
                    for (const auto& daddr : dst.addresses) {
                        Connection plain{"", src.ip, dst.key(), port, daddr};
                        zp.push_back(evaluate(c, plain));
                        if (src.pod) {
                            Connection m{"spiffe://cluster.local/ns/" + src.pod->namespace_name +
                                             "/sa/" + src.pod->service_account,
                                         src.ip, dst.key(), port, daddr};
                            zm.push_back(evaluate(c, m));
                        }
                    }
                    auto all_deny = [](const std::vector<Decision>& ds) {
                        return std::all_of(ds.begin(), ds.end(), [](const Decision& d) {
                            return d.verdict == Verdict::Deny;
                        });
                    };
                    const std::string what = "seed " + std::to_string(seed) + " " +
                                             src.ip.to_string() + " → " + dst.key() + ":" +
                                             std::to_string(port);
                    ++checks;
                    ztunnel_denies += zp[0].verdict == Verdict::Deny;
                    if (ingress.verdict == SLUICE_VERDICT_DENY) {
                        ++kernel_denies;
                        ASSERT_TRUE(all_deny(zp))
                            << what << " kernel ingress rule " << ingress.rule_id;
                        ASSERT_TRUE(all_deny(zm))
                            << what << " (mTLS) kernel ingress rule " << ingress.rule_id;
                    }
                    // A destination.ip condition can hold for one address of a dual-stack pod
                    // and not the other: the kernel, which sees the pod, leaves that to ztunnel.
                    if (!principals && !strict &&
                        (dst.addresses.size() == 1 || !g.destination_ips())) {
                        ++exact_checks;
                        for (const auto& d : zp) {
                            ASSERT_EQ(ingress.verdict == SLUICE_VERDICT_DENY,
                                      d.verdict == Verdict::Deny)
                                << what << ": kernel " << int(ingress.verdict) << " ztunnel "
                                << d.reason;
                        }
                    }
                    if (src.pod) {
                        const auto* sep = kernel.endpoint_by_pod(src.pod->key());
                        for (const auto& daddr : dst.addresses) {
                            const auto egress =
                                kernel.lookup(sep->value.endpoint_id, kernel.identity_of(daddr),
                                              port, 6, SLUICE_DIR_EGRESS);
                            if (egress.verdict == SLUICE_VERDICT_DENY) {
                                ASSERT_TRUE(all_deny(zp)) << what << " (egress)";
                                ASSERT_TRUE(all_deny(zm)) << what << " (egress, mTLS)";
                            }
                        }
                    }
                }
            }
        }
    }
    // The test only means something if both sides deny a lot and the kernel decides much of it.
    EXPECT_GT(checks, 100000u);
    EXPECT_GT(exact_checks, 20000u);
    EXPECT_GT(kernel_denies, checks / 10);
    EXPECT_GT(ztunnel_denies, kernel_denies);
    std::cout << checks << " connections, ztunnel denied " << ztunnel_denies << ", kernel denied "
              << kernel_denies << ", exact comparisons " << exact_checks << "\n";
}

}  // namespace
}  // namespace sluice::policies
