// A bounded, open-loop HTTP/1.1 load generator for bench/reload and bench/mesh: request i is due
// at t0 + i / rate; a pool of threads sends each on a new TCP connection (so every request goes
// through the datapath's connect() hook), or with --keep-alive on the thread's own persistent
// connection, and records when it started, how long it took and how it ended. Runs inside a
// testbed pod (`sluice-testbed exec`).
//   sluice-bench-http-load --target 198.18.1.2:8080 --rate 1000 --seconds 10 --out FILE
//                          [--stop-file F]   (stop early, once F exists; --seconds stays the bound)
//                          [--keep-alive]    (responses must carry Content-Length)
// FILE: one line per request, "start_unix_us latency_us late_us result" (result "ok" or what
// failed: "connect:EPERM", "recv:ETIMEDOUT", "status:503", …). A JSON summary goes to stdout.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Sample {
    int64_t start_unix_us = 0;
    int64_t latency_us = 0;
    int64_t late_us = 0;  // how long after its due time the request started (pool saturation)
    std::string result;
};

std::string errno_result(const char* step, int err) {
    const char* name = strerrorname_np(err);
    return std::string(step) + ":" + (name ? name : std::to_string(err));
}

// "ok" for an HTTP 200, else the status or what went wrong.
std::string status_result(std::string_view reply) {
    if (reply.starts_with("HTTP/1.1 200"))
        return "ok";
    if (reply.size() >= 12)
        return "status:" + std::string(reply.substr(9, 3));
    return "short-reply";
}

// A connected socket whose sends, receives and connect() give up after timeout_ms, or -errno.
int open_connection(const sockaddr_in& dst, int timeout_ms, std::string& result) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        result = errno_result("socket", errno);
        return -1;
    }
    timeval tv{.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);  // also bounds connect()
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&dst), sizeof dst) != 0) {
        result = errno_result("connect", errno);
        ::close(fd);
        return -1;
    }
    return fd;
}

bool send_all(int fd, std::string_view bytes) {
    return ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
}

// One request on a fresh connection; "ok" for an HTTP 200 read to the end.
std::string request(const sockaddr_in& dst, int timeout_ms) {
    std::string result;
    const int fd = open_connection(dst, timeout_ms, result);
    if (fd < 0)
        return result;
    if (!send_all(fd, "GET / HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n")) {
        result = errno_result("send", errno);
    } else {
        std::string reply;
        char buf[4096];
        for (;;) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n > 0) {
                reply.append(buf, static_cast<size_t>(n));
                continue;
            }
            if (n < 0)
                result = errno_result("recv", errno);
            break;
        }
        if (result.empty())
            result = status_result(reply);
    }
    ::close(fd);
    return result;
}

// Requests on one persistent connection, each response framed by its Content-Length (spelled so,
// as nginx does: this is a bench client, not a general HTTP parser). A failed
// request closes the connection; the next one opens a new connection.
class KeepAlive {
  public:
    KeepAlive(const sockaddr_in& dst, int timeout_ms) : dst_(dst), timeout_ms_(timeout_ms) {}
    KeepAlive(const KeepAlive&) = delete;
    KeepAlive& operator=(const KeepAlive&) = delete;
    ~KeepAlive() { reset(); }

