#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <functional>
#include <string>

namespace sluice::ztunnel::proxy {

// A minimal HTTP/1.1 server for the admin (127.0.0.1:15000) and readiness (:15021) ports: one
// request per connection, GET/POST by path. Runs on the admin thread's io_context, never on a
// worker, so slow scrapes cannot stall the data path.
struct HttpResponse {
    int status = 200;
    std::string content_type = "text/plain";
    std::string body;
};
using HttpHandler = std::function<HttpResponse(const std::string& method, const std::string& path)>;

// Listens at "ip:port" (in the current netns); throws on bind failure.
void serve_http(boost::asio::io_context& io, const std::string& address, HttpHandler handler);

}  // namespace sluice::ztunnel::proxy
