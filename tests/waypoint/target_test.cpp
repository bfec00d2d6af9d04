#include "waypoint/http/target.h"

#include <gtest/gtest.h>

namespace sluice::waypoint {
namespace {

TEST(RequestTarget, AbsoluteFormBecomesItsOriginForm) {
    EXPECT_EQ(originFormOf("http://llm.example/v1/models?x=1"), "/v1/models?x=1");
    EXPECT_EQ(originFormOf("HTTPS://llm.example:8443/v1/embeddings"), "/v1/embeddings");
    EXPECT_EQ(originFormOf("http://llm.example"), "/");
    EXPECT_EQ(originFormOf("http://llm.example?q"), "/?q");
    EXPECT_EQ(originFormOf("/v1/models"), std::nullopt);
    EXPECT_EQ(originFormOf("*"), std::nullopt);
    EXPECT_EQ(originFormOf("llm.example:443"), std::nullopt);  // authority form
    EXPECT_EQ(originFormOf("/a?next=http://x/y"), std::nullopt);
}

TEST(RequestTarget, RoutedPathDecodesResolvesAndCollapses) {
    EXPECT_EQ(routedPath("/v1/chat/completions"), "/v1/chat/completions");
    EXPECT_EQ(routedPath("/v1/chat/%63ompletions?x=%2F"), "/v1/chat/completions");
    EXPECT_EQ(routedPath("/v1/chat%2Fcompletions"), "/v1/chat/completions");
    EXPECT_EQ(routedPath("//v1///embeddings"), "/v1/embeddings");
    EXPECT_EQ(routedPath("/a/b/../../v1/./models"), "/v1/models");
    EXPECT_EQ(routedPath("/../../v1/models"), "/v1/models") << "never above the root";
    EXPECT_EQ(routedPath("/v1/models/"), "/v1/models/") << "a trailing slash stays";
    EXPECT_EQ(routedPath("/"), "/");
    EXPECT_EQ(routedPath("/v1/%2e%2e/v1/models"), "/v1/models");
    EXPECT_EQ(routedPath("/bad%4"), std::nullopt);
    EXPECT_EQ(routedPath("/bad%zz"), std::nullopt);
    EXPECT_EQ(routedPath("*"), std::nullopt);
    EXPECT_EQ(routedPath("http://x/v1/models"), std::nullopt);
    EXPECT_EQ(routedPath("/v1/models#top"), "/v1/models");
}

TEST(RequestTarget, LenientPathIsWhatLenientRoutersCompare) {
    EXPECT_EQ(lenientPath("/V1/Chat/Completions/"), "/v1/chat/completions");
    EXPECT_EQ(lenientPath("/v1;a=1/embeddings;jsessionid=x"), "/v1/embeddings");
    EXPECT_EQ(lenientPath("/"), "/");
    EXPECT_EQ(lenientPath("/v1/models//"), "/v1/models");
}

}  // namespace
}  // namespace sluice::waypoint
