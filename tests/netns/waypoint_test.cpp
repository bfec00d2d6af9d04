// netns tier: `sluice-testbed up --waypoint`. A client pod talks to sluice-waypoint (pod
// ai/waypoint) in front of the OpenAI-compatible emulator pods (a test fixture); per-tenant token
// budgets come from the cluster's policies folder, as the demo shows them.
#include <gtest/gtest.h>
#include <unistd.h>

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "common/process.h"
#include "tests/netns/access_log_lines.h"
#include "tests/support/privileged.h"
#include "tests/support/sockets.h"
#include "tests/testbed/mesh.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {

// gtest prints test parameters with this (found by argument-dependent lookup).
void PrintTo(MeshMode mode, std::ostream* os) {
    *os << to_string(mode);
}

namespace {

using nlohmann::json;

constexpr int kMaxRequests = 200;  // bound on every request loop
constexpr auto kReloadWait = std::chrono::seconds(10);

std::string cluster_name(const char* tag) {
    return std::string(tag) + std::to_string(::getpid() % 100000);
}

std::pair<std::string, uint16_t> split(const std::string& address) {
    const auto colon = address.rfind(':');
    return {address.substr(0, colon), static_cast<uint16_t>(std::stoi(address.substr(colon + 1)))};
}

// A TokenBudget in the policies library's schema, for a tenant named by the x-tenant header.
void write_budget(const std::string& policies_dir, const std::string& tenant,
                  std::uint64_t tokens_per_minute) {
    const std::string path = policies_dir + "/budgets.yaml";
    {
        std::ofstream f(path + ".tmp", std::ios::trunc);
        f << "apiVersion: sluice.dev/v1alpha1\nkind: TokenBudget\nmetadata: {name: " << tenant
          << ", namespace: ai}\nspec:\n  tenant: {header: " << tenant
          << "}\n  limits: {tokensPerMinute: " << tokens_per_minute << "}\n";
    }
    std::filesystem::rename(path + ".tmp", path);  // one inotify event, never a half file
}

class WaypointTest : public ::testing::Test {
  protected:
    void SetUp() override { start(MeshMode::None); }
    void start(MeshMode mesh, const std::function<void(ClusterSpec&)>& extend = {}) {
        SLUICE_REQUIRE_PRIVILEGES();
        options_.bin_dir = SLUICE_BIN_DIR;
        options_.cni_path.insert(options_.cni_path.begin(), SLUICE_BIN_DIR);
        name_ = cluster_name("wp");
        ClusterSpec spec = generated_spec(name_, 2, 1);
        spec.mesh = mesh;
        spec.namespaces.push_back({"default", {{"istio.io/dataplane-mode", "ambient"}}});
        spec.waypoint = true;
        if (extend)
            extend(spec);
        state_ = up(spec, options_);
        ASSERT_TRUE(state_.waypoint.has_value());
        std::tie(gateway_ip_, gateway_port_) = split(state_.waypoint->gateway);
        std::tie(metrics_ip_, metrics_port_) = split(state_.waypoint->metrics);
        client_ = state_.find_pod("pod-1-0");
        ASSERT_NE(client_, nullptr);
    }
    void TearDown() override {
        if (name_.empty())
            return;
        if (HasFailure()) {  // the daemons' logs (ztunnel access logs included) say why
            for (const auto& d : state_.daemons) {
                std::ifstream f(d.log);
                std::cerr << "==== " << d.name << " " << d.pod << " " << d.log << "\n"
                          << std::string(std::istreambuf_iterator<char>(f), {}) << "\n";
            }
            for (const auto& n : state_.nodes) {
                std::ifstream f(n.run_dir + "/ztunnel-access.log");
                std::cerr << "==== " << n.name << " ztunnel-access.log\n"
                          << std::string(std::istreambuf_iterator<char>(f), {}) << "\n";
            }
        }
        down(name_, options_);
        EXPECT_EQ(leftovers(name_, options_), std::vector<std::string>{});
    }

