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

}  // namespace
}  // namespace sluice::waypoint::test
