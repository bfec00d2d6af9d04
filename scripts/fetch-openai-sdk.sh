#!/usr/bin/env bash
# Installs the official `openai` npm SDK (pinned; 6.x is the last line that runs on the machine's
# Node.js 20) into a directory outside the source tree, for the waypoint's SDK client test.
#   $1 / SLUICE_OPENAI_SDK_DIR   output directory (default: build/openai-sdk)
# Idempotent: does nothing when that version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
OPENAI_VERSION=6.30.1
OUT=${1:-${SLUICE_OPENAI_SDK_DIR:-build/openai-sdk}}
PKG="$OUT/node_modules/openai/package.json"

if [[ -f "$PKG" ]] && grep -q "\"version\": \"$OPENAI_VERSION\"" "$PKG"; then
    exit 0
fi
command -v npm >/dev/null || { echo "fetch-openai-sdk: npm is missing (scripts/install-deps.sh)" >&2; exit 1; }
mkdir -p "$OUT"
echo '{"private": true}' >"$OUT/package.json"
timeout 300 npm install --prefix "$OUT" --no-audit --no-fund --silent "openai@$OPENAI_VERSION"
echo "fetch-openai-sdk: openai $OPENAI_VERSION in $OUT" >&2
