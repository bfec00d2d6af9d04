/* Every map of the datapath, shared by all entry programs. The agent pins them by name under
 * <bpffs root>/maps/ and every object reuses the pinned instance, so redirect.bpf.c and
 * inbound.bpf.c see the same enrollment, ipcache and policy. max_entries below are defaults;
 * the agent sets the real sizes before load. Layouts: bpf/include/sluice_abi.h. */
#pragma once

#include "lib/common.h"

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct sluice_layout_meta);
} layout_meta SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, struct sluice_enrolled_value);
} enrolled_netns SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 65536);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct sluice_ipcache_key);
    __type(value, struct sluice_ipcache_value);
} ipcache SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct sluice_policy_key);
    __type(value, struct sluice_policy_value);
} policy SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_HASH);
    __uint(max_entries, 16384);
    __type(key, __u32);
    __type(value, __u64);
} rule_counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, SLUICE_REASON_MAX);
    __type(key, __u32);
    __type(value, __u64);
} drop_counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, SLUICE_EVENT_MAX);
    __type(key, __u32);
    __type(value, __u64);
} event_counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, 64);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, struct sluice_ipcache_key);
    __type(value, __u8);
} excluded_cidrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SK_STORAGE);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __type(key, int);
    __type(value, struct sluice_orig_dst);
} orig_dst_sk SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct sluice_tuple_key);
    __type(value, struct sluice_orig_dst);
} orig_dst_tuple SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_SOCKHASH);
    __uint(max_entries, 4096);
    __type(key, __u64);
    __type(value, __u64);
} listeners SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 8192);
    __type(key, struct sluice_addr_key);
    __type(value, __u64);
} endpoint_addrs SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, 65536);
    __type(key, struct sluice_flow_key);
    __type(value, __u8);
} ztunnel_flows SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 256 * 1024);
} deny_events SEC(".maps");
