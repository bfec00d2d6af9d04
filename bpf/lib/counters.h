/* Per-CPU counters: one slot per drop reason, per datapath event and per policy rule. */
#pragma once

#include "lib/maps.h"

static __always_inline void count_drop(__u32 reason) {
    __u64* slot = bpf_map_lookup_elem(&drop_counters, &reason);
    if (slot)
        *slot += 1;
}

static __always_inline void count_event(__u32 event) {
    __u64* slot = bpf_map_lookup_elem(&event_counters, &event);
    if (slot)
        *slot += 1;
}

static __always_inline void count_rule(__u32 rule_id) {
    if (rule_id == 0)
        return;
    __u64* slot = bpf_map_lookup_elem(&rule_counters, &rule_id);
    if (slot) {
        *slot += 1;
        return;
    }
    __u64 one = 1;
    /* A racing CPU may have created the slot; BPF_NOEXIST then fails and that hit is lost,
     * which is acceptable for a statistics counter. */
    bpf_map_update_elem(&rule_counters, &rule_id, &one, BPF_NOEXIST);
}
