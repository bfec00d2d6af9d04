#pragma once

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "waypoint/admission/queue.h"
#include "waypoint/config.h"
#include "waypoint/filters/filter.h"
#include "waypoint/filters/route/filter.h"
#include "waypoint/hbone/listener.h"
#include "waypoint/http/h2_server.h"
#include "waypoint/http/server.h"
#include "waypoint/http/tls_server.h"
#include "waypoint/http/upstream.h"
#include "waypoint/lb/pool.h"
#include "waypoint/metrics.h"

namespace sluice::policies {
class PolicyWatcher;
}

namespace sluice::waypoint {

namespace budget {
class BudgetFilter;
}
class ClientWatch;

// The running waypoint: worker threads that each accept on the gateway port and proxy with
// their own upstream connection pool, the shared filter chain, and an admin thread for
// :15020/metrics and :15021/healthz/ready.
class Gateway {
  public:
    explicit Gateway(Config config);  // throws on a config the filters cannot build from
    ~Gateway();

    void start();  // binds every listener (throws if one cannot bind), then starts threads
    // Closes the listeners, sends GOAWAY to every h2c connection and waits up to
    // limits.drainTimeout for their streams in flight, then stops the threads; idempotent.
    void stop();

    unsigned short gatewayPort() const { return gateway_port_; }
    unsigned short tlsPort() const { return tls_port_; }      // 0: no TLS listener
    unsigned short hbonePort() const { return hbone_port_; }  // 0: no HBONE listener
    unsigned short metricsPort() const { return metrics_port_; }
    unsigned short readyPort() const { return ready_port_; }
    Metrics& metrics() { return metrics_; }

    // Merges a policies-folder view (CompiledPolicy::waypoint) into the config and swaps the
    // budget and route filters' configuration. On a bad view it logs, counts a failed reload
    // and keeps what runs. The policy watcher calls it on every new generation.
    bool applyPolicies(const nlohmann::json& view);

  private:
    struct Worker {
        asio::io_context io{1};
        H2Connections h2{io.get_executor()};  // plain and in-HBONE h2c connections
        std::unique_ptr<tcp::acceptor> acceptor;
        std::unique_ptr<UpstreamPool> upstream;
        Handler handler;                              // proxies with this worker's upstream pool
        std::unique_ptr<tcp::acceptor> tls_acceptor;  // null: no TLS listener
        std::unique_ptr<tcp::acceptor> hbone_acceptor;
        std::unique_ptr<HboneServer> hbone;
        std::thread thread;
    };

    void drainWorkers();  // stop(): listeners closed, GOAWAYs, streams in flight finish
    awaitable<void> handle(Exchange& ex, UpstreamPool& upstream);
    // Runs the attempts, replies, then completes the request (filters' onComplete, metrics, log).
    // The client is watched throughout, so a client that goes away closes the upstream
    // connection in use (`upstream_socket`).
    awaitable<void> route(Exchange& ex, RequestContext& ctx, FilterSettlement& settlement,
                          UpstreamPool& upstream);
    awaitable<void> tryTargets(Exchange& ex, RequestContext& ctx, FilterSettlement& settlement,
                               UpstreamPool& upstream, const ClientWatch& watch,
                               tcp::socket*& upstream_socket);
    awaitable<void> reply(Exchange& ex, RequestContext& ctx, const LocalReply& reply);
    void record(const RequestContext& ctx);
    // The metrics record() updates for one kind of request, resolved once per kind (below).
    struct RequestMetrics {
        prometheus::Histogram* duration = nullptr;
        prometheus::Counter* requests = nullptr;
        std::array<prometheus::Histogram*, 2> token_usage{};  // input, output
        std::array<prometheus::Counter*, 2> tokens{};
        prometheus::Histogram* operation = nullptr;
        prometheus::Histogram* ttft = nullptr;
        prometheus::Histogram* tpot = nullptr;
    };
    // What record() needs of a request's metrics, each resolved on first use.
    struct MetricsWanted {
        bool tokens = false;  // a GenAI request that succeeded
        bool output = false;  // with output tokens (not embeddings)
        bool ttft = false;
        bool tpot = false;
    };
    RequestMetrics requestMetrics(const RequestContext& ctx, std::string_view code,
                                  std::string_view principal, std::string_view operation,
                                  MetricsWanted wanted);
    admission::Priority priorityOf(const RequestContext& ctx) const;
    // Waits for an admission slot; on a shed, answers 503, completes the request (settles and
    // records it) and returns an empty slot.
    awaitable<std::optional<admission::AdmissionQueue::Slot>> admit(Exchange& ex,
                                                                    RequestContext& ctx,
                                                                    FilterSettlement& settlement);
    std::string modelsList() const;
    // Starts scraping the pool's backends' load reports on the admin thread, if it has
    // `loadMetrics`; the scraper ends when the pool is replaced or gone.
    void scrapeLoad(const std::shared_ptr<BackendPool>& pool);
    void startHbone();  // binds each worker's HBONE acceptor (SO_REUSEPORT, one port)
    void startTls();    // binds each worker's TLS acceptor, starts the certificate reloads
    // Checks the TLS listener's files every reload interval (admin thread).
    awaitable<void> reloadTlsLoop();
    void publishTlsExpiry();  // the served certificate's expiry into the metrics

