#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "policies/compiler.h"
#include "policies/kernel_model.h"

namespace sluice::policies {

// One inbound connection as ztunnel sees it.
struct Connection {
    std::string
        peer_identity;        // "spiffe://td/ns/x/sa/y" from the peer certificate; empty: plaintext
    IpAddress source;         // the connection's source address
    std::string destination;  // destination workload "ns/name"
    uint16_t port = 0;        // destination (target) port
    // The address the connection was made to. Empty: every address of the destination pod in
    // the registry (only `when` conditions on destination.ip read it).
    std::optional<IpAddress> destination_address;
};

enum class Verdict { Allow, Deny };

struct Decision {
    Verdict verdict = Verdict::Deny;
    uint32_t rule_id = 0;            // the deciding rule (0: a default, see `reason`)
    std::string rule;                // RuleInfo::describe() or the PeerAuthentication that refused
    SourcePosition where;            // where the deciding rule is written
    std::string reason;              // one sentence a user can act on
    std::vector<std::string> trace;  // each step taken, for explain
};

// ztunnel's decision, in Istio's order: PeerAuthentication mode (STRICT refuses plaintext) →
// isolation boundary → DENY policies → ALLOW policies (if any selects the workload, one must
// match). The source namespace comes from the principal, or for plaintext from the registry pod
// that owns the source address (as the kernel's ipcache does).
Decision evaluate(const CompiledPolicy& compiled, const Connection& connection);

// What `sluicectl policy explain` prints: ztunnel's decision plus what the kernel maps say on
// both sides of the connection.
struct ExplainQuery {
    std::string from;  // "ns/sa", "ns/pod", or an IP address (plaintext, outside the mesh)
    std::string to;    // "ns/pod"
    // The address of `to` the client connects to; empty: a `destination.ip` condition matches
    // if it holds for any of the pod's addresses.
    std::string to_ip;
    uint16_t port = 0;
    bool plaintext = false;  // from a workload, but without mTLS
};

struct KernelView {
    std::string direction;  // "egress at <pod>" / "ingress at <pod>"
    uint32_t peer_identity = 0;
    KernelModel::Lookup lookup;
    std::string rule;  // describe() of lookup.rule_id
};

struct Explanation {
    std::optional<Connection> connection;  // nullopt when `from`/`to` did not resolve
    Decision ztunnel;
    std::vector<KernelView> kernel;
    std::vector<std::string> notes;  // how `from` was resolved, and resolution errors

    std::string text() const;
};

Explanation explain(const CompiledPolicy& compiled, const ExplainQuery& query);

}  // namespace sluice::policies
