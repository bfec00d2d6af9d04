#include "waypoint/gateway.h"

#include <spdlog/spdlog.h>

#include <charconv>
#include <future>
#include <random>

#include "common/event_loop.h"
#include "policies/watcher.h"
#include "waypoint/filters/budget/filter.h"
#include "waypoint/filters/cache/filter.h"
#include "waypoint/filters/usage/filter.h"
#include "waypoint/http/client_watch.h"
#include "waypoint/http/forward.h"
#include "waypoint/http/target.h"
#include "waypoint/json/document.h"
#include "waypoint/lb/load_metrics.h"
#include "waypoint/policy_view.h"
#include "waypoint/tokenizer/encoding.h"

namespace sluice::waypoint {
namespace {

using Clock = std::chrono::steady_clock;

std::string apiOf(std::string_view target) {
    target = target.substr(0, target.find('?'));
    if (target == "/v1/chat/completions")
        return "chat";
    if (target == "/v1/completions")
        return "completions";
    if (target == "/v1/embeddings")
        return "embeddings";
    if (target == "/v1/models")
        return "models";
    return "";
}

// `bytes` random bytes as lower-case hex at `out`.
void hex(std::mt19937_64& rng, int bytes, char* out) {
    static constexpr char digits[] = "0123456789abcdef";
    for (int i = 0; i < bytes; i += 8) {
        std::uint64_t r = rng();
        for (int j = 0; j < 8 && i + j < bytes; ++j, r >>= 8) {
            *out++ = digits[(r >> 4) & 15];
            *out++ = digits[r & 15];
        }
    }
}

const std::vector<double>& latencyBucketsMs() {
    static const std::vector<double> b{0.5, 1,    2,    5,    10,    25,    50,    100,   250,
                                       500, 1000, 2500, 5000, 10000, 30000, 60000, 300000};
    return b;
}
const std::vector<double>& secondsBuckets() {
    static const std::vector<double> b{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                       1,     2.5,   5,    10,    30,   60,  300};
    return b;
}
const std::vector<double>& tokenBuckets() {
    static const std::vector<double> b{1,    4,     16,    64,     256,    1024,
                                       4096, 16384, 65536, 262144, 1048576};
    return b;
}

// The status of the reply the waypoint sends itself when this was the last attempt.
std::optional<http::status> failureStatus(const ForwardResult& result) {
    switch (result.outcome) {
        case ForwardOutcome::Timeout:
            return http::status::gateway_timeout;
        case ForwardOutcome::ConnectFailed:
        case ForwardOutcome::UpstreamFailed:
            return http::status::bad_gateway;
        case ForwardOutcome::RetryableStatus:
            return http::status(result.status);
        default:
            return std::nullopt;
    }
}

// The first of those flags that is neither a boolean nor null, quoted as OpenAI names it in its
// 400; "" when all are fine.
std::string nonBooleanFlag(const json::Value& body) {
    auto wrong = [](const json::Value& object, std::string_view name) {
        const json::Value* v = json::member(object, name);
        return v != nullptr && !v->IsBool() && !v->IsNull();
    };
    if (wrong(body, "stream"))
        return "'stream'";
    const json::Value* options = json::member(body, "stream_options");
    if (options != nullptr && options->IsObject() && wrong(*options, "include_usage"))
        return "'stream_options.include_usage'";
    return "";
}

// The document as text with `model` for its model; the document itself keeps the client's
// (the next target may rewrite to another model, or to none).
std::string withModel(json::Document& body, const std::string& model) {
    // The last `model` (a string: checked on arrival), the only one write() writes.
    json::Value* value = json::member(body.root(), "model");
    struct Restore {
        json::Value* value;
        json::Value clients;
        ~Restore() { *value = std::move(clients); }
    } restore{value, std::move(*value)};
    value->SetString(rapidjson::StringRef(model.data(), rapidjson::SizeType(model.size())));
    return body.write();
}

// A retry the route's budget counts from when it is allowed until its attempt ends: given back
// by release(), or on destruction when the attempts end by an exception.
class HeldRetry {
  public:
    HeldRetry(route::RouteFilter& router, const RequestContext& ctx) : router_(router), ctx_(ctx) {}
    HeldRetry(const HeldRetry&) = delete;
    HeldRetry& operator=(const HeldRetry&) = delete;
    ~HeldRetry() { release(); }
    void hold() { held_ = true; }
    bool held() const { return held_; }
    void release() {
        if (std::exchange(held_, false))
            router_.retryFinished(ctx_);
    }

  private:
    route::RouteFilter& router_;
    const RequestContext& ctx_;
    bool held_ = false;
};

// The endpoint of one attempt, whose in-flight count (and circuit-breaker slot) pick() took:
// given back by finish() or abandon(), or abandoned on destruction when the attempt ends by an
// exception.
class PickedEndpoint {
  public:
    PickedEndpoint(BackendPool& pool, Endpoint* ep) : pool_(pool), ep_(ep) {}
    PickedEndpoint(const PickedEndpoint&) = delete;
    PickedEndpoint& operator=(const PickedEndpoint&) = delete;
    ~PickedEndpoint() { abandon(); }
    Endpoint* get() const { return ep_; }
    void finish(bool ok, std::optional<std::chrono::steady_clock::duration> latency) {
        if (Endpoint* ep = std::exchange(ep_, nullptr))
            pool_.finish(*ep, ok, latency);
    }
    void abandon() {
        if (Endpoint* ep = std::exchange(ep_, nullptr))
            pool_.abandon(*ep);
    }

