/* The one definition of every map key and value shared by the eBPF programs (C) and the agent
 * (C++). Fixed-width types only; the C++ side checks sizes and offsets at compile time, so a
 * change here that moves a field breaks the build instead of silently corrupting a pinned map.
 *
 * Any change to a struct below, to a map's key/value type or to the meaning of a field MUST bump
 * SLUICE_ABI_VERSION: pinned maps survive agent restarts, and the agent refuses to reuse maps
 * whose recorded version differs from its own (DESIGN.md §3).
 *
 * Conventions:
 *  - Addresses are 16 bytes in network byte order. IPv4 is stored v4-mapped (::ffff:a.b.c.d), so
 *    one LPM trie and one key shape serve IPv4, IPv6 and v4-mapped IPv6 sockets.
 *  - Ports are in host byte order unless a field says otherwise.
 */
#ifndef SLUICE_ABI_H
#define SLUICE_ABI_H

#ifdef __cplusplus
#include <cstddef>
#include <cstdint>
typedef std::uint8_t sluice_u8;
typedef std::uint16_t sluice_u16;
typedef std::uint32_t sluice_u32;
typedef std::uint64_t sluice_u64;
#else
typedef __u8 sluice_u8;
typedef __u16 sluice_u16;
typedef __u32 sluice_u32;
typedef __u64 sluice_u64;
#endif

#define SLUICE_ABI_VERSION 2

/* ztunnel's own sockets carry this SO_MARK (Istio's value); the datapath never redirects them
 * and only they may bind the reserved ports below inside an enrolled netns. */
#define SLUICE_ZTUNNEL_MARK 0x539
#define SLUICE_PORT_OUTBOUND 15001 /* 127.0.0.1 / ::1 in each pod netns: captured outbound */
#define SLUICE_PORT_INBOUND 15006  /* plaintext inbound, fed by sk_lookup */
#define SLUICE_PORT_HBONE 15008    /* mTLS HBONE; never redirected or steered */

/* Maximum number of excluded destination ports (rodata tunable; 0 terminates the list). */
#define SLUICE_MAX_EXCLUDED_PORTS 8

/* SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST share the number 80. */
#define SLUICE_SO_ORIGINAL_DST 80

/* Identities. 0 is never a real identity: in a policy key it is the "any identity" wildcard.
 * An address that no ipcache entry covers has SLUICE_IDENTITY_WORLD. */
#define SLUICE_IDENTITY_ANY 0
#define SLUICE_IDENTITY_WORLD 1
#define SLUICE_PORT_ANY 0

enum sluice_direction {
    SLUICE_DIR_EGRESS = 1,
    SLUICE_DIR_INGRESS = 2,
};

enum sluice_verdict {
    SLUICE_VERDICT_ALLOW = 1,
    SLUICE_VERDICT_DENY = 2,
};

/* Why the datapath refused something. Indexes the drop_counters map and fills
 * sluice_deny_event.reason; userspace names them with sluice::reason_name(). */
enum sluice_reason {
    SLUICE_REASON_NONE = 0,
    SLUICE_REASON_POLICY_DENY_EGRESS = 1,  /* connect() refused by egress policy */
    SLUICE_REASON_POLICY_DENY_INGRESS = 2, /* inbound SYN refused by ingress policy */
    SLUICE_REASON_RESERVED_PORT_BIND = 3,  /* bind() of 15001/15006/15008 by a non-ztunnel socket */
    SLUICE_REASON_ORIG_DST_FULL = 4,       /* could not record the original destination */
    SLUICE_REASON_MAX = 5,
};

/* Things the datapath did, not refusals: indexes the event_counters map. */
enum sluice_event {
    SLUICE_EVENT_REDIRECTED = 0,      /* connect() rewritten to the outbound port */
    SLUICE_EVENT_PASSTHROUGH = 1,     /* enrolled connect() left alone (excluded destination) */
    SLUICE_EVENT_STEERED = 2,         /* inbound connection assigned to the inbound listener */
    SLUICE_EVENT_NO_LISTENER = 3,     /* enrolled netns without a registered inbound listener */
    SLUICE_EVENT_ORIG_DST_SERVED = 4, /* getsockopt(SO_ORIGINAL_DST) answered */
    SLUICE_EVENT_ORIG_DST_MISS = 5,   /* getsockopt(SO_ORIGINAL_DST) with no record */
    SLUICE_EVENT_MAX = 6,
};

/* Map "layout_meta": ARRAY, 1 entry, key u32 0. Written by the agent when it creates the maps. */
struct sluice_layout_meta {
    sluice_u32 abi_version;
    sluice_u32 reserved;
};

