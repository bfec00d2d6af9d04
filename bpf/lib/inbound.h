/* Inbound steering: the decision sk_lookup takes for a connection arriving in a pod netns. */
#pragma once

#include "lib/counters.h"
#include "lib/policy.h"
#include "lib/sock.h"
#include "lib/tunables.h"
#include "lib/ztunnel_flows.h"

/* Returns 0 when the normal socket lookup should proceed (with or without a listener assigned),
 * -EPERM when ingress policy denies the connection (event and counters recorded), or another
 * negative errno when assigning the listener failed. */
static __always_inline int inbound_steer(struct bpf_sk_lookup* ctx) {
    if (ctx->protocol != IPPROTO_TCP)
        return 0;
    __u16 port = (__u16)ctx->local_port;
    if (port == cfg_hbone_port || port == cfg_inbound_port)
        return 0;

    struct sluice_addr local, remote;
    __u32 family = ctx->family;
    addr_from_ctx(&local, ctx, family, local_ip4, local_ip6);
    addr_from_ctx(&remote, ctx, family, remote_ip4, remote_ip6);
    if (addr_is_loopback(&local))
        return 0;

    /* The pod is found by the address the SYN is for (see endpoint_addrs in sluice_abi.h). */
    struct sluice_addr_key addr_key;
    addr_to_bytes(addr_key.addr, &local);
    __u64* cookie = bpf_map_lookup_elem(&endpoint_addrs, &addr_key);
    if (!cookie)
        return 0;
    __u64 netns_cookie = *cookie;
    struct sluice_enrolled_value* ep = enrolled_lookup(netns_cookie);
    if (!ep)
        return 0;
    if (ztunnel_flow_known(&remote, bpf_ntohs(ctx->remote_port), &local, port))
        return 0;

    struct tcp_flow flow = {
        .src = remote,
        .dst = local,
        .src_port = bpf_ntohs(ctx->remote_port),
        .dst_port = port,
    };
    if (policy_enforce(ep, netns_cookie, &flow, SLUICE_DIR_INGRESS) < 0)
        return -EPERM;

    struct bpf_sock* listener = bpf_map_lookup_elem(&listeners, &netns_cookie);
    if (!listener) {
        count_event(SLUICE_EVENT_NO_LISTENER);
        return 0;
    }
    long err = bpf_sk_assign(ctx, listener, 0);
    bpf_sk_release(listener);
    if (err)
        return (int)err;
    count_event(SLUICE_EVENT_STEERED);
    return 0;
}
