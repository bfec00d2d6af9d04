#include "agent/datapath/datapath.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "agent/datapath/libbpf_log.h"
#include "close.skel.h"
#include "common/netns.h"
#include "inbound.skel.h"
#include "redirect.skel.h"
#include "splice.skel.h"

namespace sluice::datapath {
namespace {

namespace fs = std::filesystem;

// Cgroup programs in attach order: the programs that serve a redirected connection
// (sockops, getsockopt, getpeername) are in place before connect starts redirecting.
constexpr const char* kCgroupPrograms[] = {
    "sluice_sockops", "sluice_getsockopt", "sluice_getpeername4", "sluice_getpeername6",
    "sluice_bind4",   "sluice_bind6",      "sluice_connect4",     "sluice_connect6",
};

// The optional splicing programs (docs/datapath.md, "Same-node splicing"): the sockops link sits
// at the node cgroup next to the others, the sk_msg link on the splice_socks SOCKHASH. Attach
// order: sk_msg first (a socket takes the map's programs when it is added), sockops last.
constexpr const char* kSpliceSockops = "sluice_splice_sockops";
constexpr const char* kSpliceMsg = "sluice_splice_msg";

std::string errno_text(int err) {
    return std::strerror(err < 0 ? -err : err);
}

Error make_error(Errc code, std::string message) {
    return Error{code, std::move(message)};
}

Error sys_error(Errc code, const std::string& what, int err) {
    return make_error(code, what + ": " + errno_text(err));
}

std::unexpected<Error> fail(Errc code, std::string message) {
    return std::unexpected(make_error(code, std::move(message)));
}

std::unexpected<Error> fail_errno(Errc code, const std::string& what, int err) {
    return std::unexpected(sys_error(code, what, err));
}

// The nearest existing ancestor of `path` (or `path` itself).
fs::path existing_ancestor(fs::path path) {
    std::error_code ec;
    while (!path.empty() && !fs::exists(path, ec))
        path = path.parent_path();
    return path.empty() ? fs::path("/") : path;
}

Result<void> check_bpffs(const std::string& root) {
    fs::path probe = existing_ancestor(root);
    struct statfs st {};
    if (::statfs(probe.c_str(), &st) != 0)
        return fail_errno(Errc::SystemError, "statfs " + probe.string(), errno);
    if (static_cast<unsigned long>(st.f_type) != BPF_FS_MAGIC) {
        return fail(Errc::BpffsNotMounted,
                    "bpffs root " + root + " is not on a bpf filesystem (" + probe.string() +
                        " is not bpffs); mount one first: mount -t bpf bpf /sys/fs/bpf");
    }
    return {};
}

Result<void> check_cgroup(const std::string& path) {
    struct statfs st {};
    if (::statfs(path.c_str(), &st) != 0) {
        return fail(Errc::CgroupMissing,
                    "attach cgroup " + path + " is not accessible: " + errno_text(errno));
    }
    if (static_cast<unsigned long>(st.f_type) != CGROUP2_SUPER_MAGIC) {
        return fail(Errc::CgroupMissing, "attach cgroup " + path + " is not a cgroup-v2 directory");
    }
    return {};
}

Result<void> make_dirs(const fs::path& dir) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec)
        return fail(Errc::SystemError, "mkdir " + dir.string() + ": " + ec.message());
    return {};
}

bool path_exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

