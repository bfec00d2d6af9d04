#!/usr/bin/env bash
# Installs the npm `tiktoken` package (pinned) into a cache directory outside the source tree and
# writes its BPE rank tables as `<encoding>.tiktoken` files (one "base64-token rank" per line).
# The tokenizer's exactness test also runs this same npm package as its reference.
#   $1 / SLUICE_TOKENIZER_DIR   output directory (default: build/tokenizer-data)
# Idempotent: does nothing when the rank files and the package are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
TIKTOKEN_VERSION=1.0.22
OUT=${1:-${SLUICE_TOKENIZER_DIR:-build/tokenizer-data}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PKG="$OUT/npm/node_modules/tiktoken"

if [[ -f "$OUT/cl100k_base.tiktoken" && -f "$OUT/o200k_base.tiktoken" && -f "$PKG/package.json" ]] &&
    grep -q "\"version\": \"$TIKTOKEN_VERSION\"" "$PKG/package.json"; then
    exit 0
fi

command -v npm >/dev/null || { echo "fetch-tokenizer-data: npm is missing (scripts/install-deps.sh)" >&2; exit 1; }
mkdir -p "$OUT/npm"
echo '{"private": true}' >"$OUT/npm/package.json"
timeout 300 npm install --prefix "$OUT/npm" --no-audit --no-fund --silent "tiktoken@$TIKTOKEN_VERSION"

# The package ships each table as one string: base64 tokens with consecutive ranks, where
# "! <n>" sets the rank of the next token. Write the plain tiktoken format instead.
node - "$PKG" "$OUT" <<'JS'
const [pkg, out] = process.argv.slice(2);
const fs = require("fs");
for (const name of ["cl100k_base", "o200k_base"]) {
    const table = require(`${pkg}/encoders/${name}.json`);
    const parts = table.bpe_ranks.split(" ");
    const lines = [];
    let rank = 0;
    for (let i = 0; i < parts.length; i++) {
        if (parts[i] === "!") { rank = Number(parts[++i]); continue; }
        lines.push(`${parts[i]} ${rank++}`);
    }
    const tmp = `${out}/${name}.tiktoken.tmp`;
    fs.writeFileSync(tmp, lines.join("\n") + "\n");
    fs.renameSync(tmp, `${out}/${name}.tiktoken`);
    console.error(`fetch-tokenizer-data: ${name}: ${lines.length} ranks`);
}
JS
