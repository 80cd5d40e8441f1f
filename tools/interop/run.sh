#!/usr/bin/env bash
# tools/interop/run.sh — llmint8 against transformers + bitsandbytes on the CPU (docs/TESTING.md,
# "Interop"). Needs a build (tools/build.sh) and PyPI.
#
#   tools/interop/run.sh [--check-only] [--shape NAME] [--layers N] [--versions "4.57.6 5.25.0"]
#
# 1. For each transformers version: a virtualenv .venv-interop-<major> (tools/interop/setup.sh),
#    (in $INTEROP_VENV_DIR, default the repository root; reused when it has the pinned versions),
#    then `interop.py check`: convert -> from_pretrained and load_in_8bit + save_pretrained ->
#    llmint8, logits, perplexity and greedy ids compared (report in build-interop/).
# 2. Unless --check-only: the synthetic checkpoint of `llmint8 bench --shape NAME` (default
#    opt-125m) written to disk (synth_checkpoint.py), converted to int8 by llmint8, and timed in
#    the same run: transformers + bitsandbytes (interop.py bench, newest version) and llmint8 generate on that
#    same int8 directory, then `llmint8 bench` on the same shape for its own figures.
#
# Exit status: 0 all comparisons within tolerance; 1 a mismatch (or llmint8 failed); 77 skipped
# (no build, or nothing could be installed from PyPI), after a line "interop: skipped (why)".
set -uo pipefail
cd "$(dirname "$0")/../.."
check_only=0 shape=opt-125m layers="" versions="${INTEROP_VERSIONS:-4.57.6 5.25.0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --check-only) check_only=1 ;;
    --shape) shape=$2; shift ;;
    --layers) layers=$2; shift ;;
    --versions) versions=$2; shift ;;
    *) echo "usage: $0 [--check-only] [--shape NAME] [--layers N] [--versions \"V1 V2\"]" >&2; exit 2 ;;
  esac
  shift
done
build=${BUILD_DIR:-build}
out=build-interop
threads=$(nproc)
venv_dir=${INTEROP_VENV_DIR:-.}
install_timeout=${INTEROP_INSTALL_TIMEOUT:-1200}   # seconds per virtualenv; past it: not checked
skip() { echo "interop: skipped ($*)"; exit 77; }

[[ -x $build/llmint8 && -f $build/libllmint8.a ]] || skip "no $build/llmint8 or $build/libllmint8.a: run tools/build.sh first"
mkdir -p "$out"
# The logits helper, against the library of the build (tools/interop/dump_logits.c).
cc -std=c11 -O2 -Wall -Wextra -Werror -D_GNU_SOURCE -Isrc tools/interop/dump_logits.c "$build/libllmint8.a" \
   -o "$out/dump_logits" $(pkg-config --libs libcjson libpcre2-8) -fopenmp -lm -lpthread \
   || { echo "interop: dump_logits did not build"; exit 1; }

status=0 venvs=()
for v in $versions; do
  venv=$venv_dir/.venv-interop-${v%%.*}
  if ! timeout "$install_timeout" tools/interop/setup.sh "$venv" "$v"; then
    echo "interop: transformers $v: install from PyPI failed or took over $install_timeout s, not checked"
    continue
  fi
  venvs+=("$venv")
  "$venv/bin/python" tools/interop/interop.py check --root . --llmint8 "$build/llmint8" --dump "$out/dump_logits" \
      --work "$out/work-$v" --report "$out/check-$v.json" --threads "$threads" || status=1
done
[[ ${#venvs[@]} -gt 0 ]] || skip "transformers + bitsandbytes could not be installed from PyPI"
[[ $check_only == 1 ]] && exit $status

# ---- timing: the same synthetic checkpoint, both sides, one run -----------------------------
fp16=$out/synth-$shape${layers:+-L$layers} int8=$out/synth-$shape${layers:+-L$layers}-int8
py=${venvs[-1]}/bin/python
if [[ ! -f $fp16/model.safetensors ]]; then
  $py tools/interop/synth_checkpoint.py "$fp16" --shape "$shape" ${layers:+--layers $layers} || exit 1
fi
"$build/llmint8" convert "$fp16" -o "$int8" --force >/dev/null || { echo "interop: llmint8 convert failed"; exit 1; }
$py - "$out/bench.ids" <<'PY'
import sys, numpy as np
np.savetxt(sys.argv[1], np.random.default_rng(42).integers(4, 1000, 160)[None], fmt="%d")
PY
timing=$out/timing-$shape.jsonl
: > "$timing"
# The newest transformers only (the bitsandbytes kernels, which take the time, are the same).
echo "interop: timing transformers + bitsandbytes (${venvs[-1]}) on $int8" >&2
$py tools/interop/interop.py bench --model "$int8" --ids "$out/bench.ids" --threads "$threads" \
    | sed 's/^/{"who": "transformers", "r": /; s/$/}/' >> "$timing" || status=1
echo "interop: timing llmint8 generate on $int8" >&2
$py tools/interop/interop.py time-llmint8 --llmint8 "$build/llmint8" --model "$int8" --ids "$out/bench.ids" \
    --threads "$threads" | sed 's/^/{"who": "llmint8 generate", "r": /; s/$/}/' >> "$timing" || status=1
echo "interop: llmint8 bench --shape $shape" >&2
"$build/llmint8" bench --shape "$shape" ${layers:+--layers $layers} --model-only --ppl-tokens 0 --json \
    --threads "$threads" --tmpdir "$out" | tr -d '\n' | sed 's/^/{"who": "llmint8 bench", "r": /; s/$/}\n/' >> "$timing" \
    || status=1
$py - "$timing" "$shape" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
mib = lambda b: f"{b / 2**20:.0f}"
print(f"\n| {sys.argv[2]} (synthetic), int8 LLM.int8() | prompt tok/s | decode tok/s | peak RSS, generation (MiB) | peak RSS, whole process (MiB) |")
print("|---|---:|---:|---:|---:|")
for row in rows:
    who, r = row["who"], row["r"]
    if who == "transformers":
        v = r["versions"]
        print(f"| transformers {v['transformers']} + bitsandbytes {v['bitsandbytes']}, int8 checkpoint | "
              f"{r['prompt_tokens_per_second']:.1f} | {r['decode_tokens_per_second']:.2f} | "
              f"{mib(r['peak_rss_generate_bytes'])} | {mib(max(r['peak_rss_load_bytes'], r['peak_rss_generate_bytes']))} |")
    elif who == "llmint8 generate":
        print(f"| llmint8 generate, same int8 checkpoint | {r['prompt_tokens_per_second']:.1f} | "
              f"{r['decode_tokens_per_second']:.2f} | | {mib(r['peak_rss_bytes'])} |")
    else:
        for k in ("int8", "fp16"):
            m = r["model"][k]
            what = "int8 (16-bit checkpoint quantized on load)" if k == "int8" else "fp16"
            print(f"| llmint8 bench, {what} | {m['prompt_tokens_per_second']:.1f} | "
                  f"{m['decode_tokens_per_second']:.2f} | {mib(m['peak_rss_generate_bytes'])} | "
                  f"{mib(max(m['peak_rss_load_bytes'], m['peak_rss_generate_bytes']))} |")
        print(f"\n(bench: cpu_busy_before {r['cpu_busy_before']}: other processes' share of the CPUs just before)")
PY
exit $status
