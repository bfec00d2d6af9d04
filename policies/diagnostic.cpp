#include "policies/diagnostic.h"

#include <algorithm>

namespace sluice::policies {

std::string SourcePosition::to_string() const {
    if (line <= 0)
        return file;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

std::string Diagnostic::to_string() const {
    return where.to_string() + (severity == Severity::Error ? ": error: " : ": warning: ") +
           message;
}

std::size_t error_count(const std::vector<Diagnostic>& diagnostics) {
    return static_cast<std::size_t>(
        std::count_if(diagnostics.begin(), diagnostics.end(),
                      [](const Diagnostic& d) { return d.severity == Severity::Error; }));
}

bool has_errors(const std::vector<Diagnostic>& diagnostics) {
    return error_count(diagnostics) > 0;
}

}  // namespace sluice::policies
