#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sluice_abi.h"

namespace sluice::datapath {

// max_entries of each map, set before load. Pinned maps keep the size they were created with;
// reusing them with different sizes is refused (Errc::PinnedMapIncompatible).
struct MapSizes {
    uint32_t enrolled_netns = 4096;          // enrolled pods on this node
    uint32_t endpoint_addrs = 8192;          // pod addresses (v4 + v6 per pod)
    uint32_t ipcache = 65536;                // CIDR → identity entries
    uint32_t policy = 65536;                 // compiled L4 policy entries
    uint32_t rule_counters = 16384;          // distinct rule ids counted
    uint32_t orig_dst = 65536;               // connections between connect and ztunnel's accept
    uint32_t excluded_cidrs = 64;            // never-redirected destination prefixes
    uint32_t ztunnel_flows = 65536;          // ztunnel connections opened inside pod netns
    uint32_t listeners = 4096;               // inbound listeners (one per enrolled netns)
    uint32_t splice_sockets = 65536;         // spliced socket ends (two per same-node hop)
    uint32_t deny_event_bytes = 256 * 1024;  // ring buffer size; power of two, ≥ page size
};

struct DatapathConfig {
    // bpffs directory owned by this agent: maps/ and links/ below it. Must be on a mounted bpf
    // filesystem; missing directories are created.
    std::string bpffs_root = kDefaultBpffsRoot;
    // cgroup-v2 directory where the cgroup programs attach (every pod and ztunnel below it).
    std::string cgroup_path;
    MapSizes map_sizes;
    uint32_t ztunnel_mark = SLUICE_ZTUNNEL_MARK;
    uint16_t outbound_port = SLUICE_PORT_OUTBOUND;
    uint16_t inbound_port = SLUICE_PORT_INBOUND;
    uint16_t hbone_port = SLUICE_PORT_HBONE;
    // Destination ports never redirected (at most SLUICE_MAX_EXCLUDED_PORTS, none 0).
    std::vector<uint16_t> excluded_ports;
    // Splice the app <-> ztunnel loopback hops with sockops + SOCKHASH + sk_msg (docs/datapath.md,
    // "Same-node splicing"). Probed at open(): a kernel that cannot load or attach it runs
    // without, with one warning. Off: splice links pinned by an earlier run are detached.
    bool same_node_splice = false;

    static constexpr const char* kDefaultBpffsRoot = "/sys/fs/bpf/sluice";

    // Every problem at once, empty when the config is usable.
    std::vector<std::string> validate() const;
};

}  // namespace sluice::datapath
