// SharedLabels: open connections with equal labels hold one copy, different labels stay apart,
// and an entry goes once no connection holds it.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "ztunnel/proxy/metrics.h"

namespace sluice::ztunnel::proxy {
namespace {

ConnectionLabels labels(const std::string& dst, const std::string& flags = "-") {
    ConnectionLabels l;
    l.reporter = "source";
    l.source_workload = "client";
    l.source_principal = "spiffe://cluster.local/ns/bench/sa/client";
    l.destination_workload = dst;
    l.destination_principal = "spiffe://cluster.local/ns/bench/sa/" + dst;
    l.connection_security_policy = "mutual_tls";
    l.response_flags = flags;
    return l;
}

TEST(SharedLabelsTest, EqualLabelsShareOneCopy) {
    SharedLabels shared;
    auto a = shared.get(labels("server"));
    auto b = shared.get(labels("server"));
    EXPECT_EQ(a.get(), b.get());
    EXPECT_EQ(a->destination_principal, "spiffe://cluster.local/ns/bench/sa/server");
    auto other = shared.get(labels("other"));
    auto flagged = shared.get(labels("server", "UF"));
    EXPECT_NE(other.get(), a.get());
    EXPECT_NE(flagged.get(), a.get());
    EXPECT_EQ(flagged->response_flags, "UF");
    EXPECT_EQ(shared.size(), 3u);
}

TEST(SharedLabelsTest, EntryGoesWhenTheLastHolderLetsGo) {
    SharedLabels shared;
    auto a = shared.get(labels("server"));
    auto b = shared.get(labels("server"));
    a.reset();
    EXPECT_EQ(shared.size(), 1u);
    b.reset();
    EXPECT_EQ(shared.size(), 0u);
    // Many short-lived distinct sets: none is held afterwards.
    for (int i = 0; i < 1000; ++i)
        shared.get(labels("server-" + std::to_string(i)));
    EXPECT_EQ(shared.size(), 0u);
}

TEST(SharedLabelsTest, WorkersShareConcurrently) {
    SharedLabels shared;
    std::vector<std::shared_ptr<const ConnectionLabels>> got(2000);
    std::thread t1([&] {
        for (size_t i = 0; i < 1000; ++i)
            got[i] = shared.get(labels("server"));
    });
    std::thread t2([&] {
        for (size_t i = 1000; i < 2000; ++i)
            got[i] = shared.get(labels("server"));
    });
    t1.join();
    t2.join();
    for (const auto& g : got)
        EXPECT_EQ(g.get(), got.front().get());
}

}  // namespace
}  // namespace sluice::ztunnel::proxy
