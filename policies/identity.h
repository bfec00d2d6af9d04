#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sluice::policies {

// Ids that stay the same across recompiles. Each key gets id = hash(key) folded into
// [first, last]; a collision probes forward (wrapping) in sorted key order. Keys present in
// `previous` keep their old id first, so an id never moves while its key exists, even when a
// new key would have hashed onto it. Deterministic: same keys + same previous → same ids.
class StableIdAllocator {
  public:
    StableIdAllocator(uint32_t first, uint32_t last) : first_(first), last_(last) {}

    // `keys` may be unsorted and hold duplicates. Fails (throws std::length_error) only when the
    // range is too small for the keys, which the ranges used here make impossible in practice.
    std::map<std::string, uint32_t> assign(std::vector<std::string> keys,
                                           const std::map<std::string, uint32_t>& previous) const;

    uint32_t home(const std::string& key) const;  // the id before probing

  private:
    uint32_t first_;
    uint32_t last_;
};

// Reserved ranges. Kernel identities 0 (ANY) and 1 (WORLD) come from sluice_abi.h; 2..255 are
// kept for future reserved identities (host, ztunnel, …). Rule id 0 means "no rule".
inline constexpr uint32_t kFirstAllocatedIdentity = 256;
inline constexpr uint32_t kFirstEndpointId = 1;
inline constexpr uint32_t kRuleIdNoAllowMatched = 1;  // ALLOW policies select it, none matched
inline constexpr uint32_t kFirstAllocatedRuleId = 256;

}  // namespace sluice::policies
