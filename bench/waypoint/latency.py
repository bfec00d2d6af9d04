#!/usr/bin/env python3
"""Waypoint latency at a fixed rate and time to first token, against the same backends direct.

  bench/waypoint/latency.py [build dir]     (writes bench/results/waypoint-latency.{json,md})

1. Fixed rate: 1000 chat requests/s for 5 s on one keep-alive connection, open loop (request i is
   due at t0 + i ms; its latency counts from the due time, so a slow answer delays the next ones
   and they count it: no coordinated omission). Backend: nginx with a static OpenAI reply.
   Direct vs through sluice-waypoint (budgets, usage, route on; 1 worker).
2. Time to first token: 300 streamed chat requests, one after the other on a keep-alive
   connection, to the OpenAI emulator (tests/waypoint/openai_emulator.py, a TEST FIXTURE that
   streams 3 tokens 2 ms apart), direct vs through the waypoint; TTFT = from the first byte sent
   to the first SSE event that carries content.
The waypoint runs pinned to CPU 1, everything else to CPU 0. Loopback only, bounded in time.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
RATE, SECONDS, TTFT_REQUESTS = 1000, 5, 300
CHAT = json.dumps({"model": "gpt-4o", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "Say hello to the mesh"}]})
STREAM = json.dumps({"model": "emulated", "max_tokens": 3, "stream": True,
                     "messages": [{"role": "user", "content": "Say hello to the mesh"}]})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def request_bytes(body):
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nx-tenant: bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


class Conn:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed")
        self.buf += data

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split(b" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(b":", 1) for line in head.split(b"\r\n")[1:])}
        return status, headers

    def read_response(self):
        status, headers = self.head()
        n = int(headers.get(b"content-length", b"0"))
        while len(self.buf) < n:
            self._more()
        self.buf = self.buf[n:]
        return status

    def first_token_then_drain(self):
        """Returns when the first content event arrived; then reads the rest of the stream."""
        status, _ = self.head()
        while b'"content"' not in self.buf and b'"text"' not in self.buf:
            self._more()
        at = time.perf_counter_ns()
        while b"\r\n0\r\n\r\n" not in self.buf and not self.buf.startswith(b"0\r\n\r\n"):
            self._more()
        self.buf = self.buf.split(b"0\r\n\r\n", 1)[1] if self.buf.startswith(b"0\r\n\r\n") else \
            self.buf.split(b"\r\n0\r\n\r\n", 1)[1]
        return status, at


def fixed_rate(port):
    conn, req = Conn(port), request_bytes(CHAT)
    for _ in range(200):  # warm-up: connections, pools, caches
        conn.sock.sendall(req)
        conn.read_response()
    latencies, bad = [], 0
    t0 = time.perf_counter_ns() + 1_000_000
    for i in range(RATE * SECONDS):
        due = t0 + i * 1_000_000_000 // RATE
        while time.perf_counter_ns() < due:
            pass
        conn.sock.sendall(req)
        bad += conn.read_response() != 200
        latencies.append((time.perf_counter_ns() - due) / 1e6)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {"p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99),
            "requests": len(latencies), "non_200": bad}


def ttft(port):
    conn, req = Conn(port), request_bytes(STREAM)
    for _ in range(20):
        conn.sock.sendall(req)
        conn.first_token_then_drain()
    samples, bad = [], 0
    for _ in range(TTFT_REQUESTS):
        start = time.perf_counter_ns()
        conn.sock.sendall(req)
        status, at = conn.first_token_then_drain()
        bad += status != 200
        samples.append((at - start) / 1e6)
    samples.sort()
    return {"p50_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * len(samples))],
            "requests": len(samples), "non_200": bad}


def main():
    tmp = tempfile.mkdtemp(prefix="sluice-wp-latency-")
    procs = []
    try:
        nginx_port, emu_port, wp_port = free_port(), free_port(), free_port()
        os.makedirs(f"{tmp}/nginx/logs")
        reply = ('{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"gpt-4o",'
                 '"choices":[{"index":0,"message":{"role":"assistant","content":"I am fine."},'
                 '"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":4,'
                 '"total_tokens":18}}')
        with open(f"{tmp}/nginx/nginx.conf", "w") as f:
            f.write(f"""daemon off; master_process off; worker_processes 1; pid {tmp}/nginx/nginx.pid;
error_log {tmp}/nginx/logs/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {tmp}/nginx; proxy_temp_path {tmp}/nginx;
  fastcgi_temp_path {tmp}/nginx; uwsgi_temp_path {tmp}/nginx; scgi_temp_path {tmp}/nginx;
  server {{ listen 127.0.0.1:{nginx_port}; location / {{ default_type application/json;
    return 200 '{reply}'; }} }} }}
