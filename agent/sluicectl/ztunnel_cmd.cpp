// sluicectl views of a running sluice-ztunnel, read from its admin port (127.0.0.1:15000):
// workloads (enrolled pods and the registry), certs (per identity, with expiry), connections
// (HBONE connections by pool key and inbound peer).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>

#include "agent/sluicectl/commands.h"
#include "common/netns.h"

namespace sluice::ctl {
namespace {

using nlohmann::json;

constexpr int kTimeoutMs = 3000;

struct AdminTarget {
    std::string address = "127.0.0.1:15000";
    std::string netns;  // path of a netns to reach the admin port in (a sidecar's pod), "" = ours
};

// GET of the ztunnel admin API; nullopt with `error` set when unreachable.
std::optional<std::string> admin_get(const AdminTarget& t, const std::string& path,
                                     std::string& error) {
    const auto colon = t.address.rfind(':');
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(std::stoi(t.address.substr(colon + 1))));
    if (colon == std::string::npos ||
        ::inet_pton(AF_INET, t.address.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
        error = "bad admin address " + t.address;
        return std::nullopt;
    }
    int fd = -1;
    auto make = [&] {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
            error =
                std::string("cannot reach ztunnel admin at ") + t.address + ": " + strerror(errno);
            ::close(fd);
            fd = -1;
        }
    };
    if (t.netns.empty())
        make();
    else
        run_in_netns(t.netns, make);
    if (fd < 0)
        return std::nullopt;
    const std::string req =
        "GET " + path + " HTTP/1.1\r\nHost: ztunnel\r\nConnection: close\r\n\r\n";
    [[maybe_unused]] auto sent = ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    std::string resp;
    char buf[16384];
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, kTimeoutMs) <= 0)
            break;
        const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        resp.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    const auto body = resp.find("\r\n\r\n");
    if (body == std::string::npos) {
        error = "no HTTP response from " + t.address;
        return std::nullopt;
    }
    return resp.substr(body + 4);
}

// Runs one view: fetches `path`, then prints JSON (--json) or the table `print` makes.
void view(Context& ctx, const AdminTarget& t, const std::string& path, bool as_json,
          const std::function<void(const json&)>& print) {
    std::string error;
    auto body = admin_get(t, path, error);
    if (!body) {
        std::cerr << "sluicectl: " << error << "\n";
        ctx.exit_code = 1;
        return;
    }
    json j = json::parse(*body, nullptr, false);
    if (j.is_discarded()) {
        std::cerr << "sluicectl: ztunnel answered " << path << " with something not JSON\n";
        ctx.exit_code = 1;
        return;
    }
    if (as_json)
        std::cout << j.dump(2) << "\n";
    else
        print(j);
}

std::string joined(const json& list) {
    std::string s;
    for (const auto& v : list)
        s += (s.empty() ? "" : ",") + v.get<std::string>();
    return s;
}

void print_workloads(const json& j) {
    std::printf("%-24s %-16s %-44s %s\n", "ENROLLED", "NAMESPACE", "IDENTITY", "IPS");
    for (const auto& w : j["enrolled"]) {
        std::printf("%-24s %-16s %-44s %s\n", w["name"].get<std::string>().c_str(),
                    w["namespace"].get<std::string>().c_str(),
                    w["identity"].get<std::string>().c_str(), joined(w["ips"]).c_str());
    }
    std::printf("\n%-24s %-16s %-16s %-10s %-8s %s\n", "REGISTRY", "NAMESPACE", "SERVICEACCOUNT",
                "NODE", "AMBIENT", "IPS");
    for (const auto& w : j["workloads"]) {
        std::printf("%-24s %-16s %-16s %-10s %-8s %s\n", w["name"].get<std::string>().c_str(),
                    w["namespace"].get<std::string>().c_str(),
                    w["service_account"].get<std::string>().c_str(),
                    w["node"].get<std::string>().c_str(), w["ambient"].get<bool>() ? "yes" : "no",
                    joined(w["ips"]).c_str());
    }
}

void print_certs(const json& j) {
    std::printf("%-48s %-22s %-22s %s\n", "IDENTITY", "NOT BEFORE", "NOT AFTER", "EXPIRES IN");
    for (const auto& c : j["certificates"]) {
        std::printf("%-48s %-22s %-22s %llds\n", c["identity"].get<std::string>().c_str(),
                    c["not_before"].get<std::string>().c_str(),
                    c["not_after"].get<std::string>().c_str(),
                    static_cast<long long>(c["expires_in_seconds"].get<int64_t>()));
    }
    std::printf("trust bundle: %d root(s), trust domain %s\n", j["trust_bundle_roots"].get<int>(),
                j["trust_domain"].get<std::string>().c_str());
}

void print_connections(const json& j) {
    std::printf("%-44s %-44s %-24s %s\n", "OUTBOUND SOURCE", "DESTINATION", "ADDRESS", "STREAMS");
    for (const auto& c : j["outbound"]) {
        std::printf("%-44s %-44s %-24s %zu\n", c["source"].get<std::string>().c_str(),
                    c["destination"].get<std::string>().c_str(),
                    c["address"].get<std::string>().c_str(), c["streams"].get<size_t>());
    }
    std::printf("\n%-44s %-24s %s\n", "INBOUND PEER", "REMOTE", "STREAMS");
    for (const auto& c : j["inbound"]) {
        std::printf("%-44s %-24s %zu\n", c["peer"].get<std::string>().c_str(),
                    c["remote"].get<std::string>().c_str(), c["streams"].get<size_t>());
    }
    std::printf("active proxied connections: %zu\n", j["active_connections"].get<size_t>());
}

}  // namespace

void add_ztunnel_commands(CLI::App& app, Context& ctx) {
    struct Views {
        const char* name;
        const char* help;
        const char* path;
        void (*print)(const json&);
    };
    static const Views kViews[] = {
        {"workloads", "Pods this ztunnel serves and the registry it resolves from", "/config_dump",
         print_workloads},
        {"certs", "Workload certificates held by ztunnel, with expiry", "/config_dump",
         print_certs},
        {"connections", "HBONE connections (client pools and inbound peers)", "/connections",
         print_connections},
    };
    for (const auto& v : kViews) {
        auto* cmd = app.add_subcommand(v.name, v.help);
        auto target = std::make_shared<AdminTarget>();
        auto as_json = std::make_shared<bool>(false);
        cmd->add_option("--ztunnel-admin", target->address, "ztunnel admin ip:port")
            ->envname("SLUICE_ZTUNNEL_ADMIN");
        cmd->add_option("--netns", target->netns,
                        "reach the admin port inside this netns (a sidecar's pod)");
        cmd->add_flag("--json", *as_json, "print the admin API's JSON");
        cmd->callback(
            [&ctx, target, as_json, v] { view(ctx, *target, v.path, *as_json, v.print); });
    }
}

}  // namespace sluice::ctl
