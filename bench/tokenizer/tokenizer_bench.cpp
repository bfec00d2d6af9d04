// Tokenizer throughput on one core: encodes a corpus repeatedly for a bounded time and prints
// MB/s per encoding as JSON. The corpus is a file given on the command line (or this repo's
// sources concatenated by the caller), so runs are comparable across machines.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>

#include "waypoint/tokenizer/encoding.h"

namespace tk = sluice::waypoint::tokenizer;

int main(int argc, char** argv) {
    if (argc < 2) {
        std::cerr << "usage: sluice-tokenizer-bench <corpus file> [seconds per encoding]\n";
        return 2;
    }
    std::ifstream in(argv[1], std::ios::binary);
    const std::string corpus{std::istreambuf_iterator<char>(in), {}};
    const double seconds = argc > 2 ? std::stod(argv[2]) : 3.0;
    if (corpus.empty()) {
        std::cerr << "empty corpus\n";
        return 2;
    }
    std::cout << "{\"corpus_bytes\": " << corpus.size() << ", \"results\": [";
    bool first = true;
    for (auto name : {tk::EncodingName::kCl100kBase, tk::EncodingName::kO200kBase}) {
        auto enc = tk::Encoding::load(name);
        if (!enc) {
            std::cerr << tk::toString(enc.error()) << "\n";
            return 1;
        }
        using Clock = std::chrono::steady_clock;
        // CPU time of this thread as well as wall time: the bench machine may be shared, and
        // CPU time is what one core of tokenizing costs.
        auto cpu_now = [] {
            timespec ts;
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
            return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
        };
        const double cpu_start = cpu_now();
        const auto start = Clock::now();
        const auto deadline = start + std::chrono::duration<double>(seconds);
        std::size_t bytes = 0, tokens = 0, rounds = 0;
        while (Clock::now() < deadline && rounds < 100'000) {
            tokens += (*enc)->encode(corpus).size();
            bytes += corpus.size();
            ++rounds;
        }
        const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
        const double cpu = cpu_now() - cpu_start;
        std::printf(
            "%s{\"encoding\": \"%s\", \"rounds\": %zu, \"tokens_per_round\": %zu, "
            "\"seconds\": %.3f, \"cpu_seconds\": %.3f, \"mb_per_s\": %.1f, "
            "\"mb_per_cpu_s\": %.1f}",
            first ? "" : ", ", std::string(tk::toString(name)).c_str(), rounds, tokens / rounds,
            elapsed, cpu, bytes / elapsed / 1e6, bytes / cpu / 1e6);
        std::fflush(stdout);
        first = false;
    }
    std::cout << "]}\n";
    return 0;
}
