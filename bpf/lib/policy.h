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
 * which rule decided (rule 0: no entry matched, the endpoint's default applied). */
static __always_inline int policy_check(const struct sluice_enrolled_value* ep,
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
        count_rule(v->rule_id);
    } else {
        __u32 deny_flag = direction == SLUICE_DIR_EGRESS ? SLUICE_ENROLLED_F_DEFAULT_DENY_EGRESS
                                                         : SLUICE_ENROLLED_F_DEFAULT_DENY_INGRESS;
        out->rule_id = 0;
        out->verdict = (ep->flags & deny_flag) ? SLUICE_VERDICT_DENY : SLUICE_VERDICT_ALLOW;
    }
    return out->verdict == SLUICE_VERDICT_DENY ? -EPERM : 0;
}

/* Counts the refusal and reports it on the deny_events ring buffer. A full ring buffer loses the
 * event but never the counter. */
static __always_inline void report_deny(struct sluice_deny_event* ev) {
    ev->time_ns = bpf_ktime_get_ns();
    count_drop(ev->reason);
    bpf_ringbuf_output(&deny_events, ev, sizeof(*ev), 0);
}
