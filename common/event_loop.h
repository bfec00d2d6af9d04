#pragma once

#include <chrono>

#include <boost/asio/io_context.hpp>

namespace sluice {

// Runs `io` until it stops or runs out of work. With a non-zero `spin`, a thread that ran out
// of ready handlers keeps polling (zero-timeout epoll) for that long after its last handler
// before it sleeps: an answer that comes back within the window — a backend's reply, the peer's
// next record — is handled without waking a halted CPU. Only work starts a spin, so an idle
// loop sleeps; each wake-up may cost up to `spin` of CPU.
void run_event_loop(boost::asio::io_context& io, std::chrono::microseconds spin);

}  // namespace sluice
