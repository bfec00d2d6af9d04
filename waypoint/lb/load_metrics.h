#pragma once

#include <memory>
#include <optional>
#include <string_view>

#include "waypoint/http/asio.h"

namespace sluice::waypoint {

class BackendPool;
struct Metrics;

// One scrape of a backend's Prometheus metrics, as vLLM names them.
struct LoadReport {
    double waiting = 0;   // vllm:num_requests_waiting, summed over its label sets (models)
    double kv_cache = 0;  // vllm:kv_cache_usage_perc (0..1), the highest of its label sets
};

// Reads a Prometheus text exposition; nullopt when neither family is in it (not a vLLM-style
// server, or the wrong path).
std::optional<LoadReport> parseVllmMetrics(std::string_view text);

// Scrapes every endpoint of `pool` every `metrics_interval` (GET `metrics_path` on the
// endpoint's address), stores the reports in the endpoints for the balancers and in the gauges
// sluice_backend_requests_waiting / sluice_backend_kv_cache_usage. Runs until its io_context
// stops or the pool is gone (a policy reload replaced it). A failed scrape leaves the last
// report, which goes stale after three intervals (at least 2 s).
awaitable<void> scrapeLoadMetrics(std::weak_ptr<BackendPool> pool, Metrics& metrics);

}  // namespace sluice::waypoint