// Closes an fd on scope exit.
struct Fd {
    int fd = -1;
    explicit Fd(int f) : fd(f) {}
    ~Fd() {
        if (fd >= 0)
            ::close(fd);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};

uint32_t map_size_for(const MapSizes& s, std::string_view name) {
    if (name == "enrolled_netns")
        return s.enrolled_netns;
    if (name == "endpoint_addrs")
        return s.endpoint_addrs;
    if (name == "ipcache")
        return s.ipcache;
    if (name == "policy")
        return s.policy;
    if (name == "rule_counters")
        return s.rule_counters;
    if (name == "orig_dst_tuple")
        return s.orig_dst;
    if (name == "excluded_cidrs")
        return s.excluded_cidrs;
    if (name == "listeners")
        return s.listeners;
    if (name == "ztunnel_flows")
        return s.ztunnel_flows;
    if (name == "splice_socks" || name == "splice_peers")
        return s.splice_sockets;
    if (name == "deny_events")
        return s.deny_event_bytes;
    return 0;  // fixed size from the object (layout_meta, per-reason arrays)
}

// Sets sizes and pin paths of an object's maps; refuses pinned maps that libbpf could not reuse,
// with a message naming the map and the difference (libbpf itself only says "incompatible").
Result<void> prepare_maps(bpf_object* obj, const DatapathConfig& config, const fs::path& map_dir) {
    bpf_map* map = nullptr;
    bpf_object__for_each_map(map, obj) {
        if (bpf_map__is_internal(map))
            continue;
        const std::string name = bpf_map__name(map);
        if (uint32_t size = map_size_for(config.map_sizes, name); size != 0) {
            if (int err = bpf_map__set_max_entries(map, size); err != 0) {
                return fail_errno(Errc::LoadFailed, "set max_entries of map " + name, err);
            }
        }
        const std::string pin = (map_dir / name).string();
        if (int err = bpf_map__set_pin_path(map, pin.c_str()); err != 0) {
            return fail_errno(Errc::LoadFailed, "set pin path of map " + name, err);
        }
        if (!path_exists(pin))
            continue;
        Fd pinned(bpf_obj_get(pin.c_str()));
        if (pinned.fd < 0)
            return fail_errno(Errc::SystemError, "open pinned map " + pin, errno);
        bpf_map_info info{};
        uint32_t len = sizeof(info);
        if (bpf_obj_get_info_by_fd(pinned.fd, &info, &len) != 0) {
            return fail_errno(Errc::SystemError, "inspect pinned map " + pin, errno);
        }
        std::string diff;
        auto compare = [&](const char* what, uint64_t pinned_v, uint64_t want) {
            if (pinned_v != want) {
                diff += std::string(diff.empty() ? "" : ", ") + what + " " +
                        std::to_string(pinned_v) + " (this agent wants " + std::to_string(want) +
                        ")";
            }
        };
        compare("type", info.type, bpf_map__type(map));
        compare("key_size", info.key_size, bpf_map__key_size(map));
        compare("value_size", info.value_size, bpf_map__value_size(map));
        compare("max_entries", info.max_entries, bpf_map__max_entries(map));
        compare("map_flags", info.map_flags, bpf_map__map_flags(map));
        if (!diff.empty()) {
            return fail(Errc::PinnedMapIncompatible,
                        "pinned map " + pin + " cannot be reused: " + diff +
                            "; start with the same map sizes, or detach and unpin the datapath "
                            "first (this drops connection state)");
        }
    }
    return {};
}

Result<void> check_layout_version(const fs::path& map_dir) {
    const std::string meta_pin = (map_dir / "layout_meta").string();
    if (!path_exists(meta_pin)) {
        std::error_code ec;
        if (fs::exists(map_dir, ec) && !fs::is_empty(map_dir, ec)) {
            return fail(Errc::LayoutMismatch,
                        "maps are pinned under " + map_dir.string() +
                            " but without a layout_meta map: they were not created by a sluice "
                            "agent this version understands; remove them to start fresh");
        }
        return {};
    }
    Fd meta(bpf_obj_get(meta_pin.c_str()));
    if (meta.fd < 0)
        return fail_errno(Errc::SystemError, "open pinned map " + meta_pin, errno);
    bpf_map_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(meta.fd, &info, &len) != 0) {
        return fail_errno(Errc::SystemError, "inspect pinned map " + meta_pin, errno);
    }
    sluice_layout_meta value{};
    uint32_t key = 0;
    if (info.value_size != sizeof(value) || bpf_map_lookup_elem(meta.fd, &key, &value) != 0) {
        return fail(Errc::LayoutMismatch, "pinned layout_meta " + meta_pin +
                                              " has an unknown layout; remove the pinned maps");
    }
    // Version 0: a start that pinned the maps and failed before it wrote layout_meta (a
    // program the verifier refused). Nothing ran on them; each map is still checked against
    // this build's layout as it is reused (PinnedMapIncompatible).
    if (value.abi_version != SLUICE_ABI_VERSION && value.abi_version != 0) {
        return fail(Errc::LayoutMismatch,
                    "pinned maps under " + map_dir.string() + " have layout version " +
                        std::to_string(value.abi_version) + ", this agent uses " +
                        std::to_string(SLUICE_ABI_VERSION) +
                        "; refusing to reuse them. Detach and unpin the old datapath (this drops "
                        "connection state) or run the matching agent version");
    }
    return {};
}

std::unexpected<Error> load_failure(const char* object, int err, const std::string& log) {
    return std::unexpected(load_error(std::string(object) + ".bpf.o", err, log));
}

template <typename Skel>
void set_tunables(Skel* skel, const DatapathConfig& config) {
    skel->rodata->cfg_ztunnel_mark = config.ztunnel_mark;
    skel->rodata->cfg_outbound_port = config.outbound_port;
    skel->rodata->cfg_inbound_port = config.inbound_port;
    skel->rodata->cfg_hbone_port = config.hbone_port;
    for (size_t i = 0; i < SLUICE_MAX_EXCLUDED_PORTS; ++i) {
        skel->rodata->cfg_excluded_ports[i] =
            i < config.excluded_ports.size() ? config.excluded_ports[i] : 0;
    }
}

sluice_ipcache_key lpm_key(const Cidr& cidr) {
    sluice_ipcache_key key{};
    key.prefixlen = cidr.prefix_len;
    std::memcpy(key.addr, cidr.address.bytes.data(), 16);
    return key;
}

Result<void> map_update(int fd, const void* key, const void* value, const std::string& what) {
    if (bpf_map_update_elem(fd, key, value, BPF_ANY) != 0) {
        return fail_errno(Errc::MapOperationFailed, what, errno);
    }
    return {};
}

// Deleting an absent entry is not an error: the caller's intent (absent) holds.
Result<void> map_delete(int fd, const void* key, const std::string& what) {
    if (bpf_map_delete_elem(fd, key) != 0 && errno != ENOENT) {
        return fail_errno(Errc::MapOperationFailed, what, errno);
    }
    return {};
}

