/* Shared basics for every sluice eBPF program: includes, address helpers, constants that
 * vmlinux.h (types only, no macros) does not carry. */
#pragma once

#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "sluice_abi.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef SOL_SOCKET
#define SOL_SOCKET 1
#endif
#ifndef SO_MARK
#define SO_MARK 36
#endif
#ifndef SOL_IP
#define SOL_IP 0
#endif
#ifndef SOL_IPV6
#define SOL_IPV6 41
#endif
#ifndef EPERM
#define EPERM 1
#endif
#ifndef ENOENT
#define ENOENT 2
#endif
#ifndef ENOMEM
#define ENOMEM 12
#endif
#ifndef EINVAL
#define EINVAL 22
#endif
#ifndef EBUSY
#define EBUSY 16
#endif

/* Loads a u32 context field with the offset encoded in the instruction. Plain C lets clang
 * compute `ctx + offsetof(ip6)` once and load the words through that pointer, which the verifier
 * rejects ("dereference of modified ctx ptr"); an asm load with an immediate offset cannot be
 * rewritten that way. */
#define ctx_load_u32(ptr, member)                                                  \
    ({                                                                             \
        __u32 v_;                                                                  \
        asm volatile("%0 = *(u32 *)(%1 + %2)"                                      \
                     : "=r"(v_)                                                    \
                     : "r"(ptr), "i"(__builtin_offsetof(typeof(*(ptr)), member))); \
        v_;                                                                        \
    })

/* A 16-byte address from the ip4 and ip6 fields of a context; `family` picks one. */
#define addr_from_ctx(a, ptr, family, ip4, ip6)        \
    do {                                               \
        if ((family) == AF_INET) {                     \
            addr_from_v4((a), ctx_load_u32(ptr, ip4)); \
        } else {                                       \
            (a)->w[0] = ctx_load_u32(ptr, ip6[0]);     \
            (a)->w[1] = ctx_load_u32(ptr, ip6[1]);     \
            (a)->w[2] = ctx_load_u32(ptr, ip6[2]);     \
            (a)->w[3] = ctx_load_u32(ptr, ip6[3]);     \
        }                                              \
    } while (0)

/* A 16-byte address as four 32-bit words in network byte order: cheap to compare and to copy
 * into the u32[4] fields of the kernel's context structs. */
struct sluice_addr {
    __u32 w[4];
};

static __always_inline void addr_from_v4(struct sluice_addr* a, __u32 ip4_be) {
    a->w[0] = 0;
    a->w[1] = 0;
    a->w[2] = bpf_htonl(0x0000ffff);
    a->w[3] = ip4_be;
}

static __always_inline void addr_from_v6(struct sluice_addr* a, const __u32* ip6_be) {
    a->w[0] = ip6_be[0];
    a->w[1] = ip6_be[1];
    a->w[2] = ip6_be[2];
    a->w[3] = ip6_be[3];
}

static __always_inline bool addr_is_v4_mapped(const struct sluice_addr* a) {
    return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == bpf_htonl(0x0000ffff);
}

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
static __always_inline bool addr_is_loopback(const struct sluice_addr* a) {
    if (addr_is_v4_mapped(a))
        return (bpf_ntohl(a->w[3]) >> 24) == 127;
    return a->w[0] == 0 && a->w[1] == 0 && a->w[2] == 0 && a->w[3] == bpf_htonl(1);
}

static __always_inline void addr_to_bytes(__u8* dst, const struct sluice_addr* a) {
    __builtin_memcpy(dst, a->w, 16);
}

static __always_inline void addr_from_bytes(struct sluice_addr* a, const __u8* src) {
    __builtin_memcpy(a->w, src, 16);
}
