#include "ztunnel/proxy/admin.h"

#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <sstream>
#include <stdexcept>

#include "ztunnel/hbone/event.h"
#include "ztunnel/proxy/config.h"

namespace sluice::ztunnel::proxy {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

constexpr auto kRequestTimeout = std::chrono::seconds(5);
constexpr size_t kMaxRequestBytes = 16 * 1024;

const char* reason(int status) {
    switch (status) {
        case 200:
            return "OK";
        case 404:
            return "Not Found";
        case 405:
            return "Method Not Allowed";
        case 503:
            return "Service Unavailable";
        default:
            return "Error";
    }
}

asio::awaitable<void> serve_one(tcp::socket s, HttpHandler& handler) {
    boost::system::error_code ec;
    asio::streambuf buf(kMaxRequestBytes);
    {
        hbone::Deadline deadline(s.get_executor(), kRequestTimeout, [&s] {
            boost::system::error_code ignored;
            s.close(ignored);
        });
        co_await asio::async_read_until(s, buf, "\r\n\r\n",
                                        asio::redirect_error(asio::use_awaitable, ec));
    }
    if (ec)
        co_return;
    std::istream in(&buf);
    std::string method, target;
    in >> method >> target;
    HttpResponse r = handler(method, target.substr(0, target.find('?')));
    std::ostringstream out;
    out << "HTTP/1.1 " << r.status << " " << reason(r.status) << "\r\n"
        << "Content-Type: " << r.content_type << "\r\n"
        << "Content-Length: " << r.body.size() << "\r\nConnection: close\r\n\r\n"
        << r.body;
    const std::string text = out.str();
    co_await asio::async_write(s, asio::buffer(text),
                               asio::redirect_error(asio::use_awaitable, ec));
    s.shutdown(tcp::socket::shutdown_both, ec);
}

asio::awaitable<void> accept_loop(std::shared_ptr<tcp::acceptor> acceptor,
                                  std::shared_ptr<HttpHandler> handler) {
    for (;;) {
        boost::system::error_code ec;
        tcp::socket s =
            co_await acceptor->async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec == asio::error::operation_aborted)
            co_return;
        if (ec)
            continue;
        asio::co_spawn(
            acceptor->get_executor(),
            [s = std::move(s), handler]() mutable -> asio::awaitable<void> {
                co_await serve_one(std::move(s), *handler);
            },
            asio::detached);
    }
}

}  // namespace

void serve_http(asio::io_context& io, const std::string& address, HttpHandler handler) {
    std::string host;
    uint16_t port = 0;
    if (!split_host_port(address, host, port))
        throw std::runtime_error("bad listen address " + address);
    const tcp::endpoint at(asio::ip::make_address(host), port);
    auto acceptor = std::make_shared<tcp::acceptor>(io);
    acceptor->open(at.protocol());
    acceptor->set_option(tcp::acceptor::reuse_address(true));
    acceptor->bind(at);
    acceptor->listen();
    asio::co_spawn(io, accept_loop(acceptor, std::make_shared<HttpHandler>(std::move(handler))),
                   asio::detached);
}

}  // namespace sluice::ztunnel::proxy
