// Runs a libFuzzer target without libFuzzer (the main build uses g++): replays every seed file,
// then a bounded number of deterministic mutations of them (byte flips, truncation, splices,
// duplicated lines, deep nesting). `policy_fuzz_replay [--mutations N] <file|dir>...`
#include <sys/resource.h>
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLUICE_HAS_ASAN 1
#endif
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

namespace fs = std::filesystem;

void run(const std::string& input) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
}

std::string mutate(const std::vector<std::string>& seeds, std::mt19937& rng) {
    auto pick = [&](std::size_t n) {
        return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
    };
    std::string s = seeds[pick(seeds.size())];
    const int steps = 1 + static_cast<int>(pick(4));
    for (int i = 0; i < steps; ++i) {
        switch (pick(7)) {
            case 0:  // flip a byte
                if (!s.empty())
                    s[pick(s.size())] = static_cast<char>(pick(256));
                break;
            case 1:  // truncate
                if (!s.empty())
                    s.resize(pick(s.size()));
                break;
            case 2: {  // splice another seed in
                const std::string& o = seeds[pick(seeds.size())];
                if (!o.empty())
                    s.insert(s.empty() ? 0 : pick(s.size()), o.substr(pick(o.size())));
                break;
            }
            case 3: {  // duplicate a line
                if (s.empty())
                    break;
                const auto at = pick(s.size());
                const auto start = s.rfind('\n', at);
                const auto end = s.find('\n', at);
                const auto b = start == std::string::npos ? 0 : start + 1;
                s.insert(b, s.substr(b, (end == std::string::npos ? s.size() : end) - b) + "\n");
                break;
            }
            case 4:  // a YAML-significant character
                s.insert(s.empty() ? 0 : pick(s.size()), 1, ":-[]{}&*!|>'\"%@`#,?"[pick(20)]);
                break;
            case 5:  // deep nesting
                s.insert(s.empty() ? 0 : pick(s.size()), std::string(pick(2000), '['));
                break;
            default:  // swap a scalar for a wrong type
                if (auto p = s.find(": "); p != std::string::npos)
                    s.insert(p + 2, pick(2) ? "[1, {a: b}] " : "{x: [y]} ");
                break;
        }
    }
    return s;
}

}  // namespace

int main(int argc, char** argv) {
    long mutations = 0;
    std::vector<std::string> seeds;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--mutations" && i + 1 < argc) {
            mutations = std::strtol(argv[++i], nullptr, 10);
            continue;
        }
        std::vector<fs::path> files;
        if (fs::is_directory(arg)) {
            for (const auto& e : fs::recursive_directory_iterator(arg))
                if (e.is_regular_file())
                    files.push_back(e.path());
        } else {
            files.push_back(arg);
        }
        std::sort(files.begin(), files.end());
        for (const auto& f : files) {
            std::ifstream in(f, std::ios::binary);
            std::ostringstream text;
            text << in.rdbuf();
            seeds.push_back(text.str());
        }
    }
    // A runaway allocation (yaml-cpp has had such bugs) must fail the test, not swap the machine.
    // (Not under AddressSanitizer: its shadow memory needs a huge address-space reservation.)
#if !defined(__SANITIZE_ADDRESS__) && !defined(SLUICE_HAS_ASAN)
    const rlimit as{4ull << 30, 4ull << 30};
    setrlimit(RLIMIT_AS, &as);
#endif
    if (seeds.empty()) {
        std::cerr << "policy_fuzz_replay: no seeds\n";
        return 2;
    }
    for (const auto& s : seeds)
        run(s);
    std::mt19937 rng(20261126);
    const char* dump = std::getenv("SLUICE_FUZZ_DUMP");  // write mutation N to ./crash-input
    for (long i = 0; i < mutations; ++i) {
        const std::string input = mutate(seeds, rng);
        if (dump && std::strtol(dump, nullptr, 10) == i) {
            std::ofstream("crash-input", std::ios::binary) << input;
            return 0;
        }
        run(input);
    }
    std::cout << "replayed " << seeds.size() << " seeds and " << mutations << " mutations\n";
    return 0;
}
