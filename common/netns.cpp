#include "common/netns.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <exception>
#include <system_error>
#include <thread>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace sluice {

std::string netns_path(const std::string& name) {
    return "/var/run/netns/" + name;
}

void run_in_netns(const std::string& path, const std::function<void()>& fn) {
    std::exception_ptr failure;
    std::thread worker([&] {
        try {
            int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                throw std::system_error(errno, std::generic_category(), "open " + path);
            int rc = ::setns(fd, CLONE_NEWNET);
            int saved = errno;
            ::close(fd);
            if (rc != 0)
                throw std::system_error(saved, std::generic_category(), "setns " + path);
            fn();
        } catch (...) {
            failure = std::current_exception();
        }
    });
    worker.join();
    if (failure)
        std::rethrow_exception(failure);
}

uint64_t netns_cookie(const std::string& path) {
    uint64_t cookie = 0;
    run_in_netns(path, [&] {
        int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0)
            throw std::system_error(errno, std::generic_category(), "socket");
        socklen_t len = sizeof(cookie);
        int rc = ::getsockopt(s, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len);
        int saved = errno;
        ::close(s);
        if (rc != 0)
            throw std::system_error(saved, std::generic_category(), "SO_NETNS_COOKIE");
    });
    return cookie;
}

}  // namespace sluice
