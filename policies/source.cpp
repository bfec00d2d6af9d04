#include "policies/source.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

namespace sluice::policies {
namespace {

namespace fs = std::filesystem;

bool is_policy_file_name(const std::string& name) {
    if (name.empty() || name[0] == '.')
        return false;
    for (const char* ext : {".yaml", ".yml", ".json"}) {
        std::string_view e(ext);
        if (name.size() > e.size() && name.compare(name.size() - e.size(), e.size(), e) == 0)
            return true;
    }
    return false;
}

void read_one(const fs::path& path, std::vector<SourceFile>& out,
              std::vector<Diagnostic>& diagnostics) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);  // follows symlinks, as ConfigMap keys are
    if (ec) {
        diagnostics.push_back({Severity::Error, {path.string()}, "cannot read: " + ec.message()});
        return;
    }
    if (size > kMaxFileBytes) {
        diagnostics.push_back({Severity::Error,
                               {path.string()},
                               "file is " + std::to_string(size) +
                                   " bytes, more than the limit of " +
                                   std::to_string(kMaxFileBytes)});
        return;
    }
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    if (!in) {
        diagnostics.push_back({Severity::Error, {path.string()}, "cannot read file"});
        return;
    }
    out.push_back({path.string(), text.str()});
}

}  // namespace

SourcePosition position_of(const std::string& file, const YAML::Node& node) {
    const YAML::Mark mark = node.Mark();
    if (mark.is_null())
        return {file, 0, 0};
    return {file, mark.line + 1, mark.column + 1};
}

std::vector<SourceFile> read_sources(const std::string& path,
                                     std::vector<Diagnostic>& diagnostics) {
    std::vector<SourceFile> out;
    std::error_code ec;
    const fs::path root(path);
    if (!fs::exists(root, ec)) {
        diagnostics.push_back({Severity::Error, {path}, "no such file or directory"});
        return out;
    }
    if (!fs::is_directory(root, ec)) {
        read_one(root, out, diagnostics);
        return out;
    }
    std::vector<fs::path> files;
    for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (!is_policy_file_name(name))
            continue;
        std::error_code type_ec;
        if (!fs::is_regular_file(it->path(), type_ec))  // a dangling symlink mid-swap is skipped
            continue;
        files.push_back(it->path());
        if (files.size() > kMaxFiles) {
            diagnostics.push_back({Severity::Error,
                                   {path},
                                   "more than " + std::to_string(kMaxFiles) + " policy files"});
            return out;
        }
    }
    if (ec)
        diagnostics.push_back({Severity::Error, {path}, "cannot list directory: " + ec.message()});
    std::sort(files.begin(), files.end());
    for (const auto& f : files)
        read_one(f, out, diagnostics);
    return out;
}

std::vector<SourceDocument> parse_yaml(const SourceFile& file,
                                       std::vector<Diagnostic>& diagnostics) {
    std::vector<SourceDocument> docs;
    std::vector<YAML::Node> nodes;
    try {
        nodes = YAML::LoadAll(file.text);
    } catch (const YAML::Exception& e) {
        // yaml-cpp's message repeats the position; keep only the reason.
        diagnostics.push_back({Severity::Error,
                               {file.path, e.mark.is_null() ? 1 : e.mark.line + 1,
                                e.mark.is_null() ? 1 : e.mark.column + 1},
                               "YAML syntax: " + e.msg});
        return docs;
    }
    if (nodes.size() > kMaxDocumentsPerFile) {
        diagnostics.push_back(
            {Severity::Error,
             {file.path, 1, 1},
             "more than " + std::to_string(kMaxDocumentsPerFile) + " documents in one file"});
        return docs;
    }
    int index = 0;
    for (auto& n : nodes) {
        if (!n.IsNull())
            docs.push_back({file.path, index, n});
        ++index;
    }
    return docs;
}

}  // namespace sluice::policies
