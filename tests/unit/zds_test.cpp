#include "common/zds.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

namespace sluice::zds {
namespace {

class ZdsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds_), 0);
    }
    void TearDown() override {
        ::close(fds_[0]);
        ::close(fds_[1]);
    }
    int fds_[2] = {-1, -1};
};

TEST_F(ZdsTest, AddWorkloadRoundTripsWithItsNetnsFd) {
    Message add{.type = MessageType::AddWorkload,
                .workload = {.uid = "u-1",
                             .name = "llm-0",
                             .namespace_name = "tenant-a",
                             .service_account = "llm",
                             .node = "node0",
                             .ips = {"198.18.0.3", "2001:db8::3"},
                             .netns_cookie = 4097}};
    int pipe_fds[2];
    ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
    ASSERT_TRUE(send_message(fds_[0], add, pipe_fds[1]));
    ::close(pipe_fds[1]);

    auto got = recv_message(fds_[1], 1000);
    ASSERT_TRUE(got) << got.error();
    EXPECT_EQ(got->message.type, MessageType::AddWorkload);
    EXPECT_EQ(got->message.workload, add.workload);
    // The descriptor is a working duplicate: bytes written through it arrive at the pipe.
    ASSERT_GE(got->fd, 0);
    ASSERT_EQ(::write(got->fd, "x", 1), 1);
    ::close(got->fd);
    char c = 0;
    EXPECT_EQ(::read(pipe_fds[0], &c, 1), 1);
    EXPECT_EQ(c, 'x');
    ::close(pipe_fds[0]);
}

TEST_F(ZdsTest, MessageBoundariesArePreserved) {
    ASSERT_TRUE(send_message(fds_[0], {.type = MessageType::Hello, .version = 1}));
    ASSERT_TRUE(send_message(fds_[0], {.type = MessageType::DelWorkload, .uid = "u-9"}));
    ASSERT_TRUE(send_message(fds_[0], {.type = MessageType::SnapshotSent}));
    ASSERT_TRUE(send_message(fds_[0], {.type = MessageType::Ack, .error = "netns gone"}));
    auto a = recv_message(fds_[1], 1000);
    auto b = recv_message(fds_[1], 1000);
    auto c = recv_message(fds_[1], 1000);
    auto d = recv_message(fds_[1], 1000);
    ASSERT_TRUE(a && b && c && d);
    EXPECT_EQ(a->message.type, MessageType::Hello);
    EXPECT_EQ(a->message.version, 1);
    EXPECT_EQ(a->fd, -1);
    EXPECT_EQ(b->message.uid, "u-9");
    EXPECT_EQ(c->message.type, MessageType::SnapshotSent);
    EXPECT_EQ(d->message.error, "netns gone");
}

TEST_F(ZdsTest, TimeoutAndClose) {
    auto r = recv_message(fds_[1], 20);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), "zds: timed out waiting for a message");
    ::close(fds_[0]);
    fds_[0] = ::open("/dev/null", O_RDONLY);
    r = recv_message(fds_[1], 1000);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), "closed");
}

TEST(ZdsDecode, RejectsMalformedInput) {
    EXPECT_EQ(decode("not json").error(), "zds: message is not a JSON object");
    EXPECT_EQ(decode(R"({"type":"Bogus"})").error(), "zds: unknown message type 'Bogus'");
    EXPECT_NE(decode(R"({"type":"AddWorkload","workload":{"uid":"x"}})").error().find("malformed"),
              std::string::npos);
    EXPECT_EQ(decode(R"({"type":"AddWorkload","workload":{"uid":"","name":"a","namespace":"b",
                "serviceAccount":"c","ips":[]}})")
                  .error(),
              "zds: AddWorkload without uid");
}

}  // namespace
}  // namespace sluice::zds
