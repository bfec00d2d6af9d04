#pragma once

// Test harness for waypoint integration tests: emulator processes (the Python test fixture),
// an in-process Gateway on loopback port 0, and small synchronous HTTP clients.
#include <sys/types.h>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "waypoint/config.h"
#include "waypoint/gateway.h"

namespace sluice::waypoint::test {

// A temporary directory removed with everything in it.
struct TempDir {
    TempDir();
    ~TempDir();
    std::filesystem::path path;
};

// A test CA and server certificates for 127.0.0.1 and localhost, made with the openssl CLI
// (ECDSA P-256) in a temporary directory.
class TestPki {
  public:
    TestPki();  // the CA: ca.pem, ca.key
    std::filesystem::path dir() const { return dir_.path; }
    std::string ca() const { return (dir_.path / "ca.pem").string(); }
    // <name>.pem and <name>.key, signed by the CA, subject CN `common_name`, with
    // `extensions` (openssl x509 -extfile lines; default: a server's names).
    void issue(const std::string& name, const std::string& common_name,
               const std::string& extensions = "");

  private:
    TempDir dir_;
};

// One openai_emulator.py process on 127.0.0.1:<port>; killed by pid in the destructor.
class Emulator {
  public:
    explicit Emulator(const std::string& name, std::vector<std::string> extra_args = {});
    ~Emulator();
    unsigned short port() const { return port_; }
    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
    // POST /emulator/config with a JSON object.
    void configure(const std::string& json);
    // GET /emulator/stats as parsed JSON text.
    std::string stats();
    // The stats' `streams_aborted` once it is above 0, or 0 after `within`.
    int streamsAborted(std::chrono::milliseconds within = std::chrono::seconds(4));

  private:
    TempDir dir_;
    pid_t pid_ = -1;
    unsigned short port_ = 0;
};

struct Reply {
    unsigned status = 0;
    std::map<std::string, std::string> headers;  // lower-case names
    std::string body;                            // de-chunked
};

Reply replyOf(const http::response<http::string_body>& response);

Reply request(unsigned short port, const std::string& method, const std::string& target,
              const std::string& body = "", const std::map<std::string, std::string>& headers = {});

// Sends raw bytes and reads until the peer closes or `timeout`; returns what arrived.
std::string rawExchange(unsigned short port, const std::string& bytes,
                        std::chrono::milliseconds timeout = std::chrono::seconds(5));

// Runs `command` with /bin/sh; its standard output and exit status (-1 when it did not run).
std::pair<int, std::string> runCommand(const std::string& command);

// A gateway built from YAML text (tokenizer from the build), listening on loopback port 0;
// the access log (spdlog's default logger) only when asked for. `adjust` edits the config
// before it is validated (flags such as --policies-dir).
std::unique_ptr<Gateway> startGateway(const std::string& yaml, bool access_log = false,
                                      const std::function<void(Config&)>& adjust = {});

// A backend on loopback that answers every request with the same bytes and keeps the bytes of
// each request it read, over as many keep-alive connections as it is given (one at a time).
// Bounded: it gives up 5 s after it started.
class RawBackend {
  public:
    RawBackend(std::string reply, std::size_t requests)
        : acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)),
          reply_(std::move(reply)),
          expected_(requests),
          thread_([this] { serve(); }) {}
    ~RawBackend() { thread_.join(); }
    unsigned short port() const { return acceptor_.local_endpoint().port(); }
    std::string address() const { return "127.0.0.1:" + std::to_string(port()); }
    // The requests read and the connections they came on, once it has served them all.
    std::vector<std::string> requests() {
        thread_.join();
        thread_ = std::thread([] {});
        return requests_;
    }
    std::size_t connections() const { return connections_; }

  private:
    void serve();

    asio::io_context io_;
    tcp::acceptor acceptor_;
    std::string reply_;
    std::size_t expected_;
    std::vector<std::string> requests_;
    std::size_t connections_ = 0;
    std::thread thread_;
};

// `size` bytes of letters in a pattern that does not repeat at short periods (a shifted or
// reordered copy does not compare equal).
std::string patternedBytes(std::size_t size);

// An HTTP/1.1 200 carrying `payload` with its Content-Length (a RawBackend's reply).
std::string okWithBody(const std::string& payload);

// Whether `response` is an HTTP/1.1 200 whose body is exactly `payload`.
::testing::AssertionResult isOkWithBody(const std::string& response, const std::string& payload);

// A loopback connection to `port` whose receive buffer is as small as the kernel allows, so a
// response fills it (and the window it advertises) at once.
tcp::socket connectWithSmallWindow(asio::io_context& io, unsigned short port);

// Captures spdlog's default logger (the access log) while alive.
class LogCapture {
  public:
    LogCapture();
    ~LogCapture();
    LogCapture(const LogCapture&) = delete;
    LogCapture& operator=(const LogCapture&) = delete;
    std::string text() { return out_.str(); }  // only once the writers are stopped

  private:
    std::ostringstream out_;
    std::shared_ptr<spdlog::logger> previous_;
};

// The access log's entries (`access {...}` lines).
std::vector<nlohmann::json> accessEntries(const std::string& text);

// A Waypoint with `limits` (the flow map's inside) and one pool, `backend`, that one ModelRoute
// sends every model to.
std::string limitsConfig(const Emulator& backend, const std::string& limits);

// A Waypoint whose one pool is the endpoint at `address`, and a ModelRoute that sends every
// model there; `spec_lines` go into the Waypoint's spec (each indented by two spaces).
std::string backendConfig(const std::string& address, const std::string& spec_lines = "");

// Value of a Prometheus sample whose line starts with `prefix` (name plus labels), or -1.
double metricValue(const std::string& metrics_text, const std::string& name,
                   const std::map<std::string, std::string>& labels);

}  // namespace sluice::waypoint::test