""")
        procs.append(subprocess.Popen(["taskset", "-c", "0", "nginx", "-p", f"{tmp}/nginx", "-c",
                                       f"{tmp}/nginx/nginx.conf"]))
        procs.append(subprocess.Popen(
            ["taskset", "-c", "0", "/usr/bin/python3", f"{ROOT}/tests/waypoint/openai_emulator.py",
             "--port", str(emu_port), "--name", "bench", "--token-delay-ms", "2",
             "--max-seconds", "300"], stdout=subprocess.DEVNULL))
        with open(f"{tmp}/waypoint.yaml", "w") as f:
            f.write(f"""apiVersion: sluice.dev/v1alpha1
kind: Waypoint
metadata: {{name: bench}}
spec:
  accessLog: false
  pools:
    - {{name: static, endpoints: ["127.0.0.1:{nginx_port}"]}}
    - {{name: emulated, endpoints: ["127.0.0.1:{emu_port}"]}}
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {{name: emulated}}
spec: {{models: ["emulated"], backends: [{{pool: emulated}}]}}
---
apiVersion: sluice.dev/v1alpha1
kind: ModelRoute
metadata: {{name: static}}
spec: {{models: ["*"], backends: [{{pool: static}}]}}
---
apiVersion: sluice.dev/v1alpha1
kind: TokenBudget
metadata: {{name: bench}}
spec:
  tenantFrom: [{{header: x-tenant}}]
  limits: [{{tenant: "*", tokensPerMinute: 1000000000000, requestsPerMinute: 1000000000000}}]
""")
        wp = subprocess.Popen(["taskset", "-c", "1", f"{BUILD}/bin/sluice-waypoint", "--config",
                               f"{tmp}/waypoint.yaml", "--listen", f"127.0.0.1:{wp_port}",
                               "--metrics-listen", "127.0.0.1:0", "--ready-listen", "127.0.0.1:0",
                               "--log-level", "warn"])
        procs.append(wp)
        for p in (nginx_port, emu_port, wp_port):
            wait_port(p)
        os.sched_setaffinity(0, {0})
        rate = {"direct": fixed_rate(nginx_port), "waypoint": fixed_rate(wp_port)}
        first = {"direct": ttft(emu_port), "waypoint": ttft(wp_port)}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        subprocess.run(["rm", "-rf", tmp])

    added = {k: rate["waypoint"][k] - rate["direct"][k] for k in ("p50_ms", "p90_ms", "p99_ms")}
    ttft_added = first["waypoint"]["p50_ms"] - first["direct"]["p50_ms"]
    targets = [
        ("added p50 at 1k req/s ≤ 0.2 ms", added["p50_ms"], 0.2),
        ("added p99 at 1k req/s ≤ 1 ms", added["p99_ms"], 1.0),
        ("TTFT added (median) ≤ 0.1 ms", ttft_added, 0.1),
    ]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    machine = (f"{os.uname().sysname} {os.uname().release} {os.uname().machine}, "
               f"{os.cpu_count()} cores")
    out = {"machine": machine, "load_average": load, "rate": rate, "added": added, "ttft": first,
           "ttft_added_ms": ttft_added,
           "targets": [{"target": t, "measured_ms": m, "limit_ms": l, "pass": m <= l}
                       for t, m, l in targets]}
    results = os.path.join(ROOT, "bench", "results")
    with open(os.path.join(results, "waypoint-latency.json"), "w") as f:
        json.dump(out, f, indent=2)
    lines = [
        "# Waypoint latency at 1k req/s and time to first token (loopback)", "",
        f"Machine: {machine}  ",
        "Command: `bench/waypoint/latency.py build` (waypoint on CPU 1; client, nginx and the "
        f"emulator on CPU 0)  ", f"Load average at the end: {load}", "",
        f"Fixed rate: {RATE} chat requests/s for {SECONDS} s, one keep-alive connection, open loop "
        "(latency from each request's due time).", "",
        "| path | p50 ms | p90 ms | p99 ms | requests | non-200 |", "|---|---|---|---|---|---|"]
    for k, r in rate.items():
        lines.append(f"| {k} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{r['requests']} | {r['non_200']} |")
    lines += ["", f"Time to first token: {TTFT_REQUESTS} streamed chats to the OpenAI emulator "
              "(test fixture; 3 tokens, 2 ms apart), one after the other on a keep-alive "
              "connection.", "", "| path | TTFT p50 ms | TTFT p90 ms | non-200 |", "|---|---|---|---|"]
    for k, r in first.items():
        lines.append(f"| {k} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['non_200']} |")
    lines += ["", "| target | measured | limit | result |", "|---|---|---|---|"]
    for t, m, l in targets:
        lines.append(f"| {t} | {m:.3f} ms | {l} ms | {'**PASS**' if m <= l else '**MISS**'} |")
    with open(os.path.join(results, "waypoint-latency.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
