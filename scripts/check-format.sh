#!/usr/bin/env bash
# Fails when a tracked C/C++ source is not clang-format clean (.clang-format at the root).
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cpp' '*.hpp' 2>/dev/null || true)
if ((${#files[@]} == 0)); then
    mapfile -t files < <(find agent bpf common policies tests waypoint ztunnel bench \
        \( -name '*.c' -o -name '*.h' -o -name '*.cpp' \) 2>/dev/null)
fi
clang-format --dry-run -Werror "${files[@]}"
