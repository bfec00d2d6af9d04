// SPDX-License-Identifier: GPL-2.0
/* Same-node splicing (DESIGN.md §3 "Same node"): optional, loaded only with the agent's
 * --same-node-splice. A sockops program at the node cgroup (next to sluice_sockops) puts both
 * local ends of a captured loopback hop into splice_socks; an sk_msg program attached to that
 * SOCKHASH hands each sendmsg to the peer end. The decisions live in lib/splice.h. */
#include "lib/splice.h"
#include "lib/common.h"

SEC("sockops")
int sluice_splice_sockops(struct bpf_sock_ops* skops) {
    struct bpf_sock* sk = skops->sk;
    switch (skops->op) {
        case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
            splice_add(skops, sk, true);
            break;
        case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
            splice_add(skops, sk, false);
            break;
        default:
            break;
    }
    return 1;
}

/* Runs for every sendmsg on a socket in splice_socks. SK_PASS without a redirect sends through
 * TCP as usual; nothing is ever dropped. */
SEC("sk_msg")
int sluice_splice_msg(struct sk_msg_md* msg) {
    struct bpf_sock* self = msg->sk;
    if (!self)
        return SK_PASS;
    struct sluice_splice_key peer;
    splice_peer_key(msg, &peer);
    int rc = splice_may_redirect(self, &peer);
    if (rc == 0 && bpf_msg_redirect_hash(msg, &splice_socks, &peer, BPF_F_INGRESS) == SK_PASS) {
        count_splice(SLUICE_SPLICE_REDIRECTED);
        return SK_PASS;
    }
    /* bpf_msg_redirect_hash answers SK_DROP (and redirects nothing) when the peer has left. */
    count_splice(rc == -EBUSY ? SLUICE_SPLICE_PEER_BUSY : SLUICE_SPLICE_NO_PEER);
    return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
