#include "agent/datapath/libbpf_log.h"

#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace sluice::datapath {
namespace {

thread_local std::string* t_capture = nullptr;

int print_libbpf(enum libbpf_print_level level, const char* format, va_list args) {
    if (level == LIBBPF_DEBUG)
        return 0;
    char buf[4096];
    int n = std::vsnprintf(buf, sizeof buf, format, args);
    if (n < 0)
        return 0;
    std::string_view line(buf, std::min<size_t>(static_cast<size_t>(n), sizeof buf - 1));
    if (t_capture != nullptr) {
        t_capture->append(line);
    } else if (level == LIBBPF_WARN) {
        while (!line.empty() && line.back() == '\n')
            line.remove_suffix(1);
        spdlog::warn("libbpf: {}", line);
    }
    return n;
}

}  // namespace

void install_libbpf_logger() {
    static std::once_flag once;
    std::call_once(once, [] { libbpf_set_print(print_libbpf); });
}

Error load_error(const std::string& object, int err, const std::string& log) {
    std::string tail =
        log.size() > kMaxLogInError ? "…" + log.substr(log.size() - kMaxLogInError) : log;
    std::string why = std::strerror(err < 0 ? -err : err);
    // libbpf frames the kernel's verifier output with this marker.
    if (log.find("BEGIN PROG LOAD LOG") != std::string::npos) {
        return {Errc::VerifierRejected,
                "the kernel verifier rejected " + object + " (" + why + "); libbpf log:\n" + tail};
    }
    return {Errc::LoadFailed, "loading " + object + " failed (" + why + "); libbpf log:\n" + tail};
}

LibbpfLogCapture::LibbpfLogCapture() : previous_(t_capture) {
    install_libbpf_logger();
    t_capture = &text_;
}

LibbpfLogCapture::~LibbpfLogCapture() {
    t_capture = previous_;
}

}  // namespace sluice::datapath
