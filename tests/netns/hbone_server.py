#!/usr/bin/python3
"""An independent HBONE server (python3-h2 + ssl), to show that sluice-ztunnel's outbound side
speaks Istio ambient's wire protocol to a peer that is not sluice: it requires TLS 1.3 with a
client certificate from the given CA and ALPN h2, answers every HTTP/2 CONNECT with 200 and
echoes the stream's bytes back, ending its side when the client ends its own.

Serves connections one after another until --streams CONNECT streams have ended (or --timeout
passes), then writes one JSON object to --out with what it saw: the client certificate's URI
SANs, the TLS version, ALPN, and per stream the request headers and the byte count."""
import argparse
import json
import select
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def serve_connection(tls, want_streams, deadline, out):
    """One TLS connection: h2 server side, CONNECT → 200, echo. Returns when the client closes
    the connection, or `want_streams` streams have ended, or the deadline passes."""
    # h2 insists on :path in every request; RFC 9113 §8.5 CONNECT has only :method and
    # :authority, so inbound header validation is off and the test checks the headers itself.
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=False, validate_inbound_headers=False))
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    pending = {}  # stream id -> bytes not yet echoed (flow control)
    ended = set()  # streams whose client side ended
    streams = {}  # stream id -> record in out["streams"]

    def flush(sid):
        data = pending.get(sid, b"")
        while data:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if room <= 0:
                break
            conn.send_data(sid, data[:room])
            data = data[room:]
        pending[sid] = data
        if not data and sid in ended:
            conn.end_stream(sid)
            pending.pop(sid)
            streams[sid]["ended"] = True

    while time.monotonic() < deadline:
        if sum(1 for s in out["streams"] if s.get("ended")) >= want_streams:
            return
        readable, _, _ = select.select([tls], [], [], 0.2)
        if not readable and tls.pending() == 0:
            continue
        try:
            data = tls.recv(65536)
        except (ssl.SSLError, OSError):
            return
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                headers = {k.decode(): v.decode() for k, v in ev.headers}
                record = {"headers": headers, "received": 0, "ended": False}
                out["streams"].append(record)
                streams[ev.stream_id] = record
                status = b"200" if headers.get(":method") == "CONNECT" else b"405"
                conn.send_headers(ev.stream_id, [(b":status", status)],
                                  end_stream=status != b"200")
            elif isinstance(ev, h2.events.DataReceived):
                streams[ev.stream_id]["received"] += len(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                pending[ev.stream_id] = pending.get(ev.stream_id, b"") + ev.data
                flush(ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
                flush(ev.stream_id)
            elif isinstance(ev, h2.events.WindowUpdated):
                for sid in list(pending):
                    flush(sid)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                return
        tls.sendall(conn.data_to_send())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True, help="ip:port to listen on")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--out", required=True, help="where the JSON summary goes")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.set_alpn_protocols(["h2"])

    host, port = args.listen.rsplit(":", 1)
    lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, int(port)))
    lsock.listen(16)
    print("listening", flush=True)

    deadline = time.monotonic() + args.timeout
    out = {"connections": 0, "handshake_errors": [], "peer_uris": [], "streams": []}
    while time.monotonic() < deadline:
        if sum(1 for s in out["streams"] if s.get("ended")) >= args.streams:
            break
        lsock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            sock, _ = lsock.accept()
        except socket.timeout:
            break
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            tls = ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            out["handshake_errors"].append(str(e))
            sock.close()
            continue
        out["connections"] += 1
        cert = tls.getpeercert()
        out["peer_uris"] = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
        out["tls_version"] = tls.version()
        out["alpn"] = tls.selected_alpn_protocol()
        try:
            serve_connection(tls, args.streams, deadline, out)
        except (h2.exceptions.ProtocolError, ssl.SSLError, OSError) as e:
            out["error"] = f"{type(e).__name__}: {e}"
            print(out["error"], file=sys.stderr, flush=True)
        tls.close()
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
