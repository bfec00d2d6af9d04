#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sluice::datapath {

// An IPv4 or IPv6 address in the datapath's 16-byte form: IPv4 is stored v4-mapped
// (::ffff:a.b.c.d), as the eBPF maps key it (sluice_abi.h).
struct IpAddress {
    std::array<uint8_t, 16> bytes{};

    bool is_v4() const;  // v4-mapped
    std::string to_string() const;
    bool operator==(const IpAddress&) const = default;
};

// A prefix; `prefix_len` counts bits of the 16-byte form (an IPv4 /24 is 120).
struct Cidr {
    IpAddress address;
    uint32_t prefix_len = 128;

    std::string to_string() const;
};

// "198.18.0.1", "2001:db8::1", "::ffff:198.18.0.1".
std::optional<IpAddress> parse_ip(std::string_view text);
// "198.18.0.0/15", "2001:db8::/32", or a bare address (a host prefix). Host bits are cleared.
std::optional<Cidr> parse_cidr(std::string_view text);

}  // namespace sluice::datapath
