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
    if (e.peer_identity && *e.peer_identity == denied)
        return {false, "ns/deny-rag#0", "denied by policy"};
    return {true, "allow", "no policy denies it"};
}

// Registration in the epoch the connection was authorized in: nothing to decide again.
state::AuthzDecision never_decided(const Entry&) {
    ADD_FAILURE() << "a connection authorized under the current policy was decided again";
    return {};
}

// Registers a connection from `peer` whose close appends "<peer> <rule>" to `closed`.
uint64_t add_recording(InboundConnections& open, boost::asio::io_context& worker,
                       std::vector<std::string>& closed, const std::string& peer,
                       uint64_t authorized_in, const InboundConnections::Decide& decide) {
    return open.add(
        {.peer_identity = std::make_shared<const std::string>(peer),
         .executor = worker.get_executor(),
         .close = [&closed,
                   peer](const state::AuthzDecision& d) { closed.push_back(peer + " " + d.rule); }},
        authorized_in, decide);
}

TEST(InboundConnectionsTest, ClosesOnlyDeniedConnectionsOnTheirOwnExecutor) {
    boost::asio::io_context worker;
    InboundConnections open;
    std::vector<std::string> closed;
    auto add = [&](const std::string& peer) {
        return add_recording(open, worker, closed, peer, open.epoch(), never_decided);
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
    const uint64_t id = open.add({.peer_identity = std::make_shared<const std::string>(
                                      "spiffe://cluster.local/ns/default/sa/rag"),
                                  .executor = worker.get_executor(),
                                  .close = [&closes](const state::AuthzDecision&) { ++closes; }},
                                 open.epoch(), never_decided);
    EXPECT_EQ(open.close_denied([](const Entry&) { return state::AuthzDecision{}; }), 1u);
    open.remove(id);  // the relay ended between the decision and the worker running the close
    worker.run();
    EXPECT_EQ(closes, 0);
    EXPECT_EQ(open.size(), 0u);
}

// A refresh that walks the open connections while one is still connecting to its app misses it;
// that connection catches up when it registers.
TEST(InboundConnectionsTest, AConnectionAuthorizedBeforeARefreshIsDecidedAgainWhenItRegisters) {
    boost::asio::io_context worker;
    InboundConnections open;
    const std::string denied = "spiffe://cluster.local/ns/default/sa/rag";
    const uint64_t before = open.epoch();
    EXPECT_EQ(open.close_denied([&](const Entry& e) { return deny_peer(e, denied); }), 0u);
    EXPECT_NE(open.epoch(), before);

    std::vector<std::string> closed;
    auto add = [&](const std::string& peer) {
        return add_recording(open, worker, closed, peer, before,
                             [&](const Entry& e) { return deny_peer(e, denied); });
    };
    add(denied);
    EXPECT_EQ(closed, std::vector<std::string>{denied + " ns/deny-rag#0"})
        << "closed at registration, before it relays anything";
    add("spiffe://cluster.local/ns/default/sa/other");
    EXPECT_EQ(closed.size(), 1u) << "the new policy still allows the other peer";
    EXPECT_EQ(open.size(), 2u);
}

}  // namespace
}  // namespace sluice::ztunnel::proxy
