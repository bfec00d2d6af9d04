#include "common/atomic_file.h"

#include <filesystem>
#include <fstream>

namespace sluice {

bool write_file_atomically(const std::string& path, std::string_view content) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::trunc | std::ios::binary);
        f.write(content.data(), static_cast<std::streamsize>(content.size()));
        if (!f.flush())
            return false;
    }
    std::error_code ec;
    std::filesystem::rename(tmp, path, ec);
    return !ec;
}

}  // namespace sluice