/* Map "enrolled_netns": HASH, key u64 netns cookie. */
#define SLUICE_ENROLLED_F_DEFAULT_DENY_EGRESS 0x1u  /* no policy entry → deny (else allow) */
#define SLUICE_ENROLLED_F_DEFAULT_DENY_INGRESS 0x2u /* no policy entry → deny (else allow) */
/* A waypoint pod: its own process may bind the HBONE port (it terminates HBONE itself). */
#define SLUICE_ENROLLED_F_WAYPOINT 0x4u
struct sluice_enrolled_value {
    sluice_u32 endpoint_id; /* the pod's endpoint id: first field of policy keys */
    sluice_u32 flags;       /* SLUICE_ENROLLED_F_* */
};

/* Map "ipcache": LPM_TRIE (BPF_F_NO_PREALLOC). prefixlen counts bits of the 16-byte address, so an
 * IPv4 /24 is stored with prefixlen 96 + 24 on its v4-mapped address. */
struct sluice_ipcache_key {
    sluice_u32 prefixlen;
    sluice_u8 addr[16];
};
struct sluice_ipcache_value {
    sluice_u32 identity;
    sluice_u32 flags; /* reserved, 0 */
};

/* Map "policy": HASH. Lookup order, first hit wins (the compiler places entries accordingly):
 *   1. {endpoint, peer identity, port, proto}
 *   2. {endpoint, peer identity, SLUICE_PORT_ANY, proto}
 *   3. {endpoint, SLUICE_IDENTITY_ANY, port, proto}
 *   4. {endpoint, SLUICE_IDENTITY_ANY, SLUICE_PORT_ANY, proto}
 * No hit: allow, unless the endpoint's enrolled flags ask for default deny in that direction. */
struct sluice_policy_key {
    sluice_u32 endpoint_id;
    sluice_u32 peer_identity;
    sluice_u16 port;     /* the destination port (egress: remote, ingress: local) */
    sluice_u8 proto;     /* IPPROTO_TCP, ... */
    sluice_u8 direction; /* enum sluice_direction */
};
struct sluice_policy_value {
    sluice_u8 verdict; /* enum sluice_verdict */
    sluice_u8 pad[3];
    sluice_u32 rule_id; /* counted in rule_counters, reported in deny events; 0 = no rule */
};

/* Map "rule_counters": PERCPU_HASH, key u32 rule id, value u64 matches. */
/* Map "drop_counters": PERCPU_ARRAY, index enum sluice_reason, value u64. */
/* Map "event_counters": PERCPU_ARRAY, index enum sluice_event, value u64. */

/* Map "excluded_cidrs": LPM_TRIE, key sluice_ipcache_key, value u8 (1). Destinations inside are
 * never redirected (for example the node's API server). */

/* Map "orig_dst_sk":     SK_STORAGE on the app's socket (userspace: key = a socket fd).
 * Map "orig_dst_tuple":  LRU_HASH, key sluice_tuple_key = the app socket's local address as the
 * proxy sees it as its peer (written by sockops once the source port is known). */
struct sluice_orig_dst {
    sluice_u8 addr[16]; /* original destination, v4-mapped for IPv4 */
    sluice_u16 port;    /* host order */
    sluice_u16 family;  /* AF_INET or AF_INET6 as the app called connect() */
    sluice_u32 pad;
    sluice_u64 netns_cookie; /* where the app socket lives */
};
struct sluice_tuple_key {
    sluice_u64 netns_cookie;
    sluice_u8 addr[16]; /* v4-mapped for IPv4 */
    sluice_u16 port;    /* host order */
    sluice_u8 pad[6];
};

/* Map "listeners": SOCKHASH, key u64 netns cookie → ztunnel's :15006 listener in that netns. */

/* Map "endpoint_addrs": HASH, key = a pod address → u64 netns cookie of that pod. sk_lookup
 * programs cannot call bpf_get_netns_cookie (kernel 6.18 verifier: "program of this type cannot
 * use helper"), so inbound steering finds the pod by the address the SYN was sent to. */
struct sluice_addr_key {
    sluice_u8 addr[16]; /* v4-mapped for IPv4 */
};

/* Map "ztunnel_flows": LRU_HASH, key sluice_flow_key → u8 (1). sockops records every TCP
 * connection ztunnel (SO_MARK) opens, keyed as the receiving side's sk_lookup will see it;
 * sk_lookup leaves those flows alone, so ztunnel's own connection to the app (inbound, after
 * policy) is not steered back to ztunnel. */
struct sluice_flow_key {
    sluice_u8 remote_addr[16]; /* the connecting socket's local address, v4-mapped for IPv4 */
    sluice_u8 local_addr[16];  /* the address it connects to */
    sluice_u16 remote_port;    /* host order */
    sluice_u16 local_port;     /* host order */
    sluice_u32 pad;
};