Result<uint64_t> percpu_sum(int fd, uint32_t key, bool missing_is_zero) {
    int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0)
        return fail_errno(Errc::SystemError, "count possible CPUs", cpus);
    std::vector<uint64_t> values(static_cast<size_t>(cpus));
    if (bpf_map_lookup_elem(fd, &key, values.data()) != 0) {
        if (errno == ENOENT && missing_is_zero)
            return 0;
        return fail_errno(Errc::MapOperationFailed, "read counter " + std::to_string(key), errno);
    }
    uint64_t sum = 0;
    for (uint64_t v : values)
        sum += v;
    return sum;
}

fs::path links_dir(const DatapathConfig& c) {
    return fs::path(c.bpffs_root) / "links";
}
fs::path cgroup_links_dir(const DatapathConfig& c) {
    return links_dir(c) / "cgroup";
}
fs::path netns_links_dir(const DatapathConfig& c) {
    return links_dir(c) / "netns";
}
fs::path splice_links_dir(const DatapathConfig& c) {
    return links_dir(c) / "splice";
}
fs::path maps_dir(const DatapathConfig& c) {
    return fs::path(c.bpffs_root) / "maps";
}

void destroy_link(bpf_link* link) {
    if (link == nullptr)
        return;
    // The pin holds the attachment; closing our fd must not detach.
    bpf_link__disconnect(link);
    bpf_link__destroy(link);
}

// Restart: swaps `prog` into the link pinned at `pin`, so the attachment never goes away. First
// start: `attach()` and pin the new link (unless attach() pinned it itself).
Result<bpf_link*> update_or_attach(bpf_program* prog, const std::string& pin,
                                   const std::function<bpf_link*()>& attach,
                                   const std::string& what) {
    if (path_exists(pin)) {
        bpf_link* link = bpf_link__open(pin.c_str());
        if (link == nullptr)
            return fail_errno(Errc::AttachFailed, "open pinned link " + pin, errno);
        if (int err = bpf_link__update_program(link, prog); err != 0) {
            destroy_link(link);
            return fail_errno(Errc::AttachFailed, "bpf_link_update " + pin, err);
        }
        return link;
    }
    bpf_link* link = attach();
    if (link == nullptr)
        return fail_errno(Errc::AttachFailed, "attach " + what, errno);
    if (bpf_link__pin_path(link) == nullptr) {
        if (int err = bpf_link__pin(link, pin.c_str()); err != 0) {
            bpf_link__destroy(link);
            return fail_errno(Errc::AttachFailed, "pin link " + pin, err);
        }
    }
    return link;
}

// Unpins and detaches a pinned link, if there is one; returns what went wrong, empty if nothing.
std::string detach_pinned_link(const std::string& pin) {
    if (!path_exists(pin))
        return {};
    bpf_link* link = bpf_link__open(pin.c_str());
    if (link == nullptr)
        return "open pinned link " + pin + ": " + errno_text(errno);
    std::string problem;
    if (int err = bpf_link__unpin(link); err != 0)
        problem = "unpin " + pin + ": " + errno_text(err);
    if (int err = bpf_link__detach(link); err != 0 && err != -ENOLINK)
        problem +=
            (problem.empty() ? "" : "; ") + std::string("detach ") + pin + ": " + errno_text(err);
    bpf_link__destroy(link);
    return problem;
}

}  // namespace

std::vector<std::string> DatapathConfig::validate() const {
    std::vector<std::string> problems;
    if (bpffs_root.empty() || bpffs_root.front() != '/') {
        problems.push_back("bpffs_root must be an absolute path, got '" + bpffs_root + "'");
    }
    if (cgroup_path.empty() || cgroup_path.front() != '/') {
        problems.push_back("cgroup_path must be an absolute path, got '" + cgroup_path + "'");
    }
    if (excluded_ports.size() > SLUICE_MAX_EXCLUDED_PORTS) {
        problems.push_back("at most " + std::to_string(SLUICE_MAX_EXCLUDED_PORTS) +
                           " excluded ports, got " + std::to_string(excluded_ports.size()));
    }
    for (uint16_t p : excluded_ports) {
        if (p == 0)
            problems.push_back("excluded port 0 is not a port");
    }
    if (outbound_port == 0 || inbound_port == 0 || hbone_port == 0 ||
        outbound_port == inbound_port || outbound_port == hbone_port ||
        inbound_port == hbone_port) {
        problems.push_back("outbound, inbound and hbone ports must be distinct and non-zero");
    }
    const auto& s = map_sizes;
    uint32_t b = s.deny_event_bytes;
    if (b < 4096 || (b & (b - 1)) != 0) {
        problems.push_back("deny_event_bytes must be a power of two ≥ 4096, got " +
                           std::to_string(b));
    }
    for (uint32_t v :
         {s.enrolled_netns, s.endpoint_addrs, s.ipcache, s.policy, s.rule_counters, s.orig_dst,
          s.excluded_cidrs, s.listeners, s.ztunnel_flows, s.splice_sockets}) {
        if (v == 0) {
            problems.push_back("map sizes must be non-zero");
            break;
        }
    }
    return problems;
}

Datapath::Datapath(DatapathConfig config) : config_(std::move(config)) {}

