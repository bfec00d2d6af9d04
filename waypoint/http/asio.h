#pragma once

// The Asio/Beast names every waypoint file uses.
#include <string_view>
#include <utility>  // Boost 1.74's awaitable.hpp uses std::exchange without including it

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

namespace sluice::waypoint {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using boost::asio::awaitable;
using boost::system::error_code;

// Completion token that stores the error instead of throwing: data-path code never throws.
inline auto noThrow(error_code& ec) {
    return asio::redirect_error(asio::use_awaitable, ec);
}

using Request = http::request<http::string_body>;

// Beast 1.74 speaks boost::string_view.
inline std::string_view sv(beast::string_view s) {
    return {s.data(), s.size()};
}

}  // namespace sluice::waypoint
