// netns tier: sluice-ztunnel on the testbed in sidecar mode (one ztunnel per pod behind iptables
// REDIRECT). Asserts what a user sees: bytes that arrive, the address the server sees, what an
// independent HBONE client gets from :15008, access-log lines and Prometheus metrics.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/fd_io.h"
#include "common/process.h"
#include "tests/netns/stream_pattern.h"
#include "tests/netns/ztunnel_cluster.h"
#include "tests/support/privileged.h"
#include "tests/support/sockets.h"
#include "tests/testbed/spec.h"
#include "tests/testbed/testbed.h"

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::Fd;

constexpr const char* kSpec = R"(
nodes: 2
mesh: sidecar
pods:
  - name: client
    serviceAccount: rag
    node: 0
    labels: {app: rag}
  - name: server
    serviceAccount: llm
    node: 1
    labels: {app: llm}
services:
  - name: llm
    selector: {app: llm}
    ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
)";
constexpr uint16_t kAppPort = 8080;
constexpr const char* kClientId = "spiffe://cluster.local/ns/default/sa/rag";
constexpr const char* kServerId = "spiffe://cluster.local/ns/default/sa/llm";
// A DENY AuthorizationPolicy named `name` at the server (app llm) for one `source` clause.
std::string deny_at_server(const std::string& name, const std::string& source) {
    return R"(apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: )" +
           name + R"(, namespace: default}
spec:
  selector: {matchLabels: {app: llm}}
  action: DENY
  rules:
    - from:
        - source: )" +
           source + "\n";
}
// Denies the client's principal (sa rag).
const std::string kDenyRagPolicy =
    deny_at_server("deny-rag", R"({principals: ["cluster.local/ns/default/sa/rag"]})");

