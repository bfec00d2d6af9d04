#include "tests/testbed/layout.h"

#include <fmt/format.h>

namespace sluice::testbed {

std::string node_fabric_ip(int node) {
    return fmt::format("198.19.0.{}", node + 1);
}
std::string node_fabric_ip6(int node) {
    return fmt::format("2001:db8:ff::{:x}", node + 1);
}
std::string pod_cidr(int node) {
    return fmt::format("198.18.{}.0/24", node);
}
std::string pod_cidr6(int node) {
    return fmt::format("2001:db8:0:{:x}::/64", node);
}
std::string pod_gateway(int node) {
    return fmt::format("198.18.{}.1", node);
}
std::string service_vip(int index) {
    return fmt::format("198.19.128.{}", index + 1);
}

}  // namespace sluice::testbed
