#include "agent/audit.h"

#include <netinet/in.h>
#include <time.h>

#include <fmt/format.h>
#include <cstring>
#include <nlohmann/json.hpp>

#include "agent/datapath/address.h"
#include "agent/datapath/datapath.h"

namespace sluice::agent {
namespace {

std::string address(const sluice_u8 (&bytes)[16]) {
    datapath::IpAddress a;
    std::memcpy(a.bytes.data(), bytes, 16);
    return a.to_string();
}

const char* proto_name(uint8_t proto) {
    switch (proto) {
        case IPPROTO_TCP:
            return "TCP";
        case IPPROTO_UDP:
            return "UDP";
        default:
            return "other";
    }
}

// Monotonic (bpf_ktime_get_ns) → realtime, by the current offset between the clocks.
uint64_t to_wall_ns(uint64_t monotonic_ns) {
    timespec mono{}, real{};
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    const int64_t offset =
        (real.tv_sec - mono.tv_sec) * 1'000'000'000LL + (real.tv_nsec - mono.tv_nsec);
    return static_cast<uint64_t>(static_cast<int64_t>(monotonic_ns) + offset);
}

}  // namespace

std::string rfc3339(uint64_t wall_ns) {
    time_t secs = static_cast<time_t>(wall_ns / 1'000'000'000ULL);
    tm utc{};
    gmtime_r(&secs, &utc);
    char buf[32];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &utc);
    return fmt::format("{}.{:06d}Z", buf, (wall_ns / 1000) % 1'000'000);
}

AuditLog::AuditLog(const std::string& path) {
    if (path.empty()) {
        out_ = stdout;
        owned_ = false;
        return;
    }
    out_ = std::fopen(path.c_str(), "ae");
    owned_ = out_ != nullptr;
    if (out_ == nullptr)
        out_ = stdout;
}

AuditLog::~AuditLog() {
    if (owned_)
        std::fclose(out_);
}

std::string AuditLog::format(const sluice_deny_event& e, const AuditContext& ctx,
                             uint64_t wall_time_ns) {
    nlohmann::json j{{"time", rfc3339(wall_time_ns)},
                     {"type", ctx.closed_by_policy ? "connection_closed" : "policy_denied"},
                     {"direction", e.direction == SLUICE_DIR_EGRESS ? "egress" : "ingress"},
                     {"src", address(e.src_addr)},
                     {"src_port", e.src_port},
                     {"dst", address(e.dst_addr)},
                     {"port", e.dst_port},
                     {"proto", proto_name(e.proto)},
                     {"rule", e.rule_id},
                     {"reason", datapath::reason_name(static_cast<sluice_reason>(e.reason))},
                     {"endpoint", e.endpoint_id},
                     {"peer_identity", e.peer_identity}};
    if (!ctx.pod.empty())
        j["pod"] = ctx.pod;
    if (ctx.closed_by_policy)
        j["policy_generation"] = ctx.policy_generation;
    return j.dump();
}

void AuditLog::write(const sluice_deny_event& e, const AuditContext& ctx) {
    const std::string line = format(e, ctx, to_wall_ns(e.time_ns));
    std::lock_guard lk(mu_);
    std::fprintf(out_, "%s\n", line.c_str());
    std::fflush(out_);
}

}  // namespace sluice::agent