// Reads until EOF or timeout.
std::string read_all(const Fd& s, int timeout_ms = 5000) {
    std::string out;
    char buf[65536];
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (std::chrono::steady_clock::now() < deadline) {
        pollfd p{s.get(), POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0)
            continue;
        const ssize_t n = ::recv(s.get(), buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        out.append(buf, static_cast<size_t>(n));
    }
    return out;
}

// GET over plain HTTP/1.1 from inside a netns (ztunnel's admin and metrics ports).
std::string http_get(const std::string& netns, const std::string& ip, uint16_t port,
                     const std::string& path) {
    int err = 0;
    Fd s = test::tcp_connect(netns, ip, port, &err);
    if (!s)
        return {};
    const std::string req = "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (::send(s.get(), req.data(), req.size(), MSG_NOSIGNAL) < 0)
        return {};
    std::string resp = read_all(s);
    const auto body = resp.find("\r\n\r\n");
    return body == std::string::npos ? std::string() : resp.substr(body + 4);
}

class ZtunnelSidecarTest : public ZtunnelClusterTest {
  protected:
    virtual const char* spec() const { return kSpec; }
    void SetUp() override {
        SLUICE_REQUIRE_PRIVILEGES();
        start_cluster("zt", spec());
        // The registry is written after the pods: wait until every ztunnel has read it.
        for (const auto& p : state_.pods)
            wait_for_registry(p, state_.pods.size());
    }
    std::vector<std::string> log_files() const override {
        std::vector<std::string> files;
        for (const auto& e : fs::directory_iterator(state_.run_dir + "/logs"))
            files.push_back(e.path());
        for (const char* extra : {"/interop-server/server.log"})
            if (fs::exists(state_.run_dir + extra))
                files.push_back(state_.run_dir + extra);
        return files;
    }

    const NodeState& node(int i) const { return state_.nodes.at(i); }

    void wait_for_registry(const PodState& p, size_t workloads) {
        for (int i = 0; i < 100; ++i) {
            const std::string dump = http_get(p.netns, "127.0.0.1", 15000, "/config_dump");
            if (!dump.empty()) {
                json j = json::parse(dump);
                if (j["workloads"].size() == workloads && j["services"].size() == 1)
                    return;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        FAIL() << "ztunnel of " << p.name << " did not load the registry";
    }

    std::string metrics(const PodState& p) {
        return http_get(p.netns, "127.0.0.1", 15020, "/metrics");
    }

    // Access-log lines of a pod's ztunnel, waiting until at least `n` are there.
    std::vector<json> access_log(const PodState& p, size_t n) {
        std::vector<json> lines;
        for (int i = 0; i < 100 && lines.size() < n; ++i) {
            lines.clear();
            std::ifstream f(state_.run_dir + "/logs/access." + p.namespace_name + "." + p.name +
                            ".log");
            for (std::string l; std::getline(f, l);)
                lines.push_back(json::parse(l));
            if (lines.size() < n)
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        return lines;
    }

    // Echo through the mesh from `from`'s netns to ip:port; returns the server's view of the
    // client address.
    std::string echo(const std::string& from_netns, const std::string& ip, uint16_t port,
                     const std::string& payload) {
        const PodState& server = pod("server");
        const bool v6 = ip.find(':') != std::string::npos;
        Fd listener = test::tcp_listen(server.netns, v6 ? server.ip6 : server.ip, kAppPort);
        auto peer = std::async(std::launch::async,
                               [&] { return test::echo_one_connection(listener, 10000); });
        int err = 0;
        Fd c = test::tcp_connect(from_netns, ip, port, &err);
        EXPECT_TRUE(c) << strerror(err);
        if (c) {
            EXPECT_TRUE(test::send_and_receive(c, payload, 20000) == payload)
                << "payload of " << payload.size() << " bytes did not come back intact";
        }
        c = Fd();
        return peer.get();
    }

    // The independent HBONE client (python3-h2) from node 0's netns, outside the mesh.
    json python_hbone(const std::string& authority, const std::string& cert_prefix,
                      const std::string& ca) {
        const PodState& server = pod("server");
        ProcessSpec spec = node_process(
            node(0),
            {"/usr/bin/python3", SLUICE_SOURCE_DIR "/tests/netns/hbone_peer.py", "--connect",
             server.ip + ":15008", "--authority", authority, "--cert", cert_prefix + ".crt",
             "--key", cert_prefix + ".key", "--ca", ca, "--payload-size", "200000"});
        ProcessResult r = run_process(spec, std::chrono::seconds(30));
        if (r.exit_code != 0)
            return json{{"error", r.err}};
        return json::parse(r.out);
    }

    // POST /quitquitquit to a pod's sidecar (admin is loopback-only, inside the pod); the
    // response body.
    std::string quitquitquit(const PodState& p) {
        int err = 0;
        Fd admin = test::tcp_connect(p.netns, "127.0.0.1", 15000, &err);
        if (!admin)
            return "admin: " + std::string(strerror(err));
        const std::string req =
            "POST /quitquitquit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        if (::send(admin.get(), req.data(), req.size(), MSG_NOSIGNAL) < 0)
            return "send: " + std::string(strerror(errno));
        return read_all(admin);
    }

    // A drained sidecar exits once its last connection is gone: its readiness port closes.
    bool wait_sidecar_gone(const PodState& p) {
        int err = 0;
        for (int i = 0; i < 50; ++i) {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            if (!test::tcp_connect(p.netns, "127.0.0.1", 15021, &err, 200))
                return true;
        }
        return false;
    }

    std::string mint(const std::string& ca_dir, const std::string& identity,
                     const std::string& out) {
        ProcessSpec spec;
        spec.argv = {SLUICE_ZTUNNEL_BIN, "ca",     "mint",  "--dir", ca_dir,
                     "--identity",       identity, "--out", out};
        ProcessResult r = run_process(spec, std::chrono::seconds(30));
        EXPECT_EQ(r.exit_code, 0) << r.err;
        return out;
    }
};

TEST_F(ZtunnelSidecarTest, PodToPodAcrossNodesThroughTwoZtunnels) {
    const PodState& client = pod("client");
    const PodState& server = pod("server");
    const std::string one_mib(1 << 20, 'm');
    EXPECT_EQ(echo(client.netns, server.ip, kAppPort, "x"), client.ip)
        << "the app must see the client pod's own address";
    EXPECT_EQ(echo(client.netns, server.ip, kAppPort, one_mib), client.ip);

    auto out = access_log(client, 2);
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[1]["direction"], "outbound");
    EXPECT_EQ(out[1]["result"], "ok");
    EXPECT_EQ(out[1]["src.identity"], kClientId);
    EXPECT_EQ(out[1]["dst.identity"], kServerId);
    EXPECT_EQ(out[1]["dst.hbone_addr"], server.ip + ":15008");
    EXPECT_EQ(out[1]["bytes_received"], 1 << 20);
    EXPECT_EQ(out[1]["bytes_sent"], 1 << 20);
    auto in = access_log(server, 2);
    ASSERT_EQ(in.size(), 2u);
    EXPECT_EQ(in[1]["direction"], "inbound");
    EXPECT_EQ(in[1]["src.identity"], kClientId) << "the server side knows the peer's SPIFFE ID";
    EXPECT_EQ(in[1]["src.workload"], "client");
    EXPECT_EQ(in[1]["dst.workload"], "server");

    const std::string m_client = metrics(client);
    const std::string m_server = metrics(server);
    EXPECT_EQ(metric(m_client, "istio_tcp_connections_opened_total",
                     {"reporter=\"source\"", "source_principal=\"" + std::string(kClientId),
                      "destination_principal=\"" + std::string(kServerId),
                      "connection_security_policy=\"mutual_tls\""}),
              2);
    EXPECT_EQ(metric(m_server, "istio_tcp_connections_closed_total",
                     {"reporter=\"destination\"", "source_workload=\"client\"",
                      "destination_workload=\"server\""}),
              2);
    EXPECT_EQ(metric(m_server, "istio_tcp_received_bytes_total", {"reporter=\"destination\""}),
              (1 << 20) + 1);
    // Gauges are sampled every second.
    double pooled = 0;
    for (int i = 0; i < 40 && pooled != 1; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        pooled = metric(metrics(client), "sluice_pool_connections", {});
    }
    EXPECT_EQ(pooled, 1) << "both connections share one pooled HBONE connection";

    // sluicectl shows the same pooled connection and the server's view of its peer.
    ProcessSpec ctl;
    ctl.argv = {SLUICECTL_BIN, "connections", "--json", "--netns", client.netns};
    ProcessResult r = run_process(ctl, std::chrono::seconds(10));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    json conns = json::parse(r.out);
    ASSERT_EQ(conns["outbound"].size(), 1u) << r.out;
    EXPECT_EQ(conns["outbound"][0]["destination"], kServerId);
    EXPECT_EQ(conns["outbound"][0]["address"], server.ip + ":15008");
    ctl.argv = {SLUICECTL_BIN, "certs", "--json", "--netns", server.netns};
    r = run_process(ctl, std::chrono::seconds(10));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["certificates"][0]["identity"], kServerId);
}

TEST_F(ZtunnelSidecarTest, PodToPodOverIpv6KeepsTheClientsAddress) {
    const PodState& client = pod("client");
    const PodState& server = pod("server");
    ASSERT_FALSE(server.ip6.empty());
    const std::string one_mib(1 << 20, '6');
    EXPECT_EQ(echo(client.netns, server.ip6, kAppPort, one_mib), client.ip6)
        << "the app must see the client pod's own IPv6 address";
    auto out = access_log(client, 1);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0]["result"], "ok");
    EXPECT_EQ(out[0]["dst.addr"], "[" + server.ip6 + "]:8080");
    EXPECT_EQ(out[0]["dst.identity"], kServerId);
    EXPECT_EQ(out[0]["bytes_received"], 1 << 20);
    auto in = access_log(server, 1);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0]["src.identity"], kClientId);
    EXPECT_EQ(in[0]["src.workload"], "client");
}

