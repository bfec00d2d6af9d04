// sluice-waypoint: the L7 AI proxy. Parse flags and config, build the gateway, run until signal.
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include <array>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <optional>

#include "common/log.h"
#include "waypoint/config.h"
#include "waypoint/gateway.h"

int main(int argc, char** argv) {
    using namespace sluice::waypoint;
    CLI::App app{"sluice-waypoint: token-aware L7 proxy for OpenAI-compatible APIs"};
    std::string config_path;
    std::string listen, metrics_listen, ready_listen, tokenizer_dir, log_level;
    std::string policies_dir, registry_dir;
    std::string hbone_listen, identity_uri, ca_cert, ca_key;
    std::string tls_listen, tls_cert, tls_key, tls_client_ca;
    unsigned workers = 0;
    std::optional<std::int64_t> busy_poll_us;
    app.add_option("--config", config_path, "Config file (multi-document YAML)")
        ->envname(kConfigEnv)
        ->required();
    app.add_option("--listen", listen, "Gateway listener ip:port (default 0.0.0.0:8080)")
        ->envname(kListenEnv);
    app.add_option("--hbone-listen", hbone_listen,
                   "HBONE listener ip:port (with --identity; default [::]:15008)");
    app.add_option("--identity", identity_uri,
                   "The waypoint's SPIFFE id spiffe://<td>/ns/<ns>/sa/<sa> (turns HBONE on)");
    app.add_option("--ca-cert", ca_cert, "Signing CA certificate (PEM): trust bundle");
    app.add_option("--ca-key", ca_key, "Signing CA key (PEM): mints the waypoint's certificate");
    app.add_option("--tls-listen", tls_listen,
                   "TLS gateway listener ip:port (HTTP/2 by ALPN, else HTTP/1.1)");
    app.add_option("--tls-cert", tls_cert, "TLS listener certificate chain (PEM, leaf first)");
    app.add_option("--tls-key", tls_key, "TLS listener private key (PEM)");
    app.add_option("--tls-client-ca", tls_client_ca,
                   "TLS listener: require client certificates from these CAs (PEM; mTLS)");
    app.add_option("--metrics-listen", metrics_listen, "Metrics listener (default 0.0.0.0:15020)");
    app.add_option("--ready-listen", ready_listen, "Readiness listener (default 0.0.0.0:15021)");
    app.add_option("--workers", workers, "Worker threads (default from config, else 1)");
    app.add_option("--busy-poll-us", busy_poll_us,
                   "Microseconds a worker polls for new events before sleeping (default 0: off)");
    app.add_option("--tokenizer-dir", tokenizer_dir, "Directory of <encoding>.tiktoken files");
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
    app.add_option("--policies-dir", policies_dir,
                   "Policies folder (ConfigMap mount): TokenBudget/ModelRoute, hot-reloaded")
        ->envname(kPoliciesDirEnv);
    app.add_option("--registry-dir", registry_dir, "Registry documents for the policy compiler");
    CLI11_PARSE(app, argc, argv);

    Config config;
    try {
        config = loadConfig(config_path);
    } catch (const std::exception& e) {
        std::cerr << "sluice-waypoint: " << e.what() << "\n";
        return 2;
    }
    if (!listen.empty())
        config.listen = listen;
    const std::array<std::pair<const std::string*, std::string*>, 8> listener_flags{
        {{&hbone_listen, &config.hbone_listen},
         {&identity_uri, &config.identity},
         {&ca_cert, &config.ca_cert},
         {&ca_key, &config.ca_key},
         {&tls_listen, &config.tls.listen},
         {&tls_cert, &config.tls.certificate_file},
         {&tls_key, &config.tls.private_key_file},
         {&tls_client_ca, &config.tls.client_ca_file}}};
    for (const auto& [flag, field] : listener_flags) {
        if (!flag->empty())
            *field = *flag;
    }
    if (!metrics_listen.empty())
        config.metrics_listen = metrics_listen;
    if (!ready_listen.empty())
        config.ready_listen = ready_listen;
    if (workers)
        config.workers = workers;
    if (busy_poll_us)
        config.busy_poll = std::chrono::microseconds(*busy_poll_us);
    if (!tokenizer_dir.empty())
        config.tokenizer_dir = tokenizer_dir;
    if (!log_level.empty())
        config.log_level = log_level;
    if (!policies_dir.empty())
        config.policies_dir = policies_dir;
    if (!registry_dir.empty())
        config.registry_dir = registry_dir;
    if (auto problems = config.validate(); !problems.empty()) {
        for (const auto& p : problems)
            std::cerr << "sluice-waypoint: config: " << p << "\n";
        return 2;
    }
    sluice::init_logging("waypoint", config.log_level);

    // Block the stop signals before threads start so only sigwait below receives them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    try {
        Gateway gateway(std::move(config));
        gateway.start();
        spdlog::info("listening: gateway :{}, tls :{}, hbone :{}, metrics :{}, ready :{}",
                     gateway.gatewayPort(), gateway.tlsPort(), gateway.hbonePort(),
                     gateway.metricsPort(), gateway.readyPort());
        int sig = 0;
        sigwait(&signals, &sig);
        spdlog::info("signal {}: stopping", sig);
        gateway.stop();
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return 1;
    }
    return 0;
}
