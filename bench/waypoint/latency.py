#!/usr/bin/env python3
"""Waypoint latency at a fixed rate and time to first token, against the same backends direct.

  bench/waypoint/latency.py [build dir]     (writes bench/results/waypoint-latency.{json,md})

1. Fixed rate: 1000 chat requests/s for 5 s on one keep-alive connection, open loop (request i is
   due at t0 + i ms; its latency counts from the due time, so a slow answer delays the next ones
   and they count it: no coordinated omission). Backend: nginx with a static OpenAI reply.
   Direct vs through sluice-waypoint (budgets, usage, route on; 1 worker) as configured by
   default, and with busyPollMicros 100 (a worker polls 100 µs for the next event before it
   sleeps: CPU for latency where waking a sleeping vCPU is slow) vs through nginx as a plain
   reverse proxy (keep-alive upstream, no buffering; the outside reference).
2. Time to first token: 300 streamed chat requests per path, one after the other on a
   keep-alive connection per path, to the OpenAI emulator (tests/waypoint/openai_emulator.py, a
   TEST FIXTURE that streams 3 tokens 2 ms apart), direct vs through the waypoint; TTFT = from
   the first byte sent to the first SSE event that carries content. The paths take turns
   request by request (the order rotating), so the machine's drift falls on all alike.
The proxies (waypoint, nginx proxy) run pinned to CPU 1, clients and backends to CPU 0. Every
process runs SCHED_FIFO (when allowed) so that other work on a shared machine does not land inside
the measurement; all paths alike. The paths alternate over ROUNDS rounds; the reported figure of
each path is the median of its rounds. Loopback only, bounded in time.
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
RATE, SECONDS, TTFT_REQUESTS, ROUNDS = 1000, 5, 300, 3
PATHS = ("direct", "waypoint", "waypoint-busy-poll", "nginx-proxy")
BUSY_POLL_US = 100
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
        # Sleep most of the gap, spin the rest: a SCHED_FIFO client spinning all the time would
        # hit the kernel's real-time throttling (and starve the backend on its CPU).
        if (ahead := due - time.perf_counter_ns()) > 300_000:
            time.sleep((ahead - 200_000) / 1e9)
        while time.perf_counter_ns() < due:
            pass
        conn.sock.sendall(req)
        bad += conn.read_response() != 200
        latencies.append((time.perf_counter_ns() - due) / 1e6)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {"p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99),
            "requests": len(latencies), "non_200": bad}


def ttft(ports):
    """Streams to every path in turn, request by request (the order rotating), so that the
    machine's drift over the run falls on all paths alike; TTFT statistics per path."""
    conns = {k: Conn(port) for k, port in ports.items()}
    req = request_bytes(STREAM)
    for conn in conns.values():
        for _ in range(20):
            conn.sock.sendall(req)
            conn.first_token_then_drain()
    samples, bad = {k: [] for k in ports}, {k: 0 for k in ports}
    order = list(ports)
    for i in range(TTFT_REQUESTS):
        for k in order[i % len(order):] + order[:i % len(order)]:
            start = time.perf_counter_ns()
            conns[k].sock.sendall(req)
            status, at = conns[k].first_token_then_drain()
            bad[k] += status != 200
            samples[k].append((at - start) / 1e6)
    out = {}
    for k, v in samples.items():
        v.sort()
        out[k] = {"p50_ms": statistics.median(v), "p90_ms": v[int(0.9 * len(v))],
                  "requests": len(v), "non_200": bad[k]}
    return out


def pinned(cpu, argv):
    """argv on `cpu`, SCHED_FIFO when the bench may use it (see the module doc)."""
    return (["chrt", "-f", "50"] if REALTIME else []) + ["taskset", "-c", str(cpu)] + argv


def cpu_seconds(pid):
    """User + system CPU of a process so far (chrt and taskset exec it: the pid stays)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median_of(runs):
    """The per-key median over rounds of numbers; counts add up."""
    out = {}
    for k in runs[0]:
        vals = [r[k] for r in runs]
        out[k] = sum(vals) if k in ("requests", "non_200") else statistics.median(vals)
    return out


def nginx_conf(tmp, name, servers):
    d = f"{tmp}/{name}"
    os.makedirs(f"{d}/logs")
    with open(f"{d}/nginx.conf", "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid;
error_log {d}/logs/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {d}; proxy_temp_path {d};
  fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
{servers} }}
""")
    return ["nginx", "-p", d, "-c", f"{d}/nginx.conf"]


