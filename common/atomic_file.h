#pragma once

#include <string>
#include <string_view>

namespace sluice {

// Writes `content` to `path` through a temporary file in the same directory and a rename, so a
// reader sees the old file or the new one, never a partial write. Returns false (and leaves the
// old file) when the temporary file cannot be written or renamed.
bool write_file_atomically(const std::string& path, std::string_view content);

}  // namespace sluice
