#include "policies/schema.h"

namespace sluice::policies {

std::string ObjectMeta::ref() const {
    if (namespace_name.empty())
        return kind + " " + name;
    return kind + " " + namespace_name + "/" + name;
}

bool labels_match(const Labels& match_labels, const Labels& labels) {
    for (const auto& [k, v] : match_labels) {
        auto it = labels.find(k);
        if (it == labels.end() || it->second != v)
            return false;
    }
    return true;
}

bool istio_string_match(const std::string& pattern, const std::string& value) {
    if (pattern == "*")
        return !value.empty();  // "*" means "any authenticated/known value", not "absent"
    if (!pattern.empty() && pattern.back() == '*') {
        const std::string prefix = pattern.substr(0, pattern.size() - 1);
        return value.size() >= prefix.size() && value.compare(0, prefix.size(), prefix) == 0;
    }
    if (!pattern.empty() && pattern.front() == '*') {
        const std::string suffix = pattern.substr(1);
        return value.size() >= suffix.size() &&
               value.compare(value.size() - suffix.size(), suffix.size(), suffix) == 0;
    }
    return pattern == value;
}

const char* action_name(Action action) {
    return action == Action::Allow ? "ALLOW" : "DENY";
}

const char* mtls_mode_name(MtlsMode mode) {
    switch (mode) {
        case MtlsMode::Strict:
            return "STRICT";
        case MtlsMode::Permissive:
            return "PERMISSIVE";
        case MtlsMode::Disable:
            return "DISABLE";
        case MtlsMode::Unset:
            break;
    }
    return "UNSET";
}

}  // namespace sluice::policies
