#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>
#include <vector>

#include "common/zds.h"
#include "ztunnel/hbone/pool.h"
#include "ztunnel/hbone/tls.h"
#include "ztunnel/proxy/access_log.h"
#include "ztunnel/proxy/config.h"
#include "ztunnel/proxy/inbound_connections.h"
#include "ztunnel/proxy/load_balancer.h"
#include "ztunnel/proxy/metrics.h"
#include "ztunnel/proxy/sockets.h"
#include "ztunnel/state/authz.h"
#include "ztunnel/state/registry.h"

namespace sluice::ztunnel::proxy {

// One data-path thread: its own io_context, its own HBONE client pool. A connection lives on
// one worker from accept to close, so nothing on the data path takes a lock.
struct Worker {
    asio::io_context io{1};
    std::unique_ptr<hbone::Pool> pool;
    std::thread thread;
    std::atomic<size_t> pool_connections{0}, pool_streams{0};
};

// A pod ztunnel serves: its listeners live in the pod's netns.
struct EnrolledWorkload {
    zds::WorkloadInfo info;
    identity::Identity id;
    std::vector<asio::ip::address> ips;
    int netns_fd = -1;         // owned; -1: ztunnel's own netns (sidecar mode)
    uint64_t netns_inode = 0;  // which netns netns_fd is, to recognise a re-sent AddWorkload
    int inbound_plaintext_fd = -1;
    std::vector<std::shared_ptr<tcp::acceptor>> acceptors;
    ~EnrolledWorkload();
};

class Proxy {
  public:
    Proxy(Config config, std::unique_ptr<state::RegistrySource> registry,
          std::unique_ptr<state::Authorizer> authorizer,
          std::shared_ptr<identity::CertManager> certs);
    ~Proxy();

    void start();  // worker threads
    // Opens 127.0.0.1:15001, :15006 and :15008 in the workload's netns (takes `netns_fd`).
    // Returns the :15006 listener fd (still owned by the proxy), for the agent's sk_lookup.
    // Listeners join a SO_REUSEPORT group, so another ztunnel can hold the same ports in the
    // same netns (takeover); tcp_migrate_req is set in the netns so connections queued on a
    // closing listener move to the other one. The same workload again (same info and netns) is
    // acked with the listener it already has, without touching the listeners.
    std::expected<int, std::string> add_workload(const zds::WorkloadInfo& info, int netns_fd);
    // Stops serving the workload; its identity's certificate and TLS contexts go too, unless
    // another enrolled workload (or `kept`, the identity of one replacing it) still has it.
    void remove_workload(const std::string& uid, const identity::Identity* kept = nullptr);
    std::vector<std::string> workload_uids() const;
    std::shared_ptr<EnrolledWorkload> find_workload(const std::string& uid) const;

    // Graceful: closes listeners, GOAWAY on every HBONE connection, lets streams finish.
    void drain();
    size_t active_connections() const { return active_connections_.load(); }
    void stop();  // stops the workers; call after drain() has run its course

    // Periodic housekeeping from the admin thread: registry/policy reload, gauges.
    void refresh();
    nlohmann::json config_dump() const;
    // HBONE connections of every worker (client pools and inbound), gathered on each worker's
    // own thread; called from the admin thread.
    nlohmann::json connections();

    // For the connection handlers (outbound.cpp, inbound.cpp, inbound_plaintext.cpp).
    const Config& config() const { return config_; }
    state::RegistryView& registry() { return registry_; }
    state::Authorizer& authorizer() { return *authorizer_; }
    hbone::TlsContexts& tls() { return tls_; }
    identity::CertManager& certs() { return *certs_; }
    Metrics& metrics() { return metrics_; }
    AccessLog& access_log() { return access_log_; }
    NetnsSockets& netns() { return netns_; }
    InboundConnections& inbound_connections() { return inbound_connections_; }
    LoadBalancer& load_balancer() { return load_balancer_; }
    // Counts a connection for drain(); the guard's destructor uncounts it.
    // Counts one open connection while it lives; moves with the connection's state.
    class ActiveGuard {
      public:
        explicit ActiveGuard(Proxy& p) : p_(&p) { ++p.active_connections_; }
        ActiveGuard(ActiveGuard&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
        ActiveGuard& operator=(ActiveGuard&&) = delete;
        ~ActiveGuard() {
            if (p_ != nullptr)
                --p_->active_connections_;
        }

      private:
        Proxy* p_;
    };
    void track_server_connection(Worker& w, std::shared_ptr<hbone::Connection> c);
    // The worker whose pool holds connections for `key`: one per key, so streams to one
    // destination share one HBONE connection whatever worker accepted them.
    Worker& worker_for(const hbone::PoolKey& key);

  private:
    // Drops the certificate and TLS contexts of `id` unless an enrolled workload has it.
    void forget_unused(const identity::Identity& id);
    asio::awaitable<std::expected<std::shared_ptr<hbone::Connection>, hbone::Failure>> dial(
        Worker& w, const hbone::PoolKey& key);
    void start_listener(std::shared_ptr<EnrolledWorkload> wl, int fd, size_t worker,
                        void (*serve)(Proxy&, std::shared_ptr<EnrolledWorkload>, Worker&,
                                      AcceptedFd));

    Config config_;
    state::RegistryView registry_;
    std::unique_ptr<state::Authorizer> authorizer_;
    std::shared_ptr<identity::CertManager> certs_;
    hbone::TlsContexts tls_;
    Metrics metrics_;
    AccessLog access_log_;
    NetnsSockets netns_;
    InboundConnections inbound_connections_;
    LoadBalancer load_balancer_;
    std::vector<std::unique_ptr<Worker>> workers_;
    size_t next_worker_ = 0;
    mutable std::mutex mutex_;
    std::map<std::string, std::shared_ptr<EnrolledWorkload>> workloads_;
    std::atomic<size_t> active_connections_{0};
    size_t connections_high_water_ = 0;  // admin thread: most open since the last malloc_trim
    std::atomic<bool> draining_{false};
    // Server-side HBONE connections, per worker, to send GOAWAY on drain.
    std::map<Worker*, std::vector<std::weak_ptr<hbone::Connection>>> server_connections_;
};

// Connection handlers, one file each.
// Each runs on `w` with a connection accepted for it (see AcceptedFd).
void serve_outbound(Proxy& p, std::shared_ptr<EnrolledWorkload> src, Worker& w, AcceptedFd c);
void serve_hbone(Proxy& p, std::shared_ptr<EnrolledWorkload> dst, Worker& w, AcceptedFd c);
void serve_inbound_plaintext(Proxy& p, std::shared_ptr<EnrolledWorkload> dst, Worker& w,
                             AcceptedFd c);
// After a policy refresh: authorizes every open inbound connection again and closes the ones now
// denied (inbound.cpp). Returns how many it closes.
size_t close_denied_inbound(Proxy& p);

// Opens a marked socket in `wl`'s netns and connects it to `to` within a timeout; with `source`
// the connection keeps that client address (IP_TRANSPARENT).
asio::awaitable<std::expected<WorkerSocket, std::string>> connect_from(
    Proxy& p, const EnrolledWorkload& wl, Worker& w, const tcp::endpoint& to,
    std::optional<asio::ip::address> source, bool transparent);

}  // namespace sluice::ztunnel::proxy
