#!/usr/bin/env python3
"""bench/reload report: bench/reload/report.py TMPDIR OUTDIR COMMAND RATE SECONDS."""
import calendar
import json
import os
import platform
import statistics
import sys
import time


def docs(path):
    text, out, dec, i = open(path).read(), [], json.JSONDecoder(), 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        d, i = dec.raw_decode(text, i)
        out.append(d)


def samples(path):
    rows = []
    for line in open(path):
        start, lat, late, result = line.split()
        rows.append((int(start) / 1e6, int(lat) / 1e3, int(late) / 1e3, result))
    return rows


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(p / 100 * len(v)))], 3)


def phase(rows, seconds):
    ok = [r for r in rows if r[3] == "ok"]
    failures = {}
    for r in rows:
        if r[3] != "ok":
            failures[r[3]] = failures.get(r[3], 0) + 1
    lat = [r[1] for r in ok]
    return {"sent": len(rows), "ok": len(ok), "failed": len(rows) - len(ok), "failures": failures,
            "rate_per_s": round(len(rows) / seconds, 1),
            "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": pct(lat, 100),
                           "mean": round(statistics.mean(lat), 3) if lat else None},
            "started_late_ms_p99": pct([r[2] for r in rows], 99)}


def main():
    tmp, out_dir, command, rate, seconds = sys.argv[1:6]
    seconds = float(seconds)
    base, rel = samples(f"{tmp}/baseline.samples"), samples(f"{tmp}/reloads.samples")
    swaps = [float(l.split()[1]) for l in open(f"{tmp}/swaps.log")]
    window = 0.5
    near = [r for r in rel if any(0 <= r[0] - s < window for s in swaps)]
    before, after = docs(f"{tmp}/status-before.json"), docs(f"{tmp}/status-after.json")
    nodes = []
    for n, (b, a) in enumerate(zip(before, after)):
        nodes.append({"node": f"node{n}",
                      "generation_before": b["generation"], "generation_after": a["generation"],
                      "applied_generation_after": a["appliedGeneration"],
                      "new_generations": a["reloads"]["success"] - b["reloads"]["success"],
                      "unchanged": a["reloads"]["unchanged"] - b["reloads"]["unchanged"],
                      "failed_reloads": a["reloads"]["failure"] - b["reloads"]["failure"],
                      "kernel_policy_entries": a.get("kernelPolicyEntries"),
                      "ipcache_entries": a.get("ipcacheEntries")})
    # "node0 2026-11-27T00:36:50.123 info sluice-agent: policy generation 7 in force (…)"
    applied = {}
    for line in open(f"{tmp}/in-force.log"):
        node, stamp = line.split()[0], line.split()[1]
        t = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(stamp[19:])
        applied.setdefault(node, []).append(t)
    to_force = []
    for node, times in applied.items():
        for i, s0 in enumerate(swaps):
            s1 = swaps[i + 1] if i + 1 < len(swaps) else float("inf")
            later = [t for t in times if t >= s0]
            # a swap folded into the next reload has no "in force" line of its own before the next swap
            if later and later[0] < s1:
                to_force.append((node, round((later[0] - s0) * 1000, 1)))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    result = {
        "command": command,
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_1m_after": os.getloadavg()[0]},
        "load": {"rate_per_s": int(rate), "seconds_per_phase": seconds,
                 "connection": "new TCP connection per request (connect() hook, ztunnel, HBONE)"},
        "policy": {"rules_per_generation": 10010, "objects": after[0].get("objects"), "swaps": len(swaps)},
        "baseline": phase(base, seconds),
        "reloads": phase(rel, seconds),
        f"reloads_within_{int(window * 1000)}ms_after_a_swap": phase(near, seconds),
        "nodes": nodes,
        "rename_to_in_force_ms": {"count": len(to_force),
                                  "p50": pct([v for _, v in to_force], 50),
                                  "max": pct([v for _, v in to_force], 100),
                                  "samples": to_force},
        "metrics": open(f"{tmp}/metrics.txt").read().splitlines(),
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(f"{out_dir}/policy-reload.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    rows = [("baseline (no policy change)", result["baseline"]),
            (f"during {len(swaps)} reloads (whole phase)", result["reloads"]),
            (f"requests started < {int(window * 1000)} ms after a swap", result[f"reloads_within_{int(window * 1000)}ms_after_a_swap"])]
    md = [f"# Policy reload under load\n",
          f"Command: `{command}`  ",
          f"Machine: {cpu}, {os.cpu_count()} cores, kernel {platform.release()}; load average after the run "
          f"{os.getloadavg()[0]:.2f} (a machine shared with parallel builds)  ",
          f"Cluster: sluice-testbed, 2 nodes, sidecarless mesh; load/client (node0) → nginx in web/server "
          f"(node1), {rate} req/s for {seconds:g} s per phase, each request on a new TCP connection  ",
          f"Policies: {result['policy']['objects']} objects, 10 010 rules per generation, swapped "
          f"{len(swaps)} times with kubelet's `..data` rename, every unrelated rule changing each time\n",
          "| phase | sent | ok | failed | p50 ms | p99 ms | max ms |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for name, p in rows:
        md.append(f"| {name} | {p['sent']} | {p['ok']} | {p['failed']} | {p['latency_ms']['p50']} | "
                  f"{p['latency_ms']['p99']} | {p['latency_ms']['max']} |")
    md += ["", "| node | generation before → after | new generations | failed reloads | kernel policy entries (cluster) | ipcache entries |",
           "|---|---|---:|---:|---:|---:|"]
    for n in nodes:
        md.append(f"| {n['node']} | {n['generation_before']} → {n['generation_after']} (maps: {n['applied_generation_after']}) | "
                  f"{n['new_generations']} | {n['failed_reloads']} | {n['kernel_policy_entries']} | {n['ipcache_entries']} |")
    md += ["", f"Rename → \"policy generation N in force\" in the agent log (swaps with their own generation, "
           f"both nodes): {len(to_force)} of {2 * len(swaps)}, p50 {result['rename_to_in_force_ms']['p50']} ms, "
           f"max {result['rename_to_in_force_ms']['max']} ms. A swap that lands while the agent still compiles the "
           "previous one is folded into the next reload."]
    failures = {**result["baseline"]["failures"], **result["reloads"]["failures"]}
    if failures:
        md += ["", f"Failures: {json.dumps(failures)}"]
    with open(f"{out_dir}/policy-reload.md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    sys.exit(0 if result["baseline"]["failed"] == 0 and result["reloads"]["failed"] == 0 else 1)


if __name__ == "__main__":
    main()
