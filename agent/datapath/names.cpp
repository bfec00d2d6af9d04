#include "agent/datapath/datapath.h"
#include "agent/datapath/error.h"

namespace sluice::datapath {

const char* errc_name(Errc code) {
    switch (code) {
        case Errc::BpffsNotMounted:
            return "bpffs_not_mounted";
        case Errc::CgroupMissing:
            return "cgroup_missing";
        case Errc::InvalidConfig:
            return "invalid_config";
        case Errc::LayoutMismatch:
            return "layout_mismatch";
        case Errc::PinnedMapIncompatible:
            return "pinned_map_incompatible";
        case Errc::VerifierRejected:
            return "verifier_rejected";
        case Errc::LoadFailed:
            return "load_failed";
        case Errc::AttachFailed:
            return "attach_failed";
        case Errc::NotFound:
            return "not_found";
        case Errc::Unsupported:
            return "unsupported";
        case Errc::MapOperationFailed:
            return "map_operation_failed";
        case Errc::SystemError:
            return "system_error";
    }
    return "unknown";
}

const char* reason_name(sluice_reason reason) {
    switch (reason) {
        case SLUICE_REASON_NONE:
            return "none";
        case SLUICE_REASON_POLICY_DENY_EGRESS:
            return "policy_deny_egress";
        case SLUICE_REASON_POLICY_DENY_INGRESS:
            return "policy_deny_ingress";
        case SLUICE_REASON_RESERVED_PORT_BIND:
            return "reserved_port_bind";
        case SLUICE_REASON_ORIG_DST_FULL:
            return "orig_dst_full";
        case SLUICE_REASON_MAX:
            break;
    }
    return "unknown";
}

const char* event_name(sluice_event event) {
    switch (event) {
        case SLUICE_EVENT_REDIRECTED:
            return "redirected";
        case SLUICE_EVENT_PASSTHROUGH:
            return "passthrough";
        case SLUICE_EVENT_STEERED:
            return "steered";
        case SLUICE_EVENT_NO_LISTENER:
            return "no_listener";
        case SLUICE_EVENT_ORIG_DST_SERVED:
            return "orig_dst_served";
        case SLUICE_EVENT_ORIG_DST_MISS:
            return "orig_dst_miss";
        case SLUICE_EVENT_MAX:
            break;
    }
    return "unknown";
}

const char* splice_event_name(sluice_splice_event event) {
    switch (event) {
        case SLUICE_SPLICE_ADDED:
            return "added";
        case SLUICE_SPLICE_ADD_FAILED:
            return "add_failed";
        case SLUICE_SPLICE_REDIRECTED:
            return "redirected";
        case SLUICE_SPLICE_PEER_BUSY:
            return "peer_busy";
        case SLUICE_SPLICE_NO_PEER:
            return "no_peer";
        case SLUICE_SPLICE_MAX:
            break;
    }
    return "unknown";
}

}  // namespace sluice::datapath
