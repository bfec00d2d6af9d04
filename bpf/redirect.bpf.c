// SPDX-License-Identifier: GPL-2.0
/* Outbound capture (DESIGN.md §3): cgroup hooks attached at the node's cgroup-v2 root.
 * Thin entry points; the decisions live in lib/. A cgroup sock_addr hook returns 1 to let the
 * call proceed and 0 to fail it with EPERM. */
#include "lib/common.h"
#include "lib/orig_dst.h"
#include "lib/outbound.h"
#include "lib/ztunnel_flows.h"

#define VERDICT_PROCEED 1
#define VERDICT_EPERM 0

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr* ctx) {
    struct sluice_addr dst;
    addr_from_v4(&dst, ctx->user_ip4);
    int rc = outbound_connect(ctx, &dst, AF_INET);
    if (rc < 0)
        return VERDICT_EPERM;
    if (rc == OUTBOUND_REDIRECT) {
        ctx->user_ip4 = bpf_htonl(0x7f000001);
        ctx->user_port = bpf_htons(cfg_outbound_port);
    }
    return VERDICT_PROCEED;
}

SEC("cgroup/connect6")
int sluice_connect6(struct bpf_sock_addr* ctx) {
    struct sluice_addr dst;
    __u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
    addr_from_v6(&dst, ip6);
    int rc = outbound_connect(ctx, &dst, AF_INET6);
    if (rc < 0)
        return VERDICT_EPERM;
    if (rc == OUTBOUND_REDIRECT) {
        /* A v4-mapped destination stays IPv4 on the wire: redirect to ::ffff:127.0.0.1. */
        bool mapped = addr_is_v4_mapped(&dst);
        ctx->user_ip6[0] = 0;
        ctx->user_ip6[1] = 0;
        ctx->user_ip6[2] = mapped ? bpf_htonl(0x0000ffff) : 0;
        ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
        ctx->user_port = bpf_htons(cfg_outbound_port);
    }
    return VERDICT_PROCEED;
}

SEC("sockops")
int sluice_sockops(struct bpf_sock_ops* skops) {
    struct bpf_sock* sk = skops->sk;
    switch (skops->op) {
        case BPF_SOCK_OPS_TCP_CONNECT_CB:
            ztunnel_flow_record(skops, sk);
            orig_dst_rekey(skops, sk);
            break;
        case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
            /* -ENOENT for every connection that was not redirected: nothing to do. */
            orig_dst_rekey(skops, sk);
            break;
        default:
            break;
    }
    return 1;
}

/* Answers SO_ORIGINAL_DST for the proxy's accepted socket. Runs after the kernel's own handler
 * (which fails without conntrack); a handled answer replaces its error. Always returns 1:
 * returning 0 would turn every unrelated getsockopt() into EPERM. */
SEC("cgroup/getsockopt")
int sluice_getsockopt(struct bpf_sockopt* ctx) {
    if (ctx->optname != SLUICE_SO_ORIGINAL_DST)
        return 1;
    if (ctx->level != SOL_IP && ctx->level != SOL_IPV6)
        return 1;
    struct bpf_sock* sk = ctx->sk;
    if (!sk)
        return 1;

    struct sluice_orig_dst od;
    if (orig_dst_by_peer(sk, bpf_get_netns_cookie(ctx), &od) < 0) {
        count_event(SLUICE_EVENT_ORIG_DST_MISS);
        return 1;
    }
    if (orig_dst_answer(ctx, &od) == 0)
        count_event(SLUICE_EVENT_ORIG_DST_SERVED);
    return 1;
}

/* The app asked for the original destination; show it that, not the outbound port. */
SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr* ctx) {
    struct sluice_orig_dst od;
    if (orig_dst_of(ctx->sk, &od) < 0)
        return 1;
    struct sluice_addr addr;
    addr_from_bytes(&addr, od.addr);
    if (!addr_is_v4_mapped(&addr))
        return 1;
    ctx->user_ip4 = addr.w[3];
    ctx->user_port = bpf_htons(od.port);
    return 1;
}

SEC("cgroup/getpeername6")
int sluice_getpeername6(struct bpf_sock_addr* ctx) {
    struct sluice_orig_dst od;
    if (orig_dst_of(ctx->sk, &od) < 0)
        return 1;
    struct sluice_addr addr;
    addr_from_bytes(&addr, od.addr);
    ctx->user_ip6[0] = addr.w[0];
    ctx->user_ip6[1] = addr.w[1];
    ctx->user_ip6[2] = addr.w[2];
    ctx->user_ip6[3] = addr.w[3];
    ctx->user_port = bpf_htons(od.port);
    return 1;
}

SEC("cgroup/bind4")
int sluice_bind4(struct bpf_sock_addr* ctx) {
    struct sluice_addr addr;
    addr_from_v4(&addr, ctx->user_ip4);
    return bind_guard(ctx, &addr) < 0 ? VERDICT_EPERM : VERDICT_PROCEED;
}

SEC("cgroup/bind6")
int sluice_bind6(struct bpf_sock_addr* ctx) {
    struct sluice_addr addr;
    __u32 ip6[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
    addr_from_v6(&addr, ip6);
    return bind_guard(ctx, &addr) < 0 ? VERDICT_EPERM : VERDICT_PROCEED;
}

char LICENSE[] SEC("license") = "GPL";
