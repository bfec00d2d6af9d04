#!/usr/bin/env bash
# Measures tokenizer throughput on one core (taskset -c 0) over a mixed corpus and a worst case.
# Writes bench/results/tokenizer.{json,md}. Usage: bench/tokenizer/run.sh [build dir]
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Mixed corpus: real code and prose, CJK and kana in sentences, emoji, whitespace runs.
{
    git ls-files '*.cpp' '*.h' '*.md' | head -400 | xargs cat
    python3 - <<'PY'
import random
random.seed(7)
def sentences(lo, hi, n):
    return "".join("".join(chr(random.randint(lo, hi)) for _ in range(random.randint(8, 40)))
                   + random.choice(["。", "、", "！", "？", "，", "\n"]) for _ in range(n))
print(sentences(0x4E00, 0x9FFF, 1500), sentences(0x3041, 0x30FF, 800), sep="\n")
print(" ".join(chr(random.randint(0x1F600, 0x1F64F)) * random.randint(1, 3) for _ in range(5000)))
print("".join(random.choice([" ", "  ", "\t", "\n", "\n\n", "    "]) + "word" for _ in range(20000)))
PY
} >"$tmp/mixed.txt"
# Worst case on purpose: one 40,000-character word of random CJK (a single pre-token piece).
python3 -c 'import random; random.seed(7); print("".join(chr(random.randint(0x4E00, 0x9FFF)) for _ in range(40000)), end="")' >"$tmp/long-word.txt"
mixed=$(taskset -c 0 "$BUILD/bin/sluice-tokenizer-bench" "$tmp/mixed.txt" 5)
long_word=$(taskset -c 0 "$BUILD/bin/sluice-tokenizer-bench" "$tmp/long-word.txt" 2)
result="{\"mixed\": $mixed, \"long_word\": $long_word}"
mkdir -p bench/results
machine="$(uname -srm), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "$result" | python3 bench/tokenizer/report.py "$machine"
cat bench/results/tokenizer.md
