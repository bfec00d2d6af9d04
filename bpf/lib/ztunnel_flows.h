/* ztunnel's own connections inside a pod netns, remembered so inbound steering skips them.
 *
 * After ingress policy, ztunnel connects to the app at <pod ip>:<port> from inside the pod netns.
 * That SYN goes through the pod's sk_lookup like any other and would be steered straight back to
 * ztunnel's inbound listener. sk_lookup sees neither the mark nor the netns of the connecting
 * socket, so sockops, which does, records the flow before the SYN leaves (TCP_CONNECT_CB). */
#pragma once

#include "lib/maps.h"
#include "lib/sock.h"

/* `sk` is skops->sk, read once by the caller (the verifier refuses a ctx pointer the compiler
 * offset before loading through it, which separate reads of skops->sk can turn into). */
static __always_inline int ztunnel_flow_record(struct bpf_sock_ops* skops, struct bpf_sock* sk) {
    if (!sk || sk->mark != cfg_ztunnel_mark)
        return -ENOENT;
    struct sluice_addr local, remote;
    __u32 family = skops->family;
    addr_from_ctx(&local, skops, family, local_ip4, local_ip6);
    addr_from_ctx(&remote, skops, family, remote_ip4, remote_ip6);
    /* Keyed from the receiver's side: our local end is its remote. */
    struct sluice_flow_key key = {
        .remote_port = (__u16)skops->local_port,
        .local_port = (__u16)bpf_ntohl(skops->remote_port),
    };
    addr_to_bytes(key.remote_addr, &local);
    addr_to_bytes(key.local_addr, &remote);
    __u8 one = 1;
    return bpf_map_update_elem(&ztunnel_flows, &key, &one, BPF_ANY) == 0 ? 0 : -ENOMEM;
}

static __always_inline bool ztunnel_flow_known(const struct sluice_addr* remote, __u16 remote_port,
                                               const struct sluice_addr* local, __u16 local_port) {
    struct sluice_flow_key key = {
        .remote_port = remote_port,
        .local_port = local_port,
    };
    addr_to_bytes(key.remote_addr, remote);
    addr_to_bytes(key.local_addr, local);
    return bpf_map_lookup_elem(&ztunnel_flows, &key) != NULL;
}
