"""Parses the wrk outputs of bench/waypoint/run.sh into bench/results/waypoint.{json,md}."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from wrk_output import parse  # noqa: E402

tmp, machine, rss_kb, rss_tls_kb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

result = {"machine": machine, "command": "bench/waypoint/run.sh", "waypoint_rss_kib": rss_kb,
          "waypoint_tls_rss_kib": rss_tls_kb, "modes": {}}
for mode in ("direct", "waypoint", "haproxy", "waypoint-tls", "haproxy-tls"):
    result["modes"][mode] = {f"c{c}": parse(f"{tmp}/{mode}-c{c}.txt") for c in (1, 32)}
with open("bench/results/waypoint.json", "w") as f:
    json.dump(result, f, indent=2)

d = result["modes"]["direct"]
with open("bench/results/waypoint.md", "w") as md:
    md.write("# Waypoint proxy overhead (loopback, HTTP/1.1 keep-alive)\n\n")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    md.write(f"Machine: {machine}  \nCommand: `bench/waypoint/run.sh` (wrk and nginx on CPU 0, "
             f"the proxy on CPU 1)  \nLoad average at the end: {load}  \n")
    md.write(f"Waypoint RSS after the runs: {rss_kb / 1024:.1f} MiB (target 30); the TLS modes' "
             f"waypoint (a process of its own, with the TLS listener): "
             f"{rss_tls_kb / 1024:.1f} MiB\n\n")
    md.write("| mode | p50 ms (1 conn) | p99 ms (1 conn) | added p50 | added p99 | req/s (32 conns) "
             "| non-2xx |\n|---|---|---|---|---|---|---|\n")
    for mode, r in result["modes"].items():
        md.write(f"| {mode} | {r['c1']['p50_ms']} | {r['c1']['p99_ms']} | "
                 f"{r['c1']['p50_ms'] - d['c1']['p50_ms']:.3f} | "
                 f"{r['c1']['p99_ms'] - d['c1']['p99_ms']:.3f} | {r['c32']['requests_per_s']:.0f} | "
                 f"{r['c1']['non_2xx'] + r['c32']['non_2xx']} |\n")
    md.write("\nwaypoint-tls and haproxy-tls: the same proxy terminating TLS 1.3 (ECDSA P-256, "
             "HTTP/1.1 by ALPN) on its TLS listener; wrk keeps its connections, so the added "
             "cost is the records' encryption, not handshakes.\n")
