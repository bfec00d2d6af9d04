/* Same-node splicing (DESIGN.md §3 "Same node"; docs/datapath.md "Same-node splicing").
 *
 * A captured connection crosses the loopback TCP stack twice on one node: app → ztunnel's
 * :15001 (outbound) and ztunnel → app (inbound, inside the server pod). Both ends of such a hop
 * are local sockets that sockops sees, so each goes into splice_socks once established, and an
 * sk_msg program on that SOCKHASH hands every sendmsg straight to the peer's receive queue
 * (bpf_msg_redirect_hash with BPF_F_INGRESS): the bytes skip TCP, loopback and the softirq.
 *
 * Two kernel facts shape the sk_msg decision (both checked on 6.18):
 *  - An ingress redirect ignores the receiver's rcvbuf: a reader that stalls lets the writer
 *    queue without bound (hundreds of MiB, until the global tcp_mem limit). So a message is
 *    redirected only while the peer's spliced queue (psock->msg_tot_len) is below the peer's
 *    sk_rcvbuf; otherwise it goes through TCP, whose window and sndbuf block the writer.
 *  - The receiver reads its spliced queue before its TCP receive queue. So a redirect must never
 *    overtake TCP bytes: a message is redirected only when every byte this socket sent through
 *    TCP was acknowledged (snd_una == write_seq) and the peer has read all it received
 *    (copied_seq == rcv_nxt). TCP bytes sent after spliced ones are fine: they are read after.
 * The peer's state is read through its kernel address (splice_peers) with
 * bpf_probe_read_kernel: sk_msg programs may look a socket up in a SOCKHASH but cannot release
 * it ("cannot use helper bpf_sk_release"). A stale address only costs a wrong guess about
 * queue depth: the redirect itself goes through splice_socks, which never holds a closed
 * socket. */
#pragma once

#include <bpf/bpf_core_read.h>

#include "lib/orig_dst.h"
#include "lib/sock.h"
#include "lib/ztunnel_flows.h"

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 65536);
    __type(key, struct sluice_splice_key);
    __type(value, __u64);
} splice_socks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct sluice_splice_key);
    __type(value, __u64);
} splice_peers SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, SLUICE_SPLICE_MAX);
    __type(key, __u32);
    __type(value, __u64);
} splice_counters SEC(".maps");

static __always_inline void count_splice(__u32 event) {
    __u64* slot = bpf_map_lookup_elem(&splice_counters, &event);
    if (slot)
        *slot += 1;
}

#define SPLICE_SEND_SHUTDOWN 2 /* include/net/sock.h */

/* Low bits of sk_user_data are flags (SK_USER_DATA_NOCOPY, _BPF, _PSOCK). */
#define SPLICE_USER_DATA_PTRMASK (~7UL)

/* Whether the established socket is one end of a hop that can be spliced: both ends live in
 * the netns `netns` and sockops sees both.
 *  - outbound, app end (active): connect4/6 redirected it to the outbound port on loopback;
 *  - outbound, ztunnel end (passive, marked): accepted on loopback:outbound port, and its peer
 *    is a redirected app socket (orig_dst_tuple has the record);
 *  - inbound, ztunnel end (active, marked): connects to an address of its own netns (the pod's);
 *  - inbound, app end (passive): ztunnel opened it (ztunnel_flows) to an address of this pod. */
static __always_inline bool splice_wanted(bool active, struct bpf_sock* sk, __u64 netns,
                                          const struct sluice_splice_key* key) {
    struct sluice_addr local, remote;
    addr_from_bytes(&local, key->local_addr);
    addr_from_bytes(&remote, key->remote_addr);
    bool ztunnel = sock_is_ztunnel(sk);
    if (active && !ztunnel) {
        struct sluice_orig_dst od;
        return key->remote_port == cfg_outbound_port && addr_is_loopback(&remote) &&
               orig_dst_of(sk, &od) == 0;
    }
    if (!active && ztunnel) {
        if (key->local_port != cfg_outbound_port || !addr_is_loopback(&local))
            return false;
        struct sluice_tuple_key tk = {.netns_cookie = netns, .port = key->remote_port};
        __builtin_memcpy(tk.addr, key->remote_addr, 16);
        return bpf_map_lookup_elem(&orig_dst_tuple, &tk) != NULL;
    }
    /* ztunnel's HBONE connection to a pod in its own netns ends at ztunnel's :15008, which is
     * never added: without a peer it would only cost a lookup per send. */
    if (active && key->remote_port == cfg_hbone_port)
        return false;
    struct sluice_addr_key pod = {};
    __builtin_memcpy(pod.addr, active ? key->remote_addr : key->local_addr, 16);
    __u64* owner = bpf_map_lookup_elem(&endpoint_addrs, &pod);
    if (!owner || *owner != netns)
        return false;
    return active || ztunnel_flow_known(&remote, key->remote_port, &local, key->local_port);
}

