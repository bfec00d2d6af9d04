"""Turns sluice-tokenizer-bench JSON (stdin) into bench/results/tokenizer.{json,md}."""
import json
import sys

result = json.load(sys.stdin)
result["machine"] = sys.argv[1]
result["command"] = "bench/tokenizer/run.sh"
with open("bench/results/tokenizer.json", "w") as out:
    json.dump(result, out, indent=2)
with open("bench/results/tokenizer.md", "w") as md:
    md.write("# Tokenizer throughput (one core)\n\n")
    md.write(f"Machine: {result['machine']}  \n")
    md.write(f"Command: `{result['command']}` (pinned with `taskset -c 0`; the machine's two "
             "cores were shared with other builds, so CPU-time MB/s is the comparable figure)\n\n")
    md.write("| corpus | bytes | encoding | MB/s (wall) | MB/s (CPU time) | tokens |\n")
    md.write("|---|---|---|---|---|---|\n")
    labels = {"mixed": "mixed: repo code + prose, CJK/kana sentences, emoji, whitespace runs",
              "long_word": "worst case: one 40,000-char CJK word"}
    for key, label in labels.items():
        for e in result[key]["results"]:
            md.write(f"| {label} | {result[key]['corpus_bytes']} | {e['encoding']} | "
                     f"{e['mb_per_s']} | {e['mb_per_cpu_s']} | {e['tokens_per_round']} |\n")
