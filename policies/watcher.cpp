#include "policies/watcher.h"

#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "policies/loader.h"

namespace sluice::policies {
namespace {

constexpr uint32_t kWatchMask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                                IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF |
                                IN_MOVE_SELF | IN_ONLYDIR;
// While a watched directory is missing (deleted, not yet mounted), retry adding it this often.
constexpr std::chrono::milliseconds kRewatchInterval{500};

}  // namespace

PolicyWatcher::PolicyWatcher(WatcherConfig config, GenerationCallback on_generation,
                             MetricHook on_reload)
    : config_(std::move(config)),
      on_generation_(std::move(on_generation)),
      on_reload_(std::move(on_reload)) {}

PolicyWatcher::~PolicyWatcher() {
    stop();
}

bool PolicyWatcher::start() {
    reload();
    inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    stop_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (inotify_fd_ < 0 || stop_fd_ < 0) {
        spdlog::error("policy watcher: inotify/eventfd: {}", std::strerror(errno));
        return false;
    }
    // A directory that does not exist yet (not mounted, being replaced) is retried by run().
    const bool watching = add_watches();
    thread_ = std::thread([this, watching] { run(!watching); });
    return true;
}

void PolicyWatcher::stop() {
    if (thread_.joinable()) {
        const uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(stop_fd_, &one, sizeof one);
        thread_.join();
    }
    if (inotify_fd_ >= 0)
        ::close(inotify_fd_);
    if (stop_fd_ >= 0)
        ::close(stop_fd_);
    inotify_fd_ = stop_fd_ = -1;
}

bool PolicyWatcher::add_watches() {
    // No inotify_rm_watch: adding a path again returns its existing watch, and the kernel drops
    // the watch of a deleted directory itself (IN_IGNORED). Removing them here would queue
    // IN_IGNORED events that look like "directory gone" and re-trigger this in a loop.
    watches_.clear();
    bool all = true;
    for (const auto* dir : {&config_.policy_dir, &config_.registry_dir}) {
        if (dir->empty())
            continue;
        const int wd = ::inotify_add_watch(inotify_fd_, dir->c_str(), kWatchMask);
        if (wd < 0)
            all = false;
        else
            watches_.push_back(wd);
    }
    return all;
}

void PolicyWatcher::run(bool need_rewatch) {
    using Clock = std::chrono::steady_clock;
    bool pending = false;
    Clock::time_point deadline{};
    std::array<char, 16 * 1024> buf alignas(inotify_event);
    for (;;) {
        int timeout = -1;
        if (pending) {
            timeout = static_cast<int>(std::max<int64_t>(
                0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now())
                       .count()));
        }
        if (need_rewatch && (timeout < 0 || timeout > kRewatchInterval.count()))
            timeout = static_cast<int>(kRewatchInterval.count());
        pollfd fds[2] = {{stop_fd_, POLLIN, 0}, {inotify_fd_, POLLIN, 0}};
        const int n = ::poll(fds, 2, timeout);
        if (n < 0 && errno != EINTR) {
            spdlog::error("policy watcher: poll: {}", std::strerror(errno));
            return;
        }
        if (fds[0].revents & POLLIN)
            return;
        if (fds[1].revents & POLLIN) {
            // Drain everything queued; any event means "something changed".
            for (int i = 0; i < 1024; ++i) {
                const ssize_t len = ::read(inotify_fd_, buf.data(), buf.size());
                if (len <= 0)
                    break;
                for (ssize_t off = 0; off < len;) {
                    const auto* ev = reinterpret_cast<const inotify_event*>(buf.data() + off);
                    if ((ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) &&
                        std::find(watches_.begin(), watches_.end(), ev->wd) != watches_.end())
                        need_rewatch = true;
                    off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
                }
            }
            pending = true;
            deadline = Clock::now() + config_.debounce;
        }
        if (need_rewatch && add_watches()) {
            need_rewatch = false;
            pending = true;
            deadline = Clock::now() + config_.debounce;
        }
        if (pending && Clock::now() >= deadline) {
            pending = false;
            reload();
        }
    }
}

void PolicyWatcher::reload() {
    std::lock_guard reload_lock(reload_mu_);
    std::shared_ptr<const Generation> prev = current();
    CompileOptions options = config_.compile;
    IdState ids;
    if (prev) {
        ids = prev->compiled->id_state();
        options.previous = &ids;
    }
    LoadedConfig loaded = load_and_compile(config_.policy_dir, config_.registry_dir, options);
    std::string_view result;
    std::shared_ptr<const CompiledPolicy> next;
    if (!loaded.ok()) {
        result = "failure";
        for (const auto& d : loaded.diagnostics) {
            if (d.severity == Severity::Error)
                spdlog::error("policy reload failed, keeping generation {}: {}",
                              prev ? prev->number : 0, d.to_string());
        }
        // The policies in force stay, but the cluster goes on: a pod created while the folder
        // is broken must get them too, not run with no policy until the folder is fixed.
        if (prev)
            next = recompile_for_registry(*prev->compiled, config_.registry_dir, options);
    } else if (!prev || !same_output(*prev->compiled, *loaded.compiled)) {
        result = "success";
        next = loaded.compiled;
    } else {
        result = "unchanged";
    }
    std::shared_ptr<const Generation> published;
    if (next) {
        auto gen = std::make_shared<Generation>();
        gen->number = prev ? prev->number + 1 : 1;
        gen->compiled = next;
        if (result == "success") {
            for (const auto& d : loaded.diagnostics) {
                gen->warnings.push_back(d);
                spdlog::warn("policy generation {}: {}", gen->number, d.to_string());
            }
        } else {
            gen->warnings = prev->warnings;
            spdlog::info(
                "policy generation {}: the policies of generation {} for the pods the "
                "registry holds now",
                gen->number, prev->number);
        }
        published = gen;
        spdlog::info("policy generation {}: {} kernel policy entries, {} ipcache entries",
                     gen->number, gen->compiled->kernel.policy.size(),
                     gen->compiled->kernel.ipcache.size());
    }
    {
        std::lock_guard lock(mu_);
        if (published)
            current_ = published;
        if (result == "success")
            ++counts_.success;
        else if (result == "unchanged")
            ++counts_.unchanged;
        else
            ++counts_.failure;
        status_.generation = current_ ? current_->number : 0;
        status_.last_ok = result != "failure";
        status_.last_result = std::string(result);
        status_.last_diagnostics = loaded.diagnostics;
        status_.last_attempt = std::chrono::system_clock::now();
        if (published)
            status_.last_success = status_.last_attempt;
    }
    if (published && on_generation_)
        on_generation_(published);
    if (on_reload_)
        on_reload_(result);
}

std::shared_ptr<const Generation> PolicyWatcher::current() const {
    std::lock_guard lock(mu_);
    return current_;
}

ReloadCounts PolicyWatcher::counts() const {
    std::lock_guard lock(mu_);
    return counts_;
}

ReloadStatus PolicyWatcher::status() const {
    std::lock_guard lock(mu_);
    return status_;
}

}  // namespace sluice::policies
