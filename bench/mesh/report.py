"""Turns the outputs of bench/mesh/run.sh into bench/results/mesh.{json,md}.

argv[1]: folder with, per mode and round, <mode>-c<conns>-<round>.txt (wrk) and .cpu (CPU clock
ticks of the mode's proxies and of the whole machine before and after it, and ticks per second),
<mode>-rate<rate>-<round>.samples (sluice-bench-http-load), <mode>-iperf[-local]-<round>.json
(iperf3 cross node and same node), and memory.txt (memory as pods grow: "mesh pods processes
rss_kib total_kib" lines);
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


def parse_cpu(path, requests):
    """CPU seconds per 10k requests: the mode's proxies, and the whole machine (every process and
    the kernel's softirq work: wrk, nginx, TCP, the proxies)."""
    proxy0, machine0, proxy1, machine1, hz = (int(v) for v in open(path).read().split())
    per_10k = lambda ticks: ticks / hz / requests * 10_000  # noqa: E731
    return {"proxy_cpu_s_per_10k": per_10k(proxy1 - proxy0),
            "machine_cpu_s_per_10k": per_10k(machine1 - machine0)}


def parse_rate(path):
    """Open-loop latency at a fixed rate, from each request's due time (so a late start counts)."""
    lat, failed = [], 0
    for line in open(path):
        _, latency_us, late_us, result = line.split()
        if result == "ok":
            lat.append((int(latency_us) + int(late_us)) / 1000)
        else:
            failed += 1
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99), "ok": len(lat),
            "failed": failed}


def wrk_figures(prefix):
    """Medians of the 1- and 32-connection wrk runs <prefix>-c{1,32}-<round>.txt and the CPU read
    around the 32-connection ones, with the per-round values behind them."""
    c1 = [parse_wrk(f"{out_dir}/{prefix}-c1-{r}.txt") for r in rounds]
    c32 = [parse_wrk(f"{out_dir}/{prefix}-c32-{r}.txt") for r in rounds]
    cpu = [parse_cpu(f"{out_dir}/{prefix}-c32-{r}.cpu", c32[r - 1]["requests"]) for r in rounds]
    return {**{f"{q}_ms_c1": round(median(c1, f"{q}_ms"), 4) for q in ("p50", "p90", "p99")},
            "requests_per_s_c1": round(median(c1, "requests_per_s")),
            "requests_per_s_c32": round(median(c32, "requests_per_s")),
            "p50_ms_c32": round(median(c32, "p50_ms"), 4),
            "proxy_cpu_s_per_10k_c32": round(median(cpu, "proxy_cpu_s_per_10k"), 3),
            "machine_cpu_s_per_10k_c32": round(median(cpu, "machine_cpu_s_per_10k"), 3),
            "wrk_errors": sum(s["errors"] for s in c1 + c32),
            "rounds": {"p50_ms_c1": [s["p50_ms"] for s in c1],
                       "requests_per_s_c32": [s["requests_per_s"] for s in c32]}}


modes = {}
for mode in MODES:
    bulk = [parse_iperf(f"{out_dir}/{mode}-iperf-{r}.json") for r in rounds]
    bulk_local = [parse_iperf(f"{out_dir}/{mode}-iperf-local-{r}.json") for r in rounds]
    at_rate = {}
    for rate in run["rates"]:
        samples = [parse_rate(f"{out_dir}/{mode}-rate{rate}-{r}.samples") for r in rounds]
        at_rate[str(rate)] = {**{q: round(median(samples, q), 4) for q in ("p50_ms", "p90_ms", "p99_ms")},
                              "failed": sum(s["failed"] for s in samples)}
    modes[mode] = wrk_figures(mode)
    modes[mode].update({
        "iperf3_gbit_per_s": round(median(bulk, "gbit_per_s"), 3),
        "iperf3_same_node_gbit_per_s": round(median(bulk_local, "gbit_per_s"), 3),
        "fixed_rate": at_rate,
    })
    modes[mode]["rounds"]["iperf3_gbit_per_s"] = [round(s["gbit_per_s"], 3) for s in bulk]
