#include "policies/identity.h"

#include <algorithm>
#include <set>
#include <stdexcept>

namespace sluice::policies {
namespace {

uint64_t fnv1a64(const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

}  // namespace

uint32_t StableIdAllocator::home(const std::string& key) const {
    const uint64_t span = uint64_t{last_} - first_ + 1;
    return static_cast<uint32_t>(first_ + fnv1a64(key) % span);
}

std::map<std::string, uint32_t> StableIdAllocator::assign(
    std::vector<std::string> keys, const std::map<std::string, uint32_t>& previous) const {
    std::sort(keys.begin(), keys.end());
    keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
    const uint64_t span = uint64_t{last_} - first_ + 1;
    if (keys.size() > span)
        throw std::length_error("more keys than ids in the range");
    std::map<std::string, uint32_t> out;
    std::set<uint32_t> taken;
    for (const auto& k : keys) {
        auto it = previous.find(k);
        if (it != previous.end() && it->second >= first_ && it->second <= last_ &&
            taken.insert(it->second).second)
            out[k] = it->second;
    }
    for (const auto& k : keys) {
        if (out.contains(k))
            continue;
        uint32_t id = home(k);
        // Bounded: at most `span` probes, and keys.size() <= span guarantees a free id.
        for (uint64_t probe = 0; probe < span && taken.contains(id); ++probe)
            id = id == last_ ? first_ : id + 1;
        taken.insert(id);
        out[k] = id;
    }
    return out;
}

}  // namespace sluice::policies
