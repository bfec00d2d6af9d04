/* Load-time tunables: `const volatile` rodata that the agent fills in through the skeleton before
 * load, so the verifier sees constants and dead branches disappear. Defaults match DESIGN.md. */
#pragma once

#include "lib/common.h"

const volatile __u32 cfg_ztunnel_mark = SLUICE_ZTUNNEL_MARK;
const volatile __u16 cfg_outbound_port = SLUICE_PORT_OUTBOUND;
const volatile __u16 cfg_inbound_port = SLUICE_PORT_INBOUND;
const volatile __u16 cfg_hbone_port = SLUICE_PORT_HBONE;
/* Destination ports never redirected (host order); the first 0 ends the list. */
const volatile __u16 cfg_excluded_ports[SLUICE_MAX_EXCLUDED_PORTS] = {};

static __always_inline bool port_is_excluded(__u16 port) {
#pragma unroll
    for (int i = 0; i < SLUICE_MAX_EXCLUDED_PORTS; i++) {
        if (cfg_excluded_ports[i] == 0)
            return false;
        if (cfg_excluded_ports[i] == port)
            return true;
    }
    return false;
}

/* The ports only ztunnel (SO_MARK cfg_ztunnel_mark) may bind inside an enrolled netns. */
static __always_inline bool port_is_reserved(__u16 port) {
    return port == cfg_outbound_port || port == cfg_inbound_port || port == cfg_hbone_port;
}
