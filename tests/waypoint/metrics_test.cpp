// The data path's metric cache (waypoint/metrics.h): one metric per label set, the labels it was
// created with, and the same metric again on every later call.
#include <gtest/gtest.h>

#include <string>

#include "waypoint/metrics.h"

namespace sluice::waypoint::test {
namespace {

TEST(WaypointMetrics, LabeledReturnsOneMetricPerLabelSet) {
    Metrics m;
    auto& a = m.requests.at({{"reporter", "waypoint"}, {"response_code", "200"}});
    auto& b = m.requests.at({{"reporter", "waypoint"}, {"response_code", "429"}});
    EXPECT_NE(&a, &b);
    std::string code = "200";  // a value that is not a literal: the key is copied, not kept
    EXPECT_EQ(&m.requests.at({{"reporter", "waypoint"}, {"response_code", code}}), &a);
    code = "503";
    a.Increment(2);
    b.Increment();

    const std::vector<double> buckets{1, 10};
    m.duration_ms.at({{"response_code", "200"}}, buckets).Observe(5);
    m.duration_ms.at({{"response_code", "200"}}, buckets).Observe(50);

    const std::string text = m.serialize();
    EXPECT_NE(text.find(R"(istio_requests_total{reporter="waypoint",response_code="200"} 2)"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find(R"(istio_requests_total{reporter="waypoint",response_code="429"} 1)"),
              std::string::npos);
    EXPECT_EQ(text.find("response_code=\"503\""), std::string::npos);
    EXPECT_NE(text.find(R"(istio_request_duration_milliseconds_count{response_code="200"} 2)"),
              std::string::npos)
        << text;
    EXPECT_NE(
        text.find(R"(istio_request_duration_milliseconds_bucket{response_code="200",le="10"} 1)"),
        std::string::npos)
        << text;
}

// Tenants come from a header and models from the body: a client that sends a new one with every
// request must not grow a family without bound. Past the cap, new ones count as "other"; the
// series that exist keep their own.
TEST(WaypointMetrics, ClientChosenLabelValuesAreBounded) {
    Metrics m;
    constexpr std::size_t kCap = Labeled<prometheus::Counter>::kMaxSeries;
    for (std::size_t i = 0; i < kCap; ++i)
        m.rejected.at({{"reason", "tokens"}, {"tenant", "t" + std::to_string(i)}}).Increment();
    auto& first = m.rejected.at({{"reason", "tokens"}, {"tenant", "t0"}});
    auto& other = m.rejected.at({{"reason", "tokens"}, {"tenant", "new-1"}});
    EXPECT_EQ(&m.rejected.at({{"reason", "tokens"}, {"tenant", "new-2"}}), &other);
    EXPECT_NE(&first, &other);
    other.Increment(2);
    // A label no client chooses still gets its own series (with the bounded ones as "other").
    auto& reason = m.rejected.at({{"reason", "requests"}, {"tenant", "new-3"}});
    EXPECT_NE(&reason, &other);
    const std::string text = m.serialize();
    EXPECT_NE(text.find(R"(sluice_requests_rejected_total{reason="tokens",tenant="other"} 2)"),
              std::string::npos)
        << text.substr(0, 400);
    EXPECT_NE(text.find(R"(sluice_requests_rejected_total{reason="requests",tenant="other"} 0)"),
              std::string::npos);
    EXPECT_EQ(text.find("new-"), std::string::npos);
}

}  // namespace
}  // namespace sluice::waypoint::test