base = modes["none"]
for m in modes.values():
    m["added_p50_ms_c1"] = round(m["p50_ms_c1"] - base["p50_ms_c1"], 4)
    m["added_p99_ms_c1"] = round(m["p99_ms_c1"] - base["p99_ms_c1"], 4)
    for rate, r in m["fixed_rate"].items():
        for q in ("p50_ms", "p90_ms", "p99_ms"):
            r[f"added_{q}"] = round(r[q] - base["fixed_rate"][rate][q], 4)

# Sidecarless + waypoint: the same chat request to nginx straight (direct) and through the waypoint.
waypoint = {path: wrk_figures(f"waypoint-{path}") for path in ("direct", "waypoint")}
for q in ("p50", "p90", "p99"):
    waypoint["waypoint"][f"added_{q}_ms_c1"] = round(
        waypoint["waypoint"][f"{q}_ms_c1"] - waypoint["direct"][f"{q}_ms_c1"], 4)

# Memory as pods per node grow: per mesh and pod count, the proxies' RSS sum and total.
memory = {}
for line in open(f"{out_dir}/memory.txt"):
    mesh, pods, procs, rss_kib, total_kib = line.split()
    memory.setdefault(mesh, []).append({"pods": int(pods), "processes": int(procs),
                                        "rss_kib": int(rss_kib), "total_kib": int(total_kib)})
# The sidecarless mesh's whole per-node cost: its ztunnel and its agent.
memory["sidecarless"] = [
    {k: z[k] + a[k] if k != "pods" else z[k] for k in z}
    for z, a in zip(memory.pop("sidecarless-ztunnel"), memory.pop("sidecarless-agent"))]
