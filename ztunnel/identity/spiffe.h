#pragma once

#include <expected>
#include <string>
#include <string_view>

namespace sluice::ztunnel::identity {

inline constexpr const char* kDefaultTrustDomain = "cluster.local";

// A workload identity in Istio's SPIFFE shape: spiffe://<trust domain>/ns/<ns>/sa/<sa>.
struct Identity {
    std::string trust_domain;
    std::string namespace_name;
    std::string service_account;

    std::string uri() const;
    // Only the /ns/<ns>/sa/<sa> form is a workload identity; anything else is refused with
    // the reason.
    static std::expected<Identity, std::string> parse(std::string_view uri);
    bool operator==(const Identity&) const = default;
    auto operator<=>(const Identity&) const = default;
};

}  // namespace sluice::ztunnel::identity
