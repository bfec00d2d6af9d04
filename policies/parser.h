#pragma once

#include <vector>

#include "policies/diagnostic.h"
#include "policies/schema.h"
#include "policies/source.h"

namespace sluice::policies {

// Turns YAML documents into policy objects. Every problem becomes a positioned diagnostic:
// wrong types, invalid CIDRs and ports, missing required fields and unknown apiVersions are
// errors (that document is dropped); unknown kinds and fields are warnings that name them.
// Never throws on input.
PolicySet parse_policies(const std::vector<SourceDocument>& documents,
                         std::vector<Diagnostic>& diagnostics);

// Convenience: parse_yaml over every file, then parse_policies.
PolicySet parse_policy_files(const std::vector<SourceFile>& files,
                             std::vector<Diagnostic>& diagnostics);

// The YAML node as JSON (scalars stay strings except true/false/integers), bounded in depth.
nlohmann::json yaml_to_json(const YAML::Node& node, int depth = 0);

}  // namespace sluice::policies
