#!/usr/bin/env bash
# tools/gpu_check.sh — checks the CUDA backend on a machine with an NVIDIA GPU (the lent
# device machine): builds llmint8 with -Dcuda=enabled, runs the test suite (test_cuda
# included, and test_cuda again under compute-sanitizer), compares CPU and GPU end to end
# on the demo model, runs `llmint8 bench --device cuda` for two model shapes, and ends
# with a short table. Full logs are in build-gpu/logs; under the device tool, the table
# and a tarball of the logs are also written to $OUT, which it sends back.
#
#   here, once:   tools/fetch_gpu_debs.sh     (cJSON, PCRE2, pkg-config as .deb files)
#   device tool:  run(command="tools/gpu_check.sh", carry=[".debs"], timeout_s=600)
#
# The device allows 10 minutes per command, so the steps can be run separately (the build
# folder build-gpu/ is kept between calls while the machine stays warm):
#   tools/gpu_check.sh [all|build|test|e2e|bench]...     (default: all)
# Environment: GPU_ARCH (default "80;90"), BENCH_SHAPES (default "opt-6.7b opt-13b"),
#              BENCH_TIMEOUT seconds per shape (default 200), SKIP_SANITIZER=1.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
B=$ROOT/build-gpu
LOG=$B/logs
rm -rf "$LOG"
mkdir -p "$LOG"
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(all)
want() { local s; for s in "${steps[@]}"; do [[ $s == all || $s == "$1" ]] && return 0; done; return 1; }

ROWS=()
gpu_test() { # label, program, arguments...
    local label=$1 log=$LOG/$(echo "$1" | tr ' ' '_').log rc
    shift
    "$@" >"$log" 2>&1
    rc=$?
    case $rc in
        0) row "$label" "ok" "$(tail -1 "$log")" ;;
        77) row "$label" "SKIPPED" "$(tail -1 "$log")"; status=1 ;;
        *) row "$label" "FAILED" "$(grep -m3 FAIL "$log" | tr '\n' ' ' | cut -c1-300)"; status=1 ;;
    esac
}
row() { ROWS+=("$(printf '%-34s %-8s %s' "$1" "$2" "$3")"); echo "== $1: $2 $3"; }
table() {
    {
        echo
        printf '%-34s %-8s %s\n' "check" "result" "detail"
        printf '%-34s %-8s %s\n' "-----" "------" "------"
        printf '%s\n' "${ROWS[@]}"
    } | tee "$LOG/summary.txt"
    echo "(logs: $LOG)"
    if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then # the device tool returns at most 8 files
        cp "$LOG/summary.txt" "$OUT/summary.txt"
        tar czf "$OUT/gpu-logs.tar.gz" -C "$B" logs
    fi
}

