// sluice-ztunnel: parse the config, build the proxy, run. Everything else lives in the libraries.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/signal_set.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "common/log.h"
#include "ztunnel/proxy/admin.h"
#include "ztunnel/proxy/proxy.h"
#include "ztunnel/proxy/zds_client.h"

namespace {

namespace asio = boost::asio;
namespace identity = sluice::ztunnel::identity;
namespace proxy = sluice::ztunnel::proxy;
namespace state = sluice::ztunnel::state;

constexpr auto kRefreshPeriod = std::chrono::seconds(1);
constexpr auto kDrainPoll = std::chrono::milliseconds(100);
constexpr auto kGoawayGrace = std::chrono::seconds(1);

std::string env_name(const std::string& flag) {
    std::string s = proxy::kEnvPrefix;
    for (char c : flag)
        s += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

void add_run_options(CLI::App& app, proxy::Config& c, std::string& mode) {
    auto opt = [&](const std::string& name, auto& value, const std::string& help) {
        return app.add_option("--" + name, value, help)->envname(env_name(name));
    };
    opt("mode", mode, "node (one per node, pods via ZDS) or sidecar (inside one pod's netns)")
        ->check(CLI::IsMember({"node", "sidecar"}));
    opt("workers", c.workers, "data-path threads, each with its own io_context");
    opt("busy-poll-us", c.busy_poll,
        "after work, keep polling this long before sleeping, microseconds (0 = off, max 10000)");
    opt("node-name", c.node_name, "Kubernetes node name");
    opt("zds-socket", c.zds_socket, "node mode: the agent's enrollment socket");
    opt("workload-name", c.workload_name, "sidecar mode: the pod's name");
    opt("workload-namespace", c.workload_namespace, "sidecar mode: the pod's namespace");
    opt("workload-uid", c.workload_uid, "sidecar mode: the pod's uid");
    opt("service-account", c.service_account, "sidecar mode: the pod's service account");
    opt("workload-ip", c.workload_ips, "sidecar mode: the pod's addresses (repeatable)");
    opt("registry-dir", c.registry_dir, "folder of Pod/Service/EndpointSlice YAML");
    opt("policies-dir", c.policies_dir, "folder of AuthorizationPolicy/PeerAuthentication YAML");
    opt("mtls-mode", c.mtls_mode, "default PeerAuthentication: STRICT or PERMISSIVE");
    opt("ca-cert", c.ca_cert, "signing CA certificate (PEM)");
    opt("ca-key", c.ca_key, "signing CA private key (PEM)");
    opt("trust-bundle", c.trust_bundles, "extra trusted roots, PEM files (CA rotation)");
    opt("trust-domain", c.trust_domain, "SPIFFE trust domain");
    opt("cert-lifetime", c.cert_lifetime, "workload certificate lifetime, seconds");
    opt("admin-address", c.admin_address, "admin listener (config_dump, quitquitquit)");
    opt("metrics-address", c.metrics_address, "Prometheus listener; empty: off");
    opt("readiness-address", c.readiness_address, "readiness listener; empty: off");
    opt("outbound-port", c.outbound_port, "outbound capture port in each pod netns");
    opt("inbound-plaintext-port", c.inbound_plaintext_port, "plaintext inbound port");
    opt("hbone-port", c.hbone_port, "HBONE port");
    opt("pool-idle-timeout", c.pool_idle_timeout, "close idle HBONE connections after, seconds");
    opt("drain-timeout", c.drain_timeout, "quitquitquit waits at most this long, seconds");
    app.add_flag("--transparent-inbound", c.transparent_inbound,
                 "connect to the app from the client's address (IP_TRANSPARENT)")
        ->envname(env_name("transparent-inbound"));
    app.add_flag("--same-node-fast-path,!--no-same-node-fast-path", c.same_node_fast_path,
                 "node mode: pods on this node reach each other without HBONE (default on)")
        ->envname(env_name("same-node-fast-path"));
    opt("access-log", c.access_log, "access log target: - (stdout) or a file");
    opt("log-level", c.log_level, "trace, debug, info, warn, error");
}

int run(proxy::Config config) {
    sluice::init_logging("ztunnel", config.log_level);
    if (auto problems = config.validate(); !problems.empty()) {
        for (const auto& p : problems)
            spdlog::error("config: {}", p);
        return 2;
    }
    auto ca = identity::CertificateAuthority::load(config.ca_cert, config.ca_key);
    if (!ca) {
        spdlog::error("signing CA: {}", ca.error());
        return 2;
    }
    auto bundle = std::make_shared<identity::TrustBundle>();
    bundle->add(ca->certificate());
    for (const auto& f : config.trust_bundles) {
        auto text = identity::read_text_file(f);
        if (!text)
            throw std::runtime_error(text.error());
        if (auto n = bundle->add_pem(*text); !n)
            throw std::runtime_error(f + ": " + n.error());
    }
    auto certs = std::make_shared<identity::CertManager>(
        std::make_shared<const identity::CertificateAuthority>(std::move(*ca)), bundle,
        config.trust_domain, config.cert_lifetime);
    const auto default_mode =
        config.mtls_mode == "STRICT" ? state::MtlsMode::Strict : state::MtlsMode::Permissive;
    auto authorizer = config.policies_dir.empty()
                          ? state::default_authorizer(default_mode)
                          : state::policy_authorizer(config.policies_dir, config.registry_dir,
                                                     default_mode, config.trust_domain);
    proxy::Proxy p(config, state::yaml_folder_registry(config.registry_dir), std::move(authorizer),
                   certs);
    p.start();

    std::unique_ptr<proxy::ZdsClient> zds;
    bool sidecar_ready = false;
    if (config.mode == proxy::Mode::Sidecar) {
        sluice::zds::WorkloadInfo info{
            .uid = config.workload_uid.empty()
                       ? config.workload_namespace + "/" + config.workload_name
                       : config.workload_uid,
            .name = config.workload_name,
            .namespace_name = config.workload_namespace,
            .service_account = config.service_account,
            .node = config.node_name,
            .ips = config.workload_ips};
        if (auto r = p.add_workload(info, -1); !r) {
            spdlog::error("{}", r.error());
            return 1;
        }
        sidecar_ready = true;
    } else {
        zds = std::make_unique<proxy::ZdsClient>(config.zds_socket, p);
        zds->start();
    }

    // The admin thread (this one): admin and readiness servers, reloads, gauges, signals.
    asio::io_context admin;
    bool quitting = false;
    auto quit = [&] {
        if (quitting)
            return;
        quitting = true;
        // The ZDS session ends for good first (no reconnect): the agent stops sending this
        // ztunnel workloads and, if it steered, hands steering to the other session.
        if (zds)
            zds->stop();
        p.drain();
        asio::co_spawn(
            admin,
            [&]() -> asio::awaitable<void> {
                const auto start = std::chrono::steady_clock::now();
                const auto deadline = start + config.drain_timeout;
                // Peers that sent a stream before they read the GOAWAY get it served.
                const auto grace = start + std::min<std::chrono::steady_clock::duration>(
                                               kGoawayGrace, config.drain_timeout);
                asio::steady_timer t(admin);
                const auto now = [] { return std::chrono::steady_clock::now(); };
                while ((p.active_connections() > 0 || now() < grace) && now() < deadline) {
                    t.expires_after(kDrainPoll);
                    co_await t.async_wait(asio::use_awaitable);
                }
                spdlog::info("drained ({} connections left); exiting", p.active_connections());
                admin.stop();
            },
            asio::detached);
    };
    proxy::serve_http(
        admin, config.admin_address, [&](const std::string& method, const std::string& path) {
            if (path == "/config_dump")
                return proxy::HttpResponse{200, "application/json", p.config_dump().dump(2) + "\n"};
            if (path == "/connections")
                return proxy::HttpResponse{200, "application/json", p.connections().dump(2) + "\n"};
            if (path == "/quitquitquit") {
                if (method != "POST")
                    return proxy::HttpResponse{405, "text/plain", "POST only\n"};
                asio::post(admin, quit);
                return proxy::HttpResponse{200, "text/plain", "draining\n"};
            }
            return proxy::HttpResponse{404, "text/plain", "not found\n"};
        });
    if (!config.readiness_address.empty()) {
        proxy::serve_http(
            admin, config.readiness_address, [&](const std::string&, const std::string& path) {
                if (path != "/healthz/ready")
                    return proxy::HttpResponse{404, "text/plain", "not found\n"};
                const bool ready = !quitting && (sidecar_ready || (zds && zds->synced()));
                return ready ? proxy::HttpResponse{200, "text/plain", "ready\n"}
                             : proxy::HttpResponse{503, "text/plain", "not ready\n"};
            });
    }
    if (!config.metrics_address.empty())
        p.metrics().expose(config.metrics_address);
    asio::signal_set signals(admin, SIGINT, SIGTERM);
    signals.async_wait([&](boost::system::error_code ec, int) {
        if (!ec)
            quit();
    });
    asio::co_spawn(
        admin,
        [&]() -> asio::awaitable<void> {
            asio::steady_timer t(admin);
            for (;;) {
                p.refresh();
                t.expires_after(kRefreshPeriod);
                co_await t.async_wait(asio::use_awaitable);
            }
        },
        asio::detached);
    spdlog::info("sluice-ztunnel up: mode {}, {} workers, admin {}",
                 config.mode == proxy::Mode::Node ? "node" : "sidecar", config.workers,
                 config.admin_address);
    admin.run();
    if (zds)
        zds->stop();
    p.stop();
    return 0;
}

int ca_create(const std::string& dir, const std::string& trust_domain) {
    std::filesystem::create_directories(dir);
    auto ca = identity::CertificateAuthority::create(trust_domain);
    ca.write(dir + "/ca.crt", dir + "/ca.key");
    std::cout << dir << "/ca.crt\n";
    return 0;
}

int ca_mint(const std::string& dir, const std::string& uri, const std::string& out,
            int64_t lifetime) {
    auto ca = identity::CertificateAuthority::load(dir + "/ca.crt", dir + "/ca.key");
    if (!ca) {
        std::cerr << ca.error() << "\n";
        return 1;
    }
    auto id = identity::Identity::parse(uri);
    if (!id) {
        std::cerr << id.error() << "\n";
        return 1;
    }
    auto cert = ca->mint(*id, {.lifetime = std::chrono::seconds(lifetime)});
    if (!cert) {
        std::cerr << cert.error() << "\n";
        return 1;
    }
    std::ofstream(out + ".crt") << cert->cert_pem << cert->chain_pem;
    std::ofstream(out + ".key") << cert->key_pem;
    std::filesystem::permissions(
        out + ".key", std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
    std::cout << out << ".crt\n" << out << ".key\n";
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"sluice-ztunnel: the L4 mTLS tunnel (HBONE) of a sluice node"};
    proxy::Config config;
    std::string mode = "node";
    add_run_options(app, config, mode);

    auto* ca = app.add_subcommand("ca", "Manage a file-based signing CA (testbed, interop)");
    ca->require_subcommand(1);
    std::string ca_dir, trust_domain = identity::kDefaultTrustDomain, uri, out;
    int64_t lifetime = 24 * 3600;
    auto* create = ca->add_subcommand("create", "New self-signed root: <dir>/ca.crt, ca.key");
    create->add_option("--dir", ca_dir)->required();
    create->add_option("--trust-domain", trust_domain);
    auto* mint = ca->add_subcommand("mint", "Workload certificate: <out>.crt (+chain), <out>.key");
    mint->add_option("--dir", ca_dir)->required();
    mint->add_option("--identity", uri, "spiffe://<td>/ns/<ns>/sa/<sa>")->required();
    mint->add_option("--out", out, "path prefix")->required();
    mint->add_option("--lifetime", lifetime, "seconds");

    CLI11_PARSE(app, argc, argv);
    try {
        if (create->parsed())
            return ca_create(ca_dir, trust_domain);
        if (mint->parsed())
            return ca_mint(ca_dir, uri, out, lifetime);
        config.mode = mode == "sidecar" ? proxy::Mode::Sidecar : proxy::Mode::Node;
        return run(std::move(config));
    } catch (const std::exception& e) {
        std::cerr << "sluice-ztunnel: " << e.what() << "\n";
        return 1;
    }
}
