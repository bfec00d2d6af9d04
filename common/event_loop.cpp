#include "common/event_loop.h"

namespace sluice {

void run_event_loop(boost::asio::io_context& io, std::chrono::microseconds spin) {
    if (spin.count() <= 0) {
        io.run();
        return;
    }
    using Clock = std::chrono::steady_clock;
    auto last_work = Clock::now();
    while (!io.stopped()) {
        if (io.poll() > 0) {
            last_work = Clock::now();
        } else if (Clock::now() - last_work >= spin) {
            if (io.run_one() == 0)
                return;
            last_work = Clock::now();
        }
    }
}

}  // namespace sluice
