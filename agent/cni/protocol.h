#pragma once

// What sluice-cni (the chained plugin) and the agent's CNI server say to each other over
// <run>/cni.sock: one JSON request per connection, the client half-closes, the agent answers
// with one JSON response and closes. Kept this small so the plugin binary stays trivial.

#include <chrono>
#include <expected>
#include <string>
#include <vector>

namespace sluice::cni {

struct Request {
    std::string command;  // ADD, DEL, CHECK
    std::string container_id;
    std::string netns;  // CNI_NETNS path
    std::string ifname;
    std::string pod_namespace;
    std::string pod_name;
    std::string pod_uid;
    std::vector<std::string> ips;  // from prevResult, without prefix length
};

struct Response {
    bool ok = false;
    bool enrolled = false;  // ADD/CHECK: the pod is in the mesh (false: not selected)
    std::string error;      // when !ok: what went wrong, for the CNI error msg
};

std::string encode(const Request& r);
std::string encode(const Response& r);
std::expected<Request, std::string> decode_request(const std::string& text);
std::expected<Response, std::string> decode_response(const std::string& text);

// Client side: connects to `socket_path`, sends the request, waits at most `timeout` for the
// response. Errors say whether the agent was unreachable or slow.
std::expected<Response, std::string> call_agent(const std::string& socket_path,
                                                const Request& request,
                                                std::chrono::milliseconds timeout);

inline constexpr size_t kMaxMessageBytes = 64 * 1024;

}  // namespace sluice::cni
