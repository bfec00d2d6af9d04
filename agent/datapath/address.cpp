#include "agent/datapath/address.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace sluice::datapath {
namespace {

constexpr std::array<uint8_t, 12> kV4MappedPrefix = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

}  // namespace

bool IpAddress::is_v4() const {
    return std::memcmp(bytes.data(), kV4MappedPrefix.data(), kV4MappedPrefix.size()) == 0;
}

std::string IpAddress::to_string() const {
    char buf[INET6_ADDRSTRLEN] = {};
    if (is_v4()) {
        ::inet_ntop(AF_INET, bytes.data() + 12, buf, sizeof buf);
    } else {
        ::inet_ntop(AF_INET6, bytes.data(), buf, sizeof buf);
    }
    return buf;
}

std::string Cidr::to_string() const {
    uint32_t len = address.is_v4() && prefix_len >= 96 ? prefix_len - 96 : prefix_len;
    return address.to_string() + "/" + std::to_string(len);
}

std::optional<IpAddress> parse_ip(std::string_view text) {
    std::string s(text);
    IpAddress ip;
    in_addr v4{};
    if (::inet_pton(AF_INET, s.c_str(), &v4) == 1) {
        std::memcpy(ip.bytes.data(), kV4MappedPrefix.data(), kV4MappedPrefix.size());
        std::memcpy(ip.bytes.data() + 12, &v4, 4);
        return ip;
    }
    if (::inet_pton(AF_INET6, s.c_str(), ip.bytes.data()) == 1)
        return ip;
    return std::nullopt;
}

std::optional<Cidr> parse_cidr(std::string_view text) {
    auto slash = text.find('/');
    auto ip = parse_ip(text.substr(0, slash));
    if (!ip)
        return std::nullopt;
    Cidr cidr{*ip, 128};
    if (slash != std::string_view::npos) {
        auto len_text = text.substr(slash + 1);
        uint32_t len = 0;
        auto [end, ec] = std::from_chars(len_text.data(), len_text.data() + len_text.size(), len);
        if (ec != std::errc{} || end != len_text.data() + len_text.size())
            return std::nullopt;
        // An IPv4 prefix is written against 32 bits but stored against the mapped 128.
        bool v4_text = text.substr(0, slash).find(':') == std::string_view::npos;
        if (v4_text) {
            if (len > 32)
                return std::nullopt;
            len += 96;
        } else if (len > 128) {
            return std::nullopt;
        }
        cidr.prefix_len = len;
    }
    for (uint32_t bit = cidr.prefix_len; bit < 128; ++bit) {
        cidr.address.bytes[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
    }
    return cidr;
}

}  // namespace sluice::datapath
