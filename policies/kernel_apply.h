#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "policies/compiler.h"

namespace sluice::datapath {
class Datapath;
}

namespace sluice::policies {

// Where kernel entries go. The agent's implementation is DatapathSink (below); tests and the
// bench use an in-memory one.
class KernelSink {
  public:
    virtual ~KernelSink() = default;
    virtual bool upsert_ipcache(const Cidr& cidr, uint32_t identity) = 0;
    virtual bool delete_ipcache(const Cidr& cidr) = 0;
    virtual bool upsert_policy(const sluice_policy_key& key, const sluice_policy_value& value) = 0;
    virtual bool delete_policy(const sluice_policy_key& key) = 0;
};

// The changes from one generation's kernel entries to the next, in the order that keeps every
// intermediate state within old ∪ new decisions: (1) upsert new and changed policy entries
// (entries for identities that no address maps to yet are inert), (2) upsert ipcache entries,
// (3) delete ipcache entries that went away, (4) delete policy entries that went away. No step
// removes an entry before its replacement exists, so there is never a moment of "no policy"
// (allow-all) nor a wholesale deny. It is not a single atomic swap; see docs/policies.md.
struct KernelDelta {
    std::vector<KernelPolicyEntry> policy_upserts;
    std::vector<KernelIpcacheEntry> ipcache_upserts;
    std::vector<Cidr> ipcache_deletes;
    std::vector<sluice_policy_key> policy_deletes;

    bool empty() const {
        return policy_upserts.empty() && ipcache_upserts.empty() && ipcache_deletes.empty() &&
               policy_deletes.empty();
    }
    std::size_t size() const {
        return policy_upserts.size() + ipcache_upserts.size() + ipcache_deletes.size() +
               policy_deletes.size();
    }
};

// `keep_endpoint`: which endpoints' policy entries this node installs (nullptr: all).
KernelDelta kernel_delta(const KernelState& from, const KernelState& to,
                         const std::function<bool(uint32_t endpoint_id)>& keep_endpoint = nullptr);

// Applies in the documented order; stops at the first failure and returns how many operations
// succeeded (the caller keeps the old generation as "applied" and retries from scratch).
struct ApplyResult {
    std::size_t applied = 0;
    bool ok = true;
};
ApplyResult apply_delta(const KernelDelta& delta, KernelSink& sink);

// KernelSink over the agent's eBPF Datapath.
class DatapathSink : public KernelSink {
  public:
    explicit DatapathSink(datapath::Datapath& dp) : dp_(dp) {}
    bool upsert_ipcache(const Cidr& cidr, uint32_t identity) override;
    bool delete_ipcache(const Cidr& cidr) override;
    bool upsert_policy(const sluice_policy_key& key, const sluice_policy_value& value) override;
    bool delete_policy(const sluice_policy_key& key) override;
    const std::string& last_error() const { return last_error_; }

  private:
    datapath::Datapath& dp_;
    std::string last_error_;
};

}  // namespace sluice::policies
