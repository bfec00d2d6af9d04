#pragma once

#include "ztunnel/proxy/proxy.h"

namespace sluice::ztunnel::proxy {

// What both inbound paths (HBONE :15008 and plaintext :15006) share: who is calling, the
// authorization decision, and the labels and record of the connection.
struct InboundCall {
    ConnectionRecord record;
    ConnectionLabels labels;
    state::AuthzDecision decision;
};

// Fills in source and destination from the registry and asks the authorizer. `peer_identity`
// is empty for plaintext.
InboundCall authorize_inbound(Proxy& p, const EnrolledWorkload& dst,
                              const std::string& peer_identity, const tcp::endpoint& source,
                              const tcp::endpoint& destination);

// After the app connection ended (or failed): metrics and the access-log line.
void finish_inbound(Proxy& p, InboundCall& call, bool opened, const std::string& error = {});

}  // namespace sluice::ztunnel::proxy
