#pragma once

#include <string>
#include <vector>

#include "policies/compiler.h"
#include "policies/diagnostic.h"
#include "policies/schema.h"

namespace sluice::policies {

// Checks across documents that need no registry: duplicate objects, boundaries that claim the
// same namespace by name or allow unknown boundaries, several mesh-wide PeerAuthentications, and
// rules that need a waypoint (warnings). Registry-dependent checks happen in compile().
std::vector<Diagnostic> validate(const PolicySet& policies, const CompileOptions& options = {});

}  // namespace sluice::policies
