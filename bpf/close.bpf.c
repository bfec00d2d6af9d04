// SPDX-License-Identifier: GPL-2.0
/* Closing denied connections after a policy reload (DESIGN.md §5): a tcp socket iterator that
 * the agent runs inside each enrolled pod's netns. The decision lives in lib/close.h; each
 * closed connection is written to the iterator's output as one struct sluice_deny_event, which
 * the agent turns into an audit line and a metric. */
#include "lib/close.h"
#include "lib/common.h"

SEC("iter/tcp")
int sluice_close_denied(struct bpf_iter__tcp* ctx) {
    struct sock_common* skc = ctx->sk_common;
    if (!skc)
        return 0;
    struct sluice_deny_event ev = {};
    if (close_if_egress_denied(skc, &ev) == 1)
        bpf_seq_write(ctx->meta->seq, &ev, sizeof(ev));
    return 0;
}

char LICENSE[] SEC("license") = "GPL";