TEST_F(ZtunnelSidecarTest, ServiceVipResolvesToAnEndpointOverHbone) {
    const PodState& client = pod("client");
    const std::string vip = state_.services.at(0).vip;
    EXPECT_EQ(echo(client.netns, vip, 80, "via the service"), client.ip);
    auto out = access_log(client, 1);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0]["dst.addr"], vip + ":80");
    EXPECT_EQ(out[0]["dst.service"], "llm.default.svc.cluster.local");
    EXPECT_EQ(out[0]["dst.identity"], kServerId);
    EXPECT_GE(metric(metrics(client), "istio_tcp_connections_opened_total",
                     {"destination_service=\"llm.default.svc.cluster.local\""}),
              1);
}

// A service VIP on a port the service does not have is refused with a reset (fail closed, and
// not a clean close an app could take for an empty answer), counted and logged with the reason.
TEST_F(ZtunnelSidecarTest, ServiceVipOnAPortItDoesNotHaveIsResetWithAReason) {
    const PodState& client = pod("client");
    const std::string vip = state_.services.at(0).vip;
    int err = 0;
    Fd c = test::tcp_connect(client.netns, vip, 81, &err);
    // The capture completes the handshake, then ztunnel resets: the reset can come before the
    // connect returns (its check then sees it) or after (the first read does).
    const int ended = c ? test::recv_error_within(c.get(), 3000) : err;
    EXPECT_EQ(ended, ECONNRESET) << (ended > 0 ? strerror(ended) : "closed cleanly or still open");
    EXPECT_EQ(
        metric(metrics(client), "sluice_outbound_refused_total", {"reason=\"no_service_port\""}),
        1);
    auto out = access_log(client, 1);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0]["dst.addr"], vip + ":81");
    EXPECT_EQ(out[0]["result"], "error");
    EXPECT_NE(out[0]["error"].get<std::string>().find("has no port 81"), std::string::npos)
        << out[0];
}

