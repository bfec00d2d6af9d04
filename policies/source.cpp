#include "policies/source.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>
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

// yaml-cpp 0.7 loops forever, allocating, on a block-context line that starts with ','
// (invalid YAML: ',' cannot start a plain scalar). Find such lines first and refuse the file
// with a position instead. Tracks flow depth ([ ] { }), quotes, comments and block scalars
// (| and >) well enough for that one question; yaml-cpp reports everything else.
std::optional<SourcePosition> leading_comma(const std::string& path, const std::string& text) {
    int flow_depth = 0;
    int block_scalar_indent = -1;  // indent of the line that opened a | or > scalar
    int line_no = 0;
    std::size_t pos = 0;
    while (pos <= text.size() && line_no < 10'000'000) {
        const std::size_t eol = std::min(text.find('\n', pos), text.size());
        const std::string_view line(text.data() + pos, eol - pos);
        ++line_no;
        pos = eol + 1;
        const std::size_t first = line.find_first_not_of(" \t\r");
        if (first == std::string_view::npos)
            continue;
        const int indent = static_cast<int>(first);
        if (block_scalar_indent >= 0) {
            if (indent > block_scalar_indent)
                continue;
            block_scalar_indent = -1;
        }
        if (flow_depth == 0 && line[first] == ',')
            return SourcePosition{path, line_no, indent + 1};
        char quote = 0;
        std::size_t content_end = line.size();
        for (std::size_t i = first; i < line.size(); ++i) {
            const char c = line[i];
            if (quote) {
                if (c == '\\' && quote == '"')
                    ++i;
                else if (c == quote)
                    quote = 0;
                continue;
            }
            if (c == '#' && (i == 0 || line[i - 1] == ' ' || line[i - 1] == '\t')) {
                content_end = i;
                break;
            }
            if (c == '"' || c == '\'')
                quote = c;
            else if ((c == '[' || c == '{') &&
                     (flow_depth > 0 || i == first ||
                      (i >= 2 && line[i - 1] == ' ' &&
                       (line[i - 2] == ':' || line[i - 2] == '-' || line[i - 2] == '?'))))
                ++flow_depth;  // a flow collection, not a '[' inside a plain scalar
            else if ((c == ']' || c == '}') && flow_depth > 0)
                --flow_depth;
        }
        const std::string_view content = line.substr(0, content_end);
        const std::size_t last = content.find_last_not_of(" \t\r");
        if (flow_depth == 0 && last != std::string_view::npos) {
            // "key: |", "- >-", "|2+": a block scalar header ends the line.
            std::size_t h = last;
            while (h > first && (content[h] == '-' || content[h] == '+' ||
                                 (content[h] >= '1' && content[h] <= '9')))
                --h;
            if ((content[h] == '|' || content[h] == '>') && (h == first || content[h - 1] == ' '))
                block_scalar_indent = indent;
        }
        if (eol == text.size())
            break;
    }
    return std::nullopt;
}

}  // namespace

Diagnostic yaml_error(const std::string& file, const YAML::Exception& e, const std::string& what) {
    const bool known = !e.mark.is_null();
    return {Severity::Error,
            {file, known ? e.mark.line + 1 : 1, known ? e.mark.column + 1 : 1},
            what + ": " + e.msg};
}

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
    if (auto at = leading_comma(file.path, file.text)) {
        diagnostics.push_back(
            {Severity::Error, *at, "YAML syntax: a line cannot start with ',' outside [ ] or { }"});
        return docs;
    }
    try {
        nodes = YAML::LoadAll(file.text);
    } catch (const YAML::Exception& e) {
        diagnostics.push_back(yaml_error(file.path, e, "YAML syntax"));
        return docs;
    } catch (const std::exception& e) {
        diagnostics.push_back(
            {Severity::Error, {file.path, 1, 1}, std::string("YAML: ") + e.what()});
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
