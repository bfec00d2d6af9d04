#include "waypoint/http/sse.h"

#include <algorithm>
#include <cstring>

namespace sluice::waypoint {

std::size_t SseSplitter::findEventEnd(std::size_t from) {
    // Terminators: "\n\n" or "\r\n\r\n" (a lone "\r" line ending is legal SSE but no OpenAI
    // compatible server sends it).
    const char* begin = buffer_.data();
    const char* end = begin + buffer_.size();
    for (const char* p = begin + std::max(from, scanned_); p + 1 < end; ++p) {
        p = static_cast<const char*>(std::memchr(p, '\n', std::size_t(end - p - 1)));
        if (p == nullptr)
            break;
        if (p[1] == '\n')
            return std::size_t(p - begin) + 2;
        if (p[1] == '\r' && p + 2 < end && p[2] == '\n')
            return std::size_t(p - begin) + 3;
    }
    return std::string::npos;
}

std::string_view SseSplitter::dataOf(std::string_view raw) {
    // One data line (what OpenAI-compatible servers send): a view of it, nothing copied.
    std::string_view only;
    int lines = 0;
    data_.clear();
    while (!raw.empty()) {
        const std::size_t nl = raw.find('\n');
        std::string_view line = raw.substr(0, nl);
        raw = nl == std::string_view::npos ? std::string_view{} : raw.substr(nl + 1);
        if (!line.empty() && line.back() == '\r')
            line.remove_suffix(1);
        if (!line.starts_with("data:"))
            continue;
        line.remove_prefix(5);
        if (!line.empty() && line.front() == ' ')
            line.remove_prefix(1);
        if (++lines == 1) {
            only = line;
            continue;
        }
        if (lines == 2)
            data_.assign(only);
        data_ += '\n';
        data_.append(line);
    }
    return lines > 1 ? std::string_view(data_) : only;
}

}  // namespace sluice::waypoint
