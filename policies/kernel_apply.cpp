#include "policies/kernel_apply.h"

#include <map>
#include <tuple>

#include "agent/datapath/datapath.h"

namespace sluice::policies {
namespace {

using PolicyKey = std::tuple<uint32_t, uint32_t, uint16_t, uint8_t, uint8_t>;
PolicyKey tie_key(const sluice_policy_key& k) {
    return {k.endpoint_id, k.peer_identity, k.port, k.proto, k.direction};
}
using CidrKey = std::pair<std::array<uint8_t, 16>, uint32_t>;
CidrKey tie_cidr(const Cidr& c) {
    return {c.address.bytes, c.prefix_len};
}

}  // namespace

KernelDelta kernel_delta(const KernelState& from, const KernelState& to,
                         const std::function<bool(uint32_t)>& keep_endpoint) {
    KernelDelta d;
    auto keep = [&](const sluice_policy_key& k) {
        return !keep_endpoint || keep_endpoint(k.endpoint_id);
    };
    std::map<PolicyKey, sluice_policy_value> old_policy;
    for (const auto& e : from.policy) {
        if (keep(e.key))
            old_policy[tie_key(e.key)] = e.value;
    }
    std::map<PolicyKey, bool> present;
    for (const auto& e : to.policy) {
        if (!keep(e.key))
            continue;
        present[tie_key(e.key)] = true;
        auto it = old_policy.find(tie_key(e.key));
        if (it == old_policy.end() || it->second.verdict != e.value.verdict ||
            it->second.rule_id != e.value.rule_id)
            d.policy_upserts.push_back(e);
    }
    for (const auto& e : from.policy) {
        if (keep(e.key) && !present.contains(tie_key(e.key)))
            d.policy_deletes.push_back(e.key);
    }
    std::map<CidrKey, uint32_t> old_ipc;
    for (const auto& e : from.ipcache)
        old_ipc[tie_cidr(e.cidr)] = e.identity;
    std::map<CidrKey, bool> ipc_present;
    for (const auto& e : to.ipcache) {
        ipc_present[tie_cidr(e.cidr)] = true;
        auto it = old_ipc.find(tie_cidr(e.cidr));
        if (it == old_ipc.end() || it->second != e.identity)
            d.ipcache_upserts.push_back(e);
    }
    for (const auto& e : from.ipcache) {
        if (!ipc_present.contains(tie_cidr(e.cidr)))
            d.ipcache_deletes.push_back(e.cidr);
    }
    return d;
}

ApplyResult apply_delta(const KernelDelta& d, KernelSink& sink) {
    ApplyResult r;
    auto step = [&](bool ok) {
        if (ok)
            ++r.applied;
        else
            r.ok = false;
        return ok;
    };
    for (const auto& e : d.policy_upserts) {
        if (!step(sink.upsert_policy(e.key, e.value)))
            return r;
    }
    for (const auto& e : d.ipcache_upserts) {
        if (!step(sink.upsert_ipcache(e.cidr, e.identity)))
            return r;
    }
    for (const auto& c : d.ipcache_deletes) {
        if (!step(sink.delete_ipcache(c)))
            return r;
    }
    for (const auto& k : d.policy_deletes) {
        if (!step(sink.delete_policy(k)))
            return r;
    }
    return r;
}

bool DatapathSink::upsert_ipcache(const Cidr& cidr, uint32_t identity) {
    auto r = dp_.upsert_ipcache(cidr, identity);
    if (!r)
        last_error_ = r.error().message;
    return r.has_value();
}

bool DatapathSink::delete_ipcache(const Cidr& cidr) {
    auto r = dp_.delete_ipcache(cidr);
    if (!r && r.error().code != datapath::Errc::NotFound) {
        last_error_ = r.error().message;
        return false;
    }
    return true;
}

bool DatapathSink::upsert_policy(const sluice_policy_key& key, const sluice_policy_value& value) {
    auto r = dp_.upsert_policy(key, value);
    if (!r)
        last_error_ = r.error().message;
    return r.has_value();
}

bool DatapathSink::delete_policy(const sluice_policy_key& key) {
    auto r = dp_.delete_policy(key);
    if (!r && r.error().code != datapath::Errc::NotFound) {
        last_error_ = r.error().message;
        return false;
    }
    return true;
}

}  // namespace sluice::policies
