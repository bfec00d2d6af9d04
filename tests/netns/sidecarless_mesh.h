#pragma once

// What the sidecarless-mesh netns tests share (real agents and node ztunnels on the testbed):
// waiting until every node ztunnel knows a pod, connecting two apps through the mesh from their
// pods' cgroups, and reading a node's metrics and ztunnel access log.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/netns/access_log_lines.h"
#include "tests/netns/ztunnel_cluster.h"
#include "tests/support/cgroup_guard.h"
#include "tests/support/sockets.h"

namespace sluice::testbed {

class SidecarlessMeshTest : public ZtunnelClusterTest {
  protected:
    std::vector<std::string> log_files() const override {
        std::vector<std::string> files;
        for (const auto& n : state_.nodes) {
            for (const char* f : {"/agent.log", "/ztunnel.log", "/ztunnel-access.log"})
                files.push_back(n.run_dir + f);
        }
        return files;
    }
    std::string node_metrics(size_t node, uint16_t port) const {
        return test::http_get(state_.nodes.at(node).netns, "127.0.0.1", port, "/metrics");
    }
    // Every node's ztunnel must know `ip` before the first connect (a client-side ztunnel that
    // does not would pass the connection through, a server-side one would refuse it).
    void wait_known(const std::string& ip) {
        using namespace std::chrono_literals;
        for (const auto& node : state_.nodes) {
            bool known = false;
            for (int i = 0; i < 100 && !known; ++i) {
                known = test::http_get(node.netns, "127.0.0.1", 15000, "/config_dump")
                            .find("\"" + ip + "\"") != std::string::npos;
                if (!known)
                    std::this_thread::sleep_for(200ms);
            }
            ASSERT_TRUE(known) << node.name << "'s ztunnel never listed " << ip;
        }
    }
    // A listener of the app in `server`'s netns, made in its cgroup (its accepted sockets are
    // the pod's).
    test::Fd listen_in(const PodState& server, uint16_t port) {
        test::CgroupGuard in_pod(server.cgroup);
        return test::tcp_listen(server.netns, "0.0.0.0", port);
    }
    // A connection from `client`'s app to ip:port, created in the client pod's cgroup (the
    // cgroup programs act for the cgroup of the socket's creator), and the server app's end from
    // `listener`. The server side refuses connections until its compiled policy lists the
    // server pod (a moment after its workload view does): retried until the app accepts one.
    std::pair<test::Fd, test::Fd> connect_apps(const PodState& client, const std::string& ip,
                                               uint16_t port, const test::Fd& listener) {
        using namespace std::chrono_literals;
        for (int attempt = 0; attempt < 40; ++attempt) {
            int err = 0;
            test::Fd c;
            {
                test::CgroupGuard in_pod(client.cgroup);
                c = test::tcp_connect(client.netns, ip, port, &err);
            }
            test::Fd s = c ? test::tcp_accept(listener, 1000) : test::Fd();
            if (c && s)
                return {std::move(c), std::move(s)};
            std::this_thread::sleep_for(250ms);
        }
        ADD_FAILURE() << "the server app got no connection";
        return {};
    }
    // The access-log lines of `node`'s ztunnel with direction `direction` (all when empty),
    // waiting up to 5 s for at least `want` of them.
    std::vector<nlohmann::json> access_lines(size_t node, const std::string& direction,
                                             size_t want) const {
        return awaited_access_log_lines(
            state_.nodes.at(node).run_dir + "/ztunnel-access.log",
            [&](const nlohmann::json& e) {
                return direction.empty() || e.value("direction", "") == direction;
            },
            want);
    }
};

}  // namespace sluice::testbed