Datapath::~Datapath() {
    if (deny_ring_ != nullptr)
        ring_buffer__free(deny_ring_);
    for (auto& [name, link] : cgroup_links_)
        destroy_link(link);
    for (auto& [cookie, link] : netns_links_)
        destroy_link(link);
    if (redirect_ != nullptr)
        redirect_bpf__destroy(redirect_);
    if (inbound_ != nullptr)
        inbound_bpf__destroy(inbound_);
    for (auto& [name, link] : splice_links_)
        destroy_link(link);
    if (splice_ != nullptr)
        splice_bpf__destroy(splice_);
    if (close_link_ != nullptr)
        bpf_link__destroy(close_link_);  // not pinned: each agent attaches its own iterator
    if (close_ != nullptr)
        close_bpf__destroy(close_);
}

Result<std::unique_ptr<Datapath>> Datapath::open(const DatapathConfig& config) {
    if (auto problems = config.validate(); !problems.empty()) {
        std::string msg = "invalid datapath config:";
        for (const auto& p : problems)
            msg += "\n  - " + p;
        return fail(Errc::InvalidConfig, msg);
    }
    if (auto r = check_bpffs(config.bpffs_root); !r)
        return std::unexpected(r.error());
    if (auto r = check_cgroup(config.cgroup_path); !r)
        return std::unexpected(r.error());
    install_libbpf_logger();

    std::unique_ptr<Datapath> dp(new Datapath(config));
    if (auto r = dp->load(); !r)
        return std::unexpected(r.error());
    if (auto r = dp->attach_cgroup_programs(); !r)
        return std::unexpected(r.error());
    if (auto r = dp->update_netns_links(); !r)
        return std::unexpected(r.error());
    if (config.same_node_splice) {
        dp->load_splice();
    } else if (std::string problem = dp->detach_pinned_splice_links(); !problem.empty()) {
        spdlog::warn("datapath: turning same-node splice off: {}", problem);
    }
    return dp;
}

Result<void> Datapath::load() {
    const fs::path map_dir = maps_dir(config_);
    if (auto r = make_dirs(map_dir); !r)
        return r;
    if (auto r = make_dirs(cgroup_links_dir(config_)); !r)
        return r;
    if (auto r = make_dirs(netns_links_dir(config_)); !r)
        return r;
    if (auto r = check_layout_version(map_dir); !r)
        return r;
    reused_ = path_exists((map_dir / "layout_meta").string());

    LibbpfLogCapture capture;
    redirect_ = redirect_bpf__open();
    if (redirect_ == nullptr)
        return load_failure("redirect", errno, capture.text());
    set_tunables(redirect_, config_);
    if (auto r = prepare_maps(redirect_->obj, config_, map_dir); !r)
        return r;
    if (int err = redirect_bpf__load(redirect_); err != 0) {
        return load_failure("redirect", err, capture.text());
    }

    // inbound.bpf.o declares the same maps; with the same pin paths libbpf reuses the instances
    // that redirect just created or reused.
    inbound_ = inbound_bpf__open();
    if (inbound_ == nullptr)
        return load_failure("inbound", errno, capture.text());
    set_tunables(inbound_, config_);
    if (auto r = prepare_maps(inbound_->obj, config_, map_dir); !r)
        return r;
    if (int err = inbound_bpf__load(inbound_); err != 0) {
        return load_failure("inbound", err, capture.text());
    }
    if (auto r = write_layout_meta(); !r)
        return r;
    load_closer();
    return {};
}

// The connection closer is optional: without it a policy reload still applies to every new
// connection, only open ones keep running. Pinned maps are reused like the other objects'.
void Datapath::load_closer() {
    LibbpfLogCapture capture;
    close_ = close_bpf__open();
    if (close_ == nullptr) {
        spdlog::warn("datapath: cannot open the connection closer: {}", errno_text(errno));
        return;
    }
    set_tunables(close_, config_);
    auto prepared = prepare_maps(close_->obj, config_, maps_dir(config_));
    int err = prepared ? close_bpf__load(close_) : -EINVAL;
    if (err == 0) {
        close_link_ = bpf_program__attach_iter(close_->progs.sluice_close_denied, nullptr);
        err = close_link_ == nullptr ? -errno : 0;
    }
    if (err != 0) {
        spdlog::warn(
            "datapath: open connections cannot be closed on a policy reload (the kernel needs "
            "iter/tcp and bpf_sock_destroy, 6.5+): {} {}",
            prepared ? errno_text(err) : prepared.error().message, capture.text());
        close_bpf__destroy(close_);
        close_ = nullptr;
    }
}

Result<void> Datapath::write_layout_meta() {
    sluice_layout_meta meta{};
    meta.abi_version = SLUICE_ABI_VERSION;
    uint32_t key = 0;
    return map_update(map_fd("layout_meta"), &key, &meta, "write layout_meta");
}

int Datapath::map_fd(const char* name) const {
    bpf_map* map = bpf_object__find_map_by_name(redirect_->obj, name);
    if (map == nullptr)
        map = bpf_object__find_map_by_name(inbound_->obj, name);
    return map == nullptr ? -1 : bpf_map__fd(map);
}