    Config config_;
    Metrics metrics_;
    // record()'s metric pointers per (status, route, peer, model, operation, tenant): one lookup
    // per request instead of one label-set lookup (key, lock, hash) per metric. A pointer is
    // filled the first time a request needs it, so a series appears in /metrics when it did
    // before (a TTFT histogram only once a stream had a first token). Cleared when it holds
    // kMaxRequestMetrics kinds (the metrics stay; only the shortcut is forgotten).
    static constexpr std::size_t kMaxRequestMetrics = 4096;
    std::mutex request_metrics_mutex_;
    std::unordered_map<std::string, RequestMetrics> request_metrics_;
    std::mutex pools_mutex_;  // pools_ is replaced by applyPolicies (watcher thread)
    std::map<std::string, std::shared_ptr<BackendPool>> pools_;
    bool scraping_ = false;  // under pools_mutex_: start() has started the scrapers
    budget::BudgetFilter* budget_ = nullptr;
    std::unique_ptr<policies::PolicyWatcher> watcher_;
    std::vector<std::unique_ptr<HttpFilter>> owned_filters_;
    std::vector<HttpFilter*> filters_;
    route::RouteFilter* router_ = nullptr;
    std::unique_ptr<admission::AdmissionQueue> admission_;  // null: no admission control

    // HBONE: the waypoint's own identity and its TLS contexts (certificate minted from the CA).
    std::optional<identity::Identity> identity_;
    std::unique_ptr<hbone::TlsContexts> tls_;
    // The TLS gateway listener's certificate (null: no TLS listener).
    std::unique_ptr<GatewayTlsContext> gateway_tls_;
    TlsHandshakeResult tls_result_;

    std::vector<std::unique_ptr<Worker>> workers_;
    asio::io_context admin_io_{1};
    std::unique_ptr<tcp::acceptor> metrics_acceptor_, ready_acceptor_;
    ServerLimits admin_limits_{.max_body_bytes = 4096};
    Handler metrics_handler_, ready_handler_;
    std::thread admin_thread_;
    std::atomic<bool> ready_{false};
    unsigned short gateway_port_ = 0, tls_port_ = 0, hbone_port_ = 0, metrics_port_ = 0,
                   ready_port_ = 0;
};

// "ip:port" or "[v6]:port" → endpoint; throws std::invalid_argument.
tcp::endpoint parseListen(const std::string& text);

// W3C trace context: keeps a valid incoming trace id with a new span id, else starts a trace.
std::string nextTraceparent(std::string_view incoming);

}  // namespace sluice::waypoint
