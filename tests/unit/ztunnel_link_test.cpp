// The agent's ZDS server with several ztunnels connected (an upgrade): sessions are kept side
// by side, the newest ready one steers, and steering falls back when it goes away.
#include "agent/ztunnel_link.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

namespace sluice::agent {
namespace {

using namespace std::chrono_literals;

// A ztunnel stand-in: connects, says Hello, acks every message (AddWorkload with a socket as
// its "listener").
class FakeZtunnel {
  public:
    explicit FakeZtunnel(const std::string& path) {
        fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
        if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
            throw std::runtime_error("connect " + path + ": " + std::strerror(errno));
        if (!zds::send_message(fd_, {.type = zds::MessageType::Hello}))
            throw std::runtime_error("Hello");
        thread_ = std::thread([this] { serve(); });
    }
    ~FakeZtunnel() { close(); }
    void close() {
        if (fd_ >= 0)
            ::shutdown(fd_, SHUT_RDWR);
        if (thread_.joinable())
            thread_.join();
        if (fd_ >= 0)
            ::close(fd_);
        fd_ = -1;
    }
    int adds() const { return adds_.load(); }

  private:
    void serve() {
        for (;;) {
            auto got = zds::recv_message(fd_);
            if (!got)
                return;
            if (got->fd >= 0)
                ::close(got->fd);
            int listener = -1;
            if (got->message.type == zds::MessageType::AddWorkload) {
                ++adds_;
                listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            }
            (void)zds::send_message(fd_, {.type = zds::MessageType::Ack}, listener);
            if (listener >= 0)
                ::close(listener);
        }
    }
    int fd_ = -1;
    std::atomic<int> adds_{0};
    std::thread thread_;
};

class ZtunnelLinkTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("sluice-zds-" + std::to_string(::getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::create_directories(dir_);
        link_ = std::make_unique<ZtunnelLink>((dir_ / "ztunnel.sock").string(),
                                              [this](ZtunnelLink::SessionId s) {
                                                  // What the agent's replay does: every workload,
                                                  // SnapshotSent, ready.
                                                  auto fd = link_->add_workload(
                                                      s, {.uid = "u1", .name = "p"}, -1, 2s);
                                                  ASSERT_TRUE(fd) << fd.error();
                                                  ::close(*fd);
                                                  ASSERT_TRUE(link_->snapshot_sent(s, 2s));
                                                  link_->mark_ready(s);
                                              },
                                              [this](ZtunnelLink::SessionId s, bool was_steering) {
                                                  std::lock_guard lk(mu_);
                                                  lost_.emplace_back(s, was_steering);
                                              });
        ASSERT_TRUE(link_->start());
    }
    void TearDown() override {
        link_.reset();
        std::filesystem::remove_all(dir_);
    }
    std::string path() const { return (dir_ / "ztunnel.sock").string(); }
    // Waits until `pred` holds (the accept thread works asynchronously).
    template <class Pred>
    bool eventually(Pred pred) {
        for (int i = 0; i < 300 && !pred(); ++i)
            std::this_thread::sleep_for(10ms);
        return pred();
    }
    size_t ready_sessions() {
        size_t n = 0;
        for (const auto& s : link_->describe())
            n += s.ready ? 1 : 0;
        return n;
    }

    std::filesystem::path dir_;
    std::unique_ptr<ZtunnelLink> link_;
    std::mutex mu_;
    std::vector<std::pair<ZtunnelLink::SessionId, bool>> lost_;
};

TEST_F(ZtunnelLinkTest, NewestReadySessionSteersAndTheOldOneStays) {
    FakeZtunnel old_zt(path());
    ASSERT_TRUE(eventually([&] { return ready_sessions() == 1; }));
    const auto first = link_->steering();
    ASSERT_TRUE(first);
    EXPECT_EQ(link_->describe().at(0).pid, ::getpid()) << "SO_PEERCRED of the ztunnel";

    FakeZtunnel new_zt(path());
    ASSERT_TRUE(eventually([&] { return ready_sessions() == 2; }));
    EXPECT_EQ(link_->sessions().size(), 2u) << "a second ztunnel does not replace the first";
    EXPECT_GT(*link_->steering(), *first);
    EXPECT_EQ(old_zt.adds(), 1);
    EXPECT_EQ(new_zt.adds(), 1) << "the new session got the whole workload set";

    // Both sessions still answer: a request reaches each.
    for (auto s : link_->sessions()) {
        auto fd = link_->add_workload(s, {.uid = "u2", .name = "q"}, -1, 2s);
        ASSERT_TRUE(fd) << fd.error();
        ::close(*fd);
    }
    EXPECT_EQ(old_zt.adds(), 2);
    EXPECT_EQ(new_zt.adds(), 2);

    // The old one leaves (drain): the new one keeps steering; nothing moves.
    const auto second = *link_->steering();
    old_zt.close();
    ASSERT_TRUE(eventually([&] { return link_->sessions().size() == 1; }));
    EXPECT_EQ(link_->steering(), second);
    ASSERT_TRUE(eventually([&] {
        std::lock_guard lk(mu_);
        return lost_.size() == 1;
    }));
    std::lock_guard lk(mu_);
    EXPECT_EQ(lost_[0], std::make_pair(*first, false));
}

TEST_F(ZtunnelLinkTest, SteeringFallsBackWhenTheSteeringSessionEnds) {
    FakeZtunnel old_zt(path());
    ASSERT_TRUE(eventually([&] { return ready_sessions() == 1; }));
    const auto first = *link_->steering();
    auto new_zt = std::make_unique<FakeZtunnel>(path());
    ASSERT_TRUE(eventually([&] { return ready_sessions() == 2; }));
    const auto second = *link_->steering();
    ASSERT_NE(first, second);

    new_zt.reset();
    ASSERT_TRUE(eventually([&] {
        std::lock_guard lk(mu_);
        return lost_.size() == 1;
    }));
    {
        std::lock_guard lk(mu_);
        EXPECT_EQ(lost_[0], std::make_pair(second, true));
    }
    EXPECT_EQ(link_->steering(), first);
    EXPECT_EQ(link_->sessions(), std::vector<ZtunnelLink::SessionId>{first});
}

TEST_F(ZtunnelLinkTest, NoSessionMeansNotConnected) {
    EXPECT_FALSE(link_->connected());
    EXPECT_FALSE(link_->steering());
    EXPECT_FALSE(link_->wait_connected(50ms));
    auto r = link_->add_workload(7, {.uid = "u"}, -1, 50ms);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("has ended"), std::string::npos) << r.error();
}

}  // namespace
}  // namespace sluice::agent
