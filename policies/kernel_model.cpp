#include "policies/kernel_model.h"

namespace sluice::policies {
namespace {

std::array<uint8_t, 16> masked(const IpAddress& a, uint32_t bits) {
    std::array<uint8_t, 16> out{};
    for (uint32_t i = 0; i < 16; ++i) {
        if (bits >= (i + 1) * 8)
            out[i] = a.bytes[i];
        else if (bits > i * 8)
            out[i] = static_cast<uint8_t>(a.bytes[i] & (0xff << (8 - (bits - i * 8))));
    }
    return out;
}

}  // namespace

KernelModel::KernelModel(const KernelState& state) {
    for (const auto& e : state.policy) {
        policy_[{e.key.endpoint_id, e.key.peer_identity, e.key.port, e.key.proto,
                 e.key.direction}] = e.value;
    }
    for (const auto& e : state.ipcache)
        ipcache_[e.cidr.prefix_len][masked(e.cidr.address, e.cidr.prefix_len)] = e.identity;
    for (const auto& e : state.endpoints) {
        flags_[e.value.endpoint_id] = e.value.flags;
        endpoints_[e.pod] = e;
    }
}

uint32_t KernelModel::identity_of(const IpAddress& address) const {
    for (const auto& [bits, entries] : ipcache_) {
        auto it = entries.find(masked(address, bits));
        if (it != entries.end())
            return it->second;
    }
    return SLUICE_IDENTITY_WORLD;
}

KernelModel::Lookup KernelModel::lookup(uint32_t endpoint_id, uint32_t peer_identity, uint16_t port,
                                        uint8_t proto, uint8_t direction) const {
    const std::pair<uint32_t, uint16_t> order[] = {
        {peer_identity, port},
        {peer_identity, SLUICE_PORT_ANY},
        {SLUICE_IDENTITY_ANY, port},
        {SLUICE_IDENTITY_ANY, SLUICE_PORT_ANY},
    };
    for (int step = 0; step < 4; ++step) {
        auto it =
            policy_.find({endpoint_id, order[step].first, order[step].second, proto, direction});
        if (it != policy_.end()) {
            Lookup l;
            l.step = step + 1;
            l.key = {endpoint_id, order[step].first, order[step].second, proto, direction};
            l.verdict = it->second.verdict;
            l.rule_id = it->second.rule_id;
            return l;
        }
    }
    Lookup l;
    auto f = flags_.find(endpoint_id);
    const uint32_t flags = f == flags_.end() ? 0 : f->second;
    const uint32_t deny_flag = direction == SLUICE_DIR_EGRESS
                                   ? SLUICE_ENROLLED_F_DEFAULT_DENY_EGRESS
                                   : SLUICE_ENROLLED_F_DEFAULT_DENY_INGRESS;
    l.verdict = (flags & deny_flag) ? SLUICE_VERDICT_DENY : SLUICE_VERDICT_ALLOW;
    return l;
}

const KernelEndpoint* KernelModel::endpoint_by_pod(const std::string& pod) const {
    auto it = endpoints_.find(pod);
    return it == endpoints_.end() ? nullptr : &it->second;
}

}  // namespace sluice::policies
