#pragma once

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <string>
#include <vector>

#include "policies/diagnostic.h"

namespace sluice::policies {

// Limits that keep hostile or broken input from exhausting memory or time. A ConfigMap is at
// most 1 MiB in Kubernetes; these leave room for a folder of them.
inline constexpr std::size_t kMaxFileBytes = 4u << 20;
inline constexpr std::size_t kMaxFiles = 4096;
inline constexpr std::size_t kMaxDocumentsPerFile = 10000;
// yaml-cpp refuses deeper nesting itself; this bounds our own recursion over nodes.
inline constexpr int kMaxNestingDepth = 64;

// The text of one YAML file.
struct SourceFile {
    std::string path;
    std::string text;
};

// One YAML document of a multi-document file.
struct SourceDocument {
    std::string file;
    int index = 0;  // position of the document in its file, from 0
    YAML::Node node;
};

// Reads `path`: a file, or every *.yaml / *.yml / *.json file directly in a directory, in name
// order. Entries whose name starts with '.' are skipped, which is what a ConfigMap mount needs:
// the visible names are symlinks through `..data`, and `..data`, `..2026_…` are kubelet's own.
// Unreadable or oversized files become diagnostics.
std::vector<SourceFile> read_sources(const std::string& path, std::vector<Diagnostic>& diagnostics);

// Splits a file into its YAML documents (empty documents are dropped). A syntax error becomes
// one positioned diagnostic and yields no documents from that file.
std::vector<SourceDocument> parse_yaml(const SourceFile& file,
                                       std::vector<Diagnostic>& diagnostics);

// A yaml-cpp exception as a positioned error: "<what>: <reason>" (yaml-cpp's own message repeats
// the position; only the reason is kept). Without a mark, the position is line 1, column 1.
Diagnostic yaml_error(const std::string& file, const YAML::Exception& e, const std::string& what);

// The position of `node` in `file` (yaml-cpp marks are 0-based; ours are 1-based).
SourcePosition position_of(const std::string& file, const YAML::Node& node);

}  // namespace sluice::policies