/* Same-node splicing (docs/datapath.md, "Same-node splicing"), loaded only with the agent's
 * --same-node-splice. These maps were added without a version bump: no existing map changed, and
 * an agent that does not splice leaves them alone.
 *
 * Map "splice_socks": SOCKHASH, key sluice_splice_key → the socket. Both local ends of a spliced
 * connection, each keyed as it sees itself; the sk_msg program finds the peer under the swapped
 * key. The kernel removes an entry when its socket closes.
 * Map "splice_peers": LRU_HASH, same key → u64 kernel address of that socket, only ever read
 * with bpf_probe_read_kernel (queue depth of the peer for backpressure; never dereferenced).
 * Map "splice_counters": PERCPU_ARRAY, index enum sluice_splice_event, value u64. */
struct sluice_splice_key {
    sluice_u64 netns_cookie;   /* both ends live in this netns */
    sluice_u8 local_addr[16];  /* v4-mapped for IPv4 */
    sluice_u8 remote_addr[16]; /* v4-mapped for IPv4 */
    sluice_u16 local_port;     /* host order */
    sluice_u16 remote_port;    /* host order */
    sluice_u32 pad;
};

enum sluice_splice_event {
    SLUICE_SPLICE_ADDED = 0,      /* a socket went into splice_socks */
    SLUICE_SPLICE_ADD_FAILED = 1, /* bpf_sock_hash_update refused it (map full) */
    SLUICE_SPLICE_REDIRECTED = 2, /* a sendmsg went straight to the peer's receive queue */
    SLUICE_SPLICE_PEER_BUSY = 3,  /* sent through TCP: the peer's queue is full, or TCP bytes are
                                     still in flight (order) */
    SLUICE_SPLICE_NO_PEER = 4,    /* sent through TCP: the peer end is not (or no longer) known */
    SLUICE_SPLICE_MAX = 5,
};

/* Map "deny_events": RINGBUF of sluice_deny_event. */
struct sluice_deny_event {
    sluice_u64 time_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    sluice_u64 netns_cookie;
    sluice_u8 src_addr[16]; /* v4-mapped for IPv4; zero when not yet bound */
    sluice_u8 dst_addr[16];
    sluice_u16 src_port;
    sluice_u16 dst_port;
    sluice_u8 proto;
    sluice_u8 direction; /* enum sluice_direction */
    sluice_u8 reason;    /* enum sluice_reason */
    sluice_u8 pad;
    sluice_u32 endpoint_id;
    sluice_u32 peer_identity;
    sluice_u32 rule_id;
    sluice_u32 pad2;
};

#ifdef __cplusplus
static_assert(sizeof(sluice_layout_meta) == 8);
static_assert(sizeof(sluice_enrolled_value) == 8);
static_assert(sizeof(sluice_ipcache_key) == 20);
static_assert(offsetof(sluice_ipcache_key, addr) == 4);
static_assert(sizeof(sluice_ipcache_value) == 8);
static_assert(sizeof(sluice_policy_key) == 12);
static_assert(offsetof(sluice_policy_key, port) == 8);
static_assert(offsetof(sluice_policy_key, proto) == 10);
static_assert(offsetof(sluice_policy_key, direction) == 11);
static_assert(sizeof(sluice_policy_value) == 8);
static_assert(offsetof(sluice_policy_value, rule_id) == 4);
static_assert(sizeof(sluice_orig_dst) == 32);
static_assert(offsetof(sluice_orig_dst, port) == 16);
static_assert(offsetof(sluice_orig_dst, netns_cookie) == 24);
static_assert(sizeof(sluice_tuple_key) == 32);
static_assert(offsetof(sluice_tuple_key, addr) == 8);
static_assert(offsetof(sluice_tuple_key, port) == 24);
static_assert(sizeof(sluice_addr_key) == 16);
static_assert(sizeof(sluice_flow_key) == 40);
static_assert(offsetof(sluice_flow_key, remote_port) == 32);
static_assert(sizeof(sluice_splice_key) == 48);
static_assert(offsetof(sluice_splice_key, local_addr) == 8);
static_assert(offsetof(sluice_splice_key, remote_addr) == 24);
static_assert(offsetof(sluice_splice_key, local_port) == 40);
static_assert(sizeof(sluice_deny_event) == 72);
static_assert(offsetof(sluice_deny_event, src_addr) == 16);
static_assert(offsetof(sluice_deny_event, dst_addr) == 32);
static_assert(offsetof(sluice_deny_event, src_port) == 48);
static_assert(offsetof(sluice_deny_event, proto) == 52);
static_assert(offsetof(sluice_deny_event, endpoint_id) == 56);
static_assert(offsetof(sluice_deny_event, rule_id) == 64);
#endif

#endif /* SLUICE_ABI_H */
