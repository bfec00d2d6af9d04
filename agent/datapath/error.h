#pragma once

#include <string>

namespace sluice::datapath {

// What went wrong while loading, attaching or driving the eBPF datapath.
enum class Errc {
    BpffsNotMounted,        // the bpffs root is not on a bpf filesystem
    CgroupMissing,          // the attach cgroup does not exist or is not cgroup v2
    InvalidConfig,          // DatapathConfig::validate() found problems
    LayoutMismatch,         // pinned maps were written by a different SLUICE_ABI_VERSION
    PinnedMapIncompatible,  // a pinned map's type/key/value/size differs from this build's
    VerifierRejected,       // the kernel refused a program; the message holds the verifier log
    LoadFailed,             // bpf object open/load failed for another reason
    AttachFailed,           // attaching, pinning or updating a link failed
    NotFound,               // no such map entry / netns / link
    MapOperationFailed,     // a map update/delete/lookup failed
    SystemError,            // another syscall failed
    Unsupported,            // the running kernel lacks a feature this operation needs
};

struct Error {
    Errc code;
    std::string message;  // says what failed, where, and the errno text when there is one
};

const char* errc_name(Errc code);

}  // namespace sluice::datapath
