#include "ztunnel/proxy/proxy.h"

#include <malloc.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>

#include <future>

#include "common/event_loop.h"
#include "ztunnel/hbone/event.h"
#include "ztunnel/hbone/handshake.h"

namespace sluice::ztunnel::proxy {
namespace {

constexpr auto kConnectTimeout = std::chrono::seconds(5);
constexpr auto kGaugePeriod = std::chrono::seconds(1);
constexpr size_t kTrimAfterClosed = 1000;

// Connections accepted in a row before the loop lets the listener's worker run other work.
constexpr int kAcceptsPerTurn = 64;

// Accepts with accept4() itself, not Asio's accept: a connection is handed on as a bare
// descriptor (AcceptedFd) and registered only with the worker that serves it.
asio::awaitable<void> accept_loop(Proxy& p, std::shared_ptr<EnrolledWorkload> wl,
                                  std::shared_ptr<tcp::acceptor> acceptor,
                                  std::vector<std::unique_ptr<Worker>>& workers, size_t first,
                                  void (*serve)(Proxy&, std::shared_ptr<EnrolledWorkload>, Worker&,
                                                AcceptedFd)) {
    size_t next = first;
    boost::system::error_code protocol_ec;
    const tcp protocol = acceptor->local_endpoint(protocol_ec).protocol();
    for (;;) {
        boost::system::error_code ec;
        co_await acceptor->async_wait(tcp::acceptor::wait_read,
                                      asio::redirect_error(asio::use_awaitable, ec));
        if (ec == asio::error::operation_aborted || !acceptor->is_open())
            co_return;
        for (int i = 0; i < kAcceptsPerTurn && acceptor->is_open(); ++i) {
            const int fd = ::accept4(acceptor->native_handle(), nullptr, nullptr,
                                     SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0 && (errno == EINTR || errno == ECONNABORTED))
                continue;
            if (fd < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (fd < 0) {  // out of descriptors or memory: try again a little later
                spdlog::warn("accept on {} for {}: {}", to_string(acceptor->local_endpoint(ec)),
                             wl->info.name, strerror(errno));
                asio::steady_timer t(acceptor->get_executor(), std::chrono::milliseconds(100));
                co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                break;
            }
            // Connections spread over the workers even when one pod has all the traffic.
            Worker& w = *workers[next++ % workers.size()];
            asio::post(w.io, [&p, wl, &w, serve, c = AcceptedFd(fd, protocol)]() mutable {
                serve(p, wl, w, std::move(c));
            });
        }
    }
}

asio::awaitable<void> gauge_loop(Worker& w) {
    asio::steady_timer t(w.io);
    for (;;) {
        w.pool_connections = w.pool->connections();
        w.pool_streams = w.pool->streams();
        t.expires_after(kGaugePeriod);
        boost::system::error_code ec;
        co_await t.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (ec)
            co_return;
    }
}

}  // namespace

EnrolledWorkload::~EnrolledWorkload() {
    if (netns_fd >= 0)
        ::close(netns_fd);
}

Proxy::Proxy(Config config, std::unique_ptr<state::RegistrySource> registry,
             std::unique_ptr<state::Authorizer> authorizer,
             std::shared_ptr<identity::CertManager> certs)
    : config_(std::move(config)),
      registry_(std::move(registry)),
      authorizer_(std::move(authorizer)),
      certs_(std::move(certs)),
      tls_(certs_),
      access_log_(config_.access_log) {
    for (int i = 0; i < config_.workers; ++i) {
        auto w = std::make_unique<Worker>();
        Worker* raw = w.get();
        w->pool = std::make_unique<hbone::Pool>(
            w->io.get_executor(),
            [this, raw](const hbone::PoolKey& key) { return dial(*raw, key); },
            config_.pool_idle_timeout);
        server_connections_[raw];  // every key exists before threads start: no map races
        workers_.push_back(std::move(w));
    }
}

Proxy::~Proxy() {
    stop();
}

void Proxy::start() {
    for (auto& w : workers_) {
        w->pool->start_idle_sweep();
        asio::co_spawn(w->io, gauge_loop(*w), asio::detached);
        Worker* raw = w.get();
        w->thread = std::thread([raw, spin = config_.busy_poll] {
            auto guard = asio::make_work_guard(raw->io);
            run_event_loop(raw->io, spin);
        });
    }
}

void Proxy::stop() {
    for (auto& w : workers_) {
        w->io.stop();
        if (w->thread.joinable())
            w->thread.join();
    }
}

void Proxy::start_listener(std::shared_ptr<EnrolledWorkload> wl, int fd, size_t worker,
                           void (*serve)(Proxy&, std::shared_ptr<EnrolledWorkload>, Worker&,
                                         AcceptedFd)) {
    Worker& w = *workers_[worker % workers_.size()];
    boost::system::error_code ec;
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    auto acceptor = std::make_shared<tcp::acceptor>(w.io);
    acceptor->assign(ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, ec);
    wl->acceptors.push_back(acceptor);
    asio::co_spawn(w.io, accept_loop(*this, wl, acceptor, workers_, worker, serve), asio::detached);
}

std::expected<int, std::string> Proxy::add_workload(const zds::WorkloadInfo& info, int netns_fd) {
    auto wl = std::make_shared<EnrolledWorkload>();
    wl->info = info;
    wl->netns_fd = netns_fd;
    if (struct stat st{}; netns_fd >= 0 && ::fstat(netns_fd, &st) == 0)
        wl->netns_inode = st.st_ino;
    if (auto known = find_workload(info.uid);
        known && known->info == info && known->netns_inode == wl->netns_inode) {
        return known->inbound_plaintext_fd;  // `wl` closes the duplicate netns fd
    }
    wl->id = identity::Identity{config_.trust_domain, info.namespace_name,
                                info.service_account.empty() ? "default" : info.service_account};
    for (const auto& s : info.ips) {
        boost::system::error_code ec;
        auto ip = asio::ip::make_address(s, ec);
        if (ec)
            return std::unexpected("bad workload IP '" + s + "'");
        wl->ips.push_back(ip);
    }
    // Mint before listening: a pod is served only once its certificate exists.
    certs_->enroll(wl->id);
    if (auto cert = certs_->certificate(wl->id); !cert) {
        forget_unused(wl->id);  // refused again, unless a served pod has it
        return std::unexpected("certificate for " + wl->id.uri() + ": " + cert.error());
    }
    struct Spec {
        tcp::endpoint at;
        void (*serve)(Proxy&, std::shared_ptr<EnrolledWorkload>, Worker&, AcceptedFd);
    };
    const bool v6 = std::any_of(wl->ips.begin(), wl->ips.end(), [](auto& a) { return a.is_v6(); });
    // A waypoint pod terminates HBONE on :15008 itself; its outbound and other inbound are ours.
    // The Pod object exists before the runtime networks it, so a fresh read finds its labels.
    registry_.refresh();
    const state::Workload* reg = registry_.current()->workload(info.namespace_name, info.name);
    const bool hbone = reg == nullptr || !reg->waypoint;
    std::vector<Spec> specs = {
        {{asio::ip::make_address("127.0.0.1"), config_.outbound_port}, serve_outbound},
        {{asio::ip::address_v4::any(), config_.inbound_plaintext_port}, serve_inbound_plaintext},
    };
    if (hbone)
        specs.push_back({{asio::ip::address_v4::any(), config_.hbone_port}, serve_hbone});
    if (v6) {
        specs.push_back({{asio::ip::make_address("::1"), config_.outbound_port}, serve_outbound});
        if (hbone)
            specs.push_back({{asio::ip::address_v6::any(), config_.hbone_port}, serve_hbone});
        specs.push_back({{asio::ip::address_v6::any(), config_.inbound_plaintext_port},
                         serve_inbound_plaintext});
    }
    if (netns_fd >= 0) {
        // A listener that closes (drain) hands its queued connections to another listener of its
        // SO_REUSEPORT group instead of resetting them. Per netns (kernel >= 5.14).
        const int migrate = netns_.run_sync(netns_fd, [] { return enable_tcp_migrate_req(); });
        if (migrate < 0) {
            spdlog::warn(
                "net.ipv4.tcp_migrate_req in the netns of {}/{}: {}; a takeover may reset "
                "connections queued on the old listeners",
                info.namespace_name, info.name, strerror(-migrate));
        }
    }
    std::vector<int> fds;
    for (const auto& spec : specs) {
        int fd = netns_.run_sync(netns_fd, [at = spec.at] { return open_listener(at); });
        if (fd >= 0 && spec.serve == serve_hbone) {
            if (const int rc = keep_hbone_alive(fd); rc < 0) {
                ::close(fd);
                fd = rc;
            }
        }
        if (fd < 0) {
            for (int f : fds)
                ::close(f);
            forget_unused(wl->id);  // minted above for a workload that is not served
            return std::unexpected("listen on " + to_string(spec.at) + " in the netns of " +
                                   info.namespace_name + "/" + info.name + ": " + strerror(-fd));
        }
        fds.push_back(fd);
    }
    // Changed info or netns: the new listeners replace the old, and an identity the new one
    // keeps keeps its certificate.
    remove_workload(info.uid, &wl->id);
    wl->inbound_plaintext_fd = fds[1];
    for (size_t i = 0; i < specs.size(); ++i)
        start_listener(wl, fds[i], next_worker_++, specs[i].serve);
    spdlog::info("serving {}/{} ({}) as {}{}", info.namespace_name, info.name, info.uid,
                 wl->id.uri(), hbone ? "" : " (waypoint: its own :15008)");
    std::lock_guard lock(mutex_);
    workloads_[info.uid] = wl;
    metrics_.set_workloads(workloads_.size());
    return wl->inbound_plaintext_fd;
}

void Proxy::forget_unused(const identity::Identity& id) {
    {
        std::lock_guard lock(mutex_);
        for (const auto& [uid, other] : workloads_) {
            if (other->id == id)
                return;
        }
    }
    tls_.forget(id);  // its contexts and certificate
}

void Proxy::remove_workload(const std::string& uid, const identity::Identity* kept) {
    std::shared_ptr<EnrolledWorkload> wl;
    {
        std::lock_guard lock(mutex_);
        auto it = workloads_.find(uid);
        if (it == workloads_.end())
            return;
        wl = it->second;
        workloads_.erase(it);
        metrics_.set_workloads(workloads_.size());
    }
    for (auto& a : wl->acceptors) {
        asio::post(a->get_executor(), [a] {
            boost::system::error_code ec;
            a->close(ec);
        });
    }
    if (!(kept != nullptr && *kept == wl->id))
        forget_unused(wl->id);
    spdlog::info("stopped serving {}/{} ({})", wl->info.namespace_name, wl->info.name, uid);
}

std::vector<std::string> Proxy::workload_uids() const {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& [uid, wl] : workloads_)
        out.push_back(uid);
    return out;
}

std::shared_ptr<EnrolledWorkload> Proxy::find_workload(const std::string& uid) const {
    std::lock_guard lock(mutex_);
    auto it = workloads_.find(uid);
    return it == workloads_.end() ? nullptr : it->second;
}

void Proxy::track_server_connection(Worker& w, std::shared_ptr<hbone::Connection> c) {
    auto& list = server_connections_[&w];  // only touched on w's thread, and by drain() there
    std::erase_if(list, [](const auto& weak) { return weak.expired(); });
    list.push_back(c);
    if (draining_)
        c->drain();
}

Worker& Proxy::worker_for(const hbone::PoolKey& key) {
    const size_t h = std::hash<std::string>{}(key.source.uri() + "|" + key.destination.uri() + "|" +
                                              key.address + "|" + key.origin);
    return *workers_[h % workers_.size()];
}

void Proxy::drain() {
    if (draining_.exchange(true))
        return;
    spdlog::info("draining: listeners closed, GOAWAY on HBONE connections");
    for (const auto& uid : workload_uids()) {
        auto wl = find_workload(uid);
        for (auto& a : wl->acceptors) {
            asio::post(a->get_executor(), [a] {
                boost::system::error_code ec;
                a->close(ec);
            });
        }
    }
    for (auto& w : workers_) {
        Worker* raw = w.get();
        asio::post(raw->io, [this, raw] {
            raw->pool->drain();
            for (auto& weak : server_connections_[raw]) {
                if (auto c = weak.lock())
                    c->drain();
            }
        });
    }
}

void Proxy::refresh() {
    registry_.refresh();
    // After a burst of connections closed, give the freed heap back to the system: glibc keeps
    // it otherwise (10k closed connections left ~70 MiB resident).
    const size_t open = active_connections_.load();
    connections_high_water_ = std::max(connections_high_water_, open);
    if (connections_high_water_ >= open + kTrimAfterClosed) {
        ::malloc_trim(0);
        connections_high_water_ = open;
    }
    if (authorizer_->refresh())
        close_denied_inbound(*this);
    size_t conns = 0, streams = 0;
    for (auto& w : workers_) {
        conns += w->pool_connections;
        streams += w->pool_streams;
    }
    metrics_.set_pool(conns, streams);
    const auto now = std::chrono::system_clock::now();
    for (const auto& c : certs_->certificates()) {
        metrics_.set_cert_expiry(c->identity.uri(),
                                 std::chrono::duration<double>(c->not_after - now).count());
    }
    // Renew ahead of need: a workload's certificate is re-minted at half its lifetime even
    // when no new connection asks for it.
    for (const auto& uid : workload_uids()) {
        if (auto wl = find_workload(uid))
            (void)certs_->certificate(wl->id);
    }
}

nlohmann::json Proxy::config_dump() const {
    nlohmann::json j;
    j["mode"] = config_.mode == Mode::Node ? "node" : "sidecar";
    j["node"] = config_.node_name;
    j["trust_domain"] = config_.trust_domain;
    j["workers"] = config_.workers;
    j["draining"] = draining_.load();
    j["active_connections"] = active_connections_.load();
    j["enrolled"] = nlohmann::json::array();
    {
        std::lock_guard lock(mutex_);
        for (const auto& [uid, wl] : workloads_) {
            j["enrolled"].push_back({{"uid", uid},
                                     {"name", wl->info.name},
                                     {"namespace", wl->info.namespace_name},
                                     {"service_account", wl->info.service_account},
                                     {"identity", wl->id.uri()},
                                     {"ips", wl->info.ips}});
        }
    }
    auto snap = const_cast<state::RegistryView&>(registry_).current();
    j["workloads"] = nlohmann::json::array();
    for (const auto& w : snap->workloads()) {
        std::vector<std::string> ips;
        for (const auto& ip : w.ips)
            ips.push_back(ip.to_string());
        j["workloads"].push_back({{"name", w.name},
                                  {"namespace", w.namespace_name},
                                  {"service_account", w.service_account},
                                  {"node", w.node},
                                  {"ips", ips},
                                  {"ambient", w.ambient}});
    }
    j["services"] = nlohmann::json::array();
    for (const auto& s : snap->services()) {
        std::vector<std::string> vips, endpoints;
        for (const auto& ip : s.vips)
            vips.push_back(ip.to_string());
        for (const auto& e : s.endpoints)
            endpoints.push_back(e.ip.to_string() + (e.ready ? "" : " (not ready)"));
        nlohmann::json ports = nlohmann::json::array();
        for (const auto& p : s.ports)
            ports.push_back({{"name", p.name}, {"port", p.port}, {"targetPort", p.target_port}});
        j["services"].push_back({{"name", s.name},
                                 {"namespace", s.namespace_name},
                                 {"vips", vips},
                                 {"ports", ports},
                                 {"endpoints", endpoints},
                                 {"load_balancing", state::to_string(s.load_balancing)}});
    }
    j["policies"] = authorizer_->describe();
    j["certificates"] = nlohmann::json::array();
    const auto now = std::chrono::system_clock::now();
    for (const auto& c : certs_->certificates()) {
        j["certificates"].push_back(
            {{"identity", c->identity.uri()},
             {"not_before", identity::format_time(c->not_before)},
             {"not_after", identity::format_time(c->not_after)},
             {"expires_in_seconds",
              std::chrono::duration_cast<std::chrono::seconds>(c->not_after - now).count()},
             {"certificate", c->cert_pem}});
    }
    j["trust_bundle_roots"] = certs_->trust_bundle().size();
    return j;
}

nlohmann::json Proxy::connections() {
    nlohmann::json out{{"outbound", nlohmann::json::array()},
                       {"inbound", nlohmann::json::array()},
                       {"active_connections", active_connections_.load()}};
    for (size_t i = 0; i < workers_.size(); ++i) {
        Worker* w = workers_[i].get();
        std::promise<nlohmann::json> gathered;
        asio::post(w->io, [&, w, i] {
            nlohmann::json j{{"outbound", nlohmann::json::array()},
                             {"inbound", nlohmann::json::array()}};
            for (const auto& c : w->pool->describe()) {
                j["outbound"].push_back({{"worker", i},
                                         {"source", c.key.source.uri()},
                                         {"destination", c.key.destination.uri()},
                                         {"address", c.key.address},
                                         {"streams", c.streams},
                                         {"idle_seconds", c.idle_seconds}});
            }
            for (const auto& weak : server_connections_[w]) {
                if (auto c = weak.lock(); c && c->is_open()) {
                    j["inbound"].push_back({{"worker", i},
                                            {"peer", c->peer().uri()},
                                            {"remote", to_string(c->remote_endpoint())},
                                            {"streams", c->active_streams()}});
                }
            }
            gathered.set_value(std::move(j));
        });
        auto f = gathered.get_future();
        // A worker stuck for a second is itself worth reporting.
        if (f.wait_for(std::chrono::seconds(1)) != std::future_status::ready) {
            out["errors"].push_back("worker " + std::to_string(i) + " did not answer");
            // The lambda still references `gathered`: wait for it before it goes away.
            f.wait();
            continue;
        }
        auto j = f.get();
        for (auto& e : j["outbound"])
            out["outbound"].push_back(e);
        for (auto& e : j["inbound"])
            out["inbound"].push_back(e);
    }
    return out;
}

asio::awaitable<std::expected<std::shared_ptr<hbone::Connection>, hbone::Failure>> Proxy::dial(
    Worker& w, const hbone::PoolKey& key) {
    using hbone::Error;
    using hbone::Failure;
    auto src = find_workload(key.origin);
    if (!src)
        co_return std::unexpected(Failure{Error::ConnectFailed, "source workload left"});
    std::string host;
    uint16_t port = 0;
    split_host_port(key.address, host, port);
    boost::system::error_code ec;
    const tcp::endpoint to(asio::ip::make_address(host, ec), port);
    // The tunnel leaves from the source pod's netns with the pod's own address.
    std::optional<asio::ip::address> source;
    for (const auto& ip : src->ips) {
        if (ip.is_v6() == to.address().is_v6())
            source = ip;
    }
    auto sock = co_await connect_from(*this, *src, w, to, source, false);
    if (!sock)
        co_return std::unexpected(Failure{Error::ConnectFailed, sock.error()});
    if (const int rc = keep_hbone_alive(sock->native_handle()); rc < 0)
        co_return std::unexpected(
            Failure{Error::ConnectFailed, std::string("keepalive: ") + strerror(-rc)});
    auto ctx = tls_.client(key.source);
    if (!ctx)
        co_return std::unexpected(Failure{Error::HandshakeFailed, ctx.error()});
    auto conn = co_await hbone::handshake_client(std::move(*sock), **ctx, key.destination);
    if (!conn && conn.error().error == Error::PeerRejected)
        metrics_.handshake_failed(conn.error().detail.substr(0, conn.error().detail.find(':')));
    co_return conn;
}

asio::awaitable<std::expected<WorkerSocket, std::string>> connect_from(
    Proxy& p, const EnrolledWorkload& wl, Worker& w, const tcp::endpoint& to,
    std::optional<asio::ip::address> source, bool transparent) {
    const bool v6 = to.address().is_v6();
    std::function<int()> make = [v6, source, transparent] {
        return open_client_socket(v6, source, transparent);
    };
    const int fd = co_await p.netns().run(wl.netns_fd, make);
    if (fd < 0)
        co_return std::unexpected(std::string("socket: ") + strerror(-fd));
    WorkerSocket s(w.io);
    boost::system::error_code ec;
    s.assign(v6 ? tcp::v6() : tcp::v4(), fd, ec);
    if (ec) {
        ::close(fd);
        co_return std::unexpected("assign: " + ec.message());
    }
    {
        hbone::Deadline deadline(w.io.get_executor(), kConnectTimeout, [&s] {
            boost::system::error_code ignored;
            s.close(ignored);
        });
        co_await s.async_connect(to, asio::redirect_error(asio::use_awaitable, ec));
        if (deadline.expired())
            co_return std::unexpected("connect to " + to_string(to) + " timed out");
    }
    if (ec)
        co_return std::unexpected("connect to " + to_string(to) + ": " + ec.message());
    s.set_option(tcp::no_delay(true), ec);
    co_return s;
}

}  // namespace sluice::ztunnel::proxy
