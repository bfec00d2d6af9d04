#!/usr/bin/env python3
"""bench/reload report: bench/reload/report.py TMPDIR OUTDIR COMMAND RATE."""
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


def phase(rows):
    seconds = (max(r[0] for r in rows) - min(r[0] for r in rows)) if len(rows) > 1 else 0
    ok = [r for r in rows if r[3] == "ok"]
    failures = {}
    for r in rows:
        if r[3] != "ok":
            failures[r[3]] = failures.get(r[3], 0) + 1
    lat = [r[1] for r in ok]
    return {"sent": len(rows), "ok": len(ok), "failed": len(rows) - len(ok), "failures": failures,
            "seconds": round(seconds, 2), "rate_per_s": round(len(rows) / seconds, 1) if seconds else None,
            "latency_ms": {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": pct(lat, 100),
                           "mean": round(statistics.mean(lat), 3) if lat else None},
            "started_late_ms_p99": pct([r[2] for r in rows], 99)}


def main():
    tmp, out_dir, command, rate = sys.argv[1:5]
    base, rel = samples(f"{tmp}/baseline.samples"), samples(f"{tmp}/reloads.samples")
    # "generation rename_time in_force_time": in force = both agents' maps hold it (0: never)
    swaps = [tuple(float(x) for x in l.split()[1:3]) for l in open(f"{tmp}/swaps.log")]
    during = [r for r in rel if any(s0 <= r[0] < (s1 or float("inf")) for s0, s1 in swaps)]
    to_force = [round((s1 - s0) * 1000, 1) for s0, s1 in swaps if s1]
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
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    result = {
        "command": command,
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                    "loadavg_1m_after": os.getloadavg()[0]},
        "load": {"rate_per_s": int(rate),
                 "connection": "new TCP connection per request (connect() hook, ztunnel, HBONE)"},
        "policy": {"rules_per_generation": 10010, "objects": after[0].get("objects"), "swaps": len(swaps)},
        "baseline": phase(base),
        "reloads": phase(rel),
        "during_a_reload": phase(during),
        "nodes": nodes,
        "rename_to_in_force_ms": {"applied": len(to_force), "p50": pct(to_force, 50),
                                  "max": pct(to_force, 100), "each": to_force},
        "metrics": open(f"{tmp}/metrics.txt").read().splitlines(),
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(f"{out_dir}/policy-reload.json", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    rows = [("baseline (no policy change)", result["baseline"]),
            (f"reload phase ({len(swaps)} swaps, whole phase)", result["reloads"]),
            ("started between a rename and both agents having it in their maps", result["during_a_reload"])]
    md = [f"# Policy reload under load\n",
          f"Command: `{command}`  ",
          f"Machine: {cpu}, {os.cpu_count()} cores, kernel {platform.release()}; load average after the run "
          f"{os.getloadavg()[0]:.2f} (a machine shared with parallel builds)  ",
          f"Cluster: sluice-testbed, 2 nodes, sidecarless mesh; load/client (node0) → nginx in web/server "
          f"(node1), {rate} req/s, each request on a new TCP connection  ",
          f"Policies: {result['policy']['objects']} objects, 10 010 rules per generation, swapped "
          f"{len(swaps)} times with kubelet's `..data` rename, every unrelated rule changing each time\n",
          "| phase | seconds | sent | ok | failed | p50 ms | p99 ms | max ms |",
          "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, p in rows:
        md.append(f"| {name} | {p['seconds']} | {p['sent']} | {p['ok']} | {p['failed']} | {p['latency_ms']['p50']} | "
                  f"{p['latency_ms']['p99']} | {p['latency_ms']['max']} |")
    md += ["", "| node | generation before → after | new generations | failed reloads | kernel policy entries (cluster) | ipcache entries |",
           "|---|---|---:|---:|---:|---:|"]
    for n in nodes:
        md.append(f"| {n['node']} | {n['generation_before']} → {n['generation_after']} (maps: {n['applied_generation_after']}) | "
                  f"{n['new_generations']} | {n['failed_reloads']} | {n['kernel_policy_entries']} | {n['ipcache_entries']} |")
    md += ["", f"Rename → generation in both agents' maps (policy-status.json, polled every 10 ms): "
           f"{len(to_force)} of {len(swaps)} swaps applied, p50 {result['rename_to_in_force_ms']['p50']} ms, "
           f"max {result['rename_to_in_force_ms']['max']} ms (each: {to_force})."]
    failures = {**result["baseline"]["failures"], **result["reloads"]["failures"]}
    if failures:
        md += ["", f"Failures: {json.dumps(failures)}"]
    with open(f"{out_dir}/policy-reload.md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    sys.exit(0 if result["baseline"]["failed"] == 0 and result["reloads"]["failed"] == 0 else 1)


if __name__ == "__main__":
    main()
