#pragma once

#include <string>
#include <string_view>

namespace sluice::waypoint {

// Splits a Server-Sent Events byte stream into events as they complete. An event is handed on
// the moment its blank-line terminator arrives, so relaying event by event adds no delay a
// client could observe (a partial event is not usable by an SSE client anyway).
class SseSplitter {
  public:
    // Calls sink(raw_event_bytes, data) for every event completed by `bytes`; `data` is the
    // event's `data:` lines joined by '\n' (the field the OpenAI stream puts its JSON in).
    template <typename Sink>
    void feed(std::string_view bytes, Sink&& sink) {
        buffer_.append(bytes);
        std::size_t start = 0;
        for (;;) {
            const std::size_t end = findEventEnd(start);
            if (end == std::string::npos)
                break;
            const std::string_view raw = std::string_view(buffer_).substr(start, end - start);
            sink(raw, dataOf(raw));
            start = end;
        }
        buffer_.erase(0, start);
        scanned_ = buffer_.size() > 3 ? buffer_.size() - 3 : 0;
    }
    // Bytes of an event that has not completed yet (relayed as they are when the stream ends).
    std::string_view pending() const { return buffer_; }

  private:
    std::size_t findEventEnd(std::size_t from);
    // The `data:` lines of an event joined; valid until the next call.
    std::string_view dataOf(std::string_view raw);

    std::string buffer_;
    std::string data_;         // dataOf()'s result when it joins several lines
    std::size_t scanned_ = 0;  // bytes before this offset hold no terminator
};

}  // namespace sluice::waypoint
