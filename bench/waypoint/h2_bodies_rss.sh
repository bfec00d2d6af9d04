#!/usr/bin/env bash
# Peak RSS of sluice-waypoint while one h2c connection (h2load -c 1 -m 100) sends 100 request
# bodies of 4 MiB at once to a pass-through path, with the connection's body budget
# (limits.maxConnectionBodyBytes) at its default 16 MiB and at 2 GiB (no bound in effect).
# Backend: the test emulator (tests/waypoint/openai_emulator.py). Loopback only.
# Usage: bench/waypoint/h2_bodies_rss.sh [build dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
# shellcheck source=bench/waypoint/lib.sh
source bench/waypoint/lib.sh

python3 -c 'import json; print(json.dumps({"model": "x", "pad": "x" * (4 << 20)}))' >"$tmp/body.json"
/usr/bin/python3 tests/waypoint/openai_emulator.py --port 0 --max-seconds 300 >"$tmp/emu.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q PORT "$tmp/emu.log" && break; sleep 0.05; done
EMU_PORT=$(awk '/PORT/{print $2}' "$tmp/emu.log")

for budget in 16777216 2147483647; do
    port=$(free_port)
    cat >"$tmp/wp.yaml" <<YAML
kind: Waypoint
spec:
  limits: {maxConnectionBodyBytes: $budget}
  pools: [{name: main, endpoints: ["127.0.0.1:$EMU_PORT"]}]
---
kind: ModelRoute
metadata: {name: all}
spec: {models: ["*"], timeout: 30s, backends: [{pool: main}]}
YAML
    "$BUILD/bin/sluice-waypoint" --config "$tmp/wp.yaml" --listen "127.0.0.1:$port" \
        --metrics-listen 127.0.0.1:0 --ready-listen 127.0.0.1:0 >"$tmp/wp.log" 2>&1 &
    wp=$!
    pids+=("$wp")
    wait_port "$port"
    idle=$(awk '/VmRSS/{print $2}' "/proc/$wp/status")
    ok=$(timeout 120 h2load -n 100 -c 1 -m 100 -d "$tmp/body.json" \
        -H 'content-type: application/json' "http://127.0.0.1:$port/v1/files" |
        awk '/^status codes/{print $3}')
    peak=$(awk '/VmHWM/{print $2}' "/proc/$wp/status")
    echo "budget $budget B: ${ok} 2xx of 100, idle RSS $((idle / 1024)) MiB, peak RSS $((peak / 1024)) MiB"
    kill "$wp"
    wait "$wp" 2>/dev/null || true
done