def proxy_server(listen_port, upstream_port):
    return f"""  upstream u{listen_port} {{ server 127.0.0.1:{upstream_port}; keepalive 16; }}
  server {{ listen 127.0.0.1:{listen_port}; location / {{ proxy_pass http://u{listen_port};
    proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }} }}
"""


REALTIME = os.geteuid() == 0 and os.environ.get("SLUICE_BENCH_REALTIME", "1") == "1"


def main():
    tmp = tempfile.mkdtemp(prefix="sluice-wp-latency-")
    procs = []
    try:
        nginx_port, emu_port, wp_port, wp_busy_port = (free_port(), free_port(), free_port(),
                                                       free_port())
        proxy_static, proxy_emu = free_port(), free_port()
        reply = ('{"id":"cmpl-bench","object":"chat.completion","created":0,"model":"gpt-4o",'
                 '"choices":[{"index":0,"message":{"role":"assistant","content":"I am fine."},'
                 '"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":4,'
                 '"total_tokens":18}}')
        backend = nginx_conf(tmp, "backend", f"""  server {{ listen 127.0.0.1:{nginx_port}; location / {{ default_type application/json;
    return 200 '{reply}'; }} }}""")
        proxy = nginx_conf(tmp, "proxy", proxy_server(proxy_static, nginx_port) +
                           proxy_server(proxy_emu, emu_port))
        procs.append(subprocess.Popen(pinned(0, backend)))
        procs.append(subprocess.Popen(pinned(1, proxy)))
        procs.append(subprocess.Popen(
            pinned(0, ["/usr/bin/python3", f"{ROOT}/tests/waypoint/openai_emulator.py",
                       "--port", str(emu_port), "--name", "bench", "--token-delay-ms", "2",
                       "--max-seconds", "600"]), stdout=subprocess.DEVNULL))
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
        proxy_pid = {"nginx-proxy": procs[1].pid}
        for port, busy_poll in ((wp_port, 0), (wp_busy_port, BUSY_POLL_US)):
            proxy_pid["waypoint-busy-poll" if busy_poll else "waypoint"] = len(procs)
            procs.append(subprocess.Popen(pinned(1, [
                f"{BUILD}/bin/sluice-waypoint", "--config", f"{tmp}/waypoint.yaml", "--listen",
                f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0", "--ready-listen",
                "127.0.0.1:0", "--log-level", "warn", "--busy-poll-us", str(busy_poll)])))
        proxy_pid.update({k: procs[i].pid for k, i in proxy_pid.items() if k != "nginx-proxy"})
        for p in (nginx_port, emu_port, wp_port, wp_busy_port, proxy_static, proxy_emu):
            wait_port(p)
        os.sched_setaffinity(0, {0})
        if REALTIME:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        rate_port = {"direct": nginx_port, "waypoint": wp_port, "waypoint-busy-poll": wp_busy_port,
                     "nginx-proxy": proxy_static}
        ttft_port = dict(rate_port, direct=emu_port, **{"nginx-proxy": proxy_emu})
        rate_runs = {k: [] for k in PATHS}
        ttft_runs = {k: [] for k in PATHS}
        for r in range(ROUNDS):
            for k in PATHS:
                before = cpu_seconds(proxy_pid[k]) if k in proxy_pid else 0.0
                run = fixed_rate(rate_port[k])
                if k in proxy_pid:  # the proxy's CPU per request at this rate
                    run["proxy_cpu_us_per_request"] = \
                        (cpu_seconds(proxy_pid[k]) - before) * 1e6 / run["requests"]
                rate_runs[k].append(run)
            for k, run in ttft(ttft_port).items():
                ttft_runs[k].append(run)
            print(f"round {r + 1}/{ROUNDS}: p50 " +
                  ", ".join(f"{k} {rate_runs[k][-1]['p50_ms']:.3f}" for k in PATHS) +
                  "; TTFT " + ", ".join(f"{k} {ttft_runs[k][-1]['p50_ms']:.3f}" for k in PATHS),
                  flush=True)
        rate = {k: median_of(v) for k, v in rate_runs.items()}
        first = {k: median_of(v) for k, v in ttft_runs.items()}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        subprocess.run(["rm", "-rf", tmp])

    added = {k: {q: rate[k][q] - rate["direct"][q] for q in ("p50_ms", "p90_ms", "p99_ms")}
             for k in PATHS[1:]}
    ttft_added = {k: first[k]["p50_ms"] - first["direct"]["p50_ms"] for k in PATHS[1:]}
    targets = [
        ("added p50 at 1k req/s ≤ 0.2 ms", added["waypoint"]["p50_ms"], 0.2),
        ("added p99 at 1k req/s ≤ 1 ms", added["waypoint"]["p99_ms"], 1.0),
        ("TTFT added (median) ≤ 0.1 ms", ttft_added["waypoint"], 0.1),
        (f"with busyPollMicros {BUSY_POLL_US}: added p50 at 1k req/s ≤ 0.2 ms",
         added["waypoint-busy-poll"]["p50_ms"], 0.2),
        (f"with busyPollMicros {BUSY_POLL_US}: added p99 at 1k req/s ≤ 1 ms",
         added["waypoint-busy-poll"]["p99_ms"], 1.0),
        (f"with busyPollMicros {BUSY_POLL_US}: TTFT added (median) ≤ 0.1 ms",
         ttft_added["waypoint-busy-poll"], 0.1),
    ]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    machine = (f"{os.uname().sysname} {os.uname().release} {os.uname().machine}, "
               f"{os.cpu_count()} cores")
    out = {"machine": machine, "load_average": load, "realtime": REALTIME, "rounds": ROUNDS,
           "rate": rate, "added": added, "ttft": first, "rate_runs": rate_runs, "ttft_runs": ttft_runs,
           "ttft_added_ms": ttft_added,
           "targets": [{"target": t, "measured_ms": m, "limit_ms": l, "pass": m <= l}
                       for t, m, l in targets]}
    results = os.path.join(ROOT, "bench", "results")
    with open(os.path.join(results, "waypoint-latency.json"), "w") as f:
        json.dump(out, f, indent=2)
    lines = [
        "# Waypoint latency at 1k req/s and time to first token (loopback)", "",
        f"Machine: {machine}  ",
        "Command: `sudo bench/waypoint/latency.py build` (proxies — sluice-waypoint, nginx as a "
        "plain reverse proxy — on CPU 1; client, backend nginx and the emulator on CPU 0; "
        f"{'all SCHED_FIFO' if REALTIME else 'normal scheduling'})  ",
        f"Load average at the end: {load}", "",
        f"{ROUNDS} rounds, the paths alternating; each figure is the median over the rounds.", "",
        f"Fixed rate: {RATE} chat requests/s for {SECONDS} s, one keep-alive connection, open loop "
        "(latency from each request's due time).", "",
        "| path | p50 ms | p90 ms | p99 ms | added p50 | added p99 | proxy CPU µs/request | "
        "requests | non-200 |",
        "|---|---|---|---|---|---|---|---|---|"]
    for k, r in rate.items():
        a = added.get(k, {"p50_ms": 0.0, "p99_ms": 0.0})
        cpu = r.get("proxy_cpu_us_per_request")
        lines.append(f"| {k} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | "
                     f"{a['p50_ms']:.3f} | {a['p99_ms']:.3f} | "
                     f"{'—' if cpu is None else f'{cpu:.0f}'} | {r['requests']} | {r['non_200']} |")
    lines += ["", "Per round (p50 ms): " + "; ".join(
        f"{k} " + ", ".join(f"{x['p50_ms']:.3f}" for x in rate_runs[k]) for k in PATHS)]
    lines += ["", f"Time to first token: {TTFT_REQUESTS} streamed chats to the OpenAI emulator "
              "(test fixture; 3 tokens, 2 ms apart) per path, one after the other on a keep-alive "
              "connection per path; the paths take turns request by request.", "", "| path | TTFT p50 ms | TTFT p90 ms | TTFT added | non-200 |",
              "|---|---|---|---|---|"]
    for k, r in first.items():
        lines.append(f"| {k} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                     f"{ttft_added.get(k, 0.0):.3f} | {r['non_200']} |")
    lines += ["", "Per round (TTFT p50 ms): " + "; ".join(
        f"{k} " + ", ".join(f"{x['p50_ms']:.3f}" for x in ttft_runs[k]) for k in PATHS)]
    lines += ["", "| target | measured | limit | result |", "|---|---|---|---|"]
    for t, m, l in targets:
        lines.append(f"| {t} | {m:.3f} ms | {l} ms | {'**PASS**' if m <= l else '**MISS**'} |")
    with open(os.path.join(results, "waypoint-latency.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
