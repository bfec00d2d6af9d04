#pragma once

#include <string>
#include <vector>

namespace sluice::policies {

// Where something was written: 1-based line and column, as editors and compilers print them.
// line 0 means "the whole file" (for example an unreadable file).
struct SourcePosition {
    std::string file;
    int line = 0;
    int column = 0;

    std::string to_string() const;  // "file:line:column", "file" when line is 0
};

enum class Severity { Error, Warning };

// One problem found while reading, validating or compiling policies. Errors make a policy set
// unusable (a reload keeps the last good one); warnings are reported and the set is still used.
struct Diagnostic {
    Severity severity = Severity::Error;
    SourcePosition where;
    std::string message;

    std::string to_string() const;  // "file:line:column: error: message"
};

bool has_errors(const std::vector<Diagnostic>& diagnostics);
std::size_t error_count(const std::vector<Diagnostic>& diagnostics);

}  // namespace sluice::policies
