#!/usr/bin/python3
"""h2c client for the waypoint's RST_STREAM test (python3-h2, Debian's /usr/bin/python3).

Opens one h2c connection with prior knowledge, starts a streamed chat completion, resets the
stream (RST_STREAM CANCEL) after its first DATA frame, then sends a second request on the same
connection and reads it to the end. Prints one line per step ("reset", "second <status>") and
holds the connection open for --hold seconds so the test sees the cancel before any close.
"""
import argparse
import socket
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streamed", required=True, help="file with the streamed request body")
    parser.add_argument("--plain", required=True, help="file with the non-streamed request body")
    parser.add_argument("--hold", type=float, default=3.0)
    args = parser.parse_args()
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()

    def post(path_of_body):
        body = open(path_of_body, "rb").read()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [(":method", "POST"), (":path", "/v1/chat/completions"),
                                (":scheme", "http"), (":authority", "waypoint"),
                                ("content-type", "application/json")])
        conn.send_data(sid, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        return sid

    first = post(args.streamed)
    second = None
    status = None
    done = False
    while not done:
        data = sock.recv(65536)
        if not data:
            sys.exit("connection closed")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id == first and second is None:
                    conn.reset_stream(first, h2.errors.ErrorCodes.CANCEL)
                    print("reset", flush=True)
                    second = post(args.plain)
            elif isinstance(event, h2.events.ResponseReceived) and event.stream_id == second:
                status = dict(event.headers).get(b":status", b"").decode()
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == second:
                done = True
        sock.sendall(conn.data_to_send())
    print("second", status, flush=True)
    time.sleep(args.hold)
    sock.close()


if __name__ == "__main__":
    main()
