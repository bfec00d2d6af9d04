#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace sluice::waypoint {

// Config parsers collect every problem, then report them at once: throws std::invalid_argument
// with `prefix` and the problems joined by "; " when there are any.
inline void throwIfProblems(const std::vector<std::string>& problems,
                            const std::string& prefix = "") {
    if (problems.empty())
        return;
    std::string all;
    for (const auto& p : problems)
        all += (all.empty() ? "" : "; ") + p;
    throw std::invalid_argument(prefix + all);
}

}  // namespace sluice::waypoint
