// agent/datapath pieces that need no privileges: addresses, config validation, load errors.
#include <bpf/libbpf.h>
#include <gtest/gtest.h>

#include "agent/datapath/address.h"
#include "agent/datapath/config.h"
#include "agent/datapath/datapath.h"
#include "agent/datapath/libbpf_log.h"

namespace sluice::datapath {
namespace {

TEST(DatapathAddress, Ipv4IsStoredV4Mapped) {
    auto ip = parse_ip("198.18.0.1");
    ASSERT_TRUE(ip);
    EXPECT_TRUE(ip->is_v4());
    EXPECT_EQ(ip->bytes[10], 0xff);
    EXPECT_EQ(ip->bytes[11], 0xff);
    EXPECT_EQ(ip->bytes[12], 198);
    EXPECT_EQ(ip->to_string(), "198.18.0.1");
    // The v4-mapped IPv6 spelling is the same address.
    EXPECT_EQ(parse_ip("::ffff:198.18.0.1"), ip);
}

TEST(DatapathAddress, CidrPrefixCountsBitsOfTheMappedForm) {
    struct Case {
        const char* text;
        uint32_t prefix_len;
        const char* canonical;
    };
    const Case cases[] = {
        {"198.18.0.0/15", 111, "198.18.0.0/15"},     {"198.18.5.77/24", 120, "198.18.5.0/24"},
        {"198.18.0.1", 128, "198.18.0.1/32"},        {"2001:db8::/32", 32, "2001:db8::/32"},
        {"2001:db8:5::1/48", 48, "2001:db8:5::/48"}, {"0.0.0.0/0", 96, "0.0.0.0/0"},
    };
    for (const auto& c : cases) {
        auto cidr = parse_cidr(c.text);
        ASSERT_TRUE(cidr) << c.text;
        EXPECT_EQ(cidr->prefix_len, c.prefix_len) << c.text;
        EXPECT_EQ(cidr->to_string(), c.canonical) << c.text;
    }
    for (const char* bad : {"198.18.0.0/33", "2001:db8::/129", "198.18.0/24", "x", "1.2.3.4/a"}) {
        EXPECT_FALSE(parse_cidr(bad)) << bad;
    }
}

TEST(DatapathConfig, ValidateReportsEveryProblem) {
    DatapathConfig config;
    EXPECT_EQ(config.validate().size(), 1u) << "cgroup_path has no default";
    config.cgroup_path = "/sys/fs/cgroup";
    EXPECT_TRUE(config.validate().empty());
    config.bpffs_root = "relative";
    config.inbound_port = config.outbound_port;
    config.map_sizes.ipcache = 0;
    EXPECT_EQ(config.validate().size(), 3u);
}

TEST(DatapathLoadError, VerifierLogMakesVerifierRejected) {
    const std::string log =
        "libbpf: prog 'sluice_connect4': BPF program load failed: Permission denied\n"
        "libbpf: prog 'sluice_connect4': -- BEGIN PROG LOAD LOG --\n"
        "R1 invalid mem access 'scalar'\n"
        "-- END PROG LOAD LOG --\n";
    Error e = load_error("redirect.bpf.o", -13, log);
    EXPECT_EQ(e.code, Errc::VerifierRejected);
    EXPECT_NE(e.message.find("redirect.bpf.o"), std::string::npos);
    EXPECT_NE(e.message.find("R1 invalid mem access"), std::string::npos);

    Error other = load_error("inbound.bpf.o", -2, "libbpf: failed to find BTF\n");
    EXPECT_EQ(other.code, Errc::LoadFailed);

    // A huge log keeps its end, where the verifier says why.
    std::string huge(3 * kMaxLogInError, 'x');
    huge = "-- BEGIN PROG LOAD LOG --\n" + huge + "the reason\n";
    Error big = load_error("redirect.bpf.o", -13, huge);
    EXPECT_LT(big.message.size(), kMaxLogInError + 200);
    EXPECT_NE(big.message.find("the reason"), std::string::npos);
}

TEST(DatapathLoadError, CaptureCollectsLibbpfOutput) {
    LibbpfLogCapture capture;
    const char garbage[] = "not an ELF file";
    bpf_object* obj = bpf_object__open_mem(garbage, sizeof garbage, nullptr);
    EXPECT_EQ(obj, nullptr);
    EXPECT_FALSE(capture.text().empty());
}

TEST(DatapathNames, EveryReasonAndEventHasAName) {
    for (int r = 0; r < SLUICE_REASON_MAX; ++r) {
        EXPECT_STRNE(reason_name(static_cast<sluice_reason>(r)), "unknown") << r;
    }
    for (int e = 0; e < SLUICE_EVENT_MAX; ++e) {
        EXPECT_STRNE(event_name(static_cast<sluice_event>(e)), "unknown") << e;
    }
}

}  // namespace
}  // namespace sluice::datapath
