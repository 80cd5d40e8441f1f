#!/usr/bin/env python3
"""Times two or more llmint8 binaries side by side: `bench --model-only --json` with the same
arguments, the binaries taking turns round after round (so a change in the machine's load hits
them alike), then the median of each figure and its ratio to the first binary's.

    tools/compare_builds.py --rounds 7 OLD/llmint8 NEW/llmint8 -- --shape opt-125m

Everything after `--` goes to `bench --model-only`. Use it for before/after figures of a change
(build the old commit in a `git worktree`); record what it prints in docs/PERFORMANCE.md with
the machine and the date. It asserts nothing: it is a measuring tool, not a test.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

FIGURES = ("prompt_tokens_per_second", "ppl_tokens_per_second", "decode_tokens_per_second")
SHORT = {"prompt_tokens_per_second": "prompt", "ppl_tokens_per_second": "ppl",
         "decode_tokens_per_second": "decode"}


def run_once(binary, bench_args):
    cmd = [binary, "bench", "--model-only", "--json", *bench_args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        sys.exit(f"compare_builds: {' '.join(cmd)} exited {out.returncode}:\n{out.stderr}")
    report = json.loads(out.stdout)
    figures = {}
    for mode in ("fp16", "int8"):
        for name in FIGURES:
            value = report.get("model", {}).get(mode, {}).get(name)
            if isinstance(value, (int, float)):
                figures[f"{mode} {SHORT[name]}"] = float(value)
    return figures, report.get("cpu_busy_before")


def main():
    argv = sys.argv[1:]
    bench_args = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("binaries", nargs="+")
    args = ap.parse_args(argv)
    if len(args.binaries) < 2:
        ap.error("give at least two binaries")
    for b in args.binaries:
        if not os.access(b, os.X_OK):
            ap.error(f"{b}: not an executable")

    samples = {b: {} for b in args.binaries}
    busy = []
    for r in range(args.rounds):
        for b in args.binaries:
            figures, busy_before = run_once(b, bench_args)
            busy.append(busy_before)
            for k, v in figures.items():
                samples[b].setdefault(k, []).append(v)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    base = args.binaries[0]
    keys = [k for k in samples[base] if all(k in samples[b] for b in args.binaries)]
    print(f"bench --model-only {' '.join(bench_args)}: medians of {args.rounds} rounds, tokens/s "
          f"(ratio to {base})")
    print("| figure | " + " | ".join(args.binaries) + " |")
    print("|---|" + "---:|" * len(args.binaries))
    for k in keys:
        base_median = statistics.median(samples[base][k])
        cells = []
        for b in args.binaries:
            m = statistics.median(samples[b][k])
            cells.append(f"{m:.1f}" if b == base else f"{m:.1f} ({m / base_median:.3f})")
        print(f"| {k} | " + " | ".join(cells) + " |")
    seen = [x for x in busy if isinstance(x, (int, float))]
    if seen:
        print(f"cpu_busy_before over the runs: min {min(seen):.2f}, max {max(seen):.2f}")


if __name__ == "__main__":
    main()