// Refuses to reuse pinned links that sit at another cgroup than the configured one: updating them
// would leave the programs where the old config put them. Checked for every link before any is
// touched, so a refusal changes nothing.
Result<void> Datapath::check_pinned_cgroup_links(int cgroup_fd) const {
    struct stat st {};
    if (::fstat(cgroup_fd, &st) != 0)
        return fail_errno(Errc::SystemError, "stat " + config_.cgroup_path, errno);
    const uint64_t want = st.st_ino;  // a cgroup-v2 directory's inode number is its cgroup id
    std::vector<const char*> names(std::begin(kCgroupPrograms), std::end(kCgroupPrograms));
    names.push_back(kSpliceSockops);
    for (const char* name : names) {
        const std::string pin = (cgroup_links_dir(config_) / name).string();
        if (!path_exists(pin))
            continue;
        Fd link(bpf_obj_get(pin.c_str()));
        if (link.fd < 0)
            return fail_errno(Errc::AttachFailed, "open pinned link " + pin, errno);
        bpf_link_info info{};
        uint32_t len = sizeof(info);
        if (bpf_obj_get_info_by_fd(link.fd, &info, &len) != 0)
            return fail_errno(Errc::AttachFailed, "inspect pinned link " + pin, errno);
        if (info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id != want) {
            return fail(Errc::AttachFailed,
                        "pinned link " + pin + " is attached to cgroup id " +
                            std::to_string(info.cgroup.cgroup_id) + ", not to cgroup_path " +
                            config_.cgroup_path + " (id " + std::to_string(want) +
                            "); detach the old datapath first or keep the same cgroup_path");
        }
    }
    return {};
}

Result<void> Datapath::attach_cgroup_programs() {
    int cgroup_fd = ::open(config_.cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cgroup_fd < 0) {
        return fail(Errc::CgroupMissing,
                    "open attach cgroup " + config_.cgroup_path + ": " + errno_text(errno));
    }
    Fd cgroup(cgroup_fd);
    if (auto r = check_pinned_cgroup_links(cgroup.fd); !r)
        return r;
    for (const char* name : kCgroupPrograms) {
        bpf_program* prog = bpf_object__find_program_by_name(redirect_->obj, name);
        if (prog == nullptr)
            return fail(Errc::LoadFailed, std::string("no program ") + name);
        const std::string pin = (cgroup_links_dir(config_) / name).string();
        auto link = update_or_attach(
            prog, pin, [&] { return bpf_program__attach_cgroup(prog, cgroup.fd); },
            std::string(name) + " to cgroup " + config_.cgroup_path);
        if (!link)
            return std::unexpected(link.error());
        cgroup_links_[name] = *link;
    }
    return {};
}

// Splicing is optional (the flag, and a kernel that can): any failure is one warning and the
// datapath runs without it. Pinned maps are reused like the other objects'.
void Datapath::load_splice() {
    LibbpfLogCapture capture;
    splice_ = splice_bpf__open();
    if (splice_ == nullptr) {
        spdlog::warn("datapath: same-node splice off: cannot open its programs: {}",
                     errno_text(errno));
        return;
    }
    set_tunables(splice_, config_);
    auto prepared = prepare_maps(splice_->obj, config_, maps_dir(config_));
    int err = prepared ? splice_bpf__load(splice_) : -EINVAL;
    std::string problem;
    if (!prepared)
        problem = prepared.error().message;
    else if (err != 0)
        problem = "load: " + errno_text(err) + " " + capture.text();
    else if (auto r = attach_splice(); !r)
        problem = r.error().message;
    if (problem.empty())
        return;
    spdlog::warn(
        "datapath: same-node splice off: this kernel cannot run it (sockops + SOCKHASH + sk_msg "
        "links, 6.10+): {}",
        problem);
    if (std::string more = detach_pinned_splice_links(); !more.empty())
        spdlog::warn("datapath: {}", more);
    splice_bpf__destroy(splice_);
    splice_ = nullptr;
}

Result<void> Datapath::attach_splice() {
    if (auto r = make_dirs(splice_links_dir(config_)); !r)
        return r;
    bpf_program* msg = splice_->progs.sluice_splice_msg;
    const int map = bpf_map__fd(splice_->maps.splice_socks);
    const std::string msg_pin = (splice_links_dir(config_) / kSpliceMsg).string();
    // libbpf 1.1 has no sockmap attach; the kernel has sk_msg links since 6.10.
    auto msg_link = update_or_attach(
        msg, msg_pin,
        [&]() -> bpf_link* {
            int fd = bpf_link_create(bpf_program__fd(msg), map, BPF_SK_MSG_VERDICT, nullptr);
            if (fd < 0)
                return nullptr;
            Fd owned(fd);
            if (bpf_obj_pin(fd, msg_pin.c_str()) != 0)
                return nullptr;
            return bpf_link__open(msg_pin.c_str());
        },
        std::string(kSpliceMsg) + " to the splice_socks SOCKHASH");
    if (!msg_link)
        return std::unexpected(msg_link.error());
    splice_links_[kSpliceMsg] = *msg_link;

    int cgroup_fd = ::open(config_.cgroup_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cgroup_fd < 0)
        return fail_errno(Errc::CgroupMissing, "open attach cgroup " + config_.cgroup_path, errno);
    Fd cgroup(cgroup_fd);
    bpf_program* sockops = splice_->progs.sluice_splice_sockops;
    auto sockops_link = update_or_attach(
        sockops, (cgroup_links_dir(config_) / kSpliceSockops).string(),
        [&] { return bpf_program__attach_cgroup(sockops, cgroup.fd); },
        std::string(kSpliceSockops) + " to cgroup " + config_.cgroup_path);
    if (!sockops_link)
        return std::unexpected(sockops_link.error());
    splice_links_[kSpliceSockops] = *sockops_link;
    return {};
}