TEST_F(ZtunnelSidecarTest, HundredMebibytesEachWayAndAHalfCloseThroughTheServiceVip) {
    constexpr uint64_t kBytes = 100ull << 20;
    const PodState& client = pod("client");
    const PodState& server = pod("server");
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    // The app: streams 100 MiB to the client while it reads the client's 100 MiB up to EOF (the
    // client's half-close), then reports what it read and closes.
    auto app = std::async(std::launch::async, [&] {
        Fd s = test::tcp_accept(listener, 10000);
        if (!s)
            return std::string("no connection");
        return serve_both_ways(s.get(), kBytes);
    });
    int err = 0;
    Fd c = test::tcp_connect(client.netns, state_.services.at(0).vip, 80, &err);
    ASSERT_TRUE(c) << strerror(err);
    const std::string expected = expect_both_ways(exchange_both_ways(c.get(), kBytes), app, kBytes);
    c = Fd();
    auto out = access_log(client, 1);
    ASSERT_EQ(out.size(), 1u);
    // Envoy's convention: sent to / received from the downstream (the client app).
    EXPECT_EQ(out[0]["bytes_received"], kBytes);
    EXPECT_EQ(out[0]["bytes_sent"], kBytes + expected.size() + 1);
}

TEST_F(ZtunnelSidecarTest, PermissivePlaintextFromOutsideTheMeshIsForwarded) {
    // node0 has no ztunnel: its connection arrives in plaintext and goes to :15006.
    EXPECT_EQ(echo(node(0).netns, pod("server").ip, kAppPort, "plain"), node(0).fabric_ip);
    auto in = access_log(pod("server"), 1);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0]["direction"], "inbound_plaintext");
    EXPECT_EQ(in[0]["src.identity"], "");
    EXPECT_EQ(in[0]["result"], "ok");
}

// A peer that routes another address through the pod (the pod as its gateway) reaches the
// sidecar's :15006 through the REDIRECT; the sidecar forwards only to the pod's own app ports,
// never onward from inside the pod (its sockets bypass capture: an open proxy).
TEST_F(ZtunnelSidecarTest, PlaintextForAnotherAddressIsNotForwardedOnward) {
    const PodState& server = pod("server");
    const NodeState& n1 = node(server.node);
    ProcessResult route = run_process(node_process(
        n1, {"ip", "route", "add", "198.18.250.1/32", "via", server.ip, "dev", "cni0"}));
    ASSERT_EQ(route.exit_code, 0) << route.err;
    int err = 0;
    Fd c = test::tcp_connect(n1.netns, "198.18.250.1", kAppPort, &err);
    ASSERT_TRUE(c) << "the REDIRECT hands it to :15006: " << strerror(err);
    EXPECT_EQ(read_all(c, 3000), "") << "reset, nothing relayed";
    auto in = access_log(server, 1);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0]["direction"], "inbound_plaintext");
    EXPECT_EQ(in[0]["result"], "error");
    EXPECT_NE(in[0].dump().find("original destination 198.18.250.1:" + std::to_string(kAppPort) +
                                " is not an app port of this pod"),
              std::string::npos)
        << in[0].dump();
}

TEST_F(ZtunnelSidecarTest, IndependentHboneClientTalksToOurListener) {
    const std::string dir = state_.run_dir + "/interop";
    fs::create_directories(dir);
    const std::string cert =
        mint(state_.ca_dir, "spiffe://cluster.local/ns/default/sa/interop", dir + "/interop");
    const PodState& server = pod("server");
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    auto peer =
        std::async(std::launch::async, [&] { return test::echo_one_connection(listener, 10000); });
    json r = python_hbone(server.ip + ":8080", cert, state_.ca_dir + "/ca.crt");
    EXPECT_EQ(peer.get(), node(0).fabric_ip);
    ASSERT_FALSE(r.contains("error")) << r.dump();
    EXPECT_EQ(r["status"], 200);
    EXPECT_EQ(r["tls_version"], "TLSv1.3");
    EXPECT_EQ(r["alpn"], "h2");
    EXPECT_EQ(r["peer_uris"], json::array({kServerId}))
        << "the certificate on the wire carries the pod's SPIFFE URI SAN";
    EXPECT_TRUE(r["echoed"]) << r.dump();
    auto in = access_log(server, 1);
    ASSERT_GE(in.size(), 1u);
    EXPECT_EQ(in.back()["src.identity"], "spiffe://cluster.local/ns/default/sa/interop");

    // A CONNECT for an address that is not this pod is a 400, and so is one for ztunnel's own
    // listeners in it (they would loop the peer's bytes back into ztunnel).
    json bad = python_hbone(pod("client").ip + ":8080", cert, state_.ca_dir + "/ca.crt");
    EXPECT_EQ(bad["status"], 400) << bad.dump();
    for (const char* own : {":15008", ":15006", ":15001"}) {
        json self = python_hbone(server.ip + own, cert, state_.ca_dir + "/ca.crt");
        EXPECT_EQ(self["status"], 400) << own << " " << self.dump();
    }
}