    test::HttpReply chat(const std::string& tenant, int max_tokens = 50) {
        const json body = {{"model", "gpt-4o-mini"},
                           {"max_tokens", max_tokens},
                           {"messages", {{{"role", "user"}, {"content", "hello from " + tenant}}}}};
        return test::http_request(
            client_->netns, gateway_ip_, gateway_port_, "POST", "/v1/chat/completions",
            {{"content-type", "application/json"}, {"x-tenant", tenant}}, body.dump());
    }
    std::string metrics() {
        return test::http_get(client_->netns, metrics_ip_, metrics_port_, "/metrics");
    }
    // Sends tenant's requests until one is refused; returns it (status 0 if none was).
    test::HttpReply exhaust(const std::string& tenant, int* admitted) {
        for (int i = 0; i < kMaxRequests; ++i) {
            test::HttpReply r = chat(tenant);
            if (r.status != 200)
                return r;
            ++*admitted;
        }
        return {};
    }
    // Polls (bounded) until tenant's x-ratelimit-limit-tokens shows `limit`: the reload applied.
    bool wait_for_limit(const std::string& tenant, const std::string& limit) {
        const auto deadline = std::chrono::steady_clock::now() + kReloadWait;
        while (std::chrono::steady_clock::now() < deadline) {
            test::HttpReply r = chat(tenant, 1);
            if (r.headers["x-ratelimit-limit-tokens"] == limit)
                return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        return false;
    }

    TestbedOptions options_;
    std::string name_;
    ClusterState state_;
    const PodState* client_ = nullptr;
    std::string gateway_ip_, metrics_ip_;
    uint16_t gateway_port_ = 0, metrics_port_ = 0;
};

TEST_F(WaypointTest, TenantOverItsTokenBudgetGets429WhileAnotherIsServed) {
    // Emulator pods and the waypoint run in namespace ai; status --json carries the gateway.
    ASSERT_NE(state_.find_pod("ai/llm-0"), nullptr);
    ASSERT_NE(state_.find_pod("ai/llm-1"), nullptr);
    EXPECT_EQ(state_.waypoint->gateway, state_.find_pod("ai/waypoint")->ip + ":8080");
    EXPECT_EQ(to_json(state_)["waypoint"]["gateway"], state_.waypoint->gateway);

    write_budget(state_.policies_dir, "tenant-a", 300);
    ASSERT_TRUE(wait_for_limit("tenant-a", "300")) << "the policies folder was not applied";

    int admitted = 0;
    test::HttpReply refused = exhaust("tenant-a", &admitted);
    ASSERT_EQ(refused.status, 429u) << refused.body;
    EXPECT_GE(admitted, 1);
    const json error = json::parse(refused.body).at("error");
    EXPECT_EQ(error.at("code"), "rate_limit_exceeded");
    EXPECT_EQ(error.at("type"), "tokens");
    EXPECT_NE(error.at("message").get<std::string>().find("tenant-a"), std::string::npos);
    EXPECT_EQ(refused.headers["x-ratelimit-limit-tokens"], "300");
    // What is left is less than the request wanted (its prompt estimate + max_tokens 50).
    EXPECT_LT(std::stoi(refused.headers["x-ratelimit-remaining-tokens"]), 50 + 20);
    EXPECT_TRUE(std::regex_match(refused.headers["x-ratelimit-reset-tokens"],
                                 std::regex(R"(([0-9]+m)?[0-9.]+s)")))
        << refused.headers["x-ratelimit-reset-tokens"];
    EXPECT_GE(std::stoi(refused.headers["retry-after"]), 1);

    // tenant-b has only the cluster-wide default budget: served, with the emulator's usage.
    test::HttpReply served = chat("tenant-b");
    ASSERT_EQ(served.status, 200u) << served.body;
    const json usage = json::parse(served.body).at("usage");
    EXPECT_GT(usage.at("prompt_tokens").get<int>(), 0);
    EXPECT_GT(usage.at("completion_tokens").get<int>(), 0);
    EXPECT_EQ(served.headers["x-ratelimit-limit-tokens"], "1000000");
    EXPECT_NE(served.headers["x-backend"].find("llm-"), std::string::npos);

    const std::string m = metrics();
    EXPECT_NE(m.find("sluice_requests_rejected_total{reason=\"tokens per min (TPM)\",tenant=\""
                     "tenant-a\"} 1"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("response_code=\"429\""), std::string::npos);
    // The access log line of the refusal.
    std::ifstream log(state_.waypoint->log);
    std::string line, last_429;
    while (std::getline(log, line)) {
        if (line.find("\"status\":429") != std::string::npos)
            last_429 = line;
    }
    EXPECT_NE(last_429.find("\"tenant\":\"tenant-a\""), std::string::npos) << last_429;
}

TEST_F(WaypointTest, ChangedTokenBudgetInThePoliciesFolderTakesEffect) {
    write_budget(state_.policies_dir, "tenant-a", 120);
    ASSERT_TRUE(wait_for_limit("tenant-a", "120"));
    int admitted = 0;
    ASSERT_EQ(exhaust("tenant-a", &admitted).status, 429u);

    // Raised: the next request is admitted at once (what was used stays used, the rest is new).
    write_budget(state_.policies_dir, "tenant-a", 500000);
    ASSERT_TRUE(wait_for_limit("tenant-a", "500000"));
    test::HttpReply r = chat("tenant-a");
    EXPECT_EQ(r.status, 200u) << r.body;

    // A broken folder keeps the last good budget.
    {
        std::ofstream f(state_.policies_dir + "/broken.yaml.tmp");
        f << "apiVersion: sluice.dev/v1alpha1\nkind: TokenBudget\nmetadata: {name: x}\nspec: {}\n";
    }
    std::filesystem::rename(state_.policies_dir + "/broken.yaml.tmp",
                            state_.policies_dir + "/broken.yaml");
    const auto deadline = std::chrono::steady_clock::now() + kReloadWait;
    std::string m;
    while (std::chrono::steady_clock::now() < deadline &&
           (m = metrics()).find("sluice_policy_reload_total{result=\"failure\"}") ==
               std::string::npos) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::smatch failures;
    ASSERT_TRUE(std::regex_search(
        m, failures, std::regex(R"(sluice_policy_reload_total\{result="failure"\} (\d+))")))
        << m;
    EXPECT_GE(std::stoi(failures[1]), 1);
    EXPECT_EQ(chat("tenant-a").headers["x-ratelimit-limit-tokens"], "500000");
}

// The waypoint works in every mesh mode; with the sidecarless mesh the client's hop to it is
// captured and carried over HBONE like any pod traffic.
class WaypointOnMeshTest : public WaypointTest, public ::testing::WithParamInterface<MeshMode> {
  protected:
    void SetUp() override { start(GetParam()); }
};

TEST_P(WaypointOnMeshTest, ClientIsServedThroughTheMesh) {
    test::HttpReply r = chat("tenant-b");
    ASSERT_EQ(r.status, 200u) << r.body;
    EXPECT_GT(json::parse(r.body).at("usage").at("total_tokens").get<int>(), 0);
    EXPECT_NE(metrics().find("response_code=\"200\""), std::string::npos);
    if (GetParam() == MeshMode::Sidecar) {
        EXPECT_EQ(state_.waypoint->metrics, state_.find_pod("ai/waypoint")->ip + ":15090");
    }
    if (GetParam() != MeshMode::Sidecarless)
        return;
    // Capture is by cgroup, so this client runs as a process of the pod (curl), not as a thread
    // of the test that only entered the pod's netns. Its node's ztunnel logs the hop: HBONE to
    // the waypoint pod, both identities. ztunnel learns new pods from the registry a moment
    // after `up`, so the client asks again (bounded) until a hop is logged.
    auto curl_chat = [&] {
        ProcessResult r = run_process(
            pod_process(*client_,
                        {"curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                         "-H", "content-type: application/json", "-H", "x-tenant: tenant-b", "-d",
                         R"({"model":"m","messages":[{"role":"user","content":"hi"}]})",
                         "http://" + state_.waypoint->gateway + "/v1/chat/completions"}),
            std::chrono::seconds(10));
        return r.out;
    };
    EXPECT_EQ(curl_chat(), "200");
    const std::string log_path = state_.nodes.at(client_->node).run_dir + "/ztunnel-access.log";
    const auto deadline = std::chrono::steady_clock::now() + kReloadWait;
    json hop;
    while (hop.is_null() && std::chrono::steady_clock::now() < deadline) {
        std::ifstream log(log_path);
        for (std::string line; std::getline(log, line);) {
            auto e = json::parse(line, nullptr, false);
            if (!e.is_discarded() && e.value("direction", "") == "outbound" &&
                e.value("dst.addr", "") == state_.waypoint->gateway)
                hop = e;
        }
        if (hop.is_null()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            EXPECT_EQ(curl_chat(), "200");
        }
    }
    ASSERT_FALSE(hop.is_null()) << "no ztunnel access-log line for the hop in " << log_path;
    EXPECT_EQ(hop["src.identity"], "spiffe://cluster.local/ns/default/sa/default");
    EXPECT_EQ(hop["dst.identity"], "spiffe://cluster.local/ns/ai/sa/waypoint");
    EXPECT_EQ(hop["dst.hbone_addr"], state_.find_pod("ai/waypoint")->ip + ":15008");
    EXPECT_EQ(hop["result"], "ok");
}

INSTANTIATE_TEST_SUITE_P(Meshes, WaypointOnMeshTest,
                         ::testing::Values(MeshMode::Sidecar, MeshMode::Sidecarless),
                         [](const auto& info) { return to_string(info.param); });

// What curl in a pod got: its exit code, the status, headers (lower-case) and body.
struct CurlReply {
    int exit_code = -1;
    std::string status_line;  // "HTTP/2 200", "HTTP/1.1 200 OK"
    unsigned status = 0;
    std::map<std::string, std::string> headers;
    std::string body;
};

// Istio ambient with a waypoint (sidecarless): service ai/llm is labelled
// `istio.io/use-waypoint: waypoint`, so a client that only knows the service VIP is carried by its
// node's ztunnel over HBONE to the waypoint pod's :15008, which the waypoint terminates itself;
// the waypoint's upstream to the emulator goes through the waypoint pod's ztunnel.
class WaypointHboneTest : public WaypointTest {
  protected:
    static constexpr const char* kClientPrincipal = "cluster.local/ns/default/sa/default";
    static constexpr const char* kWaypointId = "spiffe://cluster.local/ns/ai/sa/waypoint";

    void SetUp() override {
        start(MeshMode::Sidecarless, [](ClusterSpec& spec) {
            // A second client identity in another namespace, on the other node.
            spec.namespaces.push_back({"tenant-b", {{"istio.io/dataplane-mode", "ambient"}}});
            spec.pods.push_back({.name = "client",
                                 .namespace_name = "tenant-b",
                                 .service_account = "client-b",
                                 .node = 0});
        });
        if (HasFatalFailure())
            return;
        ASSERT_FALSE(state_.waypoint->hbone.empty())
            << "sluice-waypoint in " << SLUICE_BIN_DIR << " has no --hbone-listen";
        EXPECT_EQ(state_.waypoint->hbone, state_.find_pod("ai/waypoint")->ip + ":15008");
        for (const auto& s : state_.services) {
            if (s.spec.namespace_name == "ai" && s.spec.name == "llm")
                llm_vip_ = s.vip + ":8000";
        }
        ASSERT_FALSE(llm_vip_.empty());
        client_b_ = state_.find_pod("tenant-b/client");
        ASSERT_NE(client_b_, nullptr);
    }

    // A chat completion to the llm service VIP from a process of `pod` (captured by its cgroup),
    // with no knowledge of the waypoint; `h2`: HTTP/2 with prior knowledge (h2c).
    CurlReply curl_chat(const PodState& pod, int max_tokens = 50, bool h2 = false) {
        const json body = {{"model", "gpt-4o-mini"},
                           {"max_tokens", max_tokens},
                           {"messages", {{{"role", "user"}, {"content", "hello"}}}}};
        std::vector<std::string> argv{"curl",
                                      "-sS",
                                      "-i",
                                      "--max-time",
                                      "5",
                                      "-H",
                                      "content-type: application/json",
                                      "-d",
                                      body.dump(),
                                      "http://" + llm_vip_ + "/v1/chat/completions"};
        if (h2)
            argv.insert(argv.begin() + 1, "--http2-prior-knowledge");
        ProcessResult r = run_process(pod_process(pod, argv), std::chrono::seconds(10));
        CurlReply reply;
        reply.exit_code = r.exit_code;
        std::istringstream in(r.out);
        std::string line;
        if (std::getline(in, line)) {
            reply.status_line = line;
            std::smatch m;
            if (std::regex_search(line, m, std::regex(R"(^HTTP/[0-9.]+ ([0-9]{3}))")))
                reply.status = static_cast<unsigned>(std::stoi(m[1]));
        }
        while (std::getline(in, line) && line != "\r" && !line.empty()) {
            const auto colon = line.find(':');
            if (colon == std::string::npos)
                continue;
            std::string name = line.substr(0, colon);
            std::transform(name.begin(), name.end(), name.begin(), ::tolower);
            std::string value = line.substr(colon + 1);
            value.erase(0, value.find_first_not_of(' '));
            if (!value.empty() && value.back() == '\r')
                value.pop_back();
            reply.headers[name] = value;
        }
        reply.body.assign(std::istreambuf_iterator<char>(in), {});
        return reply;
    }

    std::vector<json> ztunnel_lines(const std::function<bool(const json&)>& match) {
        std::vector<json> out;
        for (const auto& n : state_.nodes) {
            for (auto& e : access_log_lines(n.run_dir + "/ztunnel-access.log", match))
                out.push_back(std::move(e));
        }
        return out;
    }

    // Requests the emulator pods have served (read on their own loopback: no mesh involved).
    int emulator_requests() {
        int total = 0;
        for (const char* pod : {"ai/llm-0", "ai/llm-1"}) {
            const auto stats = local_http_get(state_.find_pod(pod)->netns, 8000, "/emulator/stats");
            total += json::parse(stats.value_or("{}")).at("requests").get<int>();
        }
        return total;
    }

    std::string llm_vip_;
    const PodState* client_b_ = nullptr;
};

TEST_F(WaypointHboneTest, ServiceVipGoesThroughTheWaypointOverHbone) {
    const std::string client_id = std::string("spiffe://") + kClientPrincipal;
    CurlReply r = curl_chat(*client_);
    ASSERT_EQ(r.status, 200u) << "curl exit " << r.exit_code << "\n" << r.body;
    const json usage = json::parse(r.body).at("usage");
    EXPECT_GT(usage.at("prompt_tokens").get<int>(), 0);
    EXPECT_GT(usage.at("completion_tokens").get<int>(), 0);
    EXPECT_NE(r.headers["x-backend"].find("llm-"), std::string::npos);

    // The client's node ztunnel: HBONE to the waypoint pod, the VIP as destination.
    const std::string waypoint_ip = state_.find_pod("ai/waypoint")->ip;
    auto hops = awaited_access_log_lines(
        state_.nodes.at(client_->node).run_dir + "/ztunnel-access.log", [&](const json& e) {
            return e.value("direction", "") == "outbound" && e.value("dst.addr", "") == llm_vip_;
        });
    ASSERT_FALSE(hops.empty());
    const json& hop = hops.back();
    EXPECT_EQ(hop["dst.hbone_addr"], waypoint_ip + ":15008");
    EXPECT_EQ(hop["dst.identity"], kWaypointId);
    EXPECT_EQ(hop["src.identity"], client_id);
    EXPECT_EQ(hop["dst.workload"], "llm");
    EXPECT_EQ(hop["dst.service"], "llm.ai.svc.cluster.local");
    EXPECT_EQ(hop["waypoint"], "ai/waypoint");
    EXPECT_EQ(hop["result"], "ok");

    // The waypoint terminated the HBONE: its access log has the client's principal and the VIP
    // as authority.
    {
        // Written once the response was sent: it may come a moment after curl exited.
        std::string seen;
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (seen.empty() && std::chrono::steady_clock::now() < until) {
            std::ifstream log(state_.waypoint->log);
            for (std::string line; std::getline(log, line);) {
                if (line.find(client_id) != std::string::npos &&
                    line.find(llm_vip_) != std::string::npos)
                    seen = line;
            }
            if (seen.empty())
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        EXPECT_FALSE(seen.empty())
            << "no waypoint access-log line with " << client_id << " and " << llm_vip_;
    }
    // The waypoint's upstream went through its pod's ztunnel: the backend side's ztunnel counts
    // an inbound connection from the waypoint's identity (its access-log line comes when the
    // waypoint's pooled upstream connection closes).
    const std::string backend = r.headers["x-backend"];
    const PodState* llm = state_.find_pod("ai/" + backend);
    ASSERT_NE(llm, nullptr) << backend;
    const std::string m =
        local_http_get(state_.nodes.at(llm->node).netns, 15020, "/metrics").value_or("");
    EXPECT_TRUE(std::regex_search(
        m, std::regex("istio_tcp_connections_opened_total\\{[^}]*destination_workload=\"" +
                      backend + "\"[^}]*reporter=\"destination\"[^}]*source_principal=\"" +
                      kWaypointId + "\"[^}]*\\} [1-9]")))
        << "no inbound connection from the waypoint to " << backend << " counted:\n"
        << m;
    EXPECT_TRUE(ztunnel_lines([&](const json& e) {
                    return e.value("src.identity", "") == client_id &&
                           e.value("dst.workload", "").starts_with("llm-");
                }).empty())
        << "the client reached a backend without the waypoint";
}

// A client speaking h2c with prior knowledge to the service VIP: ztunnel carries its bytes in an
// HBONE CONNECT stream, and the waypoint serves them as HTTP/2 (the emulator behind it speaks
// only HTTP/1.1) with the client's identity.
TEST_F(WaypointHboneTest, H2PriorKnowledgeThroughZtunnelIsServedAsHttp2) {
    const std::string client_id = std::string("spiffe://") + kClientPrincipal;
    CurlReply r = curl_chat(*client_, 50, true);
    ASSERT_EQ(r.status, 200u) << "curl exit " << r.exit_code << "\n" << r.body;
    EXPECT_TRUE(r.status_line.starts_with("HTTP/2 ")) << r.status_line;
    const json usage = json::parse(r.body).at("usage");
    EXPECT_GT(usage.at("completion_tokens").get<int>(), 0);
    EXPECT_NE(r.headers["x-backend"].find("llm-"), std::string::npos);
    EXPECT_FALSE(r.headers["x-ratelimit-limit-tokens"].empty());
    EXPECT_EQ(r.headers.count("connection"), 0u) << "an HTTP/1.1 field in an HTTP/2 response";
    std::ifstream log(state_.waypoint->log);
    std::string line, seen;
    while (std::getline(log, line)) {
        if (line.find(client_id) != std::string::npos && line.find(llm_vip_) != std::string::npos)
            seen = line;
    }
    EXPECT_FALSE(seen.empty()) << "no waypoint access-log line with " << client_id << " and "
                               << llm_vip_;
}

TEST_F(WaypointHboneTest, TokenBudgetOnTheClientsSpiffeIdentity) {
    {
        const std::string path = state_.policies_dir + "/budgets.yaml";
        std::ofstream(path + ".tmp", std::ios::trunc)
            << "apiVersion: sluice.dev/v1alpha1\nkind: TokenBudget\nmetadata: {name: client-a, "
               "namespace: ai}\nspec:\n  tenant: {principal: "
            << kClientPrincipal << "}\n  limits: {tokensPerMinute: 300}\n";
        std::filesystem::rename(path + ".tmp", path);
    }
    const auto deadline = std::chrono::steady_clock::now() + kReloadWait;
    while (std::chrono::steady_clock::now() < deadline &&
           curl_chat(*client_, 1).headers["x-ratelimit-limit-tokens"] != "300") {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_EQ(curl_chat(*client_, 1).headers["x-ratelimit-limit-tokens"], "300")
        << "the budget on the SPIFFE identity was not applied";

    int admitted = 0;
    CurlReply refused;
    for (int i = 0; i < kMaxRequests; ++i) {
        refused = curl_chat(*client_);
        if (refused.status != 200)
            break;
        ++admitted;
    }
    ASSERT_EQ(refused.status, 429u) << refused.body;
    EXPECT_GE(admitted, 1);
    EXPECT_EQ(json::parse(refused.body).at("error").at("code"), "rate_limit_exceeded");

    // Another identity (tenant-b/client, sa client-b) still has the default budget.
    CurlReply served = curl_chat(*client_b_);
    ASSERT_EQ(served.status, 200u) << served.body;
    EXPECT_EQ(served.headers["x-ratelimit-limit-tokens"], "1000000");
}

TEST_F(WaypointHboneTest, WaypointDownRefusesInsteadOfBypassing) {
    ASSERT_EQ(curl_chat(*client_).status, 200u);
    const DaemonState* waypoint = nullptr;
    for (const auto& d : state_.daemons) {
        if (d.name == "sluice-waypoint")
            waypoint = &d;
    }
    ASSERT_NE(waypoint, nullptr);
    ASSERT_EQ(::kill(waypoint->pid, SIGKILL), 0);
    ASSERT_EQ(wait_process(waypoint->pid, std::chrono::seconds(5)), 128 + SIGKILL);

    const int served_before = emulator_requests();
    CurlReply r = curl_chat(*client_);
    EXPECT_EQ(r.status, 0u) << r.body;
    EXPECT_NE(r.exit_code, 0) << "curl must see a reset or closed connection";
    EXPECT_EQ(emulator_requests(), served_before) << "the request reached a backend directly";
    auto failed = awaited_access_log_lines(
        state_.nodes.at(client_->node).run_dir + "/ztunnel-access.log", [&](const json& e) {
            return e.value("dst.addr", "") == llm_vip_ && e.value("result", "") != "ok";
        });
    ASSERT_FALSE(failed.empty());
    EXPECT_EQ(failed.back()["waypoint"], "ai/waypoint");
    EXPECT_EQ(failed.back()["direction"], "outbound") << "never passthrough";
}

}  // namespace
}  // namespace sluice::testbed