// Turning splicing off: nothing new is spliced; spliced sockets keep the program they were
// added with and their SOCKHASH (the maps stay pinned: freeing the map would drop the bytes
// queued in their spliced receive queues).
std::string Datapath::detach_pinned_splice_links() {
    for (auto& [name, link] : splice_links_)
        destroy_link(link);
    splice_links_.clear();
    // By pin (sockops first, then sk_msg), so links pinned by an earlier agent go too.
    std::string problems;
    for (const fs::path& pin :
         {cgroup_links_dir(config_) / kSpliceSockops, splice_links_dir(config_) / kSpliceMsg}) {
        if (std::string problem = detach_pinned_link(pin.string()); !problem.empty())
            problems += (problems.empty() ? "" : "; ") + problem;
    }
    ::rmdir(splice_links_dir(config_).c_str());
    return problems;
}

Result<void> Datapath::update_netns_links() {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(netns_links_dir(config_), ec)) {
        const std::string file = entry.path().filename().string();
        uint64_t cookie = 0;
        auto [end, perr] = std::from_chars(file.data(), file.data() + file.size(), cookie);
        if (perr != std::errc{} || end != file.data() + file.size())
            continue;
        const std::string pin = entry.path().string();
        bpf_link* link = bpf_link__open(pin.c_str());
        if (link == nullptr)
            return fail_errno(Errc::AttachFailed, "open pinned link " + pin, errno);
        if (int err = bpf_link__update_program(link, inbound_->progs.sluice_sk_lookup); err != 0) {
            // The netns is gone (its link is defunct): forget it.
            spdlog::info("datapath: dropping stale sk_lookup link {}: {}", pin, errno_text(err));
            bpf_link__unpin(link);
            destroy_link(link);
            continue;
        }
        netns_links_[cookie] = link;
    }
    if (ec)
        return fail(Errc::SystemError,
                    "list " + netns_links_dir(config_).string() + ": " + ec.message());
    return {};
}

Result<void> Datapath::enroll_netns(uint64_t netns_cookie, const sluice_enrolled_value& value) {
    return map_update(map_fd("enrolled_netns"), &netns_cookie, &value,
                      "enroll netns " + std::to_string(netns_cookie));
}

Result<void> Datapath::unenroll_netns(uint64_t netns_cookie) {
    const std::string what = "unenroll netns " + std::to_string(netns_cookie);
    if (auto r = map_delete(map_fd("enrolled_netns"), &netns_cookie, what); !r)
        return r;
    if (auto r = unregister_inbound_listener(netns_cookie); !r)
        return r;
    // Collect first: deleting while iterating a hash map can restart or skip the walk.
    int fd = map_fd("endpoint_addrs");
    std::vector<sluice_addr_key> doomed;
    sluice_addr_key key{}, next{};
    const sluice_addr_key* cursor = nullptr;
    for (uint32_t i = 0; i < config_.map_sizes.endpoint_addrs; ++i) {
        if (bpf_map_get_next_key(fd, cursor, &next) != 0)
            break;
        uint64_t owner = 0;
        if (bpf_map_lookup_elem(fd, &next, &owner) == 0 && owner == netns_cookie) {
            doomed.push_back(next);
        }
        key = next;
        cursor = &key;
    }
    for (const auto& k : doomed) {
        if (auto r = map_delete(fd, &k, what + ": remove endpoint address"); !r)
            return r;
    }
    return {};
}

Result<void> Datapath::add_endpoint_address(const IpAddress& address, uint64_t netns_cookie) {
    sluice_addr_key key{};
    std::memcpy(key.addr, address.bytes.data(), 16);
    return map_update(map_fd("endpoint_addrs"), &key, &netns_cookie,
                      "add endpoint address " + address.to_string());
}

Result<void> Datapath::remove_endpoint_address(const IpAddress& address) {
    sluice_addr_key key{};
    std::memcpy(key.addr, address.bytes.data(), 16);
    return map_delete(map_fd("endpoint_addrs"), &key,
                      "remove endpoint address " + address.to_string());
}

Result<void> Datapath::register_inbound_listener(uint64_t netns_cookie, int listener_fd) {
    uint64_t value = static_cast<uint64_t>(listener_fd);
    return map_update(map_fd("listeners"), &netns_cookie, &value,
                      "register inbound listener for netns " + std::to_string(netns_cookie) +
                          " (it must be a listening TCP socket)");
}

Result<void> Datapath::unregister_inbound_listener(uint64_t netns_cookie) {
    return map_delete(map_fd("listeners"), &netns_cookie,
                      "unregister inbound listener for netns " + std::to_string(netns_cookie));
}

Result<uint64_t> Datapath::attach_netns(const std::string& netns_path) {
    uint64_t cookie = 0;
    try {
        cookie = netns_cookie(netns_path);
    } catch (const std::system_error& e) {
        return fail(Errc::NotFound, "netns " + netns_path + ": " + e.what());
    }
    if (netns_links_.contains(cookie))
        return cookie;
    int fd = ::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail_errno(Errc::NotFound, "open netns " + netns_path, errno);
    Fd netns(fd);
    bpf_link* link = bpf_program__attach_netns(inbound_->progs.sluice_sk_lookup, netns.fd);
    if (link == nullptr) {
        return fail_errno(Errc::AttachFailed, "attach sk_lookup to netns " + netns_path, errno);
    }
    const std::string pin = (netns_links_dir(config_) / std::to_string(cookie)).string();
    if (int err = bpf_link__pin(link, pin.c_str()); err != 0) {
        bpf_link__destroy(link);
        return fail_errno(Errc::AttachFailed, "pin link " + pin, err);
    }
    netns_links_[cookie] = link;
    return cookie;
}