  private:
    BackendPool& pool_;
    Endpoint* ep_;
};

}  // namespace

tcp::endpoint parseListen(const std::string& text) {
    const auto colon = text.rfind(':');
    if (colon == std::string::npos)
        throw std::invalid_argument("listen address without port: " + text);
    std::string host = text.substr(0, colon);
    if (host.size() > 2 && host.front() == '[')
        host = host.substr(1, host.size() - 2);
    error_code ec;
    auto address = asio::ip::make_address(host, ec);
    if (ec)
        throw std::invalid_argument("bad listen address: " + text);
    return {address, static_cast<unsigned short>(std::stoi(text.substr(colon + 1)))};
}

std::string nextTraceparent(std::string_view incoming) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    // version "00" - trace id (32 hex, not all zero) - parent id (16 hex) - flags (2 hex)
    auto is_hex = [](std::string_view s) {
        return s.find_first_not_of("0123456789abcdef") == std::string_view::npos;
    };
    std::string out = "00-00000000000000000000000000000000-0000000000000000-01";
    if (incoming.size() == 55 && incoming.substr(0, 3) == "00-" && incoming[35] == '-' &&
        incoming[52] == '-' && is_hex(incoming.substr(3, 32)) &&
        incoming.substr(3, 32) != std::string_view(out).substr(3, 32) &&
        is_hex(incoming.substr(53, 2))) {
        out.replace(3, 32, incoming.substr(3, 32));
        out.replace(53, 2, incoming.substr(53, 2));
    } else {
        hex(rng, 16, out.data() + 3);
    }
    hex(rng, 8, out.data() + 36);
    return out;
}

Gateway::Gateway(Config config) : config_(std::move(config)) {
    if (!config_.identity.empty()) {
        auto id = identity::Identity::parse(config_.identity);
        if (!id)
            throw std::runtime_error("identity: " + id.error());
        auto ca = identity::CertificateAuthority::load(config_.ca_cert, config_.ca_key);
        if (!ca)
            throw std::runtime_error("signing CA: " + ca.error());
        auto bundle = std::make_shared<identity::TrustBundle>();
        bundle->add(ca->certificate());
        auto certs = std::make_shared<identity::CertManager>(
            std::make_shared<const identity::CertificateAuthority>(std::move(*ca)), bundle,
            id->trust_domain, identity::kDefaultWorkloadCertLifetime);
        tls_ = std::make_unique<hbone::TlsContexts>(std::move(certs));
        if (auto ctx = tls_->server(*id); !ctx)  // mint now: a bad CA fails at start
            throw std::runtime_error("certificate for " + id->uri() + ": " + ctx.error());
        identity_ = *id;
    }
    if (!config_.tls.listen.empty())
        gateway_tls_ = std::make_unique<GatewayTlsContext>(config_.tls);  // bad files fail here
    for (const auto& pool : config_.pools) {
        pools_[pool.name] = std::make_shared<BackendPool>(pool);
    }
    const auto dir = config_.tokenizer_dir.empty() ? tokenizer::defaultTokenizerDir()
                                                   : std::filesystem::path(config_.tokenizer_dir);
    auto cl100k = tokenizer::Encoding::load(tokenizer::EncodingName::kCl100kBase, dir);
    auto o200k = tokenizer::Encoding::load(tokenizer::EncodingName::kO200kBase, dir);
    if (!cl100k || !o200k) {
        throw std::runtime_error(
            "tokenizer (" + dir.string() +
            "): " + std::string(tokenizer::toString(!cl100k ? cl100k.error() : o200k.error())));
    }
    // Filter order: usage (estimate) → budget (admission) → embeddings cache → route (targets).
    owned_filters_.push_back(std::make_unique<usage::UsageFilter>(config_.usage, *cl100k, *o200k));
    // With a policies folder the budget filter always exists: a TokenBudget may appear later.
    if (!config_.budgets.empty() || !config_.policies_dir.empty()) {
        auto budget = std::make_unique<budget::BudgetFilter>(baseBudget(config_), &metrics_);
        budget_ = budget.get();
        owned_filters_.push_back(std::move(budget));
    }
    if (config_.embeddings_cache.enabled) {
        owned_filters_.push_back(
            std::make_unique<cache::EmbeddingsCacheFilter>(config_.embeddings_cache));
    }
    auto router = std::make_unique<route::RouteFilter>(config_.routes, pools_);
    router_ = router.get();
    owned_filters_.push_back(std::move(router));
    for (auto& f : owned_filters_)
        filters_.push_back(f.get());
    if (config_.admission.enabled()) {
        auto& in_flight = metrics_.admission_in_flight.at({});
        std::array<prometheus::Gauge*, admission::kPriorities> queued{};
        for (auto p : {admission::Priority::Critical, admission::Priority::Standard,
                       admission::Priority::Sheddable}) {
            queued[static_cast<std::size_t>(p)] =
                &metrics_.admission_queued.at({{"class", admission::to_string(p)}});
        }
        admission_ = std::make_unique<admission::AdmissionQueue>(
            config_.admission, [&in_flight, queued](std::size_t n, const auto& per_class) {
                in_flight.Set(double(n));
                for (std::size_t c = 0; c < admission::kPriorities; ++c)
                    queued[c]->Set(double(per_class[c]));
            });
    }
}

