#include "waypoint/http/sse.h"

#include <algorithm>

namespace sluice::waypoint {

std::size_t SseSplitter::findEventEnd(std::size_t from) {
    // Terminators: "\n\n" or "\r\n\r\n" (a lone "\r" line ending is legal SSE but no OpenAI
    // compatible server sends it).
    for (std::size_t i = std::max(from, scanned_); i + 1 < buffer_.size(); ++i) {
        if (buffer_[i] != '\n')
            continue;
        if (buffer_[i + 1] == '\n')
            return i + 2;
        if (buffer_[i + 1] == '\r' && i + 2 < buffer_.size() && buffer_[i + 2] == '\n') {
            return i + 3;
        }
    }
    return std::string::npos;
}

std::string SseSplitter::dataOf(std::string_view raw) const {
    std::string data;
    bool first = true;
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
        if (!first)
            data += '\n';
        data.append(line);
        first = false;
    }
    return data;
}

}  // namespace sluice::waypoint