Result<void> Datapath::detach_netns(uint64_t netns_cookie) {
    auto it = netns_links_.find(netns_cookie);
    if (it == netns_links_.end()) {
        return fail(Errc::NotFound, "no sk_lookup link for netns " + std::to_string(netns_cookie));
    }
    bpf_link* link = it->second;
    netns_links_.erase(it);
    bpf_link__unpin(link);
    int err = bpf_link__detach(link);
    bpf_link__destroy(link);
    if (err != 0 && err != -ENOLINK) {
        return fail_errno(Errc::AttachFailed, "detach sk_lookup from netns", err);
    }
    return {};
}

Result<void> Datapath::upsert_ipcache(const Cidr& cidr, uint32_t identity) {
    sluice_ipcache_key key = lpm_key(cidr);
    sluice_ipcache_value value{identity, 0};
    return map_update(map_fd("ipcache"), &key, &value, "ipcache upsert " + cidr.to_string());
}

Result<void> Datapath::delete_ipcache(const Cidr& cidr) {
    sluice_ipcache_key key = lpm_key(cidr);
    return map_delete(map_fd("ipcache"), &key, "ipcache delete " + cidr.to_string());
}

Result<void> Datapath::upsert_policy(const sluice_policy_key& key,
                                     const sluice_policy_value& value) {
    return map_update(map_fd("policy"), &key, &value, "policy upsert");
}

Result<void> Datapath::delete_policy(const sluice_policy_key& key) {
    return map_delete(map_fd("policy"), &key, "policy delete");
}

namespace {

// Every {key, value} of the map at `fd`, at most `limit` (its size).
template <typename Key, typename Value>
Result<std::vector<std::pair<Key, Value>>> read_map(int fd, uint32_t limit,
                                                    const std::string& what) {
    std::vector<std::pair<Key, Value>> out;
    Key key{}, next{};
    const Key* cursor = nullptr;
    while (out.size() < limit) {
        if (bpf_map_get_next_key(fd, cursor, &next) != 0) {
            if (errno == ENOENT)
                break;
            return fail_errno(Errc::MapOperationFailed, what + ": next key", errno);
        }
        Value value{};
        if (bpf_map_lookup_elem(fd, &next, &value) == 0)
            out.emplace_back(next, value);
        key = next;
        cursor = &key;
    }
    return out;
}

}  // namespace

Result<Datapath::PolicyMaps> Datapath::read_policy_maps() const {
    PolicyMaps maps;
    auto policy = read_map<sluice_policy_key, sluice_policy_value>(
        map_fd("policy"), config_.map_sizes.policy, "read policy map");
    if (!policy)
        return std::unexpected(policy.error());
    maps.policy = std::move(*policy);
    auto ipcache = read_map<sluice_ipcache_key, sluice_ipcache_value>(
        map_fd("ipcache"), config_.map_sizes.ipcache, "read ipcache map");
    if (!ipcache)
        return std::unexpected(ipcache.error());
    for (const auto& [k, v] : *ipcache) {
        Cidr cidr;
        std::memcpy(cidr.address.bytes.data(), k.addr, 16);
        cidr.prefix_len = k.prefixlen;
        maps.ipcache.emplace_back(cidr, v.identity);
    }
    return maps;
}

Result<void> Datapath::add_excluded_cidr(const Cidr& cidr) {
    sluice_ipcache_key key = lpm_key(cidr);
    uint8_t one = 1;
    return map_update(map_fd("excluded_cidrs"), &key, &one, "exclude " + cidr.to_string());
}

Result<void> Datapath::delete_excluded_cidr(const Cidr& cidr) {
    sluice_ipcache_key key = lpm_key(cidr);
    return map_delete(map_fd("excluded_cidrs"), &key, "unexclude " + cidr.to_string());
}

Result<uint64_t> Datapath::drop_count(sluice_reason reason) const {
    return percpu_sum(map_fd("drop_counters"), reason, false);
}

Result<uint64_t> Datapath::event_count(sluice_event event) const {
    return percpu_sum(map_fd("event_counters"), event, false);
}

Result<uint64_t> Datapath::rule_count(uint32_t rule_id) const {
    return percpu_sum(map_fd("rule_counters"), rule_id, true);
}

Result<std::optional<OrigDst>> Datapath::orig_dst_of_socket(int socket_fd) const {
    sluice_orig_dst value{};
    if (bpf_map_lookup_elem(map_fd("orig_dst_sk"), &socket_fd, &value) != 0) {
        if (errno == ENOENT)
            return std::optional<OrigDst>{};
        return fail_errno(Errc::MapOperationFailed, "read orig_dst_sk", errno);
    }
    OrigDst od;
    std::memcpy(od.address.bytes.data(), value.addr, 16);
    od.port = value.port;
    od.family = value.family;
    od.netns_cookie = value.netns_cookie;
    return od;
}

Result<uint64_t> Datapath::splice_count(sluice_splice_event event) const {
    if (splice_ == nullptr)
        return fail(Errc::Unsupported, "same-node splicing is off");
    return percpu_sum(bpf_map__fd(splice_->maps.splice_counters), event, false);
}