TEST_F(ZtunnelSidecarTest, PeerFromAnotherCaIsRefusedWithAReason) {
    const std::string dir = state_.run_dir + "/foreign";
    ProcessSpec create;
    create.argv = {SLUICE_ZTUNNEL_BIN, "ca", "create", "--dir", dir};
    ASSERT_EQ(run_process(create).exit_code, 0);
    const std::string cert = mint(dir, "spiffe://cluster.local/ns/default/sa/evil", dir + "/evil");
    json r = python_hbone(pod("server").ip + ":8080", cert, state_.ca_dir + "/ca.crt");
    EXPECT_TRUE(r.contains("error")) << "handshake must fail: " << r.dump();
    EXPECT_EQ(metric(metrics(pod("server")), "sluice_tls_handshake_failures_total",
                     {"reason=\"unknown_ca\""}),
              1);
}

TEST_F(ZtunnelSidecarTest, QuitQuitQuitDrainsInFlightConnections) {
    const PodState& client = pod("client");
    const PodState& server = pod("server");
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    auto peer =
        std::async(std::launch::async, [&] { return test::echo_one_connection(listener, 10000); });
    int err = 0;
    Fd c = test::tcp_connect(client.netns, server.ip, kAppPort, &err);
    ASSERT_TRUE(c) << strerror(err);
    EXPECT_EQ(test::send_and_receive(c, "before"), "before");

    EXPECT_NE(quitquitquit(client).find("draining"), std::string::npos);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));

    EXPECT_EQ(test::send_and_receive(c, "during the drain"), "during the drain")
        << "an in-flight connection keeps working";
    Fd refused = test::tcp_connect(client.netns, server.ip, kAppPort, &err, 1000);
    EXPECT_FALSE(refused) << "a draining ztunnel takes no new connections";
    c = Fd();
    EXPECT_EQ(peer.get(), client.ip);
    // With its last connection gone the sidecar exits: readiness disappears.
    EXPECT_TRUE(wait_sidecar_gone(client)) << "ztunnel still running after the drain";
}

TEST_F(ZtunnelSidecarTest, OurOutboundTalksToAnIndependentHboneServer) {
    const PodState& client = pod("client");
    const PodState& server = pod("server");
    // The server pod's own sidecar drains and exits; an independent HBONE server (python3-h2)
    // with the server's identity, minted by the cluster CA, takes over its :15008.
    ASSERT_NE(quitquitquit(server).find("draining"), std::string::npos);
    ASSERT_TRUE(wait_sidecar_gone(server));
    const std::string dir = state_.run_dir + "/interop-server";
    fs::create_directories(dir);
    const std::string cert = mint(state_.ca_dir, kServerId, dir + "/server");
    const pid_t pid = spawn_process(
        pod_process(server, {"/usr/bin/python3", SLUICE_SOURCE_DIR "/tests/netns/hbone_server.py",
                             "--listen", server.ip + ":15008", "--cert", cert + ".crt", "--key",
                             cert + ".key", "--ca", state_.ca_dir + "/ca.crt", "--out",
                             dir + "/seen.json", "--streams", "1", "--timeout", "30"}),
        dir + "/server.log");
    bool listening = false;
    for (int i = 0; i < 100 && !listening; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        std::ifstream log(dir + "/server.log");
        listening = std::string(std::istreambuf_iterator<char>(log), {}).find("listening") !=
                    std::string::npos;
    }
    ASSERT_TRUE(listening) << "the python HBONE server did not start";

    std::string payload(300000, '\0');
    for (size_t i = 0; i < payload.size(); ++i)
        payload[i] = static_cast<char>((i * 13) % 251);
    int err = 0;
    Fd c = test::tcp_connect(client.netns, server.ip, kAppPort, &err);
    ASSERT_TRUE(c) << strerror(err);
    EXPECT_TRUE(test::send_and_receive(c, payload, 20000) == payload)
        << "the independent server's echo did not come back intact through our outbound";
    ::shutdown(c.get(), SHUT_WR);  // ends our stream: the server ends its side and exits
    EXPECT_EQ(read_all(c, 5000), "");
    c = Fd();
    EXPECT_EQ(wait_process(pid, std::chrono::seconds(20)), 0);

    std::ifstream f(dir + "/seen.json");
    ASSERT_TRUE(f) << "the HBONE server wrote no summary";
    const json seen = json::parse(f);
    EXPECT_EQ(seen["connections"], 1) << seen.dump();
    EXPECT_EQ(seen["tls_version"], "TLSv1.3");
    EXPECT_EQ(seen["alpn"], "h2");
    EXPECT_EQ(seen["peer_uris"], json::array({kClientId}))
        << "our outbound presents the client pod's SPIFFE identity";
    ASSERT_EQ(seen["streams"].size(), 1u) << seen.dump();
    const json& stream = seen["streams"][0];
    EXPECT_EQ(stream["headers"][":method"], "CONNECT");
    EXPECT_EQ(stream["headers"][":authority"], server.ip + ":" + std::to_string(kAppPort));
    EXPECT_FALSE(stream["headers"].contains(":path")) << "RFC 9113 CONNECT has no :path";
    EXPECT_NE(stream["headers"].value("forwarded", "").find(client.ip), std::string::npos)
        << stream.dump();
    EXPECT_EQ(stream["headers"].value("traceparent", "").size(), 55u) << stream.dump();
    EXPECT_EQ(stream["received"], payload.size());
    EXPECT_TRUE(stream["ended"]);

    auto out = access_log(client, 1);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0]["result"], "ok");
    EXPECT_EQ(out[0]["dst.identity"], kServerId);
    EXPECT_EQ(out[0]["bytes_sent"], payload.size());
    EXPECT_EQ(out[0]["bytes_received"], payload.size());
}

