#pragma once

// nghttp2 plumbing shared by the HBONE connection and the waypoint's h2c server: header
// entries, callback tables, per-stream send queues and frame batching.
#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>

#include "ztunnel/hbone/event.h"

namespace sluice::ztunnel::hbone {

// A header entry; nghttp2 copies it, so the views need only outlive the submit call.
inline nghttp2_nv header(std::string_view name, std::string_view value) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                      value.size(), NGHTTP2_NV_FLAG_NONE};
}

// Drops the consumed front `[0, offset)` of `buf` before more is appended, once it is at least
// as large as what stays: each byte is moved at most once on average.
inline void compact(std::string& buf, size_t& offset) {
    if (offset == 0 || offset < buf.size() - offset)
        return;
    buf.erase(0, offset);
    offset = 0;
}

// Empties a drained buffer and returns its heap memory: idle streams hold no buffer.
inline void release(std::string& buf, size_t& offset) {
    offset = 0;
    if (buf.capacity() > std::string().capacity())
        std::string().swap(buf);
    else
        buf.clear();
}

// The receive-side callbacks of a session (the others stay unset).
struct ReceiveCallbacks {
    nghttp2_on_begin_headers_callback begin_headers;
    nghttp2_on_header_callback header;
    nghttp2_on_frame_recv_callback frame_recv;
    nghttp2_on_data_chunk_recv_callback data_chunk;
    nghttp2_on_stream_close_callback stream_close;
};
// A callback table for the life of the process (one per session type, made once).
inline nghttp2_session_callbacks* newCallbacks(const ReceiveCallbacks& r) {
    nghttp2_session_callbacks* c = nullptr;
    nghttp2_session_callbacks_new(&c);
    nghttp2_session_callbacks_set_on_begin_headers_callback(c, r.begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(c, r.header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c, r.frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, r.data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(c, r.stream_close);
    return c;
}

// The bytes one stream has queued for the peer, taken by its data provider as flow control
// allows. The writer waits on `writable` while `queued()` is at the high-water mark.
struct SendQueue {
    std::string bytes;
    size_t offset = 0;
    bool deferred = false;  // nghttp2 waits for resume_data

    size_t queued() const { return bytes.size() - offset; }
    void append(std::string_view data) {
        compact(bytes, offset);
        bytes.append(data);
    }
    // How many bytes the next DATA frame carries, up to `length`: END_STREAM once that empties
    // the queue and `finished`; NGHTTP2_ERR_DEFERRED (and `deferred`) while empty and not
    // finished.
    ssize_t next_frame(size_t length, uint32_t* flags, bool finished) {
        const size_t n = std::min(length, queued());
        if (n == queued()) {
            if (finished) {
                *flags |= NGHTTP2_DATA_FLAG_EOF;
            } else if (n == 0) {
                deferred = true;
                return NGHTTP2_ERR_DEFERRED;
            }
        }
        return static_cast<ssize_t>(n);
    }
    // Drops the front `n` bytes, which were sent, and wakes the writer below the high water.
    template <typename Wakeup>  // Event or Signal
    void consume(size_t n, Wakeup& writable, size_t high_water) {
        offset += n;
        if (offset == bytes.size())
            release(bytes, offset);
        if (queued() < high_water)
            writable.notify();
    }
    // The data provider's read callback, copying the frame's bytes into nghttp2's buffer.
    template <typename Wakeup>
    ssize_t take(uint8_t* buf, size_t length, uint32_t* flags, bool finished, Wakeup& writable,
                 size_t high_water) {
        const ssize_t n = next_frame(length, flags, finished);
        if (n > 0) {
            std::memcpy(buf, bytes.data() + offset, static_cast<size_t>(n));
            consume(static_cast<size_t>(n), writable, high_water);
        }
        return n;
    }
    // The send_data callback of a NO_COPY frame (next_frame() sized it): its header and its
    // bytes go straight from the queue to `out`, the outgoing batch.
    template <typename Wakeup>
    void emit(const uint8_t* framehd, size_t length, std::string& out, Wakeup& writable,
              size_t high_water) {
        out.append(reinterpret_cast<const char*>(framehd), kFrameHeaderBytes);
        out.append(bytes, offset, length);
        consume(length, writable, high_water);
    }
    static constexpr size_t kFrameHeaderBytes = 9;
};

// Appends the frames `session` has ready to `out`, up to about `batch` bytes; false on a
// session error.
inline bool gatherFrames(nghttp2_session* session, std::string& out, size_t batch) {
    while (out.size() < batch) {
        const uint8_t* data = nullptr;
        const ssize_t n = nghttp2_session_mem_send(session, &data);
        if (n < 0)
            return false;
        if (n == 0)
            break;
        out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    return true;
}

}  // namespace sluice::ztunnel::hbone
