#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace sluice {

// Path of a named network namespace as `ip netns add` creates it.
std::string netns_path(const std::string& name);

// Runs `fn` on a fresh thread that has joined the network namespace at `path` (setns with
// CLONE_NEWNET only: mounts, and so /sys/fs/bpf and the cgroup2 mount, stay the caller's, unlike
// `ip netns exec`). Sockets created inside `fn` stay in that namespace for their whole life and
// can be used from any thread afterwards. Exceptions thrown by `fn` propagate to the caller.
void run_in_netns(const std::string& path, const std::function<void()>& fn);

// The netns cookie (SO_NETNS_COOKIE) of the namespace at `path`, as BPF's bpf_get_netns_cookie
// reports it.
uint64_t netns_cookie(const std::string& path);

}  // namespace sluice