TEST_F(ZtunnelSidecarTest, AuthorizationPolicyDenyIsA401AndAClosedConnection) {
    std::ofstream(state_.policies_dir + "/deny-rag.yaml") << kDenyRagPolicy;
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // reloads once a second
    const PodState& client = pod("client");
    const PodState& server = pod("server");
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    int err = 0;
    Fd c = test::tcp_connect(client.netns, server.ip, kAppPort, &err);
    if (c) {
        EXPECT_EQ(test::send_and_receive(c, "denied?", 3000), "") << "nothing comes back";
    }
    EXPECT_FALSE(test::tcp_accept(listener, 200)) << "the app never sees the connection";
    auto out = access_log(client, 1);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0]["result"], "denied");
    EXPECT_NE(out[0]["error"].get<std::string>().find("401"), std::string::npos) << out[0];
    auto in = access_log(server, 1);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0]["result"], "denied");
    EXPECT_NE(in[0]["error"].get<std::string>().find("deny-rag"), std::string::npos) << in[0];
    EXPECT_EQ(metric(metrics(server), "sluice_authz_denials_total", {"direction=\"inbound\""}), 1);
}

// Policy reload with connections open: the server's ztunnel authorizes its open inbound
// connections again and closes the ones the new policy denies; others keep flowing.
class ZtunnelPolicyReloadTest : public ZtunnelSidecarTest {
  protected:
    const char* spec() const override {
        return R"(
nodes: 2
mesh: sidecar
pods:
  - {name: client, serviceAccount: rag, node: 0, labels: {app: rag}}
  - {name: other, serviceAccount: other, node: 0, labels: {app: other}}
  - {name: server, serviceAccount: llm, node: 1, labels: {app: llm}}
services:
  - name: llm
    selector: {app: llm}
    ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
)";
    }
    // Writes a policy file the way kubelet updates a ConfigMap: whole, then renamed into place.
    void install_policy(const std::string& file, const std::string& text) {
        const std::string tmp = state_.policies_dir + "/." + file;
        std::ofstream(tmp) << text;
        fs::rename(tmp, state_.policies_dir + "/" + file);
    }
    // A connection from `from` to the server's app, accepted on `listener`, with bytes through.
    std::pair<Fd, Fd> open_connection(const PodState& from, const Fd& listener) {
        int err = 0;
        Fd c = test::tcp_connect(from.netns, pod("server").ip, kAppPort, &err);
        EXPECT_TRUE(c) << strerror(err);
        Fd a = test::tcp_accept(listener, 5000);
        EXPECT_TRUE(a) << "the server app did not get the connection from " << from.name;
        if (c && a) {
            EXPECT_TRUE(test::bytes_flow(c.get(), a.get(), "hello from " + from.name));
        }
        return {std::move(c), std::move(a)};
    }
};

