#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace sluice::ztunnel::proxy {

// What one proxied connection did, written as one JSON line when it ends (DESIGN.md §7).
struct ConnectionRecord {
    std::string direction;  // "outbound", "inbound" (HBONE), "inbound_plaintext", "passthrough"
    std::string src_addr, dst_addr, hbone_addr;
    std::string src_workload, src_namespace, src_identity;
    std::string dst_workload, dst_namespace, dst_identity, dst_service;
    std::string waypoint;         // "ns/name" of the waypoint Service the connection went through
    uint64_t bytes_sent = 0;      // towards the downstream (client)
    uint64_t bytes_received = 0;  // from the downstream
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::string result = "ok";  // "ok", "denied", "error", "closed_by_policy"
    std::string error;          // why, when not ok

    nlohmann::json to_json() const;
};

// Writes access-log lines to stdout ("-") or a file, one write per line so lines of
// concurrent connections never interleave.
class AccessLog {
  public:
    explicit AccessLog(const std::string& target);
    ~AccessLog();
    void write(const ConnectionRecord& r);

  private:
    std::mutex mutex_;
    int fd_ = 1;
    bool owned_ = false;
};

}  // namespace sluice::ztunnel::proxy
