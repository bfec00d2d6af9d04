#pragma once

#include <cstdint>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "policies/watcher.h"

namespace sluice::agent {

// `<run>/policy-status.json`: the policy generation in force and how the last reload went, for
// `sluicectl policy status`. The agent rewrites it (atomically) after every reload attempt, so it
// also tells an operator what is enforced while the agent is down.
class PolicyStatusFile {
  public:
    PolicyStatusFile(std::string path, std::string policy_dir)
        : path_(std::move(path)), policy_dir_(std::move(policy_dir)) {}

    // The maps now hold generation `number`.
    void applied(uint64_t number);
    // Writing generation `number` to the maps failed; the maps keep the previous one (plus part
    // of the change, never more permissive than both).
    void apply_failed(uint64_t number, const std::string& error);
    // After a reload attempt: the watcher's status and counters, plus what the maps hold.
    void write(const policies::PolicyWatcher& watcher);

    const std::string& path() const { return path_; }

  private:
    std::mutex mu_;
    std::string path_;
    std::string policy_dir_;
    uint64_t applied_ = 0;
    std::string apply_error_;
};

// The document PolicyStatusFile writes (pure, for tests).
nlohmann::json policy_status_json(const std::string& policy_dir,
                                  const policies::ReloadStatus& status,
                                  const policies::ReloadCounts& counts,
                                  const policies::Generation* current, uint64_t applied_generation,
                                  const std::string& apply_error);

// sluicectl's view of that document: human-readable lines, and whether it reports a problem
// (the last reload failed or the maps could not take the generation).
std::string format_policy_status(const nlohmann::json& status);
bool policy_status_failed(const nlohmann::json& status);

}  // namespace sluice::agent
