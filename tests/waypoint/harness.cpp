#include "tests/waypoint/harness.h"

#include <poll.h>
#include <signal.h>

#include <spdlog/sinks/ostream_sink.h>

#include <nlohmann/json.hpp>

#include <boost/asio/connect.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "common/process.h"

namespace sluice::waypoint::test {

TempDir::TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("sluice-wp-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path);
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
}

Emulator::Emulator(const std::string& name, std::vector<std::string> extra_args) {
    std::vector<std::string> argv{"/usr/bin/python3", SLUICE_EMULATOR_PATH,
                                  "--port",           "0",
                                  "--name",           name,
                                  "--max-seconds",    "300"};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    const auto log = (dir_.path / "emulator.log").string();
    pid_ = spawn_process({.argv = argv}, log);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
        std::ifstream in(log);
        std::string word;
        while (in >> word) {
            if (word == "PORT" && in >> port_)
                return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("emulator did not start");
}

Emulator::~Emulator() {
    if (pid_ > 0) {
        ::kill(pid_, SIGTERM);
        if (!wait_process(pid_, std::chrono::seconds(3))) {
            ::kill(pid_, SIGKILL);
            wait_process(pid_, std::chrono::seconds(3));
        }
    }
}

void Emulator::configure(const std::string& json) {
    const auto reply = request(port_, "POST", "/emulator/config", json);
    if (reply.status != 200)
        throw std::runtime_error("emulator config failed");
}

std::string Emulator::stats() {
    return request(port_, "GET", "/emulator/stats").body;
}

int Emulator::streamsAborted(std::chrono::milliseconds within) {
    const auto until = std::chrono::steady_clock::now() + within;
    for (;;) {
        const int aborted = nlohmann::json::parse(stats())["streams_aborted"].get<int>();
        if (aborted > 0 || std::chrono::steady_clock::now() >= until)
            return aborted;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
}

Reply request(unsigned short port, const std::string& method, const std::string& target,
              const std::string& body, const std::map<std::string, std::string>& headers) {
    asio::io_context io;
    beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(10));
    stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, "127.0.0.1");
    for (const auto& [name, value] : headers)
        req.set(name, value);
    req.body() = body;
    if (!body.empty())
        req.set(http::field::content_type, "application/json");
    req.prepare_payload();
    http::write(stream, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 << 20);
    http::read(stream, buffer, parser);
    return replyOf(parser.get());
}

Reply replyOf(const http::response<http::string_body>& response) {
    Reply reply;
    reply.status = response.result_int();
    for (const auto& f : response) {
        std::string name(f.name_string());
        for (auto& c : name)
            c = char(std::tolower(c));
        reply.headers[name] = std::string(f.value());
    }
    reply.body = response.body();
    return reply;
}

std::pair<int, std::string> runCommand(const std::string& command) {
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr)
        return {-1, ""};
    std::string out;
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;)
        out.append(buf, n);
    return {::pclose(pipe), out};
}

std::string rawExchange(unsigned short port, const std::string& bytes,
                        std::chrono::milliseconds timeout) {
    asio::io_context io;
    beast::tcp_stream stream(io);
    stream.expires_after(timeout);
    stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    error_code ec;
    asio::write(stream, asio::buffer(bytes), ec);  // the server may answer and stop reading
    std::string out;
    char buf[4096];
    for (int i = 0; i < 10'000; ++i) {
        const std::size_t n = stream.read_some(asio::buffer(buf), ec);
        out.append(buf, n);
        if (ec)
            break;
    }
    return out;
}

LogCapture::LogCapture() : previous_(spdlog::default_logger()) {
    spdlog::set_default_logger(std::make_shared<spdlog::logger>(
        "capture", std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)));
}

LogCapture::~LogCapture() {
    spdlog::set_default_logger(previous_);
}

std::vector<nlohmann::json> accessEntries(const std::string& text) {
    std::vector<nlohmann::json> entries;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
        const auto at = line.find("access {");
        if (at != std::string::npos)
            entries.push_back(nlohmann::json::parse(line.substr(at + 7)));
    }
    return entries;
}

std::string patternedBytes(std::size_t size) {
    std::string bytes(size, '\0');
    for (std::size_t i = 0; i < size; ++i)
        bytes[i] = char('a' + (i * 7 + i / 4096) % 26);
    return bytes;
}

std::string okWithBody(const std::string& payload) {
    return "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
           std::to_string(payload.size()) + "\r\n\r\n" + payload;
}

::testing::AssertionResult isOkWithBody(const std::string& response, const std::string& payload) {
    const auto head_end = response.find("\r\n\r\n");
    if (!response.starts_with("HTTP/1.1 200") || head_end == std::string::npos)
        return ::testing::AssertionFailure() << "not a 200: " << response.substr(0, 200);
    if (response.size() - head_end - 4 != payload.size())
        return ::testing::AssertionFailure() << "a body of " << response.size() - head_end - 4
                                             << " bytes, not " << payload.size();
    if (response.compare(head_end + 4, std::string::npos, payload) != 0)
        return ::testing::AssertionFailure() << "the body's bytes differ";
    return ::testing::AssertionSuccess();
}

