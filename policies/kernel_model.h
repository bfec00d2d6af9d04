#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "policies/compiler.h"

namespace sluice::policies {

// A faithful userspace model of the datapath's decisions over a KernelState: the ipcache LPM
// lookup and the policy lookup in the order sluice_abi.h documents. Used by the differential
// test, `explain` and `sluicectl`, so that what we say the kernel does is what the maps say.
class KernelModel {
  public:
    explicit KernelModel(const KernelState& state);

    // The identity the ipcache gives `address` (longest prefix), SLUICE_IDENTITY_WORLD if none.
    uint32_t identity_of(const IpAddress& address) const;

    struct Lookup {
        int step = 0;  // 1..4: which lookup of the documented order hit; 0: none (flags decided)
        sluice_policy_key key{};  // the key that hit
        uint8_t verdict = SLUICE_VERDICT_ALLOW;
        uint32_t rule_id = 0;
    };
    Lookup lookup(uint32_t endpoint_id, uint32_t peer_identity, uint16_t port, uint8_t proto,
                  uint8_t direction) const;

    const KernelEndpoint* endpoint_by_pod(const std::string& pod) const;

  private:
    using Key = std::tuple<uint32_t, uint32_t, uint16_t, uint8_t, uint8_t>;
    std::map<Key, sluice_policy_value> policy_;
    // prefix length → (masked address bytes → identity), searched longest first.
    std::map<uint32_t, std::map<std::array<uint8_t, 16>, uint32_t>, std::greater<>> ipcache_;
    std::map<uint32_t, uint32_t> flags_;  // endpoint id → enrolled flags
    std::map<std::string, KernelEndpoint> endpoints_;
};

}  // namespace sluice::policies