    std::string request() {
        std::string result;
        if (fd_ < 0 && (fd_ = open_connection(dst_, timeout_ms_, result)) < 0)
            return result;
        if (!send_all(fd_, "GET / HTTP/1.1\r\nHost: server\r\n\r\n")) {
            result = errno_result("send", errno);
            reset();
            return result;
        }
        size_t head_end = std::string::npos;
        size_t total = std::string::npos;
        while (total == std::string::npos || reply_.size() < total) {
            char buf[4096];
            const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n <= 0) {
                result = n < 0 ? errno_result("recv", errno) : "closed";
                reset();
                return result;
            }
            reply_.append(buf, static_cast<size_t>(n));
            if (head_end == std::string::npos &&
                (head_end = reply_.find("\r\n\r\n")) != std::string::npos) {
                const size_t at = reply_.find("Content-Length: ");
                if (at == std::string::npos || at > head_end) {
                    reset();
                    return "no-content-length";
                }
                total = head_end + 4 + std::stoul(reply_.substr(at + 16));
            }
        }
        result = status_result(reply_);
        reply_.erase(0, total);
        return result;
    }

  private:
    void reset() {
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
        reply_.clear();
    }

    sockaddr_in dst_;
    int timeout_ms_;
    int fd_ = -1;
    std::string reply_;
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"open-loop HTTP load, one connection per request or per thread"};
    std::string target, out_path;
    int rate = 1000, seconds = 10, threads = 32, timeout_ms = 2000;
    app.add_option("--target", target, "IPv4 address:port")->required();
    app.add_option("--rate", rate, "requests per second")->check(CLI::Range(1, 20000));
    app.add_option("--seconds", seconds, "duration")->check(CLI::Range(1, 120));
    app.add_option("--threads", threads, "concurrent requests at most")->check(CLI::Range(1, 256));
    app.add_option("--timeout-ms", timeout_ms, "per connect/send/recv")
        ->check(CLI::Range(1, 30000));
    app.add_option("--out", out_path, "per-request samples")->required();
    std::string stop_file;
    app.add_option("--stop-file", stop_file, "stop sending once this file exists");
    bool keep_alive = false;
    app.add_flag("--keep-alive", keep_alive, "one persistent connection per thread");
    CLI11_PARSE(app, argc, argv);

    const auto colon = target.rfind(':');
    sockaddr_in dst{};
    dst.sin_family = AF_INET;
    if (colon == std::string::npos ||
        ::inet_pton(AF_INET, target.substr(0, colon).c_str(), &dst.sin_addr) != 1) {
        std::cerr << "--target must be IPv4:port\n";
        return 2;
    }
    dst.sin_port = htons(static_cast<uint16_t>(std::stoi(target.substr(colon + 1))));

    std::atomic<int64_t> total = static_cast<int64_t>(rate) * seconds;
    std::vector<Sample> samples(static_cast<size_t>(total.load()));
    std::atomic<int64_t> next{0};
    const auto t0 = Clock::now() + std::chrono::milliseconds(50);
    const auto wall0 = std::chrono::system_clock::now() + std::chrono::milliseconds(50);
    auto worker = [&] {
        // Start each request at its due time, not up to the default 50 µs timer slack after it
        // (late_us; bench/mesh counts latency from the due time).
        ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
        KeepAlive connection(dst, timeout_ms);
        for (;;) {
            const int64_t i = next.fetch_add(1);
            if (i >= total)
                return;
            const auto due = t0 + std::chrono::microseconds(i * 1'000'000 / rate);
            std::this_thread::sleep_until(due);
            const auto start = Clock::now();
            Sample& s = samples[static_cast<size_t>(i)];
            s.result = keep_alive ? connection.request() : request(dst, timeout_ms);
            const auto end = Clock::now();
            s.latency_us =
                std::chrono::duration_cast<std::chrono::microseconds>(end - start).count();
            s.late_us = std::chrono::duration_cast<std::chrono::microseconds>(start - due).count();
            s.start_unix_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                  (wall0 + (start - t0)).time_since_epoch())
                                  .count();
        }
    };
    std::atomic<bool> done{false};
    std::thread stopper([&] {
        while (!done && !stop_file.empty()) {
            if (::access(stop_file.c_str(), F_OK) == 0) {
                // Requests not handed out yet are never sent; those in flight finish.
                int64_t cut = next.load();
                while (!next.compare_exchange_weak(cut, cut + total.load()))
                    ;
                total = std::min(cut, total.load());
                return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    });
    std::vector<std::thread> pool;
    for (int i = 0; i < threads; ++i)
        pool.emplace_back(worker);
    for (auto& t : pool)
        t.join();
    done = true;
    stopper.join();
    samples.resize(static_cast<size_t>(total.load()));
    const double took = std::chrono::duration<double>(Clock::now() - t0).count();

    std::ofstream out(out_path, std::ios::trunc);
    std::map<std::string, int64_t> failures;
    int64_t ok = 0;
    for (const auto& s : samples) {
        out << s.start_unix_us << ' ' << s.latency_us << ' ' << s.late_us << ' ' << s.result
            << '\n';
        if (s.result == "ok")
            ++ok;
        else
            ++failures[s.result];
    }
    nlohmann::json summary{{"sent", total.load()},
                           {"ok", ok},
                           {"failed", total.load() - ok},
                           {"failures", failures},
                           {"seconds", took}};
    std::cout << summary.dump() << "\n";
    return ok == total ? 0 : 1;
}
