"""Turns the outputs of bench/mesh/run.sh into bench/results/mesh.{json,md}.

argv[1]: folder with <mode>-c<conns>-<round>.txt (wrk) and <mode>-iperf-<round>.json (iperf3);
stdin: JSON with the machine, settings and the RSS samples of the run.
Every figure is the median over the rounds; added latency is against "none" of the same run.
"""
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from wrk_output import parse  # noqa: E402

MODES = ("none", "sidecar", "sidecarless", "sidecarless-splice", "sidecarless-busy-poll", "haproxy")
# Opt-in settings of the sidecarless mesh, reported against the latency and throughput targets too.
OPT_IN = {"sidecarless-splice": "with --same-node-splice", "sidecarless-busy-poll": "with --busy-poll-us 50"}
out_dir = sys.argv[1]
run = json.load(sys.stdin)
rounds = range(1, run["rounds"] + 1)


def parse_wrk(path):
    r = parse(path)
    r["errors"] = r["non_2xx"] + r["socket_errors"]
    return r


def parse_iperf(path):
    j = json.load(open(path))
    return {"gbit_per_s": j["end"]["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": j["end"]["sum_sent"].get("retransmits", 0)}


def median(samples, key):
    return statistics.median(s[key] for s in samples)


modes = {}
for mode in MODES:
    c1 = [parse_wrk(f"{out_dir}/{mode}-c1-{r}.txt") for r in rounds]
    c32 = [parse_wrk(f"{out_dir}/{mode}-c32-{r}.txt") for r in rounds]
    bulk = [parse_iperf(f"{out_dir}/{mode}-iperf-{r}.json") for r in rounds]
    modes[mode] = {
        "p50_ms_c1": round(median(c1, "p50_ms"), 4),
        "p90_ms_c1": round(median(c1, "p90_ms"), 4),
        "p99_ms_c1": round(median(c1, "p99_ms"), 4),
        "requests_per_s_c1": round(median(c1, "requests_per_s")),
        "requests_per_s_c32": round(median(c32, "requests_per_s")),
        "p50_ms_c32": round(median(c32, "p50_ms"), 4),
        "iperf3_gbit_per_s": round(median(bulk, "gbit_per_s"), 3),
        "wrk_errors": sum(s["errors"] for s in c1 + c32),
        "rounds": {"p50_ms_c1": [s["p50_ms"] for s in c1],
                   "requests_per_s_c32": [s["requests_per_s"] for s in c32],
                   "iperf3_gbit_per_s": [round(s["gbit_per_s"], 3) for s in bulk]},
    }
base = modes["none"]
for m in modes.values():
    m["added_p50_ms_c1"] = round(m["p50_ms_c1"] - base["p50_ms_c1"], 4)
    m["added_p99_ms_c1"] = round(m["p99_ms_c1"] - base["p99_ms_c1"], 4)

z, ha = modes["sidecarless"], modes["haproxy"]
held = re.match(r"open (\d+)", run["held"])
held_count = int(held.group(1)) if held else 0
mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
idle_mib = mib(max(run["idle_rss_kib"]["sidecarless"]))
held_mib = mib(max(run["held_rss_kib"])) if run["held_rss_kib"] else None


def target(name, value, limit, ok, unit=""):
    return {"target": name, "value": value, "limit": limit, "unit": unit,
            "result": "PASS" if ok else "MISS"}


targets = [
    target("sidecarless added p50 at 1 conn ≤ 0.5 × HAProxy added p50",
           z["added_p50_ms_c1"], round(0.5 * ha["added_p50_ms_c1"], 4),
           z["added_p50_ms_c1"] <= 0.5 * ha["added_p50_ms_c1"], "ms"),
    target("sidecarless req/s at 32 conns ≥ 1.5 × HAProxy", z["requests_per_s_c32"],
           round(1.5 * ha["requests_per_s_c32"]), z["requests_per_s_c32"] >= 1.5 * ha["requests_per_s_c32"],
           "req/s"),
    target("sidecarless iperf3 ≥ 50 % of no mesh", z["iperf3_gbit_per_s"],
           round(0.5 * base["iperf3_gbit_per_s"], 3),
           z["iperf3_gbit_per_s"] >= 0.5 * base["iperf3_gbit_per_s"], "Gbit/s"),
    *[t for mode, how in OPT_IN.items() for t in (
        target(f"opt-in, {how}: added p50 at 1 conn ≤ 0.5 × HAProxy added p50",
               modes[mode]["added_p50_ms_c1"], round(0.5 * ha["added_p50_ms_c1"], 4),
               modes[mode]["added_p50_ms_c1"] <= 0.5 * ha["added_p50_ms_c1"], "ms"),
        target(f"opt-in, {how}: req/s at 32 conns ≥ 1.5 × HAProxy",
               modes[mode]["requests_per_s_c32"], round(1.5 * ha["requests_per_s_c32"]),
               modes[mode]["requests_per_s_c32"] >= 1.5 * ha["requests_per_s_c32"], "req/s"),
        target(f"opt-in, {how}: iperf3 ≥ 50 % of no mesh", modes[mode]["iperf3_gbit_per_s"],
               round(0.5 * base["iperf3_gbit_per_s"], 3),
               modes[mode]["iperf3_gbit_per_s"] >= 0.5 * base["iperf3_gbit_per_s"], "Gbit/s"))],
    target("ztunnel RSS idle ≤ 12 MiB (largest node ztunnel)", idle_mib, 12, idle_mib <= 12, "MiB"),
    target(f"ztunnel RSS with {run['conns_target']} open tunnelled connections ≤ 30 MiB "
           "(largest node ztunnel)", held_mib, 30,
           held_count >= run["conns_target"] and held_mib is not None and held_mib <= 30, "MiB"),
]
command = "sudo bench/mesh/run.sh build"
result = {"machine": run["machine"], "command": command, "seconds_per_run": run["seconds"],
          "rounds": run["rounds"], "load_average_before": run["load_before"],
          "load_average_after": run["load_after"], "modes": modes,
          "ztunnel_rss_kib": {"sidecar_idle_per_pod": run["idle_rss_kib"]["sidecar"],
                              "sidecarless_idle_per_node": run["idle_rss_kib"]["sidecarless"],
                              "sidecarless_after_load_per_node": run["after_load_rss_kib"],
                              "sidecarless_held_per_node": run["held_rss_kib"],
                              "held_connections": held_count, "held": run["held"],
                              "held_open_fds_per_node": run["held_fds"]},
          "targets": targets}
with open("bench/results/mesh.json", "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

with open("bench/results/mesh.md", "w") as md:
    md.write("# Mesh data-path overhead: no mesh, sluice sidecar, sluice sidecarless (± same-node "
             "splice, ± busy polling), HAProxy mTLS\n\n")
    md.write(f"Machine: {run['machine']}  \nCommand: `{command}` ({run['rounds']} rounds of "
             f"{run['seconds']} s per workload and mode, interleaved; medians over the rounds)  \n")
    md.write(f"Load average before/after: {run['load_before']} / {run['load_after']} "
             "(the 1-minute figure before the run is what else kept the 2 cores busy)  \n")
    md.write("Path: client pod on node0 → server pod IP on node1 (wrk, iperf3 → nginx, iperf3 -s), "
             "every mode on its own testbed cluster, all up at once.\n\n")
    md.write("Modes: **none** `--mesh none`; **sidecar** `--mesh sidecar` (sluice-ztunnel per pod, "
             "iptables REDIRECT, HBONE); **sidecarless** `--mesh sidecarless` (eBPF capture, one "
             "sluice-ztunnel per node, HBONE); **sidecarless-splice** the same with the agents' "
             "`--same-node-splice` (the app↔ztunnel hop on each node skips loopback TCP, "
             "docs/datapath.md); **sidecarless-busy-poll** the same with the node ztunnels' "
             "`--busy-poll-us 50` (a worker that ran out of events polls 50 µs more before it "
             "sleeps, docs/ztunnel.md); **haproxy** `--mesh none` plus HAProxy 2.6 sidecars "
             "in TCP mode with `nbthread 2` (as ztunnel's 2 workers): the client pod's app ports are "
             "captured with iptables `nat OUTPUT` REDIRECT (haproxy's uid excluded), the client "
             "haproxy originates TLS 1.3 with a client certificate minted from the testbed CA to the "
             "server pod, where `nat PREROUTING` REDIRECT hands it to the server haproxy, which "
             "verifies it and forwards to the app on 127.0.0.1. HAProxy opens one TLS connection "
             "per client connection; ztunnel multiplexes streams over pooled HBONE connections.\n\n")
    md.write("| mode | p50 ms (1 conn) | p99 ms (1 conn) | added p50 | added p99 | req/s (1 conn) "
             "| req/s (32 conns) | iperf3 Gbit/s | wrk errors |\n|---|---|---|---|---|---|---|---|---|\n")
    for name, m in modes.items():
        md.write(f"| {name} | {m['p50_ms_c1']:.3f} | {m['p99_ms_c1']:.3f} | {m['added_p50_ms_c1']:.3f} "
                 f"| {m['added_p99_ms_c1']:.3f} | {m['requests_per_s_c1']} | {m['requests_per_s_c32']} "
                 f"| {m['iperf3_gbit_per_s']:.2f} | {m['wrk_errors']} |\n")
    md.write("\nPer round (the medians above hide how much a shared 2-core machine moves):\n\n"
             "| mode | p50 ms (1 conn) | req/s (32 conns) | iperf3 Gbit/s |\n|---|---|---|---|\n")
    for name, m in modes.items():
        r = m["rounds"]
        md.write(f"| {name} | {', '.join(f'{v:.3f}' for v in r['p50_ms_c1'])} "
                 f"| {', '.join(f'{v:.0f}' for v in r['requests_per_s_c32'])} "
                 f"| {', '.join(f'{v:.2f}' for v in r['iperf3_gbit_per_s'])} |\n")
    rss = result["ztunnel_rss_kib"]
    md.write("\nztunnel RSS (MiB): sidecarless per node idle "
             f"{[mib(k) for k in rss['sidecarless_idle_per_node']]}, after the load "
             f"{[mib(k) for k in rss['sidecarless_after_load_per_node']]}, with connections held "
             f"{[mib(k) for k in rss['sidecarless_held_per_node']]} (holder: {run['held']}; open fds "
             f"per node ztunnel {run['held_fds']}); sidecar mode per pod idle "
             f"{[mib(k) for k in rss['sidecar_idle_per_pod']]}.\n\n")
    md.write("| target | measured | limit | result |\n|---|---|---|---|\n")
    for t in targets:
        md.write(f"| {t['target']} | {t['value']} {t['unit']} | {t['limit']} {t['unit']} "
                 f"| **{t['result']}** |\n")