Gateway::~Gateway() {
    stop();
}

void Gateway::scrapeLoad(const std::shared_ptr<BackendPool>& pool) {
    if (pool->config().load_metrics)
        asio::co_spawn(admin_io_, scrapeLoadMetrics(pool, metrics_), asio::detached);
}

bool Gateway::applyPolicies(const nlohmann::json& view) {
    try {
        PolicyView merged = makePolicyView(config_, view);
        std::lock_guard lock(pools_mutex_);
        // Pools keep their endpoint state (in-flight counts, ejections) across reloads: the
        // same pool when nothing changed, else (a Service's endpoints or a route's loadBalancer
        // changed) a new pool that shares the state of the endpoints that stay. Requests in
        // flight keep the old pool.
        std::map<std::string, std::shared_ptr<BackendPool>> pools;
        for (const auto& p : merged.pools) {
            auto it = pools_.find(p.name);
            const bool same = it != pools_.end() && it->second->config() == p;
            pools[p.name] = same                 ? it->second
                            : it != pools_.end() ? std::make_shared<BackendPool>(p, *it->second)
                                                 : std::make_shared<BackendPool>(p);
            if (!same && scraping_)
                scrapeLoad(pools[p.name]);
        }
        router_->reconfigure(merged.routes, pools);
        if (budget_)
            budget_->reconfigure(merged.budget);
        pools_ = std::move(pools);
        spdlog::info("policies applied: {} budget limits, {} routes, {} pools",
                     merged.budget.limits.size(), merged.routes.size(), pools_.size());
        return true;
    } catch (const std::exception& e) {
        spdlog::error("policies not applied (the previous ones stay in force): {}", e.what());
        metrics_.policy_reloads.at({{"result", "failure"}}).Increment();
        return false;
    }
}

void Gateway::start() {
    const auto at = parseListen(config_.listen);
    unsigned short port = at.port();
    for (unsigned i = 0; i < config_.workers; ++i) {
        auto w = std::make_unique<Worker>();
        // Port 0 picks a port for the first worker; the others share it through SO_REUSEPORT.
        w->acceptor = std::make_unique<tcp::acceptor>(
            listenReusePort(w->io, tcp::endpoint(at.address(), port)));
        port = w->acceptor->local_endpoint().port();
        w->upstream = std::make_unique<UpstreamPool>(w->io.get_executor(), config_.upstream);
        w->handler = [this, pool = w->upstream.get()](Exchange& ex) { return handle(ex, *pool); };
        workers_.push_back(std::move(w));
    }
    gateway_port_ = port;
    if (gateway_tls_)
        startTls();
    if (identity_)
        startHbone();
    metrics_acceptor_ =
        std::make_unique<tcp::acceptor>(admin_io_, parseListen(config_.metrics_listen));
    ready_acceptor_ = std::make_unique<tcp::acceptor>(admin_io_, parseListen(config_.ready_listen));
    metrics_port_ = metrics_acceptor_->local_endpoint().port();
    ready_port_ = ready_acceptor_->local_endpoint().port();

    auto admin = [this](bool metrics) {
        return [this, metrics](Exchange& ex) -> awaitable<void> {
            http::response<http::string_body> res{http::status::ok, ex.request.version()};
            const auto target = ex.request.target();
            if (metrics && target == "/metrics") {
                res.set(http::field::content_type, "text/plain; version=0.0.4");
                res.body() = metrics_.serialize();
            } else if (!metrics && target == "/healthz/ready") {
                res.result(ready_ ? http::status::ok : http::status::service_unavailable);
                res.body() = ready_ ? "ready\n" : "starting\n";
            } else {
                res.result(http::status::not_found);
            }
            res.keep_alive(ex.keep_alive);
            res.prepare_payload();
            error_code ec;
            co_await http::async_write(ex.stream, res, noThrow(ec));
            if (ec)
                ex.keep_alive = false;
        };
    };
    metrics_handler_ = admin(true);
    ready_handler_ = admin(false);
    asio::co_spawn(admin_io_, acceptLoop(*metrics_acceptor_, admin_limits_, metrics_handler_),
                   asio::detached);
    asio::co_spawn(admin_io_, acceptLoop(*ready_acceptor_, admin_limits_, ready_handler_),
                   asio::detached);
    // Backends' load reports are scraped on the admin thread, off the data path.
    {
        std::lock_guard lock(pools_mutex_);
        for (auto& [name, pool] : pools_)
            scrapeLoad(pool);
        scraping_ = true;  // from now on applyPolicies starts the scrapers of new pools
    }
    admin_thread_ = std::thread([this] { admin_io_.run(); });

    for (auto& w : workers_) {
        asio::co_spawn(w->io, acceptLoop(*w->acceptor, config_.limits, w->handler, &w->h2),
                       asio::detached);
        if (w->tls_acceptor) {
            asio::co_spawn(w->io,
                           acceptEach(*w->tls_acceptor,
                                      [this, w = w.get()](tcp::socket socket) {
                                          return serveTlsConnection(
                                              std::move(socket), gateway_tls_->current(),
                                              config_.tls, config_.limits, w->handler, &w->h2,
                                              tls_result_);
                                      }),
                           asio::detached);
        }
        if (w->hbone)
            asio::co_spawn(w->io, w->hbone->acceptLoop(*w->hbone_acceptor), asio::detached);
        w->thread =
            std::thread([io = &w->io, spin = config_.busy_poll] { run_event_loop(*io, spin); });
    }
    if (!config_.policies_dir.empty()) {
        // The first load is synchronous, so the policies are in force before we report ready.
        watcher_ = std::make_unique<policies::PolicyWatcher>(
            policies::WatcherConfig{.policy_dir = config_.policies_dir,
                                    .registry_dir = config_.registry_dir},
            [this](std::shared_ptr<const policies::Generation> g) {
                spdlog::info("policies generation {}", g->number);
                applyPolicies(g->compiled->waypoint);
            },
            [this](std::string_view result) {
                metrics_.policy_reloads.at({{"result", std::string(result)}}).Increment();
            });
        if (!watcher_->start())
            spdlog::warn("cannot watch {}: policy changes need a restart", config_.policies_dir);
    }
    ready_ = true;
}

