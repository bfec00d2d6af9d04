#pragma once

#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

#include "sluice_abi.h"

namespace sluice::agent {

// "2026-11-26T21:00:00.123456Z" for a time on the realtime clock (ns since the epoch).
std::string rfc3339(uint64_t wall_ns);

// Who a deny event concerns, resolved by the agent from its enrollment table.
struct AuditContext {
    std::string pod;  // "ns/name" of the enrolled pod, or empty
    // The event is an open connection closed after a policy reload, not a refused attempt.
    bool closed_by_policy = false;
    uint64_t policy_generation = 0;  // with closed_by_policy: the generation that denies it
};

// One JSON line per policy denial (DESIGN.md §7): time, src, dst, port, proto, direction,
// rule, reason — appended to a file or written to stdout. Type "policy_denied" for a refused
// connection attempt, "connection_closed" for an open connection a policy reload closed.
class AuditLog {
  public:
    explicit AuditLog(const std::string& path);  // empty: stdout
    ~AuditLog();
    AuditLog(const AuditLog&) = delete;
    AuditLog& operator=(const AuditLog&) = delete;

    void write(const sluice_deny_event& e, const AuditContext& ctx);

    // The line for an event (no trailing newline); `wall_time_ns` is the event time on the
    // realtime clock.
    static std::string format(const sluice_deny_event& e, const AuditContext& ctx,
                              uint64_t wall_time_ns);

  private:
    std::mutex mu_;
    FILE* out_;
    bool owned_;
};

}  // namespace sluice::agent
