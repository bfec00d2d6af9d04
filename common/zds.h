#pragma once

// The agent ↔ ztunnel enrollment protocol ("ZDS", after the shape of Istio's ztunnel discovery
// service): the agent hands ztunnel each enrolled pod's network namespace as a file descriptor.
//
// Transport: a SOCK_SEQPACKET unix socket at <run>/ztunnel.sock; the agent listens, ztunnel
// connects. One message per packet, JSON encoded, at most kMaxMessageBytes; a file descriptor
// travels with a message as SCM_RIGHTS ancillary data.
//
//   ztunnel → agent  Hello {version}                      first message on every connection
//   agent → ztunnel  AddWorkload {workload} + netns fd    open listeners in that netns
//   agent → ztunnel  DelWorkload {uid}                    close them
//   agent → ztunnel  SnapshotSent                         every workload has been sent; ztunnel
//                                                         drops the ones not sent since Hello
//   ztunnel → agent  Ack {error}                          one per agent message, in order;
//                                                         error non-empty = Nack. The Ack of an
//                                                         AddWorkload carries ztunnel's :15006
//                                                         listener fd (the agent puts it in the
//                                                         sk_lookup SOCKHASH).
//
// The agent enables redirection for a pod only after the Ack of its AddWorkload.
//
// Several ztunnels may be connected at once (an upgrade: the new one starts while the old one
// drains). Each connection is a session that gets the full workload set; the agent steers
// inbound to the newest session whose SnapshotSent was acked. An AddWorkload for a workload
// ztunnel already serves in the same netns is acked with the same listener.

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::zds {

inline constexpr int kProtocolVersion = 1;
inline constexpr size_t kMaxMessageBytes = 64 * 1024;

enum class MessageType { Hello, AddWorkload, DelWorkload, SnapshotSent, Ack };

struct WorkloadInfo {
    std::string uid;
    std::string name;
    std::string namespace_name;
    std::string service_account;
    std::string node;
    std::vector<std::string> ips;
    uint64_t netns_cookie = 0;
    bool operator==(const WorkloadInfo&) const = default;
};

struct Message {
    MessageType type = MessageType::Ack;
    int version = kProtocolVersion;  // Hello
    WorkloadInfo workload;           // AddWorkload
    std::string uid;                 // DelWorkload
    std::string error;               // Ack; empty = success
};

std::string encode(const Message& m);
// A clear reason for anything that is not a well-formed message of a known type.
std::expected<Message, std::string> decode(std::string_view bytes);
const char* type_name(MessageType t);

// A received message and the descriptor that came with it (-1 if none). The caller owns `fd`.
struct Received {
    Message message;
    int fd = -1;
};

// Sends one message, with `fd` attached when >= 0. Errors carry strerror text.
std::expected<void, std::string> send_message(int sock, const Message& m, int fd = -1);
// Receives one message, waiting at most timeout_ms (-1: forever). EOF is the error "closed".
std::expected<Received, std::string> recv_message(int sock, int timeout_ms = -1);

}  // namespace sluice::zds