void Gateway::stop() {
    ready_ = false;
    if (watcher_)
        watcher_->stop();
    drainWorkers();
    for (auto& w : workers_)
        w->io.stop();
    admin_io_.stop();
    for (auto& w : workers_) {
        if (w->thread.joinable())
            w->thread.join();
    }
    if (admin_thread_.joinable())
        admin_thread_.join();
    // The workers are stopped: closing here is single-threaded. It ends the HBONE connections
    // and their streams (which reference each other) before the io_contexts go away.
    for (auto& w : workers_) {
        if (w->hbone)
            w->hbone->closeAll();
    }
    // Queued requests die with their workers' io_contexts; no slot may be handed to them.
    if (admission_)
        admission_->close();
}

void Gateway::drainWorkers() {
    std::vector<std::future<void>> drained;
    for (auto& w : workers_) {
        if (!w->thread.joinable())
            continue;  // stopped already (stop is idempotent)
        auto done = std::make_shared<std::promise<void>>();
        drained.push_back(done->get_future());
        auto drain = [](Worker& w, std::chrono::milliseconds grace,
                        std::shared_ptr<std::promise<void>> done) -> awaitable<void> {
            error_code ec;
            w.acceptor->close(ec);
            if (w.tls_acceptor)
                w.tls_acceptor->close(ec);
            if (w.hbone_acceptor)
                w.hbone_acceptor->close(ec);
            if (w.hbone)
                w.hbone->drainAll();
            co_await w.h2.drain(grace);
            done->set_value();
        };
        asio::co_spawn(w->io, drain(*w, config_.limits.drain_timeout, done), asio::detached);
    }
    const auto until =
        std::chrono::steady_clock::now() + config_.limits.drain_timeout + std::chrono::seconds(1);
    for (auto& f : drained)
        f.wait_until(until);
}

void Gateway::startTls() {
    const auto at = parseListen(config_.tls.listen);
    unsigned short port = at.port();
    for (auto& w : workers_) {
        w->tls_acceptor = std::make_unique<tcp::acceptor>(
            listenReusePort(w->io, tcp::endpoint(at.address(), port)));
        port = w->tls_acceptor->local_endpoint().port();
    }
    tls_port_ = port;
    tls_result_ = [this](std::string_view result) {
        metrics_.gateway_tls.at({{"result", std::string(result)}}).Increment();
    };
    publishTlsExpiry();
    asio::co_spawn(admin_io_, reloadTlsLoop(), asio::detached);
}

void Gateway::publishTlsExpiry() {
    metrics_.gateway_tls_not_after.at({}).Set(
        double(std::chrono::system_clock::to_time_t(gateway_tls_->notAfter())));
}

awaitable<void> Gateway::reloadTlsLoop() {
    asio::steady_timer timer(admin_io_);
    for (;;) {
        timer.expires_after(config_.tls.reload_interval);
        error_code ec;
        co_await timer.async_wait(noThrow(ec));
        if (ec)
            co_return;
        std::string problem;
        switch (gateway_tls_->reloadIfChanged(problem)) {
            case GatewayTlsContext::Reload::Unchanged:
                break;
            case GatewayTlsContext::Reload::Reloaded:
                spdlog::info("TLS listener: certificate reloaded from {}",
                             config_.tls.certificate_file);
                metrics_.gateway_tls_reloads.at({{"result", "success"}}).Increment();
                publishTlsExpiry();
                break;
            case GatewayTlsContext::Reload::Failed:
                spdlog::error(
                    "TLS listener: certificate not reloaded (the previous one stays "
                    "in use): {}",
                    problem);
                metrics_.gateway_tls_reloads.at({{"result", "failure"}}).Increment();
                break;
        }
    }
}

void Gateway::startHbone() {
    const bool defaulted = config_.hbone_listen.empty();
    auto at = parseListen(defaulted ? kDefaultHboneListen : config_.hbone_listen);
    unsigned short port = at.port();
    for (auto& w : workers_) {
        try {
            w->hbone_acceptor = std::make_unique<tcp::acceptor>(
                listenReusePort(w->io, tcp::endpoint(at.address(), port)));
        } catch (const std::exception&) {  // boost::system::system_error: no IPv6 here
            if (!defaulted || !at.address().is_v6())
                throw;
            // The default [::] in a namespace without IPv6: every IPv4 address instead.
            at = tcp::endpoint(asio::ip::address_v4::any(), at.port());
            w->hbone_acceptor = std::make_unique<tcp::acceptor>(
                listenReusePort(w->io, tcp::endpoint(at.address(), port)));
        }
        port = w->hbone_acceptor->local_endpoint().port();
        HboneServer::Hooks hooks{
            .refused =
                [this](const std::string& reason) {
                    metrics_.handshake_failures.at({{"reason", reason}}).Increment();
                },
            .stream =
                [this](int status) {
                    metrics_.hbone_streams.at({{"response_code", std::to_string(status)}})
                        .Increment();
                }};
        w->hbone = std::make_unique<HboneServer>(*tls_, *identity_, config_.limits, w->handler,
                                                 std::move(hooks), &w->h2);
    }
    hbone_port_ = port;
}

