/* Closing open connections that a new policy generation denies (DESIGN.md §5: a reload "closes
 * existing connections that the new policy denies").
 *
 * The kernel admitted a connection once, at connect(): the app's socket was redirected to the
 * outbound port and connect4/6 recorded its original destination under the socket cookie
 * (orig_dst_sk). Re-checking is the same egress decision (policy_decide) on that record, so a
 * socket is closed exactly when the same connect() would fail with EPERM now. Inbound
 * connections end at ztunnel (HBONE and the :15006 plaintext listener), which re-authorizes
 * them itself on a policy refresh (docs/ztunnel.md); sockets that were never redirected
 * (loopback, excluded destinations, HBONE) were never subject to egress policy and stay, as do
 * connections to a destination excluded since they were opened.
 *
 * Runs from a tcp socket iterator, which walks the network namespace of the thread that created
 * it; bpf_sock_destroy (kernel >= 6.5, iter/tcp only) aborts the socket: its owner reads
 * ECONNABORTED and the peer gets a RST. */
#pragma once

#include "lib/orig_dst.h"
#include "lib/policy.h"
#include "lib/sock.h"

extern int bpf_sock_destroy(struct sock_common* sk) __ksym;

/* tcp_states.h; vmlinux.h carries them as an enum only on some kernels. */
#define SLUICE_TCP_ESTABLISHED 1
#define SLUICE_TCP_SYN_SENT 2
#define SLUICE_TCP_FIN_WAIT1 4
#define SLUICE_TCP_FIN_WAIT2 5
#define SLUICE_TCP_CLOSE_WAIT 8

/* Connections that can still carry data in at least one direction. */
static __always_inline bool tcp_state_open(__u8 state) {
    return state == SLUICE_TCP_ESTABLISHED || state == SLUICE_TCP_SYN_SENT ||
           state == SLUICE_TCP_FIN_WAIT1 || state == SLUICE_TCP_FIN_WAIT2 ||
           state == SLUICE_TCP_CLOSE_WAIT;
}

/* The socket's own address and port (the app side of a redirected connection). */
static __always_inline void sock_local(const struct sock_common* skc, struct sluice_addr* addr,
                                       __u16* port) {
    if (skc->skc_family == AF_INET)
        addr_from_v4(addr, skc->skc_rcv_saddr);
    else
        addr_from_v6(addr, skc->skc_v6_rcv_saddr.in6_u.u6_addr32);
    *port = skc->skc_num;
}

/* Returns 1 after closing `skc` because egress policy now denies its original destination (`ev`
 * then describes it), 0 when the socket is left alone. */
static __always_inline int close_if_egress_denied(struct sock_common* skc,
                                                  struct sluice_deny_event* ev) {
    if (skc->skc_family != AF_INET && skc->skc_family != AF_INET6)
        return 0;
    if (!tcp_state_open(skc->skc_state))
        return 0;
    /* Full sockets only: request and timewait sockets have no owner to tell. */
    struct tcp_sock* tp = bpf_skc_to_tcp_sock(skc);
    if (!tp)
        return 0;
    if (tp->inet_conn.icsk_inet.sk.sk_mark == cfg_ztunnel_mark)
        return 0;

    __u64 netns_cookie = skc->skc_net.net->net_cookie;
    struct sluice_enrolled_value* ep = enrolled_lookup(netns_cookie);
    if (!ep)
        return 0;
    struct sluice_orig_dst od;
    if (orig_dst_of(&tp->inet_conn.icsk_inet.sk, &od) < 0 || od.netns_cookie != netns_cookie)
        return 0;

    struct sluice_addr dst;
    addr_from_bytes(&dst, od.addr);
    /* A destination excluded since (the CIDR map changes at runtime) is no longer subject to
     * egress policy: the same connect() would pass through now. */
    if (port_is_excluded(od.port) || addr_in_excluded_cidrs(&dst))
        return 0;
    struct policy_decision decision = {};
    if (policy_decide(ep, &dst, od.port, IPPROTO_TCP, SLUICE_DIR_EGRESS, &decision) == 0)
        return 0;
    /* Read before destroying: closing the socket releases its local port (skc_num = 0). */
    struct sluice_addr src;
    __u16 src_port = 0;
    sock_local(skc, &src, &src_port);
    if (bpf_sock_destroy(skc) != 0)
        return 0;
    ev->time_ns = bpf_ktime_get_ns();
    ev->netns_cookie = netns_cookie;
    addr_to_bytes(ev->src_addr, &src);
    addr_to_bytes(ev->dst_addr, &dst);
    ev->src_port = src_port;
    ev->dst_port = od.port;
    ev->proto = IPPROTO_TCP;
    ev->direction = SLUICE_DIR_EGRESS;
    ev->reason = SLUICE_REASON_POLICY_DENY_EGRESS;
    ev->endpoint_id = ep->endpoint_id;
    ev->peer_identity = decision.peer_identity;
    ev->rule_id = decision.rule_id;
    return 1;
}
