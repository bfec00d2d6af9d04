#include "waypoint/admission/config.h"

#include <yaml-cpp/yaml.h>

#include <stdexcept>

#include "waypoint/lb/config.h"

namespace sluice::waypoint::admission {

const char* to_string(Priority p) {
    switch (p) {
        case Priority::Critical:
            return "critical";
        case Priority::Standard:
            return "standard";
        case Priority::Sheddable:
            return "sheddable";
    }
    return "standard";
}

std::optional<Priority> parsePriority(const std::string& text) {
    for (auto p : {Priority::Critical, Priority::Standard, Priority::Sheddable}) {
        if (text == to_string(p))
            return p;
    }
    return std::nullopt;
}

namespace {

Priority priorityOf(const YAML::Node& node) {
    const auto text = node.as<std::string>();
    auto p = parsePriority(text);
    if (!p) {
        throw YAML::ParserException(node.Mark(), "admission: unknown priority class \"" + text +
                                                     "\" (critical, standard or sheddable)");
    }
    return *p;
}

}  // namespace

AdmissionConfig parseAdmissionConfig(const YAML::Node& node) {
    AdmissionConfig c;
    if (!node)
        return c;
    c.max_concurrent = node["maxConcurrent"].as<std::size_t>(c.max_concurrent);
    c.max_queued = node["maxQueued"].as<std::size_t>(c.max_queued);
    if (const auto& t = node["queueTimeout"]) {
        for (auto p : {Priority::Critical, Priority::Standard, Priority::Sheddable}) {
            auto& slot = c.queue_timeout[static_cast<std::size_t>(p)];
            slot = parseDuration(t[to_string(p)], slot);
        }
    }
    if (const auto& h = node["priorityFrom"])
        c.priority_header = h["header"].as<std::string>("");
    if (const auto& d = node["defaultClass"])
        c.default_priority = priorityOf(d);
    for (const auto& kv : node["tenantClasses"])
        c.tenant_priorities[kv.first.as<std::string>()] = priorityOf(kv.second);
    return c;
}

}  // namespace sluice::waypoint::admission
