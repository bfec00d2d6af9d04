#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <boost/asio/ip/tcp.hpp>

#include <nlohmann/json.hpp>

namespace sluice::ztunnel::proxy {

struct ConnectionLabels;  // metrics.h

// What one proxied connection did, written as one JSON line when it ends (DESIGN.md §7).
struct ConnectionRecord {
    // String literals only: a record lives as long as its connection (10k open connections
    // hold 10k records), so it holds no string of its own that is not needed.
    std::string_view
        direction;  // "outbound", "inbound" (HBONE), "inbound_plaintext", "passthrough"
    // Unset (all zero) until known; written as "" then.
    boost::asio::ip::tcp::endpoint src_addr, dst_addr, hbone_addr;
    // Workloads, namespaces, identities and the service are the connection's metric labels
    // (ConnectionLabels), not copied here: one copy per open connection.
    uint64_t bytes_sent = 0;      // towards the downstream (client)
    uint64_t bytes_received = 0;  // from the downstream
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::string_view result = "ok";  // "ok", "denied", "error", "closed_by_policy"
    bool same_node = false;          // carried by ztunnel's same-node fast path, not over HBONE
    // Why it was not ok is known only when the line is written: not kept here (AccessLog::write).

    nlohmann::json to_json(const ConnectionLabels& labels, std::string_view error = {}) const;
};

// Writes access-log lines to stdout ("-") or a file, one write per line so lines of
// concurrent connections never interleave.
class AccessLog {
  public:
    explicit AccessLog(const std::string& target);
    ~AccessLog();
    // `error`: why the connection was not ok (empty: no "error" field).
    void write(const ConnectionRecord& r, const ConnectionLabels& labels,
               std::string_view error = {});

    // Lines the target could not take when they were written (a full pipe or disk).
    uint64_t dropped() {
        std::lock_guard lock(mutex_);
        return dropped_;
    }

  private:
    std::mutex mutex_;
    int fd_ = 1;
    bool owned_ = false;
    uint64_t dropped_ = 0;
};

}  // namespace sluice::ztunnel::proxy
