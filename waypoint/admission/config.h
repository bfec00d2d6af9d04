#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <string>

namespace YAML {
class Node;
}

namespace sluice::waypoint::admission {

// Priority classes, most important first. Under saturation the waypoint serves queued requests
// in this order and sheds `Sheddable` ones first.
enum class Priority { Critical = 0, Standard = 1, Sheddable = 2 };
inline constexpr std::size_t kPriorities = 3;
const char* to_string(Priority p);
std::optional<Priority> parsePriority(const std::string& text);

// The Waypoint document's `admission:` section; absent (or maxConcurrent 0) = no admission
// control: every request goes upstream at once.
struct AdmissionConfig {
    std::size_t max_concurrent = 0;  // requests upstream at once, across all workers
    std::size_t max_queued = 256;    // waiting requests, all classes together
    // How long a request of each class may wait for a slot before it is shed (503).
    std::chrono::milliseconds queue_timeout[kPriorities] = {
        std::chrono::seconds(30), std::chrono::seconds(10), std::chrono::seconds(1)};
    std::string priority_header;                        // e.g. x-sluice-priority; "" = none
    std::map<std::string, Priority> tenant_priorities;  // tenant → class
    Priority default_priority = Priority::Standard;

    bool enabled() const { return max_concurrent > 0; }
};

AdmissionConfig parseAdmissionConfig(const YAML::Node& node);

}  // namespace sluice::waypoint::admission
