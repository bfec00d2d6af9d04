#include "ztunnel/proxy/access_log.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
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
    // A description of our own (stdout reopened through /proc), so that it can be made
    // non-blocking without changing the stdout that other writers share.
    const std::string path = target.empty() || target == "-" ? "/proc/self/fd/1" : target;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0 && path == "/proc/self/fd/1") {
        fd_ = 1;  // a stdout that cannot be reopened (a socket): written as it is
        return;
    }
    if (fd_ < 0)
        throw std::runtime_error("cannot open access log " + target);
    owned_ = true;
    // A pipe nobody drains (a stalled log collector) must not stop the data path: a line that
    // does not fit now is dropped and counted.
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
}

AccessLog::~AccessLog() {
    if (owned_)
        ::close(fd_);
}

void AccessLog::write(const ConnectionRecord& r, const ConnectionLabels& labels,
                      std::string_view error) {
    const std::string line = r.to_json(labels, error).dump() + "\n";
    std::lock_guard lock(mutex_);
    // What a full pipe or disk cannot take is a dropped line, never a stall. A pipe takes a line
    // of up to PIPE_BUF bytes whole or not at all; a longer one may be cut, and is then ended
    // so that the next line stays a line of its own.
    const ssize_t n = ::write(fd_, line.data(), line.size());
    if (n == static_cast<ssize_t>(line.size()))
        return;
    if (n > 0) {  // a line longer than PIPE_BUF, cut: end it so the next one stays readable
        [[maybe_unused]] auto ended = ::write(fd_, "\n", 1);
    }
    if (dropped_++ % 1000 == 0)
        spdlog::warn("access log: {} line(s) dropped so far: its reader does not keep up",
                     dropped_);
}

}  // namespace sluice::ztunnel::proxy
