/* Outbound capture: the decision connect4/connect6 take for a TCP connect() from a pod. */
#pragma once

#include "lib/counters.h"
#include "lib/orig_dst.h"
#include "lib/policy.h"
#include "lib/sock.h"
#include "lib/tunables.h"

enum outbound_action {
    OUTBOUND_PASS = 0,     /* leave the connect() alone */
    OUTBOUND_REDIRECT = 1, /* rewrite the destination to the outbound port on loopback */
};

/* Returns an outbound_action, or -EPERM when egress policy denies the connection (the event and
 * counters are already recorded), or another negative errno when the connection cannot be
 * captured safely. `dst` is the destination the app asked for, `family` the socket's. */
static __always_inline int outbound_connect(struct bpf_sock_addr* ctx,
                                            const struct sluice_addr* dst, __u16 family) {
    if (ctx->type != SOCK_STREAM || ctx->protocol != IPPROTO_TCP)
        return OUTBOUND_PASS;

    __u64 netns_cookie = bpf_get_netns_cookie(ctx);
    struct sluice_enrolled_value* ep = enrolled_lookup(netns_cookie);
    if (!ep)
        return OUTBOUND_PASS;
    if (sock_is_ztunnel(ctx->sk))
        return OUTBOUND_PASS;

    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (addr_is_loopback(dst) || port == cfg_hbone_port || port_is_excluded(port) ||
        addr_in_excluded_cidrs(dst)) {
        count_event(SLUICE_EVENT_PASSTHROUGH);
        return OUTBOUND_PASS;
    }

    struct tcp_flow flow = {.dst = *dst, .dst_port = port};
    if (policy_enforce(ep, netns_cookie, &flow, SLUICE_DIR_EGRESS) < 0)
        return -EPERM;

    if (orig_dst_record(ctx->sk, dst, port, family, netns_cookie) < 0) {
        count_drop(SLUICE_REASON_ORIG_DST_FULL);
        return -ENOMEM;
    }
    count_event(SLUICE_EVENT_REDIRECTED);
    return OUTBOUND_REDIRECT;
}

/* Returns 0 when the bind may proceed, -EPERM for a non-ztunnel socket binding a reserved port
 * inside an enrolled netns (it would hijack captured traffic). A waypoint pod terminates HBONE
 * itself: its process may bind the HBONE port (ztunnel does not listen there). */
static __always_inline int bind_guard(struct bpf_sock_addr* ctx, const struct sluice_addr* addr) {
    __u16 port = bpf_ntohs((__u16)ctx->user_port);
    if (!port_is_reserved(port))
        return 0;
    __u64 netns_cookie = bpf_get_netns_cookie(ctx);
    struct sluice_enrolled_value* ep = enrolled_lookup(netns_cookie);
    if (!ep || sock_is_ztunnel(ctx->sk))
        return 0;
    if (port == cfg_hbone_port && (ep->flags & SLUICE_ENROLLED_F_WAYPOINT))
        return 0;

    struct sluice_deny_event ev = {
        .netns_cookie = netns_cookie,
        .src_port = port,
        .proto = (__u8)ctx->protocol,
        .direction = SLUICE_DIR_INGRESS,
        .reason = SLUICE_REASON_RESERVED_PORT_BIND,
        .endpoint_id = ep->endpoint_id,
    };
    addr_to_bytes(ev.src_addr, addr);
    report_deny(&ev);
    return -EPERM;
}