memory = {k: memory[k] for k in ("sidecar", "sidecarless", "haproxy")}

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
          "sidecarless_waypoint": waypoint, "memory_by_pods": memory, "targets": targets}
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
    md.write("Path: client pod on node0 → server pod IP on node1 (wrk, sluice-bench-http-load, "
             "iperf3 → nginx, iperf3 -s), and for same-node bulk client pod → a pod on node0 "
             "(iperf3 -s); every mode on its own testbed cluster, all up at once.\n\n")
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
    md.write("![latency and throughput by mode](mesh-modes.png)\n\n")
    md.write("| mode | p50 ms (1 conn) | p90 ms (1 conn) | p99 ms (1 conn) | added p50 | added p99 "
             "| req/s (1 conn) | req/s (32 conns) | proxy CPU s / 10k req | machine CPU s / 10k req "
             "| iperf3 Gbit/s cross node | iperf3 Gbit/s same node | wrk errors |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for name, m in modes.items():
        md.write(f"| {name} | {m['p50_ms_c1']:.3f} | {m['p90_ms_c1']:.3f} | {m['p99_ms_c1']:.3f} "
                 f"| {m['added_p50_ms_c1']:.3f} | {m['added_p99_ms_c1']:.3f} | {m['requests_per_s_c1']} "
                 f"| {m['requests_per_s_c32']} | {m['proxy_cpu_s_per_10k_c32']:.3f} "
                 f"| {m['machine_cpu_s_per_10k_c32']:.3f} | {m['iperf3_gbit_per_s']:.2f} "
                 f"| {m['iperf3_same_node_gbit_per_s']:.2f} | {m['wrk_errors']} |\n")
    md.write("\nCPU per 10k requests is taken over the 32-connection wrk runs: *proxy* is the user + "
             "system time of the mode's proxy processes (node or pod ztunnels, HAProxy; the eBPF "
             "programs run in the apps' own system calls and are not in it), *machine* is every "
             "busy CPU tick of the machine in that time (wrk, nginx, the proxies and the kernel's "
             "network work; also whatever else ran).\n")
    md.write(f"\nOpen-loop latency at fixed rates (`sluice-bench-http-load --keep-alive --threads 8`: "
             f"request *i* is due at *t0 + i / rate* and its latency counts from that due time, so "
             f"a proxy that falls behind is charged for the wait; ms, medians over the rounds):\n\n")
    md.write("| mode | " + " | ".join(f"{r}/s p50 | {r}/s p90 | {r}/s p99 | {r}/s added p50 "
                                        f"| {r}/s added p99" for r in run["rates"]) + " | failed |\n")
    md.write("|---|" + "---|" * (5 * len(run["rates"]) + 1) + "\n")
    for name, m in modes.items():
        cells = []
        for rate in run["rates"]:
            r = m["fixed_rate"][str(rate)]
            cells += [f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}",
                      f"{r['added_p50_ms']:.3f}", f"{r['added_p99_ms']:.3f}"]
        failed = sum(m["fixed_rate"][str(rate)]["failed"] for rate in run["rates"])
        md.write(f"| {name} | {' | '.join(cells)} | {failed} |\n")
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
    md.write("Sidecarless + waypoint (its own `--mesh sidecarless --waypoint` cluster): the same chat "
             "request (`POST /v1/chat/completions`, model `bench`) to nginx's static OpenAI-shaped "
             "reply on node1, *direct* to the server pod's IP (client → node0 ztunnel → HBONE → node1 "
             "ztunnel → nginx) and *through the waypoint* via the service `ai/llm`, which uses it "
             "(client → node0 ztunnel → HBONE → sluice-waypoint on node0: budgets, usage, route, "
             "access log → node0 ztunnel → HBONE → node1 ztunnel → nginx). Proxy CPU is both node "
             "ztunnels plus the waypoint.\n\n"
             "| path | p50 ms (1 conn) | p90 ms | p99 ms | added p50 | added p99 | req/s (32 conns) "
             "| proxy CPU s / 10k req | machine CPU s / 10k req | wrk errors |\n"
             "|---|---|---|---|---|---|---|---|---|---|\n")
    for path, w in waypoint.items():
        md.write(f"| {path} | {w['p50_ms_c1']:.3f} | {w['p90_ms_c1']:.3f} | {w['p99_ms_c1']:.3f} "
                 f"| {w.get('added_p50_ms_c1', 0):.3f} | {w.get('added_p99_ms_c1', 0):.3f} "
                 f"| {w['requests_per_s_c32']} | {w['proxy_cpu_s_per_10k_c32']:.3f} "
                 f"| {w['machine_cpu_s_per_10k_c32']:.3f} | {w['wrk_errors']} |\n")
    md.write("\nPer round, p50 ms at 1 conn / req/s at 32 conns: " + "; ".join(
        f"{path} {', '.join(f'{v:.3f}' for v in w['rounds']['p50_ms_c1'])} / "
        f"{', '.join(f'{v:.0f}' for v in w['rounds']['requests_per_s_c32'])}"
        for path, w in waypoint.items()) + ".\n\n")
    md.write("Proxy memory as pods per node grow (1-node clusters of idle, enrolled pods, one mesh at a "
             "time; MiB over the proxy processes: *total* counts each process's private pages and "
             "the shared pages (library files) once, which is what the proxies take together; the "
             "RSS sum counts shared pages once per process; sidecarless is its node ztunnel plus "
             "its agent, their totals added):\n\n"
             "![proxy memory by pods per node](mesh-memory.png)\n\n"
             "| pods per node | " + " | ".join(f"{k} processes | {k} total | {k} RSS sum" for k in memory)
             + " |\n|---|" + "---|---|---|" * len(memory) + "\n")
    for i, pods in enumerate(e["pods"] for e in next(iter(memory.values()))):
        cells = []
        for rows in memory.values():
            e = rows[i]
            cells += [str(e["processes"]), f"{mib(e['total_kib'])}", f"{mib(e['rss_kib'])}"]
        md.write(f"| {pods} | {' | '.join(cells)} |\n")
    md.write("\n| target | measured | limit | result |\n|---|---|---|---|\n")
    for t in targets:
        md.write(f"| {t['target']} | {t['value']} {t['unit']} | {t['limit']} {t['unit']} "
                 f"| **{t['result']}** |\n")
