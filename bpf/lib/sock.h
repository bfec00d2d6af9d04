/* Facts about the socket behind a hook's context. */
#pragma once

#include "lib/maps.h"
#include "lib/tunables.h"

/* The enrollment of the socket's netns, or NULL when the pod is not in the mesh. */
static __always_inline struct sluice_enrolled_value* enrolled_lookup(__u64 netns_cookie) {
    return bpf_map_lookup_elem(&enrolled_netns, &netns_cookie);
}

/* ztunnel marks its own sockets; they are never captured and may bind the reserved ports. */
static __always_inline bool sock_is_ztunnel(struct bpf_sock* sk) {
    return sk && sk->mark == cfg_ztunnel_mark;
}
