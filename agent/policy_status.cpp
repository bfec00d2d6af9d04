#include "agent/policy_status.h"

#include <spdlog/spdlog.h>

#include <chrono>

#include "agent/audit.h"
#include "common/atomic_file.h"

namespace sluice::agent {
namespace {

using nlohmann::json;

json time_json(std::chrono::system_clock::time_point t) {
    if (t == std::chrono::system_clock::time_point{})
        return nullptr;
    return rfc3339(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count()));
}

json diagnostics_json(const std::vector<policies::Diagnostic>& diagnostics,
                      policies::Severity severity) {
    json out = json::array();
    for (const auto& d : diagnostics) {
        if (d.severity != severity)
            continue;
        out.push_back({{"file", d.where.file},
                       {"line", d.where.line},
                       {"column", d.where.column},
                       {"message", d.message},
                       {"text", d.to_string()}});
    }
    return out;
}

}  // namespace

json policy_status_json(const std::string& policy_dir, const policies::ReloadStatus& status,
                        const policies::ReloadCounts& counts, const policies::Generation* current,
                        uint64_t applied_generation, const std::string& apply_error) {
    json j{
        {"policyDir", policy_dir},
        {"generation", status.generation},
        {"appliedGeneration", applied_generation},
        {"applyError", apply_error},
        {"lastReload",
         {{"result", status.last_result},
          {"time", time_json(status.last_attempt)},
          {"errors", diagnostics_json(status.last_diagnostics, policies::Severity::Error)},
          {"warnings", diagnostics_json(status.last_diagnostics, policies::Severity::Warning)}}},
        {"lastSuccessTime", time_json(status.last_success)},
        {"reloads",
         {{"success", counts.success},
          {"unchanged", counts.unchanged},
          {"failure", counts.failure}}},
    };
    if (current) {
        const auto& c = *current->compiled;
        j["objects"] = c.policies->size();
        j["kernelPolicyEntries"] = c.kernel.policy.size();
        j["ipcacheEntries"] = c.kernel.ipcache.size();
        j["workloads"] = c.ztunnel.workloads.size();
    }
    return j;
}

bool policy_status_failed(const json& s) {
    return s.value("/lastReload/result"_json_pointer, std::string()) == "failure" ||
           !s.value("applyError", std::string()).empty();
}

std::string format_policy_status(const json& s) {
    const auto str = [](const json& v) { return v.is_string() ? v.get<std::string>() : "never"; };
    const uint64_t gen = s.value("generation", uint64_t{0});
    const uint64_t applied = s.value("appliedGeneration", uint64_t{0});
    std::string out;
    if (gen == 0) {
        out += "no valid policy loaded yet from " + s.value("policyDir", std::string()) +
               " (the maps keep what they held)\n";
    } else {
        out += "generation " + std::to_string(gen) + " from " +
               s.value("policyDir", std::string()) + ": " + std::to_string(s.value("objects", 0)) +
               " objects, " + std::to_string(s.value("kernelPolicyEntries", 0)) +
               " kernel policy entries, " + std::to_string(s.value("ipcacheEntries", 0)) +
               " ipcache entries\n";
        out += "in the maps: generation " + std::to_string(applied) + "\n";
    }
    if (const auto err = s.value("applyError", std::string()); !err.empty())
        out += "apply failed: " + err + "\n";
    const json& last = s.at("lastReload");
    out += "last reload: " + last.value("result", std::string("none")) + " at " +
           str(last.at("time")) + "\n";
    for (const char* kind : {"errors", "warnings"}) {
        for (const auto& d : last.at(kind))
            out += "  " + d.value("text", std::string()) + "\n";
    }
    if (last.value("result", std::string()) == "failure")
        out += "  generation " + std::to_string(gen) + " stays in force\n";
    const json& r = s.at("reloads");
    out += "reloads: " + std::to_string(r.value("success", 0)) + " success, " +
           std::to_string(r.value("unchanged", 0)) + " unchanged, " +
           std::to_string(r.value("failure", 0)) + " failure; last new generation at " +
           str(s.at("lastSuccessTime")) + "\n";
    return out;
}

void PolicyStatusFile::applied(uint64_t number) {
    std::lock_guard lk(mu_);
    applied_ = number;
    apply_error_.clear();
}

void PolicyStatusFile::apply_failed(uint64_t number, const std::string& error) {
    std::lock_guard lk(mu_);
    apply_error_ = "generation " + std::to_string(number) + ": " + error;
}

void PolicyStatusFile::write(const policies::PolicyWatcher& watcher) {
    const auto current = watcher.current();
    std::lock_guard lk(mu_);
    const json j = policy_status_json(policy_dir_, watcher.status(), watcher.counts(),
                                      current.get(), applied_, apply_error_);
    if (!write_file_atomically(path_, j.dump(2) + "\n"))
        spdlog::error("cannot write {}: sluicectl policy status will be stale", path_);
}

}  // namespace sluice::agent
