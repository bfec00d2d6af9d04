// sluice-bench-wake: what it costs this machine to wake a thread that sleeps in a read, by how
// long the CPU it sleeps on had been idle. The latency benchmarks' added figures are mostly this
// cost (each proxy hop on a request's path is one such wake-up, or two), so this is the floor
// under them on this machine, measured without any proxy.
//
// A waiter thread pinned to CPU `c` blocks in read() on an eventfd. The main thread, pinned to
// CPU 0, sleeps `gap` µs (long enough gaps let CPU `c` go idle: on a VM, halt the vCPU), takes a
// timestamp and writes the eventfd; the waiter takes its own timestamp when read() returns, and
// the difference is the wake-up latency. With c = 0 both threads share one CPU (the wake-up is a
// context switch on a running CPU); with c = 1 it crosses CPUs. Each gap and CPU is measured in
// several rounds, interleaved, and the medians over the rounds are reported. No network, no
// namespaces, bounded in count (--samples per row and round) and so in time.
//
// Writes JSON and Markdown to --out (bench/results/wake.{json,md}).
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::int64_t nowNs() {
    timespec t{};
    ::clock_gettime(CLOCK_MONOTONIC, &t);
    return std::int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

void pinTo(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (::sched_setaffinity(0, sizeof set, &set) != 0)
        throw std::runtime_error(fmt::format("cannot pin to CPU {}", cpu));
}

struct Fd {
    int fd;
    explicit Fd(int f) : fd(f) {
        if (fd < 0)
            throw std::runtime_error("eventfd failed");
    }
    ~Fd() { ::close(fd); }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};

struct Percentiles {
    double p50_us, p90_us, p99_us;
};

// `samples` wake-ups of a thread on `cpu` after `gap_us` of quiet each.
Percentiles measure(int cpu, int gap_us, int samples) {
    const Fd wake(::eventfd(0, 0));
    const Fd done(::eventfd(0, 0));
    std::atomic<std::int64_t> sent_at{0};
    std::vector<std::int64_t> latencies;
    latencies.reserve(samples);
    std::thread waiter([&] {
        pinTo(cpu);
        std::uint64_t v;
        for (int i = 0; i < samples; ++i) {
            if (::read(wake.fd, &v, sizeof v) != sizeof v)
                return;
            latencies.push_back(nowNs() - sent_at.load(std::memory_order_acquire));
            v = 1;
            if (::write(done.fd, &v, sizeof v) != sizeof v)
                return;
        }
    });
    pinTo(0);
    for (int i = 0; i < samples; ++i) {
        if (gap_us > 0) {
            const timespec gap{0, gap_us * 1000L};
            ::clock_nanosleep(CLOCK_MONOTONIC, 0, &gap, nullptr);
        }
        std::uint64_t v = 1;
        sent_at.store(nowNs(), std::memory_order_release);
        if (::write(wake.fd, &v, sizeof v) != sizeof v || ::read(done.fd, &v, sizeof v) != sizeof v)
            break;
    }
    waiter.join();
    if (latencies.size() != std::size_t(samples))
        throw std::runtime_error("eventfd ping-pong failed");
    std::sort(latencies.begin(), latencies.end());
    auto at = [&](double q) { return latencies[std::size_t(q * (samples - 1))] / 1e3; };
    return {at(0.50), at(0.90), at(0.99)};
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"sluice-bench-wake: wake-up latency of a sleeping thread by idle gap"};
    std::string out = "bench/results";
    int samples = 400;
    int rounds = 3;
    std::vector<int> gaps{0, 20, 50, 100, 200, 300, 500, 1000, 2000};
    app.add_option("--out", out, "folder for wake.json and wake.md");
    app.add_option("--samples", samples, "wake-ups per gap, CPU and round")
        ->check(CLI::Range(11, 10000));
    app.add_option("--rounds", rounds, "rounds (medians over them)")->check(CLI::Range(1, 9));
    app.add_option("--gaps-us", gaps, "idle gaps before each wake-up, µs")
        ->check(CLI::Range(0, 5000));
    CLI11_PARSE(app, argc, argv);
    if (std::thread::hardware_concurrency() < 2) {
        std::cerr << "needs 2 CPUs\n";
        return 1;
    }
    const std::string command = fmt::format(
        "build/bin/sluice-bench-wake --out {} --samples {} --rounds {}", out, samples, rounds);

    // rows[cpu][gap] = per-round percentiles; rounds interleave CPUs and gaps.
    std::vector<std::vector<std::vector<Percentiles>>> rows(
        2, std::vector<std::vector<Percentiles>>(gaps.size()));
    for (int r = 0; r < rounds; ++r)
        for (std::size_t g = 0; g < gaps.size(); ++g)
            for (int cpu : {0, 1})
                rows[cpu][g].push_back(measure(cpu, gaps[g], samples));

    utsname u{};
    ::uname(&u);
    const std::string machine = fmt::format("{} {} {}, {} CPUs", u.sysname, u.release, u.machine,
                                            std::thread::hardware_concurrency());
    json results = json::array();
    std::string md = fmt::format(
        "# Wake-up latency of a sleeping thread, by how long its CPU was idle\n\n"
        "Machine: {}  \nCommand: `{}`\n\n"
        "A thread blocked in `read()` on an eventfd is woken by a write from a thread on CPU 0 "
        "after an idle gap; the figure is write → `read()` returns (µs), {} wake-ups per row "
        "and round, medians over {} rounds. *Same CPU*: both threads on CPU 0 (a context "
        "switch on a running CPU). *Other CPU*: the sleeper on CPU 1, which goes idle during "
        "the gap (on a VM: a halted vCPU that the host must run again). Every hop a proxy adds "
        "to a request's path wakes a sleeping process once or twice like this.\n\n"
        "| idle gap µs | same CPU p50 | same CPU p90 | other CPU p50 | other CPU p90 | other "
        "CPU p99 |\n|---|---|---|---|---|---|\n",
        machine, command, samples, rounds);
    for (std::size_t g = 0; g < gaps.size(); ++g) {
        auto pick = [&](int cpu, double Percentiles::*field) {
            std::vector<double> v;
            for (const auto& p : rows[cpu][g])
                v.push_back(p.*field);
            return median(v);
        };
        const double s50 = pick(0, &Percentiles::p50_us), s90 = pick(0, &Percentiles::p90_us);
        const double o50 = pick(1, &Percentiles::p50_us), o90 = pick(1, &Percentiles::p90_us);
        const double o99 = pick(1, &Percentiles::p99_us);
        results.push_back({{"gap_us", gaps[g]},
                           {"same_cpu", {{"p50_us", s50}, {"p90_us", s90}}},
                           {"other_cpu", {{"p50_us", o50}, {"p90_us", o90}, {"p99_us", o99}}}});
        md += fmt::format("| {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} |\n", gaps[g], s50,
                          s90, o50, o90, o99);
    }
    std::ifstream loadavg("/proc/loadavg");
    std::string l1, l5, l15;
    loadavg >> l1 >> l5 >> l15;
    md += fmt::format("\nLoad average at the end: {} {} {}\n", l1, l5, l15);
    const json doc{{"machine", machine},
                   {"command", command},
                   {"samples", samples},
                   {"rounds", rounds},
                   {"load_average", fmt::format("{} {} {}", l1, l5, l15)},
                   {"rows", results}};
    fs::create_directories(out);
    std::ofstream(fs::path(out) / "wake.json") << doc.dump(2) << "\n";
    std::ofstream(fs::path(out) / "wake.md") << md;
    std::cout << md;
    return 0;
}
