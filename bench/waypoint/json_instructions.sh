#!/usr/bin/env bash
# User-space instructions per operation of each sluice-bench-waypoint-json case, with callgrind:
# (instructions at 2N iterations - at N) / N, so start-up and warm-up cancel out.
#   bench/waypoint/json_instructions.sh [bench binary] [N]
set -euo pipefail
bin=${1:-build/bin/sluice-bench-waypoint-json}
n=${2:-2000}
collected() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for ((i = 0; ; i++)); do
    name=$("$bin" 1 "$i" | sed 's/ *[0-9.]* ns\/op$//') || break
    at_n=$(collected "$n" "$i")
    at_2n=$(collected $((2 * n)) "$i")
    printf '%-36s %8d instr/op\n' "$name" $(((at_2n - at_n) / n))
done