TEST_F(ZtunnelPolicyReloadTest, OpenConnectionOfANowDeniedPrincipalIsClosed) {
    const PodState& server = pod("server");
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    auto [denied_client, denied_app] = open_connection(pod("client"), listener);
    auto [allowed_client, allowed_app] = open_connection(pod("other"), listener);
    ASSERT_TRUE(denied_app && allowed_app);

    const auto written = std::chrono::steady_clock::now();
    install_policy("deny-rag.yaml", kDenyRagPolicy);
    // ztunnel re-reads policies once a second; the close follows at once. Both ends of the
    // denied connection see it torn down (a reset, or EOF after one).
    const int app_end = test::recv_error_within(denied_app.get(), 3000);
    EXPECT_TRUE(app_end == ECONNRESET || app_end == -1) << "server app: " << app_end;
    const int client_end = test::recv_error_within(denied_client.get(), 3000);
    EXPECT_TRUE(client_end == ECONNRESET || client_end == -1) << "client app: " << client_end;
    RecordProperty("reload_to_close_ms",
                   static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::steady_clock::now() - written)
                                        .count()));

    // The other principal's connection was opened under the old policy too, and keeps flowing.
    EXPECT_TRUE(test::bytes_flow(allowed_client.get(), allowed_app.get(), "still allowed"));
    // New connections of the denied principal are refused as usual.
    int err = 0;
    Fd again = test::tcp_connect(pod("client").netns, server.ip, kAppPort, &err);
    EXPECT_FALSE(test::tcp_accept(listener, 500)) << "a new connection from rag got through";

    json closed;
    for (const auto& line : access_log(server, 2)) {
        if (line["result"] == "closed_by_policy")
            closed = line;
    }
    ASSERT_FALSE(closed.is_null()) << "no closed_by_policy line in the server's access log";
    EXPECT_EQ(closed["direction"], "inbound");
    EXPECT_EQ(closed["src.identity"], kClientId);
    EXPECT_NE(closed["error"].get<std::string>().find("deny-rag"), std::string::npos) << closed;
    EXPECT_GT(closed["bytes_received"].get<uint64_t>(), 0u);
    const std::string m = metrics(server);
    EXPECT_EQ(metric(m, "sluice_authz_denials_total",
                     {"direction=\"inbound\"", "reason=\"closed_by_policy\""}),
              1)
        << m;
}

TEST_F(ZtunnelPolicyReloadTest, OpenPlaintextConnectionFromANowDeniedAddressIsClosed) {
    const PodState& server = pod("server");
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    // node0 has no ztunnel: its connection arrives in plaintext on the server's :15006.
    int err = 0;
    Fd plain = test::tcp_connect(node(0).netns, server.ip, kAppPort, &err);
    ASSERT_TRUE(plain) << strerror(err);
    Fd plain_app = test::tcp_accept(listener, 5000);
    ASSERT_TRUE(plain_app);
    ASSERT_TRUE(test::bytes_flow(plain.get(), plain_app.get(), "plaintext before"));
    auto [mtls_client, mtls_app] = open_connection(pod("client"), listener);
    ASSERT_TRUE(mtls_app);

    install_policy("deny-node0.yaml",
                   deny_at_server("deny-node0", "{ipBlocks: [" + node(0).fabric_ip + "/32]}"));
    // ztunnel resets the plaintext client itself (RST) and the app connection.
    EXPECT_EQ(test::recv_error_within(plain.get(), 3000), ECONNRESET);
    const int app_end = test::recv_error_within(plain_app.get(), 1000);
    EXPECT_TRUE(app_end == ECONNRESET || app_end == -1) << "server app: " << app_end;
    EXPECT_TRUE(test::bytes_flow(mtls_client.get(), mtls_app.get(), "mTLS still allowed"));

    json closed;
    for (const auto& line : access_log(server, 1)) {
        if (line["result"] == "closed_by_policy")
            closed = line;
    }
    ASSERT_FALSE(closed.is_null()) << "no closed_by_policy line in the server's access log";
    EXPECT_EQ(closed["direction"], "inbound_plaintext");
    EXPECT_NE(closed["error"].get<std::string>().find("deny-node0"), std::string::npos) << closed;
    EXPECT_EQ(metric(metrics(server), "sluice_authz_denials_total",
                     {"direction=\"inbound_plaintext\"", "reason=\"closed_by_policy\""}),
              1);
}

class ZtunnelStrictTest : public ZtunnelSidecarTest {
  protected:
    void SetUp() override {
        // The sidecars inherit the environment: SLUICE_MTLS_MODE is their --mtls-mode.
        ::setenv("SLUICE_MTLS_MODE", "STRICT", 1);
        ZtunnelSidecarTest::SetUp();
        ::unsetenv("SLUICE_MTLS_MODE");
    }
};

