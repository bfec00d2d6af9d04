// SPDX-License-Identifier: GPL-2.0
/* Inbound steering (DESIGN.md §3): one sk_lookup program, attached to every enrolled pod netns,
 * hands connections for any pod port to ztunnel's inbound listener and drops what ingress
 * policy denies. */
#include "lib/inbound.h"
#include "lib/common.h"

SEC("sk_lookup")
int sluice_sk_lookup(struct bpf_sk_lookup* ctx) {
    /* SK_DROP makes the kernel answer the SYN with a RST: the client sees ECONNREFUSED. */
    return inbound_steer(ctx) == -EPERM ? SK_DROP : SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
