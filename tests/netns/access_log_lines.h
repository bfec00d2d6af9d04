#pragma once

// Reading a ztunnel access log (one JSON object per line) in the netns tests.
#include <chrono>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace sluice::testbed {

// The JSON lines of the access log at `path` that satisfy `match`.
inline std::vector<nlohmann::json> access_log_lines(
    const std::string& path, const std::function<bool(const nlohmann::json&)>& match) {
    std::vector<nlohmann::json> out;
    std::ifstream log(path);
    for (std::string line; std::getline(log, line);) {
        auto e = nlohmann::json::parse(line, nullptr, false);
        if (!e.is_discarded() && match(e))
            out.push_back(std::move(e));
    }
    return out;
}

// access_log_lines once at least `want` lines match, waiting up to 5 s: ztunnel writes a
// connection's line when it has seen the connection end, which can come after the test's own
// end of it (or after the client process exited).
inline std::vector<nlohmann::json> awaited_access_log_lines(
    const std::string& path, const std::function<bool(const nlohmann::json&)>& match,
    size_t want = 1) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    auto lines = access_log_lines(path, match);
    while (lines.size() < want && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        lines = access_log_lines(path, match);
    }
    return lines;
}

}  // namespace sluice::testbed
