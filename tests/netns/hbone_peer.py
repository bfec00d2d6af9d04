#!/usr/bin/python3
"""An independent HBONE client (python3-h2 + ssl), to show sluice-ztunnel's :15008 speaks
Istio ambient's wire protocol: TLS 1.3 with ALPN h2, an HTTP/2 CONNECT with :authority, then
bytes both ways on the stream. Prints one JSON object with what it saw."""
import argparse
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connect", required=True, help="ip:port of the HBONE listener")
    ap.add_argument("--authority", required=True, help="CONNECT target ip:port")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--payload-size", type=int, default=1000)
    args = ap.parse_args()

    host, port = args.connect.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # HBONE checks the SPIFFE URI SAN, not a host name
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])
    out = {"status": 0}
    sock = socket.create_connection((host, int(port)), timeout=10)
    tls = ctx.wrap_socket(sock)
    cert = tls.getpeercert()
    out["peer_uris"] = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
    out["tls_version"] = tls.version()
    out["alpn"] = tls.selected_alpn_protocol()
    out["cipher"] = tls.cipher()[0]

    # h2 insists on :path for every request; RFC 9113 §8.5 CONNECT has only :method and
    # :authority, so outbound header validation is off.
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "CONNECT"), (":authority", args.authority),
                               ("forwarded", 'for="198.19.0.1:1"')])
    tls.sendall(conn.data_to_send())

    payload = bytes((i * 7) % 251 for i in range(args.payload_size))
    sent = 0
    received = b""
    done = False
    for _ in range(10000):  # bounded: every iteration reads or sends something
        if done:
            break
        if out["status"] == 200 and sent < len(payload):
            room = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
            if room > 0:
                chunk = payload[sent:sent + room]
                sent += len(chunk)
                conn.send_data(stream, chunk, end_stream=sent == len(payload))
                tls.sendall(conn.data_to_send())
                continue
        data = tls.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                out["status"] = int(dict(ev.headers)[b":status"])
                if out["status"] != 200 or not payload:
                    done = out["status"] != 200
            elif isinstance(ev, h2.events.DataReceived):
                received += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, stream)
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        tls.sendall(conn.data_to_send())
    out["sent"] = sent
    out["received"] = len(received)
    out["echoed"] = received == payload
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