std::string Gateway::modelsList() const {
    nlohmann::json data = nlohmann::json::array();
    for (const auto& m : router_->models())
        data.push_back({{"id", m}, {"object", "model"}, {"created", 0}, {"owned_by", "sluice"}});
    return nlohmann::json{{"object", "list"}, {"data", data}}.dump();
}

awaitable<void> Gateway::reply(Exchange& ex, RequestContext& ctx, const LocalReply& local) {
    auto res = toResponse(local, ex.request.version(), ex.keep_alive);
    for (const auto& [name, value] : ctx.response_headers) {
        if (res.find(name) == res.end())
            res.set(name, value);
    }
    ctx.status = unsigned(local.status);
    // The answer to HEAD has the length of the body GET would get and no body (RFC 9110 §9.3.2):
    // bytes after the head would be read as the start of the next response.
    if (ex.request.method() == http::verb::head)
        res.body().clear();
    error_code ec;
    co_await http::async_write(ex.stream, res, noThrow(ec));
    if (ec)
        ex.keep_alive = false;
}

awaitable<void> Gateway::handle(Exchange& ex, UpstreamPool& upstream) {
    RequestContext ctx(ex.request);
    ctx.peer_identity = ex.peer_identity;
    ctx.destination = ex.authority;
    // The absolute form (RFC 9112 §3.2.2) is served as its origin form: backends expect that.
    if (auto origin = originFormOf(sv(ex.request.target())))
        ex.request.target(*origin);
    ctx.api = apiOf(sv(ex.request.target()));
    ctx.traceparent = nextTraceparent(sv(ex.request["traceparent"]));

    if (ctx.api.empty()) {
        // A path that a backend's router takes for an OpenAI endpoint however it is spelled
        // (`/v1/chat/%63ompletions`, `/v1//embeddings`, `/x/../v1/completions`,
        // `/V1/models/`, `/v1/embeddings;x`, `/v1/completions#x`) would pass as "not an API"
        // with no budget: it is refused, as is a target no router reads the same way (a
        // fragment, an invalid escape).
        const std::string_view target = sv(ex.request.target());
        const auto routed = routedPath(target);
        const bool malformed =
            target.find('#') != std::string_view::npos || (target.starts_with('/') && !routed);
        const std::string api_path = routed ? lenientPath(*routed) : std::string();
        if (malformed || !apiOf(api_path).empty()) {
            // Named: g++ 12 destroys a temporary argument of a co_await'ed call twice.
            const LocalReply refused{
                .status = http::status::bad_request,
                .type = "invalid_request_error",
                .message = malformed ? std::string("The request target is malformed (a fragment "
                                                   "or an invalid percent escape).")
                                     : "The request path must be written as " + api_path +
                                           " (no escapes, dot segments, repeated slashes, "
                                           "parameters, trailing slash or capitals)."};
            ctx.result = "invalid_request";
            co_await reply(ex, ctx, refused);
            record(ctx);
            co_return;
        }
    }

    if (ctx.api == "models" && ex.request.method() == http::verb::get) {
        http::response<http::string_body> res{http::status::ok, ex.request.version()};
        res.set(http::field::content_type, "application/json");
        res.body() = modelsList();
        res.keep_alive(ex.keep_alive);
        res.prepare_payload();
        error_code ec;
        co_await http::async_write(ex.stream, res, noThrow(ec));
        ctx.status = 200;
        record(ctx);
        co_return;
    }
    if (!ctx.api.empty() && ctx.api != "models") {
        LocalReply bad{.status = http::status::bad_request, .type = "invalid_request_error"};
        if (ex.request.method() != http::verb::post) {
            bad.status = http::status::method_not_allowed;
            bad.message = "Only POST is supported on " + std::string(sv(ex.request.target()));
        } else {
            auto body = json::Document::parse(ex.request.body());
            const json::Value* model = body ? json::member(body->root(), "model") : nullptr;
            if (!body || !body->root().IsObject()) {
                bad.message = "We could not parse the JSON body of your request.";
            } else if (model == nullptr || !model->IsString()) {
                bad.message = "you must provide a model parameter";
            } else if (auto wrong = nonBooleanFlag(body->root()); !wrong.empty()) {
                bad.message = wrong + " must be a boolean";
            } else {
                ctx.model = json::text(*model);
                ctx.stream = json::flagSet(body->root(), "stream");
                // A repeated key is read as its last value (as nlohmann and Python's json read
                // it) and the backend gets the body written out with that one only: a parser
                // that keeps the first must not be served one model while we routed and
                // budgeted another.
                ctx.body_modified = json::repeatsKey(body->root());
                ctx.body = std::move(body);
            }
        }
        if (!ctx.body) {
            ctx.result = "invalid_request";
            co_await reply(ex, ctx, bad);
            record(ctx);
            co_return;
        }
    }

    FilterSettlement settlement(filters_, ctx);
    for (HttpFilter* filter : filters_) {
        if (auto local = filter->onRequest(ctx)) {
            co_await reply(ex, ctx, *local);
            settlement.settle();
            record(ctx);
            co_return;
        }
        settlement.admitted();
    }
    std::optional<admission::AdmissionQueue::Slot> slot;
    if (admission_) {
        slot = co_await admit(ex, ctx, settlement);
        if (!slot)
            co_return;
    }
    co_await route(ex, ctx, settlement, upstream);
}