# ---- the libraries the image lacks, from .debs/ -----------------------------------------
deps_env() {
    export PATH="/usr/local/cuda/bin:$PATH"
    if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libcjson libpcre2-8 2>/dev/null; then
        return 0
    fi
    if ! ls .debs/*.deb >/dev/null 2>&1; then
        echo "gpu_check: cJSON/PCRE2 are missing and there is no .debs/ folder: run tools/fetch_gpu_debs.sh" \
             "on the development machine and carry .debs" >&2
        return 1
    fi
    local prefix=/tmp/llmint8-deps
    rm -rf "$prefix"
    mkdir -p "$prefix/pc" "$prefix/bin"
    local f
    for f in .debs/*.deb; do dpkg -x "$f" "$prefix" || return 1; done
    local lib=$prefix/usr/lib/x86_64-linux-gnu
    # the .pc files name /usr: point them at the unpacked tree
    for f in libcjson libpcre2-8; do
        sed -e "s|=/usr|=$prefix/usr|" "$lib/pkgconfig/$f.pc" >"$prefix/pc/$f.pc" || return 1
    done
    export PKG_CONFIG_PATH=$prefix/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
    export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    if ! command -v pkg-config >/dev/null 2>&1; then
        ln -sf "$prefix/usr/bin/pkgconf" "$prefix/bin/pkg-config"
        export PATH=$prefix/bin:$PATH
    fi
    pkg-config --exists libcjson libpcre2-8
}

if ! deps_env; then
    row "dependencies" "FAILED" "see the message above"
    table
    exit 1
fi
status=0

if command -v nvidia-smi >/dev/null 2>&1; then
    row "gpu" "ok" "$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
else
    row "gpu" "?" "nvidia-smi not found"
fi

# ---- build -------------------------------------------------------------------------------
if want build || [[ ! -x $B/llmint8 ]]; then
    t0=$SECONDS
    if [[ -f $B/build.ninja ]]; then
        meson setup --reconfigure "$B" -Dcuda=enabled -Dgpu_arch="${GPU_ARCH:-80;90}" >"$LOG/setup.log" 2>&1
    else
        meson setup "$B" -Dcuda=enabled -Dgpu_arch="${GPU_ARCH:-80;90}" -Dbuildtype=release >"$LOG/setup.log" 2>&1
    fi
    if [[ $? -eq 0 ]] && ninja -C "$B" >"$LOG/build.log" 2>&1; then
        row "build (-Dcuda=enabled)" "ok" "$((SECONDS - t0)) s, $(grep -c -i 'warning' "$LOG/build.log") warning lines"
    else
        row "build (-Dcuda=enabled)" "FAILED" "$(tail -q -n 3 "$LOG/setup.log" "$LOG/build.log" 2>/dev/null | tr '\n' ' ' | cut -c1-200)"
        table
        exit 1
    fi
    "$B/llmint8" --version >"$LOG/version.txt" 2>&1
fi

# ---- tests -------------------------------------------------------------------------------
if want test; then
    t0=$SECONDS
    meson test -C "$B" --print-errorlogs --num-processes 4 >"$LOG/meson-test.log" 2>&1
    rc=$?
    summary=$(grep -E '^(Ok|Fail|Skipped|Timeout):' "$LOG/meson-test.log" | tr -s ' \n' ' ')
    if [[ $rc -eq 0 ]]; then row "meson test" "ok" "$summary($((SECONDS - t0)) s)"
    else row "meson test" "FAILED" "$summary"; status=1; fi

    # the backend op by op, then the fixtures (Hugging Face goldens) on the GPU, as the meson
    # tests cuda and fixtures-cuda run them; a skip (77) is a failure on a GPU machine
    gpu_test "test_cuda" "$B/tests/test_cuda"
    gpu_test "test_fixtures cuda" "$B/tests/test_fixtures" cuda

    if [[ ${SKIP_SANITIZER:-0} != 1 ]] && command -v compute-sanitizer >/dev/null 2>&1; then
        # every op (test_cuda) under memcheck and racecheck; whole models (the fixtures) under memcheck
        for run in "memcheck test_cuda" "racecheck test_cuda" "memcheck test_fixtures cuda"; do
            set -- $run
            tool=$1; shift
            name=$(echo "$run" | tr ' ' '-')
            compute-sanitizer --tool $tool --error-exitcode 99 "$B/tests/$1" "${@:2}" >"$LOG/sanitizer-$name.log" 2>&1
            rc=$?
            detail=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/sanitizer-$name.log" | tail -1)
            if [[ $rc -eq 0 ]]; then row "compute-sanitizer $run" "ok" "$detail"
            else row "compute-sanitizer $run" "FAILED" "exit $rc: $detail"; status=1; fi
        done
    fi
fi

# ---- end to end: the demo model on CPU and GPU ------------------------------------------
json_field() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])" 2>/dev/null; }
if want e2e; then
    model=models/opt-gutenberg-7m
    text=tests/data/eval/wiki.test.raw
    for prec in fp16 int8; do
        declare -A ppl=()
        for dev in cpu cuda; do
            "$B/llmint8" ppl "$model" -f "$text" --ctx 256 --max-tokens 8192 --precision $prec --device $dev --json \
                >"$LOG/ppl-$prec-$dev.json" 2>"$LOG/ppl-$prec-$dev.err"
            ppl[$dev]=$(json_field ppl <"$LOG/ppl-$prec-$dev.json")
        done
        if [[ -n ${ppl[cpu]} && -n ${ppl[cuda]} ]]; then
            rel=$(python3 -c "a,b=${ppl[cpu]},${ppl[cuda]}; print(f'{abs(a-b)/a:.2e}')")
            ok=$(python3 -c "print('ok' if abs(${ppl[cpu]}-${ppl[cuda]})/${ppl[cpu]} < 2e-3 else 'DIFFERS')")
            [[ $ok == ok ]] || status=1
            row "ppl $prec (8192 tokens)" "$ok" "cpu ${ppl[cpu]}  cuda ${ppl[cuda]}  rel $rel"
        else
            row "ppl $prec (8192 tokens)" "FAILED" "$(tail -q -n 1 "$LOG/ppl-$prec-cpu.err" "$LOG/ppl-$prec-cuda.err" | tr '\n' ' ' | cut -c1-200)"
            status=1
        fi
    done
    prompt="It was a dark and stormy night"
    for prec in fp16 int8; do
        for dev in cpu cuda; do
            "$B/llmint8" generate "$model" -p "$prompt" -n 48 --greedy --ignore-eos --print-ids --precision $prec \
                --device $dev >"$LOG/gen-$prec-$dev.txt" 2>"$LOG/gen-$prec-$dev.err"
        done
        same=$(python3 - "$LOG/gen-$prec-cpu.txt" "$LOG/gen-$prec-cuda.txt" <<'PY'
import sys
a, b = (open(p).read().split() for p in sys.argv[1:3])
n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print(f"{n}/{max(len(a), len(b))} leading ids equal")
PY
)
        if [[ -s $LOG/gen-$prec-cpu.txt && -s $LOG/gen-$prec-cuda.txt ]]; then
            row "greedy 48 tokens $prec" "info" "$same (near-ties may diverge)"
        else
            row "greedy 48 tokens $prec" "FAILED" "$(tail -q -n 1 "$LOG/gen-$prec-cpu.err" "$LOG/gen-$prec-cuda.err" | tr '\n' ' ' | cut -c1-200)"
            status=1
        fi
    done
    # sampling on the device: top-k + top-p + penalty (top_candidates, penalize), and top-p
    # alone at a high temperature (a nucleus wider than the candidates: the download path)
    for cfg in "top-k+p|--top-k 40 --top-p 0.95 --repetition-penalty 1.2" "wide top-p|--top-k 0 --top-p 0.999 --temperature 3"; do
        label="sampled generate, ${cfg%%|*}"
        "$B/llmint8" generate "$model" -p "$prompt" -n 32 --seed 11 --device cuda ${cfg#*|} \
            >"$LOG/gen-sampled.txt" 2>"$LOG/gen-sampled.err"
        rc=$?
        if [[ $rc -eq 0 && -s $LOG/gen-sampled.txt ]]; then row "$label" "ok" "$(tail -1 "$LOG/gen-sampled.err" | cut -c1-120)"
        else row "$label" "FAILED" "exit $rc: $(tail -1 "$LOG/gen-sampled.err" | cut -c1-200)"; status=1; fi
    done
fi

# ---- bench ------------------------------------------------------------------------------
if want bench; then
    if ! "$B/llmint8" bench --help >/dev/null 2>&1; then
        row "bench" "absent" "llmint8 has no bench command"
    else
        for shape in ${BENCH_SHAPES:-opt-6.7b opt-13b}; do
            t0=$SECONDS
            timeout "${BENCH_TIMEOUT:-200}" "$B/llmint8" bench --device cuda --shape "$shape" \
                >"$LOG/bench-$shape.txt" 2>&1
            rc=$?
            if [[ $rc -eq 0 ]]; then row "bench $shape" "ok" "$((SECONDS - t0)) s (tables below)"
            elif [[ $rc -eq 124 ]]; then row "bench $shape" "TIMEOUT" "after ${BENCH_TIMEOUT:-200} s"; status=1
            else row "bench $shape" "FAILED" "exit $rc: $(tail -n 1 "$LOG/bench-$shape.txt" | cut -c1-200)"; status=1; fi
        done
        for shape in ${BENCH_SHAPES:-opt-6.7b opt-13b}; do
            [[ -s $LOG/bench-$shape.txt ]] && { echo; echo "---- bench $shape ----"; tail -40 "$LOG/bench-$shape.txt"; }
        done
    fi
fi

table
exit $status
