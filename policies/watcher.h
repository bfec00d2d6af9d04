#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "policies/compiler.h"
#include "policies/diagnostic.h"

namespace sluice::policies {

struct WatcherConfig {
    std::string policy_dir;    // the ConfigMap mount (DESIGN.md §5: /etc/sluice/policies)
    std::string registry_dir;  // registry documents; empty: an empty registry
    // Quiet time after the last change before reloading: kubelet's swap and an editor's save are
    // several events each.
    std::chrono::milliseconds debounce{150};
    CompileOptions compile;  // `previous` is managed by the watcher
};

// One successfully compiled configuration. Immutable; shared with whoever applies it.
struct Generation {
    uint64_t number = 0;
    std::shared_ptr<const CompiledPolicy> compiled;
    std::vector<Diagnostic> warnings;
};

// sluice_policy_reload_total{result}: the agent exports these.
struct ReloadCounts {
    uint64_t success = 0;    // a new generation was published
    uint64_t unchanged = 0;  // valid, but compiled to the same output: no new generation
    uint64_t failure = 0;    // errors: the last good generation stays in force
};

struct ReloadStatus {
    uint64_t generation = 0;  // 0: nothing valid loaded yet
    bool last_ok = false;
    std::string last_result;  // "success", "unchanged" or "failure"; empty before the first
    std::vector<Diagnostic> last_diagnostics;  // of the last attempt (errors when it failed)
    std::chrono::system_clock::time_point last_attempt{};
    std::chrono::system_clock::time_point last_success{};  // the last new generation
};

// Watches the policy (and registry) directory with inotify, including kubelet's atomic `..data`
// symlink swap, debounces, loads, validates and compiles. A valid result becomes the next
// generation and is handed to `on_generation` (on the watcher thread; it must not throw); any
// error keeps the last good generation and is logged with file:line:column. A directory that is
// missing at start or replaced later is watched again as soon as it exists.
class PolicyWatcher {
  public:
    using GenerationCallback = std::function<void(std::shared_ptr<const Generation>)>;
    // Called once per reload attempt with "success", "unchanged" or "failure", after
    // `on_generation` has returned (so a hook that reports status sees the generation applied).
    using MetricHook = std::function<void(std::string_view result)>;

    PolicyWatcher(WatcherConfig config, GenerationCallback on_generation,
                  MetricHook on_reload = nullptr);
    ~PolicyWatcher();
    PolicyWatcher(const PolicyWatcher&) = delete;
    PolicyWatcher& operator=(const PolicyWatcher&) = delete;

    // Loads synchronously once (the result is generation 1 when valid), then starts watching.
    // Returns false if inotify could not be set up (the initial load still happened).
    bool start();
    void stop();

    // A synchronous reload attempt, as the watcher thread does after a change.
    void reload();
    // Returns once a reload under way (with its on_generation) has finished.
    void wait_idle() { std::lock_guard lock(reload_mu_); }

    std::shared_ptr<const Generation> current() const;
    ReloadCounts counts() const;
    ReloadStatus status() const;

  private:
    void run(bool need_rewatch);
    bool add_watches();

    WatcherConfig config_;
    GenerationCallback on_generation_;
    MetricHook on_reload_;
    mutable std::mutex mu_;
    std::shared_ptr<const Generation> current_;
    ReloadCounts counts_;
    ReloadStatus status_;
    std::mutex reload_mu_;  // one reload at a time
    int inotify_fd_ = -1;
    int stop_fd_ = -1;  // eventfd
    std::vector<int> watches_;
    std::thread thread_;
};

}  // namespace sluice::policies