Result<size_t> Datapath::spliced_sockets() const {
    if (splice_ == nullptr)
        return fail(Errc::Unsupported, "same-node splicing is off");
    const int fd = bpf_map__fd(splice_->maps.splice_socks);
    size_t count = 0;
    sluice_splice_key key{}, next{};
    const sluice_splice_key* cursor = nullptr;
    while (count < config_.map_sizes.splice_sockets &&
           bpf_map_get_next_key(fd, cursor, &next) == 0) {
        ++count;
        key = next;
        cursor = &key;
    }
    return count;
}

Result<std::vector<sluice_deny_event>> Datapath::close_denied_connections() const {
    if (close_link_ == nullptr)
        return fail(Errc::Unsupported, "this kernel cannot close connections from eBPF");
    Fd iter(bpf_iter_create(bpf_link__fd(close_link_)));
    if (iter.fd < 0)
        return fail_errno(Errc::SystemError, "create tcp socket iterator", errno);
    // The iterator runs while it is read; every record is one closed connection.
    std::vector<sluice_deny_event> closed;
    std::vector<char> buf;
    char chunk[4096];
    for (;;) {
        ssize_t n = ::read(iter.fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && buf.empty())
            return fail_errno(Errc::SystemError, "read tcp socket iterator", errno);
        if (n < 0) {
            // The sockets reported so far are closed already: keep their records (audit,
            // metric) rather than dropping them with the error.
            spdlog::warn("datapath: tcp socket iterator stopped early: {}", errno_text(errno));
            break;
        }
        if (n == 0)
            break;
        buf.insert(buf.end(), chunk, chunk + n);
    }
    for (size_t off = 0; off + sizeof(sluice_deny_event) <= buf.size();
         off += sizeof(sluice_deny_event)) {
        sluice_deny_event ev;
        std::memcpy(&ev, buf.data() + off, sizeof ev);
        closed.push_back(ev);
    }
    return closed;
}

Result<int> Datapath::poll_deny_events(
    const std::function<void(const sluice_deny_event&)>& on_event,
    std::chrono::milliseconds timeout) {
    if (deny_ring_ == nullptr) {
        auto sample = [](void* ctx, void* data, size_t size) -> int {
            auto* self = static_cast<Datapath*>(ctx);
            if (size < sizeof(sluice_deny_event) || self->ring_callback_ == nullptr)
                return 0;
            sluice_deny_event ev;
            std::memcpy(&ev, data, sizeof ev);
            (*self->ring_callback_)(ev);
            return 0;
        };
        deny_ring_ = ring_buffer__new(map_fd("deny_events"), sample, this, nullptr);
        if (deny_ring_ == nullptr) {
            return fail_errno(Errc::MapOperationFailed, "open deny_events ring buffer", errno);
        }
    }
    ring_callback_ = &on_event;
    int n = ring_buffer__poll(deny_ring_, static_cast<int>(timeout.count()));
    ring_callback_ = nullptr;
    if (n < 0 && n != -EINTR)
        return fail_errno(Errc::MapOperationFailed, "poll deny_events", n);
    return n < 0 ? 0 : n;
}

Result<void> Datapath::detach_and_unpin() {
    std::string problems;
    auto note = [&](const std::string& what, int err) {
        problems += (problems.empty() ? "" : "; ") + what + ": " + errno_text(err);
    };
    // Splicing first: nothing new is spliced while the rest goes.
    if (std::string problem = detach_pinned_splice_links(); !problem.empty())
        problems += (problems.empty() ? "" : "; ") + problem;
    // connect first, so nothing is redirected once the helpers that serve it are gone.
    for (auto it = std::rbegin(kCgroupPrograms); it != std::rend(kCgroupPrograms); ++it) {
        auto found = cgroup_links_.find(*it);
        if (found == cgroup_links_.end())
            continue;
        bpf_link* link = found->second;
        cgroup_links_.erase(found);
        if (int err = bpf_link__unpin(link); err != 0)
            note(std::string("unpin ") + *it, err);
        if (int err = bpf_link__detach(link); err != 0)
            note(std::string("detach ") + *it, err);
        bpf_link__destroy(link);
    }
    while (!netns_links_.empty()) {
        uint64_t cookie = netns_links_.begin()->first;
        if (auto r = detach_netns(cookie); !r)
            problems += "; " + r.error().message;
    }
    std::error_code ec;
    for (const fs::path& dir :
         {maps_dir(config_), cgroup_links_dir(config_), netns_links_dir(config_)}) {
        for (const auto& entry : fs::directory_iterator(dir, ec)) {
            if (::unlink(entry.path().c_str()) != 0)
                note("unlink " + entry.path().string(), errno);
        }
    }
    for (const fs::path& dir :
         {cgroup_links_dir(config_), netns_links_dir(config_), splice_links_dir(config_),
          links_dir(config_), maps_dir(config_), fs::path(config_.bpffs_root)}) {
        if (::rmdir(dir.c_str()) != 0 && errno != ENOENT)
            note("rmdir " + dir.string(), errno);
    }
    if (!problems.empty())
        return fail(Errc::SystemError, "detach_and_unpin: " + problems);
    return {};
}

}  // namespace sluice::datapath