admission::Priority Gateway::priorityOf(const RequestContext& ctx) const {
    const auto& c = config_.admission;
    if (!c.priority_header.empty()) {
        if (auto p = admission::parsePriority(std::string(sv(ctx.request[c.priority_header]))))
            return *p;
    }
    if (auto it = c.tenant_priorities.find(ctx.tenant); it != c.tenant_priorities.end())
        return it->second;
    return c.default_priority;
}

awaitable<std::optional<admission::AdmissionQueue::Slot>> Gateway::admit(
    Exchange& ex, RequestContext& ctx, FilterSettlement& settlement) {
    if (!admission_)
        co_return admission::AdmissionQueue::Slot();
    const auto priority = priorityOf(ctx);
    ctx.priority = admission::to_string(priority);
    if (auto slot = admission_->tryAcquire())
        co_return std::move(slot);
    // It waits: a client that goes away meanwhile gives its queue place back at once.
    admission::AdmissionQueue::Withdrawal withdrawal;
    ClientWatch watch(ex.stream, ex.buffer,
                      config_.limits.max_header_bytes + config_.limits.max_body_bytes);
    // The coroutines exist before the watch starts: an allocation that fails cannot leave
    // its read pending (around() stops it however the wait ends).
    auto waited = watch.around(admission_->acquire(priority, ctx.tenant, &withdrawal));
    watch.start([&withdrawal] { withdrawal.withdraw(); });
    auto [outcome, slot] = co_await std::move(waited);
    if (outcome == admission::Outcome::Admitted && !watch.gone())
        co_return std::move(slot);
    auto complete = [&] {
        settlement.settle();
        record(ctx);
    };
    if (watch.gone()) {
        slot.reset();
        ctx.result = "client_gone";
        ex.keep_alive = false;
        complete();
        co_return std::nullopt;
    }
    const std::string reason = admission::to_string(outcome);
    metrics_.shed.at({{"class", ctx.priority}, {"reason", reason}, {"tenant", ctx.tenant}})
        .Increment();
    ctx.result = "shed";
    LocalReply shed{.status = http::status::service_unavailable,
                    .type = "server_error",
                    .code = "overloaded",
                    .message = "The waypoint is at capacity and shed this " + ctx.priority +
                               " request (" + reason + "). Please retry after a brief wait.",
                    .headers = {{"retry-after", "1"}, {"x-sluice-shed", reason}}};
    co_await reply(ex, ctx, shed);
    complete();
    co_return std::nullopt;
}

awaitable<void> Gateway::route(Exchange& ex, RequestContext& ctx, FilterSettlement& settlement,
                               UpstreamPool& upstream) {
    tcp::socket* upstream_socket = nullptr;
    ClientWatch watch(ex.stream, ex.buffer,
                      config_.limits.max_header_bytes + config_.limits.max_body_bytes);
    // As in admit(): the coroutines first, then the watch.
    auto attempts = watch.around(tryTargets(ex, ctx, settlement, upstream, watch, upstream_socket));
    watch.start([&upstream_socket] {
        if (upstream_socket) {
            error_code ec;
            upstream_socket->close(ec);
        }
    });
    co_await std::move(attempts);
}

