/* Original destinations of redirected connections.
 *
 * connect4/6 record the destination the app asked for in the app socket's own storage
 * (orig_dst_sk, socket-local storage: it lives and dies with the socket, so a long-lived
 * connection keeps its record however many connections come and go after it). The proxy only
 * sees its accepted socket, whose peer is the app socket's local address, so sockops copies the
 * record under {netns cookie, app local addr, app local port} (orig_dst_tuple) as soon as the
 * source port is chosen (TCP_CONNECT_CB, before the SYN leaves). getsockopt(SO_ORIGINAL_DST) on
 * the proxy side reads orig_dst_tuple (an LRU map: it is read once, right after accept), and
 * getpeername on the app side and the connection closer read orig_dst_sk. */
#pragma once

#include "lib/counters.h"
#include "lib/maps.h"

/* `sk` is the app's socket: ctx->sk in sock_addr and sockops programs, a BTF socket in
 * iterators. */
static __always_inline int orig_dst_record(void* sk, const struct sluice_addr* dst, __u16 port,
                                           __u16 family, __u64 netns_cookie) {
    struct sluice_orig_dst* od =
        bpf_sk_storage_get(&orig_dst_sk, sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
    if (!od)
        return -ENOMEM;
    addr_to_bytes(od->addr, dst);
    od->port = port;
    od->family = family;
    od->pad = 0;
    od->netns_cookie = netns_cookie;
    return 0;
}

static __always_inline int orig_dst_of(void* sk, struct sluice_orig_dst* out) {
    if (!sk)
        return -ENOENT;
    struct sluice_orig_dst* od = bpf_sk_storage_get(&orig_dst_sk, sk, NULL, 0);
    if (!od)
        return -ENOENT;
    *out = *od;
    return 0;
}

/* Called from sockops once the app socket has its local address and port; `sk` is skops->sk. */
static __always_inline int orig_dst_rekey(struct bpf_sock_ops* skops, struct bpf_sock* sk) {
    struct sluice_orig_dst od;
    int rc = orig_dst_of(sk, &od);
    if (rc < 0)
        return rc;

    struct sluice_addr local;
    addr_from_ctx(&local, skops, skops->family, local_ip4, local_ip6);
    struct sluice_tuple_key key = {
        .netns_cookie = od.netns_cookie,
        .port = (__u16)skops->local_port,
    };
    addr_to_bytes(key.addr, &local);
    if (bpf_map_update_elem(&orig_dst_tuple, &key, &od, BPF_ANY) != 0)
        return -ENOMEM;
    return 0;
}

/* The record for the connection whose app-side end is the peer of `sk` (the proxy's accepted
 * socket) in netns `netns_cookie`. */
static __always_inline int orig_dst_by_peer(struct bpf_sock* sk, __u64 netns_cookie,
                                            struct sluice_orig_dst* out) {
    struct sluice_addr peer;
    addr_from_ctx(&peer, sk, sk->family, dst_ip4, dst_ip6);
    struct sluice_tuple_key key = {
        .netns_cookie = netns_cookie,
        .port = bpf_ntohs(sk->dst_port),
    };
    addr_to_bytes(key.addr, &peer);
    struct sluice_orig_dst* od = bpf_map_lookup_elem(&orig_dst_tuple, &key);
    if (!od)
        return -ENOENT;
    *out = *od;
    return 0;
}

/* Fills getsockopt's buffer with the original destination: struct sockaddr_in for
 * SOL_IP/SO_ORIGINAL_DST, struct sockaddr_in6 for SOL_IPV6/IP6T_SO_ORIGINAL_DST. */
static __always_inline int orig_dst_answer(struct bpf_sockopt* ctx,
                                           const struct sluice_orig_dst* od) {
    struct sluice_addr addr;
    addr_from_bytes(&addr, od->addr);
    if (ctx->level == SOL_IP) {
        if (!addr_is_v4_mapped(&addr))
            return -ENOENT;
        struct sockaddr_in* sin = ctx->optval;
        if ((void*)(sin + 1) > ctx->optval_end)
            return -EINVAL;
        __builtin_memset(sin, 0, sizeof(*sin));
        sin->sin_family = AF_INET;
        sin->sin_port = bpf_htons(od->port);
        sin->sin_addr.s_addr = addr.w[3];
        ctx->optlen = sizeof(*sin);
    } else {
        struct sockaddr_in6* sin6 = ctx->optval;
        if ((void*)(sin6 + 1) > ctx->optval_end)
            return -EINVAL;
        __builtin_memset(sin6, 0, sizeof(*sin6));
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = bpf_htons(od->port);
        __builtin_memcpy(&sin6->sin6_addr, od->addr, 16);
        ctx->optlen = sizeof(*sin6);
    }
    ctx->retval = 0;
    return 0;
}
