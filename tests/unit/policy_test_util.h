#pragma once

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "policies/parser.h"
#include "policies/source.h"

namespace sluice::test {

// A temporary directory removed (with its contents) when the object goes away.
class TempDir {
  public:
    TempDir() {
        std::random_device rd;
        path_ = std::filesystem::temp_directory_path() /
                ("sluice-policy-test-" + std::to_string(rd()) + std::to_string(rd()));
        std::filesystem::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    const std::filesystem::path& path() const { return path_; }
    // Atomic, as kubelet and careful editors write: a watcher never sees a half-written file
    // (the temporary name starts with '.', which policy and registry readers skip).
    void write(const std::string& rel, const std::string& text) const {
        const auto p = path_ / rel;
        std::filesystem::create_directories(p.parent_path());
        const auto tmp = p.parent_path() / ("." + p.filename().string() + ".tmp");
        std::ofstream(tmp, std::ios::trunc) << text;
        std::filesystem::rename(tmp, p);
    }

  private:
    std::filesystem::path path_;
};

inline policies::PolicySet parse_text(const std::string& text,
                                      std::vector<policies::Diagnostic>& diags,
                                      const std::string& file = "test.yaml") {
    return policies::parse_policy_files({{file, text}}, diags);
}

}  // namespace sluice::test
