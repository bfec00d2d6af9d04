#include "tests/testbed/cni.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace sluice::testbed {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Fake plugins that log what a runtime handed them (env + stdin) and answer like real ones.
class CniRuntimeTest : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("sluice-cni-test-" + std::to_string(::getpid()));
        fs::create_directories(dir_);
        // "first" returns a result with one IP; "second" echoes its prevResult back.
        write_plugin("first", R"(cat > "$LOG.first.$CNI_COMMAND.stdin"
env | grep '^CNI_' | sort > "$LOG.first.$CNI_COMMAND.env"
echo "$CNI_COMMAND first" >> "$LOG.order"
[ "$CNI_COMMAND" = ADD ] && echo '{"cniVersion":"1.0.0","ips":[{"address":"198.18.0.2/24"}]}'
exit 0)");
        write_plugin("second", R"(cat > "$LOG.second.$CNI_COMMAND.stdin"
echo "$CNI_COMMAND second" >> "$LOG.order"
[ "$CNI_COMMAND" = ADD ] && /usr/bin/python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["prevResult"]))' "$LOG.second.ADD.stdin"
exit 0)");
        write_plugin(
            "failing",
            R"(echo '{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"agent busy"}'
exit 1)");
        ::setenv("LOG", (dir_ / "log").c_str(), 1);
    }
    void TearDown() override { fs::remove_all(dir_); }

    void write_plugin(const std::string& name, const std::string& body) {
        std::ofstream f(dir_ / name);
        f << "#!/bin/sh\n" << body << "\n";
        f.close();
        fs::permissions(dir_ / name, fs::perms::owner_all);
    }
    std::string read(const std::string& suffix) {
        std::ifstream f(dir_ / ("log" + suffix));
        std::stringstream ss;
        ss << f.rdbuf();
        return ss.str();
    }
    CniAttachment attachment() {
        return {.container_id = "c0ffee",
                .netns_path = "/var/run/netns/x",
                .ifname = "eth0",
                .args = {
                    {"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "rag"}, {"K8S_POD_NAME", "llm"}}};
    }

    fs::path dir_;
    json conflist_ = json::parse(
        R"({"cniVersion":"1.0.0","name":"net","plugins":[{"type":"first","x":1},{"type":"second"}]})");
};

TEST_F(CniRuntimeTest, AddChainsPrevResultAndSetsRuntimeEnvironment) {
    CniRuntime cni({"/nonexistent", dir_.string()}, "");
    json result = cni.add(conflist_, attachment());
    EXPECT_EQ(result["ips"][0]["address"], "198.18.0.2/24");

    json first_in = json::parse(read(".first.ADD.stdin"));
    EXPECT_EQ(first_in["name"], "net");
    EXPECT_EQ(first_in["cniVersion"], "1.0.0");
    EXPECT_EQ(first_in["x"], 1);
    EXPECT_FALSE(first_in.contains("prevResult"));
    json second_in = json::parse(read(".second.ADD.stdin"));
    EXPECT_EQ(second_in["prevResult"]["ips"][0]["address"], "198.18.0.2/24");

    const std::string env = read(".first.ADD.env");
    EXPECT_NE(env.find("CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=rag;K8S_POD_NAME=llm\n"),
              std::string::npos)
        << env;
    EXPECT_NE(env.find("CNI_CONTAINERID=c0ffee\n"), std::string::npos);
    EXPECT_NE(env.find("CNI_IFNAME=eth0\n"), std::string::npos);
    EXPECT_NE(env.find("CNI_NETNS=/var/run/netns/x\n"), std::string::npos);
    EXPECT_NE(env.find("CNI_PATH=/nonexistent:" + dir_.string() + "\n"), std::string::npos);
}

TEST_F(CniRuntimeTest, DelRunsInReverseWithCachedResult) {
    CniRuntime cni({dir_.string()}, "");
    json cached = json::parse(R"({"cniVersion":"1.0.0","ips":[{"address":"198.18.0.9/24"}]})");
    cni.del(conflist_, attachment(), cached);
    EXPECT_EQ(read(".order"), "DEL second\nDEL first\n");
    EXPECT_EQ(json::parse(read(".first.DEL.stdin"))["prevResult"], cached);
}

TEST_F(CniRuntimeTest, PluginErrorObjectIsReported) {
    CniRuntime cni({dir_.string()}, "");
    json list =
        json::parse(R"({"cniVersion":"1.0.0","name":"net","plugins":[{"type":"failing"}]})");
    try {
        cni.add(list, attachment());
        FAIL() << "expected CniError";
    } catch (const CniError& e) {
        EXPECT_EQ(e.code, 11);
        EXPECT_STREQ(e.what(),
                     "CNI ADD of plugin failing failed (exit 1): try again later (agent busy)");
    }
}

TEST_F(CniRuntimeTest, MissingPluginNamesSearchPath) {
    CniRuntime cni({dir_.string()}, "");
    json list = json::parse(R"({"cniVersion":"1.0.0","name":"net","plugins":[{"type":"nope"}]})");
    EXPECT_THROW(
        {
            try {
                cni.add(list, attachment());
            } catch (const CniError& e) {
                EXPECT_NE(
                    std::string(e.what()).find("'nope' not found in CNI_PATH=" + dir_.string()),
                    std::string::npos);
                throw;
            }
        },
        CniError);
}

}  // namespace
}  // namespace sluice::testbed
