#pragma once

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

namespace sluice::test {

// Does what kubelet does to a ConfigMap volume: write the new files into a fresh timestamped
// directory, point `..data_tmp` at it, rename it over `..data` (atomic), then remove the old one.
// The user-visible names are symlinks through `..data`, created once and removed with their key.
class KubeletVolume {
  public:
    explicit KubeletVolume(const std::filesystem::path& dir) : dir_(dir) {}

    void publish(const std::map<std::string, std::string>& files) {
        namespace fs = std::filesystem;
        const std::string ts = "..2026_11_26_00_00_" + std::to_string(++version_);
        fs::create_directory(dir_ / ts);
        for (const auto& [name, text] : files)
            std::ofstream(dir_ / ts / name) << text;
        fs::create_directory_symlink(ts, dir_ / "..data_tmp");
        fs::rename(dir_ / "..data_tmp", dir_ / "..data");  // the swap
        for (const auto& [name, text] : files) {
            if (!fs::exists(fs::symlink_status(dir_ / name)))
                fs::create_symlink("..data/" + name, dir_ / name);
        }
        for (const auto& name : names_) {  // keys the ConfigMap no longer has
            if (!files.contains(name))
                fs::remove(dir_ / name);
        }
        names_.clear();
        for (const auto& [name, text] : files)
            names_.insert(name);
        if (!old_.empty())
            fs::remove_all(dir_ / old_);
        old_ = ts;
    }

  private:
    std::filesystem::path dir_;
    int version_ = 0;
    std::string old_;
    std::set<std::string> names_;
};

}  // namespace sluice::test
