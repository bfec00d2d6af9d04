"""PNG plots of bench/results/mesh.json (bench/mesh/run.sh runs it with /usr/bin/python3, which
has Debian's python3-matplotlib):
  mesh-modes.png   per mode: added latency at 1 connection and at the fixed rates (p50/p90/p99),
                   requests/s at 32 connections, iperf3 cross node and same node;
  mesh-memory.png  the proxies' total memory (shared pages once) and RSS sum as pods per node
                   grow, per mesh.
Usage: plot.py mesh.json out-dir
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

result = json.load(open(sys.argv[1]))
out = sys.argv[2]
modes = result["modes"]
names = list(modes)
stamp = f"{result['machine']}\n{result['command']}"


def bars(ax, values, title, unit):
    ax.bar(range(len(names)), values, color="#4a7ab5")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    for i, v in enumerate(values):
        ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.3g}", (i, v), ha="center", va="bottom",
                    fontsize=7)


rates = list(next(iter(modes.values()))["fixed_rate"])
fig, axes = plt.subplots(2, 2 + len(rates) // 2, figsize=(5 * (2 + len(rates) // 2), 8))
axes = axes.flatten()
panels = [("added latency, 1 connection (wrk)", "ms",
           {q: [modes[n][f"added_{q}_ms_c1"] for n in names] for q in ("p50", "p99")})]
for rate in rates:
    panels.append((f"added latency at {rate} req/s (open loop)", "ms",
                   {q: [modes[n]["fixed_rate"][rate][f"added_{q}_ms"] for n in names]
                    for q in ("p50", "p90", "p99")}))
for ax, (title, unit, series) in zip(axes, panels):
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(names))], values, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30, ha="right",
                  fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
rest = axes[len(panels):]
bars(rest[0], [modes[n]["requests_per_s_c32"] for n in names], "requests/s, 32 connections", "req/s")
bars(rest[1], [modes[n]["iperf3_gbit_per_s"] for n in names], "iperf3 cross node", "Gbit/s")
if len(rest) > 2:
    bars(rest[2], [modes[n]["iperf3_same_node_gbit_per_s"] for n in names], "iperf3 same node",
         "Gbit/s")
for ax in rest[3:]:
    ax.axis("off")
fig.suptitle(f"Mesh data path by mode\n{stamp}", fontsize=9)
fig.tight_layout()
fig.savefig(f"{out}/mesh-modes.png", dpi=90)

fig, ax = plt.subplots(figsize=(8, 5))
for mesh, rows in result["memory_by_pods"].items():
    pods = [r["pods"] for r in rows]
    line = ax.plot(pods, [r["total_kib"] / 1024 for r in rows], marker="o", label=f"{mesh} total")
    ax.plot(pods, [r["rss_kib"] / 1024 for r in rows], linestyle="--", marker=".",
            color=line[0].get_color(), label=f"{mesh} RSS sum")
ax.set_xlabel("pods per node")
ax.set_ylabel("MiB over the proxy processes")
ax.set_title(f"Proxy memory as pods per node grow\n{stamp}", fontsize=9)
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
fig.tight_layout()
fig.savefig(f"{out}/mesh-memory.png", dpi=90)
