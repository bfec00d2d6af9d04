#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "ztunnel/state/authz.h"

namespace sluice::ztunnel::proxy {

struct EnrolledWorkload;

// The open inbound connections (HBONE streams and :15006 plaintext), with what their
// authorization was decided on, so that a policy refresh can decide again and close the ones the
// new policy denies (DESIGN.md §5: a reload "closes existing connections the new policy
// denies").
//
// Threads: a connection registers and unregisters on its worker; close_denied() runs on the admin
// thread and hands each close to the connection's worker, where it runs only if the connection is
// still registered. Registration and that check happen on the same single-threaded executor, so a
// close never reaches a connection that has already finished.
class InboundConnections {
  public:
    struct Entry {
        std::shared_ptr<EnrolledWorkload> destination;
        // The verified SPIFFE identity (null or empty for plaintext); the connection points it
        // into the label set it shares with its peers (aliasing shared_ptr, no copy per
        // connection).
        std::shared_ptr<const std::string> peer_identity;
        boost::asio::ip::tcp::endpoint source, target;
        boost::asio::io_context::executor_type executor;  // the worker the connection lives on
        // Aborts both sides of the connection; runs on `executor` with the new decision.
        std::function<void(const state::AuthzDecision&)> close;
    };

    using Decide = std::function<state::AuthzDecision(const Entry&)>;

    // The policy generation a new connection is authorized under: read it before authorizing.
    uint64_t epoch() const { return epoch_.load(); }

    // Registers a connection authorized under `authorized_in`, on its executor. A refresh may have
    // put a new policy set in force (and walked the open connections) between that decision and
    // this registration: then the connection is decided again with `decide`, and closed here, on
    // the caller's thread, if the new set denies it.
    uint64_t add(Entry e, uint64_t authorized_in, const Decide& decide);
    void remove(uint64_t id);  // on the connection's executor
    size_t size() const;

    // A new policy set is in force: starts a new epoch, decides every open connection again with
    // `decide` and schedules the close of each one it denies; returns how many that is.
    size_t close_denied(const Decide& decide);

  private:
    void close_now(uint64_t id, const state::AuthzDecision& decision);

    mutable std::mutex mutex_;
    std::atomic<uint64_t> epoch_{0};
    uint64_t next_id_ = 1;
    std::map<uint64_t, Entry> open_;
};

}  // namespace sluice::ztunnel::proxy
