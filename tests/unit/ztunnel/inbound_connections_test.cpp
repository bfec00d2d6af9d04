// The bookkeeping behind closing open inbound connections on a policy refresh: which entries are
// decided again, where the close runs, and that a connection that already finished is left alone.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <string>
#include <vector>

#include "ztunnel/proxy/inbound_connections.h"

namespace sluice::ztunnel::proxy {
namespace {

using Entry = InboundConnections::Entry;

state::AuthzDecision deny_peer(const Entry& e, const std::string& denied) {
    if (e.peer_identity == denied)
        return {false, "ns/deny-rag#0", "denied by policy"};
    return {true, "allow", "no policy denies it"};
}

TEST(InboundConnectionsTest, ClosesOnlyDeniedConnectionsOnTheirOwnExecutor) {
    boost::asio::io_context worker;
    InboundConnections open;
    std::vector<std::string> closed;
    auto add = [&](const std::string& peer) {
        return open.add({.peer_identity = peer,
                         .executor = worker.get_executor(),
                         .close = [&closed, peer](const state::AuthzDecision& d) {
                             closed.push_back(peer + " " + d.rule);
                         }});
    };
    add("spiffe://cluster.local/ns/default/sa/rag");
    add("spiffe://cluster.local/ns/default/sa/other");
    add("");  // plaintext
    EXPECT_EQ(open.size(), 3u);

    const size_t n = open.close_denied(
        [](const Entry& e) { return deny_peer(e, "spiffe://cluster.local/ns/default/sa/rag"); });
    EXPECT_EQ(n, 1u);
    EXPECT_TRUE(closed.empty()) << "the close runs on the connection's worker, not the caller";
    worker.run();
    EXPECT_EQ(closed,
              std::vector<std::string>{"spiffe://cluster.local/ns/default/sa/rag ns/deny-rag#0"});
    // Closing does not unregister: the connection does that when its relay has ended.
    EXPECT_EQ(open.size(), 3u);
}

TEST(InboundConnectionsTest, AConnectionThatFinishedBeforeTheCloseArrivesIsLeftAlone) {
    boost::asio::io_context worker;
    InboundConnections open;
    int closes = 0;
    const uint64_t id = open.add({.peer_identity = "spiffe://cluster.local/ns/default/sa/rag",
                                  .executor = worker.get_executor(),
                                  .close = [&closes](const state::AuthzDecision&) { ++closes; }});
    EXPECT_EQ(open.close_denied([](const Entry&) { return state::AuthzDecision{}; }), 1u);
    open.remove(id);  // the relay ended between the decision and the worker running the close
    worker.run();
    EXPECT_EQ(closes, 0);
    EXPECT_EQ(open.size(), 0u);
}

}  // namespace
}  // namespace sluice::ztunnel::proxy
