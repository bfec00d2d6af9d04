#!/usr/bin/python3
"""An independent HBONE client (python3-h2 + ssl), to show that the waypoint's :15008 listener
speaks Istio ambient's wire protocol to a peer that is not sluice: TLS 1.3 with a client
certificate, ALPN h2, one HTTP/2 CONNECT to --authority, then the bytes of --request on the
stream, reading until the waypoint ends its side (or --timeout passes).

Prints one JSON object: the CONNECT response status, the server certificate's URI SANs, the TLS
version and ALPN, and the bytes that came back on the stream (latin-1)."""
import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--authority", required=True)
    p.add_argument("--request", required=True, help="file with the HTTP/1.1 request bytes")
    p.add_argument("--timeout", type=float, default=10)
    args = p.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # SPIFFE identities are URI SANs, checked below
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    tls = ctx.wrap_socket(raw)
    cert = tls.getpeercert()
    out = {
        "tls_version": tls.version(),
        "alpn": tls.selected_alpn_protocol(),
        "server_uris": [v for k, v in cert.get("subjectAltName", ()) if k == "URI"],
        "status": 0,
        "body": "",
    }

    # RFC 9113 §8.5: CONNECT carries only :method and :authority, which h2 would refuse.
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, validate_inbound_headers=False))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(":method", "CONNECT"), (":authority", args.authority)])
    tls.sendall(conn.data_to_send())
    with open(args.request, "rb") as f:
        request = f.read()
    body = bytearray()
    deadline = time.monotonic() + args.timeout
    done = False
    while not done and time.monotonic() < deadline:
        data = tls.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                out["status"] = int(dict(event.headers)[b":status"])
                if out["status"] == 200:
                    conn.send_data(sid, request)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = event.stream_id == sid
        tls.sendall(conn.data_to_send())
    out["body"] = body.decode("latin-1")
    conn.close_connection()
    tls.sendall(conn.data_to_send())
    tls.close()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