TEST_F(ZtunnelStrictTest, StrictRefusesPlaintextButCarriesMtls) {
    const PodState& server = pod("server");
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    int err = 0;
    Fd c = test::tcp_connect(node(0).netns, server.ip, kAppPort, &err);
    // ztunnel accepts on :15006 and resets at once: connect() itself may already see the RST.
    if (c)
        EXPECT_EQ(test::send_and_receive(c, "plaintext", 3000), "") << "nothing comes back";
    else
        EXPECT_EQ(err, ECONNRESET) << strerror(err);
    EXPECT_FALSE(test::tcp_accept(listener, 200)) << "the app never sees the connection";
    auto in = access_log(server, 1);
    ASSERT_EQ(in.size(), 1u);
    EXPECT_EQ(in[0]["direction"], "inbound_plaintext");
    EXPECT_EQ(in[0]["result"], "denied");
    EXPECT_EQ(
        metric(metrics(server), "sluice_authz_denials_total", {"direction=\"inbound_plaintext\""}),
        1);
    listener = Fd();
    // Mutual TLS from the meshed client still works.
    EXPECT_EQ(echo(pod("client").netns, server.ip, kAppPort, "over mTLS"), pod("client").ip);
}

class ZtunnelRotationTest : public ZtunnelSidecarTest {
  protected:
    void SetUp() override {
        // 4 s certificates: re-minted every 2 s (at half their lifetime).
        ::setenv("SLUICE_CERT_LIFETIME", "4", 1);
        ZtunnelSidecarTest::SetUp();
        ::unsetenv("SLUICE_CERT_LIFETIME");
    }
    size_t renewals(const PodState& p) {
        std::ifstream f(state_.run_dir + "/logs/ztunnel." + p.namespace_name + "." + p.name +
                        ".log");
        size_t n = 0;
        for (std::string l; std::getline(f, l);)
            n += l.find("renewed certificate") != std::string::npos;
        return n;
    }
};

TEST_F(ZtunnelRotationTest, CertificatesRotateUnderALongTransferWithoutDroppingIt) {
    const PodState& client = pod("client");
    const PodState& server = pod("server");
    Fd listener = test::tcp_listen(server.netns, server.ip, kAppPort);
    auto peer =
        std::async(std::launch::async, [&] { return test::echo_one_connection(listener, 30000); });
    int err = 0;
    Fd c = test::tcp_connect(client.netns, server.ip, kAppPort, &err);
    ASSERT_TRUE(c) << strerror(err);
    const size_t before = renewals(client) + renewals(server);

    // 9 s of echoed traffic on one tunnelled connection: over four certificate lifetimes halves.
    std::string chunk(64 * 1024, '\0');
    size_t chunks = 0;
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(9);
    while (std::chrono::steady_clock::now() < end && chunks < 10000) {
        for (size_t i = 0; i < chunk.size(); ++i)
            chunk[i] = static_cast<char>((i + chunks * 7) % 253);
        ASSERT_TRUE(test::send_and_receive(c, chunk, 5000) == chunk)
            << "chunk " << chunks << " did not come back intact";
        ++chunks;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_GE(renewals(client), 3u) << "the client's certificate was not renewed during the run";
    EXPECT_GE(renewals(server), 3u) << "the server's certificate was not renewed during the run";
    EXPECT_GT(renewals(client) + renewals(server), before);
    c = Fd();
    EXPECT_EQ(peer.get(), client.ip);
    listener = Fd();

    // The certificate the server presents now is a current one: the original expired seconds
    // ago, and the independent client verifies validity against the CA.
    const std::string dir = state_.run_dir + "/interop";
    fs::create_directories(dir);
    const std::string cert =
        mint(state_.ca_dir, "spiffe://cluster.local/ns/default/sa/interop", dir + "/interop");
    Fd l2 = test::tcp_listen(server.netns, server.ip, kAppPort);
    auto peer2 =
        std::async(std::launch::async, [&] { return test::echo_one_connection(l2, 10000); });
    json r = python_hbone(server.ip + ":8080", cert, state_.ca_dir + "/ca.crt");
    ASSERT_FALSE(r.contains("error")) << r.dump();
    EXPECT_EQ(r["status"], 200);
    EXPECT_TRUE(r["echoed"]);
    peer2.get();
    auto out = access_log(client, 1);
    ASSERT_GE(out.size(), 1u);
    EXPECT_EQ(out[0]["result"], "ok");
    EXPECT_EQ(out[0]["bytes_sent"], chunks * chunk.size());
}

}  // namespace
}  // namespace sluice::testbed
