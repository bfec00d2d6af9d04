#!/usr/bin/env bash
# Builds the libFuzzer policy parser target with clang in its own build directory and runs it for
# a bounded time over the seed corpus (tests/fuzz/corpus/policy + policies/examples).
#   scripts/fuzz-policies.sh [seconds=60]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=build-fuzz
CC=clang CXX=clang++ cmake -G Ninja -B "$build" -S . -DSLUICE_FUZZ=ON >/dev/null
ninja -C "$build" -j2 policy_parser_fuzz
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mapfile -t seeds < <(find tests/fuzz/corpus/policy policies/examples -name '*.yaml')
mkdir -p "$work/corpus"
cp "${seeds[@]/#/}" "$work/corpus/" 2>/dev/null || true
for s in "${seeds[@]}"; do cp "$s" "$work/corpus/$(echo "$s" | tr / _)"; done
"$build/bin/policy_parser_fuzz" -max_total_time="$seconds" -max_len=16384 -timeout=10 \
    -rss_limit_mb=2048 "$work/corpus"
