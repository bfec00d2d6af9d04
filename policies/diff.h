#pragma once

#include <string>
#include <vector>

#include "policies/compiler.h"
#include "policies/schema.h"

namespace sluice::policies {

// What changed between two policy sets: objects added, removed or changed (by kind/ns/name,
// compared on their spec), and, when both were compiled against one registry, the kernel entry
// counts that change. Lines are sorted; empty when nothing changed.
std::vector<std::string> diff_policies(const PolicySet& a, const PolicySet& b);
std::vector<std::string> diff_kernel(const CompiledPolicy& a, const CompiledPolicy& b);

}  // namespace sluice::policies
