#pragma once

#include <chrono>
#include <cstdint>
#include <expected>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/datapath/address.h"
#include "agent/datapath/config.h"
#include "agent/datapath/error.h"
#include "sluice_abi.h"

struct redirect_bpf;
struct inbound_bpf;
struct close_bpf;
struct splice_bpf;
struct bpf_link;
struct ring_buffer;

namespace sluice::datapath {

template <typename T>
using Result = std::expected<T, Error>;

// The original destination of a redirected connection.
struct OrigDst {
    IpAddress address;
    uint16_t port = 0;
    uint16_t family = 0;  // AF_INET / AF_INET6 of the app's socket
    uint64_t netns_cookie = 0;
};

// The eBPF datapath of one node: loads the programs, owns (and pins) the maps and links.
//
// Lifetime: maps and links are pinned under DatapathConfig::bpffs_root, so destroying a Datapath
// leaves the programs enforcing. A later open() with the same root reuses the maps (after checking
// the layout version) and swaps the new programs into the pinned links with bpf_link_update:
// there is no moment without capture or policy. detach_and_unpin() is the only way to stop.
// Not thread-safe: one owner (the agent's datapath loop) calls it.
class Datapath {
  public:
    static Result<std::unique_ptr<Datapath>> open(const DatapathConfig& config);
    ~Datapath();
    Datapath(const Datapath&) = delete;
    Datapath& operator=(const Datapath&) = delete;

    // True when open() found pinned maps and links from an earlier run and reused them.
    bool reused_pinned_state() const { return reused_; }

    // Enrollment: a pod netns is captured once its cookie is enrolled.
    Result<void> enroll_netns(uint64_t netns_cookie, const sluice_enrolled_value& value);
    // Removes the enrollment, the pod's inbound listener and its endpoint addresses (the netns'
    // sk_lookup link stays until detach_netns(), or goes with the netns).
    Result<void> unenroll_netns(uint64_t netns_cookie);
    // The pod's own addresses, so inbound steering can find the pod of an arriving connection.
    Result<void> add_endpoint_address(const IpAddress& address, uint64_t netns_cookie);
    Result<void> remove_endpoint_address(const IpAddress& address);
    // ztunnel's :15006 listener for the netns (a listening TCP socket opened inside it).
    Result<void> register_inbound_listener(uint64_t netns_cookie, int listener_fd);
    Result<void> unregister_inbound_listener(uint64_t netns_cookie);
    // Attaches the sk_lookup program to the netns at `netns_path` and pins the link as
    // links/netns/<cookie>; attaching again is a no-op. Returns the netns cookie.
    Result<uint64_t> attach_netns(const std::string& netns_path);
    Result<void> detach_netns(uint64_t netns_cookie);

    Result<void> upsert_ipcache(const Cidr& cidr, uint32_t identity);
    Result<void> delete_ipcache(const Cidr& cidr);
    Result<void> upsert_policy(const sluice_policy_key& key, const sluice_policy_value& value);
    Result<void> delete_policy(const sluice_policy_key& key);
    // What the policy and ipcache maps hold now. The policy applier starts from it: after a
    // restart the pinned maps keep the last agent's entries, and after a failed apply only the
    // maps know which steps were taken.
    struct PolicyMaps {
        std::vector<std::pair<sluice_policy_key, sluice_policy_value>> policy;
        std::vector<std::pair<Cidr, uint32_t>> ipcache;
    };
    Result<PolicyMaps> read_policy_maps() const;
    Result<void> add_excluded_cidr(const Cidr& cidr);
    Result<void> delete_excluded_cidr(const Cidr& cidr);

    // Counters summed over all CPUs.
    Result<uint64_t> drop_count(sluice_reason reason) const;
    Result<uint64_t> event_count(sluice_event event) const;
    Result<uint64_t> rule_count(uint32_t rule_id) const;

    // The record connect4/6 made in the storage of this (app) socket, an fd of this process.
    Result<std::optional<OrigDst>> orig_dst_of_socket(int socket_fd) const;

    // Closes the open TCP connections in the calling thread's network namespace that egress
    // policy, as the maps hold it now, denies (bpf/lib/close.h: a redirected app socket whose
    // original destination connect() would now refuse); returns one event per closed
    // connection. Call it from a thread that has joined a pod's netns (socket iterators walk the
    // creator's netns). Unlike the rest of this class it may run on any thread: it only creates
    // an iterator from the link made at open(). Errc::Unsupported when the kernel could not load
    // the iterator (no bpf_sock_destroy before 6.5).
    Result<std::vector<sluice_deny_event>> close_denied_connections() const;
    bool can_close_connections() const { return close_link_ != nullptr; }

    // True when same-node splicing is attached (asked for in the config, and the kernel can).
    bool splicing() const { return splice_ != nullptr; }
    // Splice counters summed over all CPUs; Errc::Unsupported while not splicing.
    Result<uint64_t> splice_count(sluice_splice_event event) const;
    // Sockets in the splice SOCKHASH now (both ends of every spliced hop); Unsupported while
    // not splicing.
    Result<size_t> spliced_sockets() const;

    // Waits up to `timeout` for deny events and hands each to `on_event`; returns how many.
    Result<int> poll_deny_events(const std::function<void(const sluice_deny_event&)>& on_event,
                                 std::chrono::milliseconds timeout);

    // Detaches every program (cgroup and per-netns links) and removes all pins under the root.
    Result<void> detach_and_unpin();

  private:
    explicit Datapath(DatapathConfig config);
    Result<void> load();
    void load_closer();
    void load_splice();
    Result<void> attach_splice();
    // Detaches the splice links (ours and pinned ones); returns what failed, empty if nothing.
    std::string detach_pinned_splice_links();
    Result<void> attach_cgroup_programs();
    Result<void> check_pinned_cgroup_links(int cgroup_fd) const;
    Result<void> update_netns_links();
    Result<void> write_layout_meta();
    int map_fd(const char* name) const;

    DatapathConfig config_;
    redirect_bpf* redirect_ = nullptr;
    inbound_bpf* inbound_ = nullptr;
    close_bpf* close_ = nullptr;  // optional: null when the kernel cannot destroy sockets
    bpf_link* close_link_ = nullptr;
    splice_bpf* splice_ = nullptr;  // null unless config_.same_node_splice and the kernel can
    std::map<std::string, bpf_link*> splice_links_;  // sockops + sk_msg, by program name
    std::map<std::string, bpf_link*> cgroup_links_;  // by program name
    std::map<uint64_t, bpf_link*> netns_links_;      // by netns cookie
    ring_buffer* deny_ring_ = nullptr;
    const std::function<void(const sluice_deny_event&)>* ring_callback_ = nullptr;
    bool reused_ = false;
};

// Names for logs, metrics labels and sluicectl.
const char* reason_name(sluice_reason reason);
const char* event_name(sluice_event event);
const char* splice_event_name(sluice_splice_event event);

}  // namespace sluice::datapath
