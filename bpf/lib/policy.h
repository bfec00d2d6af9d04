/* Identity lookup (ipcache) and L4 policy evaluation, plus the deny event every refusal emits. */
#pragma once

#include "lib/counters.h"
#include "lib/maps.h"

struct policy_decision {
    __u32 peer_identity;
    __u32 rule_id;
    __u8 verdict;
};

/* Identity of an address by longest-prefix match; SLUICE_IDENTITY_WORLD when nothing covers it. */
static __always_inline __u32 ipcache_identity(const struct sluice_addr* addr) {
    struct sluice_ipcache_key key = {.prefixlen = 128};
    addr_to_bytes(key.addr, addr);
    struct sluice_ipcache_value* v = bpf_map_lookup_elem(&ipcache, &key);
    return v ? v->identity : SLUICE_IDENTITY_WORLD;
}

static __always_inline bool addr_in_excluded_cidrs(const struct sluice_addr* addr) {
    struct sluice_ipcache_key key = {.prefixlen = 128};
    addr_to_bytes(key.addr, addr);
    return bpf_map_lookup_elem(&excluded_cidrs, &key) != NULL;
}

/* Looks the policy up in the documented order (sluice_abi.h: exact, any port, any identity,
 * any both). Returns 0 when the connection may proceed, -EPERM when it is denied; `out` says
 * which rule decided (rule 0: no entry matched, the endpoint's default applied). Counts nothing:
 * re-checking a connection that is already open (lib/close.h) is not a new match. */
static __always_inline int policy_decide(const struct sluice_enrolled_value* ep,
                                         const struct sluice_addr* peer, __u16 port, __u8 proto,
                                         __u8 direction, struct policy_decision* out) {
    struct sluice_policy_key key = {
        .endpoint_id = ep->endpoint_id,
        .peer_identity = ipcache_identity(peer),
        .port = port,
        .proto = proto,
        .direction = direction,
    };
    out->peer_identity = key.peer_identity;

    struct sluice_policy_value* v = bpf_map_lookup_elem(&policy, &key);
    if (!v) {
        key.port = SLUICE_PORT_ANY;
        v = bpf_map_lookup_elem(&policy, &key);
    }
    if (!v) {
        key.port = port;
        key.peer_identity = SLUICE_IDENTITY_ANY;
        v = bpf_map_lookup_elem(&policy, &key);
    }
    if (!v) {
        key.port = SLUICE_PORT_ANY;
        v = bpf_map_lookup_elem(&policy, &key);
    }

    if (v) {
        out->rule_id = v->rule_id;
        out->verdict = v->verdict;
    } else {
        __u32 deny_flag = direction == SLUICE_DIR_EGRESS ? SLUICE_ENROLLED_F_DEFAULT_DENY_EGRESS
                                                         : SLUICE_ENROLLED_F_DEFAULT_DENY_INGRESS;
        out->rule_id = 0;
        out->verdict = (ep->flags & deny_flag) ? SLUICE_VERDICT_DENY : SLUICE_VERDICT_ALLOW;
    }
    return out->verdict == SLUICE_VERDICT_DENY ? -EPERM : 0;
}

/* policy_decide for a connection being opened: the deciding rule's counter goes up. */
static __always_inline int policy_check(const struct sluice_enrolled_value* ep,
                                        const struct sluice_addr* peer, __u16 port, __u8 proto,
                                        __u8 direction, struct policy_decision* out) {
    int rc = policy_decide(ep, peer, port, proto, direction, out);
    count_rule(out->rule_id);
    return rc;
}

/* Counts the refusal and reports it on the deny_events ring buffer. A full ring buffer loses the
 * event but never the counter. */
static __always_inline void report_deny(struct sluice_deny_event* ev) {
    ev->time_ns = bpf_ktime_get_ns();
    count_drop(ev->reason);
    bpf_ringbuf_output(&deny_events, ev, sizeof(*ev), 0);
}

/* One TCP connection as policy sees it, src → dst. Egress knows no source port yet (and often no
 * source address: zeros). */
struct tcp_flow {
    struct sluice_addr src;
    struct sluice_addr dst;
    __u16 src_port;
    __u16 dst_port;
};

/* Applies the pod's L4 policy to `flow` in `direction` (the peer is dst for egress, src for
 * ingress). Returns 0 to let it through, or -EPERM after recording the deny event and counters. */
static __always_inline int policy_enforce(const struct sluice_enrolled_value* ep,
                                          __u64 netns_cookie, const struct tcp_flow* flow,
                                          __u8 direction) {
    const struct sluice_addr* peer = direction == SLUICE_DIR_EGRESS ? &flow->dst : &flow->src;
    struct policy_decision decision = {};
    if (policy_check(ep, peer, flow->dst_port, IPPROTO_TCP, direction, &decision) == 0)
        return 0;
    struct sluice_deny_event ev = {
        .netns_cookie = netns_cookie,
        .src_port = flow->src_port,
        .dst_port = flow->dst_port,
        .proto = IPPROTO_TCP,
        .direction = direction,
        .reason = direction == SLUICE_DIR_EGRESS ? SLUICE_REASON_POLICY_DENY_EGRESS
                                                 : SLUICE_REASON_POLICY_DENY_INGRESS,
        .endpoint_id = ep->endpoint_id,
        .peer_identity = decision.peer_identity,
        .rule_id = decision.rule_id,
    };
    addr_to_bytes(ev.src_addr, &flow->src);
    addr_to_bytes(ev.dst_addr, &flow->dst);
    report_deny(&ev);
    return -EPERM;
}