awaitable<void> Gateway::tryTargets(Exchange& ex, RequestContext& ctx, FilterSettlement& settlement,
                                    UpstreamPool& upstream, const ClientWatch& watch,
                                    tcp::socket*& upstream_socket) {
    const auto& route_config = *router_->routeFor(ctx);
    std::size_t target_index = 0;
    const Endpoint* avoid = nullptr;
    std::optional<LocalReply> failure;
    // A retry counts against the route's retry budget from when it is allowed until the attempt
    // it allowed has ended (Envoy's retries in flight), not just through its backoff.
    HeldRetry retry(*router_, ctx);
    for (std::uint32_t attempt = 0;; ++attempt) {
        const RouteTarget& target = ctx.targets[std::min(target_index, ctx.targets.size() - 1)];
        const bool more_targets = target_index + 1 < ctx.targets.size();
        const bool last = attempt >= route_config.retries.attempts;
        PickedEndpoint picked(*target.pool, target.pool->pick(ctx, avoid));
        Endpoint* ep = picked.get();
        ForwardResult result;
        bool relayed_whole = false;  // forward() relayed the response to its end
        if (!ep) {
            result.outcome = ForwardOutcome::RetryableStatus;  // circuit open: overflow
            failure = LocalReply{
                .status = http::status::service_unavailable,
                .type = "server_error",
                .message = "upstream pool " + target.pool->name() +
                           (target.pool->size() ? " is overloaded" : " has no ready endpoints")};
        } else {
            std::string rewritten;
            const std::string* body = &ex.request.body();  // as the client sent it
            const bool rewrite = !target.model.empty() && target.model != ctx.model;
            ctx.sent_model = rewrite ? target.model : std::string();
            if (ctx.body && rewrite) {
                rewritten = withModel(*ctx.body, target.model);
                body = &rewritten;
            } else if (ctx.body && ctx.body_modified) {
                rewritten = ctx.body->write();
                body = &rewritten;
            } else if (!ctx.body_insert.empty()) {
                const std::string_view text = *body;
                const std::size_t at = ctx.body_insert_at;
                rewritten.reserve(text.size() + ctx.body_insert.size());
                rewritten.append(text.substr(0, at))
                    .append(ctx.body_insert)
                    .append(text.substr(at));
                body = &rewritten;
            }
            // A 5xx/429 is held back for a retry only when one may follow (the retry this
            // attempt holds is given back before the next is asked for); else the client gets
            // the backend's own answer (its body, its retry-after).
            ForwardOptions options{
                .timeout = target.timeout,
                .hold_retryable_status = !last && router_->retryAvailable(ctx, retry.held())};
            const auto started = std::chrono::steady_clock::now();
            result =
                co_await forward(ClientSide{ex.stream, ex.request.version(), ex.keep_alive}, ctx,
                                 *body, ep->address, options, filters_, upstream, &upstream_socket);
            relayed_whole = result.outcome == ForwardOutcome::Completed;
            // A client that left closed the upstream socket under forward(), whose connect or
            // read then failed: that says nothing about the endpoint, which must not be ejected
            // for it. What forward() had found before (a timeout, a 5xx) still counts.
            const bool cut_by_client =
                watch.gone() && (result.outcome == ForwardOutcome::UpstreamFailed ||
                                 result.outcome == ForwardOutcome::ConnectFailed);
            const bool ok = relayed_whole && result.status < 500;
            if (cut_by_client || result.outcome == ForwardOutcome::ClientGone) {
                picked.abandon();
            } else {
                // A timeout is a latency sample too (the time it waited), so peak-EWMA turns
                // away from an endpoint that accepts and never answers.
                std::optional<std::chrono::steady_clock::duration> latency;
                if (result.status)
                    latency = result.header_latency;
                else if (result.outcome == ForwardOutcome::Timeout)
                    latency = std::chrono::steady_clock::now() - started;
                picked.finish(ok || result.status == 429, latency);
            }
            metrics_.upstream_attempts
                .at({{"pool", target.pool->name()},
                     {"outcome", cut_by_client ? std::string("client_gone")
                                               : std::string(toString(result.outcome))}})
                .Increment();
            // The client's leaving ends the attempts, unless the response reached it whole.
            if (watch.gone() && !relayed_whole)
                result.outcome = ForwardOutcome::ClientGone;
            ctx.backend = ep->name;
            if (auto status = failureStatus(result)) {
                failure = LocalReply{
                    .status = *status,
                    .type = "server_error",
                    .message = "upstream " + ep->name + " " +
                               std::string(toString(result.outcome)) +
                               (result.status ? " (" + std::to_string(result.status) + ")" : "")};
            }
            avoid = ep;
        }
        retry.release();
        if (result.close_delimited || watch.gone())
            ex.keep_alive = false;
        if (result.outcome == ForwardOutcome::Completed) {
            ctx.result = result.status < 400 ? "ok" : "upstream_status";
            failure.reset();
            break;
        }
        if (result.outcome == ForwardOutcome::ClientGone) {
            ctx.result = "client_gone";
            ex.keep_alive = false;
            ex.response_complete = relayed_whole;  // whole before the client went: a clean end
            failure.reset();
            break;
        }
        if (result.committed) {  // failed mid-response: only closing can tell the client
            ctx.result = "upstream_reset";
            ex.keep_alive = false;
            ex.response_complete = false;
            failure.reset();
            break;
        }
        if (last || !router_->retryAllowed(ctx)) {
            ctx.result = "upstream_error";
            break;
        }
        retry.hold();
        // Back off (exponential with jitter) before the next try; a fallback target is tried
        // next when there is one, else another endpoint of the same pool.
        thread_local std::minstd_rand rng{std::random_device{}()};
        const auto base = route_config.retries.backoff * (1 << std::min(attempt, 6u));
        asio::steady_timer timer(ex.stream.get_executor());
        timer.expires_after(base / 2 + std::chrono::milliseconds(rng() % (base.count() / 2 + 1)));
        error_code ec;
        co_await timer.async_wait(noThrow(ec));
        if (more_targets) {
            ++target_index;
            avoid = nullptr;
        }
        if (watch.gone()) {
            ctx.result = "client_gone";
            ex.keep_alive = false;
            failure.reset();
            break;
        }
    }
    retry.release();  // the client left during the backoff
    if (failure) {
        ctx.backend.clear();
        co_await reply(ex, ctx, *failure);  // a write may run beside the watch's read
    }
    // Settle budgets and record before the next suspension: once the last byte is written the
    // client may already send its next request, which must see this one settled.
    settlement.settle();
    record(ctx);
}

