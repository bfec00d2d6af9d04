#include "ztunnel/proxy/access_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <stdexcept>

#include "ztunnel/identity/ca.h"
#include "ztunnel/proxy/metrics.h"
#include "ztunnel/proxy/sockets.h"

namespace sluice::ztunnel::proxy {

namespace {

std::string address(const boost::asio::ip::tcp::endpoint& ep) {
    return ep == boost::asio::ip::tcp::endpoint{} ? std::string() : to_string(ep);
}

}  // namespace

nlohmann::json ConnectionRecord::to_json(const ConnectionLabels& l, std::string_view error) const {
    const auto elapsed = std::chrono::steady_clock::now() - start;
    nlohmann::json j{
        {"time", identity::format_time(std::chrono::system_clock::now())},
        {"kind", "access"},
        {"direction", direction},
        {"src.addr", address(src_addr)},
        {"src.workload", l.source_workload},
        {"src.namespace", l.source_workload_namespace},
        {"src.identity", l.source_principal},
        {"dst.addr", address(dst_addr)},
        {"dst.hbone_addr", address(hbone_addr)},
        {"dst.workload", l.destination_workload},
        {"dst.namespace", l.destination_workload_namespace},
        {"dst.identity", l.destination_principal},
        {"dst.service", l.destination_service},
        {"bytes_sent", bytes_sent},
        {"bytes_received", bytes_received},
        {"duration_ms", std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()},
        {"result", result},
    };
    if (!error.empty())
        j["error"] = error;
    if (!l.destination_waypoint.empty())
        j["waypoint"] = l.destination_waypoint;
    if (same_node)
        j["same_node"] = true;
    return j;
}

AccessLog::AccessLog(const std::string& target) {
    if (target.empty() || target == "-")
        return;
    fd_ = ::open(target.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0)
        throw std::runtime_error("cannot open access log " + target);
    owned_ = true;
}

AccessLog::~AccessLog() {
    if (owned_)
        ::close(fd_);
}

void AccessLog::write(const ConnectionRecord& r, const ConnectionLabels& labels,
                      std::string_view error) {
    const std::string line = r.to_json(labels, error).dump() + "\n";
    std::lock_guard lock(mutex_);
    // Best effort: a full disk must not stall the data path.
    [[maybe_unused]] auto n = ::write(fd_, line.data(), line.size());
}

}  // namespace sluice::ztunnel::proxy
