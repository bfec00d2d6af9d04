#include "waypoint/lb/load_metrics.h"

#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>

#include "waypoint/lb/pool.h"
#include "waypoint/metrics.h"

namespace sluice::waypoint {
namespace {

using Clock = std::chrono::steady_clock;

// The sample value of a `name{labels} value [timestamp]` line when its metric name is `name`.
std::optional<double> sampleOf(std::string_view line, std::string_view name) {
    if (!line.starts_with(name))
        return std::nullopt;
    line.remove_prefix(name.size());
    if (!line.empty() && line.front() == '{') {
        const auto close = line.find('}');
        if (close == std::string_view::npos)
            return std::nullopt;
        line.remove_prefix(close + 1);
    } else if (line.empty() || line.front() != ' ') {
        return std::nullopt;  // a longer name with this prefix
    }
    while (!line.empty() && line.front() == ' ')
        line.remove_prefix(1);
    double value = 0;
    const auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), value);
    if (ec != std::errc() || end == line.data() || !std::isfinite(value))
        return std::nullopt;  // NaN / ±Inf would poison every comparison
    return value;
}

awaitable<std::optional<std::string>> httpGet(const tcp::endpoint& at, const std::string& path,
                                              std::chrono::milliseconds timeout) {
    beast::tcp_stream stream(co_await asio::this_coro::executor);
    stream.expires_after(timeout);
    error_code ec;
    co_await stream.async_connect(at, noThrow(ec));
    if (ec)
        co_return std::nullopt;
    http::request<http::empty_body> req{http::verb::get, path, 11};
    req.set(http::field::host, at.address().to_string());
    req.set(http::field::connection, "close");
    co_await http::async_write(stream, req, noThrow(ec));
    if (ec)
        co_return std::nullopt;
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(4 << 20);
    co_await http::async_read(stream, buffer, parser, noThrow(ec));
    if (ec || parser.get().result() != http::status::ok)
        co_return std::nullopt;
    co_return std::move(parser.get().body());
}

}  // namespace

std::optional<LoadReport> parseVllmMetrics(std::string_view text) {
    LoadReport r;
    bool seen = false;
    while (!text.empty()) {
        const auto eol = text.find('\n');
        std::string_view line = text.substr(0, eol);
        text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
        if (auto v = sampleOf(line, "vllm:num_requests_waiting")) {
            r.waiting += *v;
            seen = true;
        } else if (auto kv = sampleOf(line, "vllm:kv_cache_usage_perc")) {
            r.kv_cache = std::max(r.kv_cache, *kv);
            seen = true;
        }
    }
    if (!seen)
        return std::nullopt;
    return r;
}

awaitable<void> scrapeLoadMetrics(std::weak_ptr<BackendPool> weak, Metrics& metrics) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (;;) {
        std::shared_ptr<BackendPool> held = weak.lock();
        if (!held)
            co_return;  // replaced by a reload: the new pool has its own scraper
        BackendPool& pool = *held;
        const auto& config = pool.config();
        const auto round = Clock::now();
        // A round of timeouts takes about one interval (at least 200 ms per endpoint), so
        // healthy endpoints' reports do not go stale behind unreachable ones.
        const auto per_endpoint = std::max<std::chrono::milliseconds>(
            config.metrics_interval / std::max<std::size_t>(1, pool.size()),
            std::chrono::milliseconds(200));
        for (std::size_t i = 0; i < pool.size(); ++i) {
            Endpoint& ep = pool.endpoint(i);
            auto text = co_await httpGet(ep.address, config.metrics_path, per_endpoint);
            auto report = text ? parseVllmMetrics(*text) : std::nullopt;
            if (!report)
                continue;
            ep.queue_waiting.store(report->waiting, std::memory_order_relaxed);
            ep.kv_cache_usage.store(report->kv_cache, std::memory_order_relaxed);
            ep.load_at_ns.store(std::chrono::nanoseconds(Clock::now().time_since_epoch()).count(),
                                std::memory_order_relaxed);
            metrics.backend_waiting.at({{"pool", config.name}, {"endpoint", ep.name}})
                .Set(report->waiting);
            metrics.backend_kv_cache.at({{"pool", config.name}, {"endpoint", ep.name}})
                .Set(report->kv_cache);
        }
        timer.expires_at(round + config.metrics_interval);
        held.reset();  // a pool replaced during the wait is freed now, not a round later
        error_code ec;
        co_await timer.async_wait(noThrow(ec));
        if (ec)
            co_return;
    }
}

}  // namespace sluice::waypoint