tcp::socket connectWithSmallWindow(asio::io_context& io, unsigned short port) {
    tcp::socket s(io);
    s.open(tcp::v4());
    s.set_option(asio::socket_base::receive_buffer_size(4096));
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    return s;
}

void RawBackend::serve() {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    auto left = [&] {
        return int(std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 until - std::chrono::steady_clock::now())
                                                 .count()));
    };
    while (requests_.size() < expected_ && left() > 0) {
        pollfd a{.fd = acceptor_.native_handle(), .events = POLLIN, .revents = 0};
        if (::poll(&a, 1, left()) != 1)
            return;
        tcp::socket s = acceptor_.accept();
        ++connections_;
        std::string in;
        char buf[4096];
        while (requests_.size() < expected_) {
            const auto end = in.find("\r\n\r\n");
            if (end != std::string::npos) {
                std::size_t length = 0;
                if (auto at = in.find("Content-Length: "); at != std::string::npos && at < end)
                    length = std::stoul(in.substr(at + 16));
                if (in.size() >= end + 4 + length) {
                    requests_.push_back(in.substr(0, end + 4 + length));
                    in.erase(0, end + 4 + length);
                    asio::write(s, asio::buffer(reply_));
                    continue;
                }
            }
            pollfd p{.fd = s.native_handle(), .events = POLLIN, .revents = 0};
            error_code ec;
            if (::poll(&p, 1, left()) != 1)
                return;
            in.append(buf, s.read_some(asio::buffer(buf), ec));
            if (ec)
                break;  // the next connection
        }
    }
}

std::string backendConfig(const std::string& address, const std::string& spec_lines) {
    return "kind: Waypoint\nspec:\n" + spec_lines + "  pools: [{name: main, endpoints: [\"" +
           address +
           "\"]}]\n---\nkind: ModelRoute\nmetadata: {name: chat}\nspec:\n  models: [\"*\"]\n"
           "  backends: [{pool: main}]\n";
}

std::string limitsConfig(const Emulator& backend, const std::string& limits) {
    return "kind: Waypoint\nspec:\n  limits: {" + limits +
           "}\n  pools: [{name: main, endpoints: [\"" + backend.address() +
           "\"]}]\n---\nkind: ModelRoute\nmetadata: {name: chat}\nspec:\n  models: [\"*\"]\n"
           "  timeout: 10s\n  backends: [{pool: main}]\n";
}

TestPki::TestPki() {
    const auto [status, out] = runCommand(
        "cd '" + dir_.path.string() +
        "' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
        "-subj /CN=sluice-test-ca -keyout ca.key -out ca.pem 2>&1 && "
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > server.ext");
    if (status != 0)
        throw std::runtime_error("test CA: " + out);
}

void TestPki::issue(const std::string& name, const std::string& common_name,
                    const std::string& extensions) {
    std::string ext = "server.ext";
    if (!extensions.empty()) {
        ext = name + ".ext";
        std::ofstream(dir_.path / ext) << extensions << "\n";
    }
    const auto [status, out] = runCommand(
        "cd '" + dir_.path.string() +
        "' && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=" +
        common_name + "' -keyout '" + name + ".key' -out '" + name +
        ".csr' 2>&1 && openssl x509 -req -in '" + name +
        ".csr' -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile '" + ext + "' -out '" +
        name + ".pem' 2>&1");
    if (status != 0)
        throw std::runtime_error("test certificate " + name + ": " + out);
}

std::unique_ptr<Gateway> startGateway(const std::string& yaml, bool access_log,
                                      const std::function<void(Config&)>& adjust) {
    Config config = parseConfig(yaml);
    config.listen = "127.0.0.1:0";
    config.metrics_listen = "127.0.0.1:0";
    config.ready_listen = "127.0.0.1:0";
    config.tokenizer_dir = SLUICE_TEST_TOKENIZER_DIR;
    config.access_log = access_log;
    if (adjust)
        adjust(config);
    if (auto problems = config.validate(); !problems.empty()) {
        throw std::runtime_error("config: " + problems.front());
    }
    auto gateway = std::make_unique<Gateway>(std::move(config));
    gateway->start();
    return gateway;
}

double metricValue(const std::string& text, const std::string& name,
                   const std::map<std::string, std::string>& labels) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        if (!line.starts_with(name + "{") && !line.starts_with(name + " "))
            continue;
        bool all = true;
        for (const auto& [k, v] : labels) {
            if (line.find(k + "=\"" + v + "\"") == std::string::npos)
                all = false;
        }
        if (all)
            return std::stod(line.substr(line.rfind(' ') + 1));
    }
    return -1;
}

}  // namespace sluice::waypoint::test