Gateway::RequestMetrics Gateway::requestMetrics(const RequestContext& ctx, std::string_view code,
                                                std::string_view principal,
                                                std::string_view operation, MetricsWanted wanted) {
    thread_local std::string key;
    key.clear();
    for (std::string_view part :
         {code, std::string_view(ctx.route), principal, std::string_view(ctx.model), operation,
          std::string_view(ctx.tenant)}) {
        key.append(part).push_back('\0');
    }
    std::lock_guard lock(request_metrics_mutex_);
    auto it = request_metrics_.find(key);
    if (it == request_metrics_.end()) {
        if (request_metrics_.size() >= kMaxRequestMetrics)
            request_metrics_.clear();
        it = request_metrics_.emplace(key, RequestMetrics{}).first;
    }
    RequestMetrics& m = it->second;
    if (m.duration == nullptr) {
        m.duration = &metrics_.duration_ms.at({{"reporter", "waypoint"}, {"response_code", code}},
                                              latencyBucketsMs());
        m.requests = &metrics_.requests.at({{"reporter", "waypoint"},
                                            {"response_code", code},
                                            {"destination_service", ctx.route},
                                            {"source_principal", principal},
                                            {"request_protocol", "http"}});
    }
    for (std::size_t type = 0; type < (wanted.output ? 2u : 1u) && wanted.tokens; ++type) {
        if (m.tokens[type] != nullptr)
            continue;
        const std::initializer_list<Labeled<prometheus::Counter>::Label> labels{
            {"gen_ai_token_type", type == 0 ? "input" : "output"},
            {"gen_ai_request_model", ctx.model},
            {"gen_ai_operation_name", operation},
            {"tenant", ctx.tenant}};
        m.token_usage[type] = &metrics_.token_usage.at(labels, tokenBuckets());
        m.tokens[type] = &metrics_.tokens.at(labels);
    }
    const std::initializer_list<Labeled<prometheus::Histogram>::Label> model_labels{
        {"gen_ai_request_model", ctx.model}, {"gen_ai_operation_name", operation}};
    if (wanted.tokens && m.operation == nullptr)
        m.operation = &metrics_.operation_s.at(model_labels, secondsBuckets());
    if (wanted.ttft && m.ttft == nullptr)
        m.ttft = &metrics_.ttft_s.at(model_labels, secondsBuckets());
    if (wanted.tpot && m.tpot == nullptr)
        m.tpot = &metrics_.tpot_s.at(model_labels, secondsBuckets());
    return m;
}

void Gateway::record(const RequestContext& ctx) {
    const auto end = Clock::now();
    const double ms = std::chrono::duration<double, std::milli>(end - ctx.start).count();
    char code_digits[16];
    const std::string_view code(
        code_digits,
        std::size_t(std::to_chars(code_digits, code_digits + sizeof code_digits, ctx.status).ptr -
                    code_digits));
    const std::string_view principal =
        ctx.peer_identity.empty() ? std::string_view("unknown") : ctx.peer_identity;
    const bool genai = !ctx.api.empty() && ctx.api != "models" && !ctx.model.empty();
    const std::string_view operation =
        ctx.api == "embeddings" ? "embeddings" : (ctx.api == "chat" ? "chat" : "text_completion");
    MetricsWanted wanted{.tokens = genai && ctx.status > 0 && ctx.status < 400,
                         .output = ctx.api != "embeddings"};
    wanted.ttft = wanted.tokens && ctx.first_token.has_value();
    wanted.tpot = wanted.ttft && ctx.usage.completion_tokens > 1;
    const RequestMetrics m = requestMetrics(ctx, code, principal, operation, wanted);
    m.duration->Observe(ms);
    if (wanted.tokens) {
        m.token_usage[0]->Observe(double(ctx.usage.prompt_tokens));
        m.tokens[0]->Increment(double(ctx.usage.prompt_tokens));
        if (wanted.output) {
            m.token_usage[1]->Observe(double(ctx.usage.completion_tokens));
            m.tokens[1]->Increment(double(ctx.usage.completion_tokens));
        }
        m.operation->Observe(ms / 1000);
        if (wanted.ttft) {
            const double ttft = std::chrono::duration<double>(*ctx.first_token - ctx.start).count();
            m.ttft->Observe(ttft);
            if (wanted.tpot) {
                const double rest = std::chrono::duration<double>(end - *ctx.first_token).count();
                m.tpot->Observe(rest / double(ctx.usage.completion_tokens - 1));
            }
        }
    }
    // Last, so a reader that sees this request counted also sees its other metrics.
    m.requests->Increment();
    if (config_.access_log) {
        nlohmann::json line{{"path", std::string(sv(ctx.request.target()))},
                            {"method", std::string(sv(ctx.request.method_string()))},
                            {"status", ctx.status},
                            {"result", ctx.result},
                            {"tenant", ctx.tenant},
                            {"priority", ctx.priority},
                            {"model", ctx.model},
                            {"route", ctx.route},
                            {"backend", ctx.backend},
                            {"tokens_in", ctx.usage.prompt_tokens},
                            {"tokens_out", ctx.usage.completion_tokens},
                            {"usage_reported", ctx.usage.reported},
                            {"duration_ms", ms},
                            {"traceparent", ctx.traceparent}};
        if (!ctx.peer_identity.empty()) {
            line["peer"] = ctx.peer_identity;
            line["authority"] = ctx.destination;
        }
        if (ctx.first_token) {
            line["ttft_ms"] =
                std::chrono::duration<double, std::milli>(*ctx.first_token - ctx.start).count();
        }
        // Header values and the target may carry bytes that are not UTF-8: written as U+FFFD
        // (a strict dump would throw and lose the line).
        spdlog::info("access {}",
                     line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
}

}  // namespace sluice::waypoint
