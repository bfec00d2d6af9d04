#include "ztunnel/proxy/access_log.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
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
    if (target.empty() || target == "-") {
        // A pipe (a container's stdout, a log collector) gets a description of its own,
        // reopened through /proc, that can be non-blocking without changing the stdout others
        // share. A file or terminal stays fd 1 as it is: a second description of a regular
        // file would write at an offset of its own, over what stderr writes through the first.
        struct stat st {};
        if (::fstat(1, &st) != 0 || !S_ISFIFO(st.st_mode))
            return;
        // Non-blocking from the open: a pipe whose reader is gone fails (ENXIO) instead of
        // waiting for one; then fd 1 is written as it is.
        fd_ = ::open("/proc/self/fd/1", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd_ < 0) {
            fd_ = 1;
            return;
        }
        owned_ = true;
        return;
    }
    fd_ = ::open(target.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd_ < 0)
        throw std::runtime_error("cannot open access log " + target + ": " + strerror(errno));
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
