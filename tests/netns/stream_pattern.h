#pragma once

// Helpers of the ztunnel netns tests: Prometheus text lookups and a checkable byte stream.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <future>
#include <sstream>
#include <string>
#include <vector>

#include "common/fd_io.h"

namespace sluice::testbed {

// Sum of the samples of `family` whose label set contains every `labels` entry (k="v").
inline double metric(const std::string& text, const std::string& family,
                     const std::vector<std::string>& labels) {
    double sum = 0;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (!line.starts_with(family + "{") && !line.starts_with(family + " "))
            continue;
        bool all = true;
        for (const auto& l : labels)
            all &= line.find(l) != std::string::npos;
        if (all)
            sum += std::stod(line.substr(line.rfind(' ') + 1));
    }
    return sum;
}

// A deterministic byte stream, so a receiver can check every byte without keeping a copy.
inline char pattern_byte(uint64_t i, uint8_t seed) {
    return static_cast<char>(((i * 2654435761u) >> 11) ^ (i >> 20) ^ seed);
}

// Sends `n` pattern bytes; false when the peer stalls for `timeout_ms` or goes away.
inline bool send_pattern(int fd, uint64_t n, uint8_t seed, int timeout_ms) {
    char buf[65536];
    for (uint64_t off = 0; off < n;) {
        const size_t len = static_cast<size_t>(std::min<uint64_t>(sizeof buf, n - off));
        for (size_t i = 0; i < len; ++i)
            buf[i] = pattern_byte(off + i, seed);
        if (!sluice::send_all(fd, std::string_view(buf, len), timeout_ms))
            return false;
        off += len;
    }
    return true;
}

// Reads until EOF: how many leading bytes followed the pattern, and what came after the first
// `n` bytes (or after the first wrong byte).
struct PatternRead {
    uint64_t matched = 0;
    std::string rest;
    bool eof = false;
};
inline PatternRead receive_pattern(int fd, uint64_t n, uint8_t seed, int timeout_ms) {
    PatternRead r;
    bool broken = false;
    char buf[65536];
    while (sluice::wait_fd(fd, POLLIN, timeout_ms)) {
        const ssize_t got = ::recv(fd, buf, sizeof buf, 0);
        if (got < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (got <= 0) {
            r.eof = got == 0;
            break;
        }
        for (ssize_t i = 0; i < got; ++i) {
            if (!broken && r.matched < n && buf[i] == pattern_byte(r.matched, seed))
                ++r.matched;
            else if (r.rest.size() < 4096)
                broken = true, r.rest.push_back(buf[i]);
        }
    }
    return r;
}

// Both ways at once with a half-close, as an app server and its client do it.
// The server: streams `n` pattern bytes (seed 0x5a) while it reads the client's `n` (seed 0xa5)
// up to EOF, then sends "\n" + what it read ("<n> eof") and returns that report.
inline std::string serve_both_ways(int fd, uint64_t n) {
    auto sender = std::async(std::launch::async, [&] { return send_pattern(fd, n, 0x5a, 30000); });
    PatternRead in = receive_pattern(fd, n, 0xa5, 30000);
    const bool sent = sender.get();
    const std::string report = std::to_string(in.matched) + (in.eof ? " eof" : " no-eof") +
                               (in.rest.empty() ? "" : " +" + std::to_string(in.rest.size()));
    if (!sent || !sluice::send_all(fd, "\n" + report, 5000))
        return "send failed after " + report;
    return report;
}

// The client: sends `n` bytes and half-closes while it reads the server's `n` and its report.
struct BothWays {
    bool sent = false;
    PatternRead in;
};
inline BothWays exchange_both_ways(int fd, uint64_t n) {
    auto sender = std::async(std::launch::async, [&] {
        const bool ok = send_pattern(fd, n, 0xa5, 30000);
        ::shutdown(fd, SHUT_WR);
        return ok;
    });
    BothWays r;
    r.in = receive_pattern(fd, n, 0x5a, 30000);
    r.sent = sender.get();
    return r;
}

// Checks both ends of exchange_both_ways/serve_both_ways: every byte each way, the half-close
// seen by the server, its report after it, and the final EOF. Returns the report's text.
inline std::string expect_both_ways(const BothWays& client, std::future<std::string>& server,
                                    uint64_t n) {
    const std::string expected = std::to_string(n) + " eof";
    EXPECT_TRUE(client.sent);
    EXPECT_EQ(server.get(), expected);
    EXPECT_EQ(client.in.matched, n) << "server-to-client bytes were lost or changed";
    EXPECT_EQ(client.in.rest, "\n" + expected)
        << "the app's report after the client's half-close did not arrive";
    EXPECT_TRUE(client.in.eof);
    return expected;
}

}  // namespace sluice::testbed