/* sockops at ACTIVE/PASSIVE_ESTABLISHED: put a wanted end into splice_socks. The address goes
 * into splice_peers first, so a peer that finds this socket in splice_socks also finds its
 * address. */
static __always_inline int splice_add(struct bpf_sock_ops* skops, struct bpf_sock* sk,
                                      bool active) {
    if (!sk)
        return -ENOENT;
    __u64 netns = bpf_get_netns_cookie(skops);
    struct sluice_addr local, remote;
    __u32 family = skops->family;
    addr_from_ctx(&local, skops, family, local_ip4, local_ip6);
    addr_from_ctx(&remote, skops, family, remote_ip4, remote_ip6);
    struct sluice_splice_key key = {
        .netns_cookie = netns,
        .local_port = (__u16)skops->local_port,
        .remote_port = (__u16)bpf_ntohl(skops->remote_port),
    };
    addr_to_bytes(key.local_addr, &local);
    addr_to_bytes(key.remote_addr, &remote);
    if (!splice_wanted(active, sk, netns, &key))
        return -ENOENT;
    struct tcp_sock* tp = bpf_skc_to_tcp_sock(sk);
    if (!tp)
        return -ENOENT;
    __u64 addr = (__u64)tp;
    if (bpf_map_update_elem(&splice_peers, &key, &addr, BPF_ANY) != 0 ||
        bpf_sock_hash_update(skops, &splice_socks, &key, BPF_ANY) != 0) {
        count_splice(SLUICE_SPLICE_ADD_FAILED);
        return -ENOMEM;
    }
    count_splice(SLUICE_SPLICE_ADDED);
    return 0;
}

/* The key under which the peer of the sending socket sits: the sender's view, swapped. */
static __always_inline void splice_peer_key(struct sk_msg_md* msg, struct sluice_splice_key* key) {
    struct sluice_addr local, remote;
    __u32 family = msg->family;
    addr_from_ctx(&local, msg, family, local_ip4, local_ip6);
    addr_from_ctx(&remote, msg, family, remote_ip4, remote_ip6);
    key->netns_cookie = bpf_get_netns_cookie(msg);
    addr_to_bytes(key->local_addr, &remote);
    addr_to_bytes(key->remote_addr, &local);
    key->local_port = (__u16)bpf_ntohl(msg->remote_port);
    key->remote_port = (__u16)msg->local_port;
    key->pad = 0;
}

/* 0 when a redirect keeps order and stays within the peer's receive buffer; -EBUSY when the
 * message must go through TCP (see the top of this file); -ENOENT without a known peer. */
static __always_inline int splice_may_redirect(struct bpf_sock* self,
                                               const struct sluice_splice_key* peer_key) {
    __u64* peer_addr = bpf_map_lookup_elem(&splice_peers, peer_key);
    if (!peer_addr)
        return -ENOENT;
    struct tcp_sock* me = bpf_skc_to_tcp_sock(self);
    if (!me)
        return -ENOENT;
    /* After shutdown(SHUT_WR) tcp_bpf's sendmsg does not refuse on its own: a redirect would
     * deliver bytes behind the FIN. Through TCP the send fails with EPIPE, as it should. */
    if (me->inet_conn.icsk_inet.sk.sk_shutdown & SPLICE_SEND_SHUTDOWN)
        return -ENOENT;
    if (me->snd_una != me->write_seq)
        return -EBUSY;
    struct tcp_sock* peer = (struct tcp_sock*)*peer_addr;
    if (BPF_CORE_READ(peer, copied_seq) != BPF_CORE_READ(peer, rcv_nxt))
        return -EBUSY;
    unsigned long user_data =
        (unsigned long)BPF_CORE_READ(peer, inet_conn.icsk_inet.sk.sk_user_data);
    struct sk_psock* psock = (struct sk_psock*)(user_data & SPLICE_USER_DATA_PTRMASK);
    if (!psock)
        return -ENOENT;
    __u32 queued = BPF_CORE_READ(psock, msg_tot_len);
    int rcvbuf = BPF_CORE_READ(peer, inet_conn.icsk_inet.sk.sk_rcvbuf);
    if (rcvbuf <= 0 || queued >= (__u32)rcvbuf)
        return -EBUSY;
    return 0;
}
