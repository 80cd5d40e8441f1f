#!/usr/bin/env bash
# fuzz.sh — build the libFuzzer harnesses (tests/fuzz/fuzz_*.c) with clang, AddressSanitizer
# and UndefinedBehaviorSanitizer, and run each one for a fixed time or number of executions.
#
#   tools/fuzz.sh [--seconds N] [--runs N] [--jobs J] [--build-only] [--build-dir DIR] [HARNESS...]
#
#   --seconds N   run each harness for N seconds (default 30 unless --runs is given)
#   --runs N      run each harness for N executions (with --seconds: whichever comes first)
#   --jobs J      run J harnesses at the same time (default 1)
#   --build-only  compile, do not run
#   --build-dir   objects, binaries, working corpora, logs and crash files (default build-fuzz)
#   HARNESS       e.g. fuzz_safetensors (default: every tests/fuzz/fuzz_*.c)
#
# Run from anywhere; paths are relative to the repository root. Each harness first re-runs
# the inputs of past findings, tests/fuzz/crashes/NAME-* (a regression test), then starts from
# its seed corpus tests/fuzz/corpus/NAME/ (read-only) plus the working corpus
# BUILD_DIR/corpus/NAME/ that earlier runs grew. Prints one line per harness with the
# number of executions; exits 1 if any harness found a crash, a sanitizer report, a leak
# or a timeout (the input is saved as BUILD_DIR/artifacts/NAME/crash-* and the log as
# BUILD_DIR/logs/NAME.log), 2 if the build failed.
#
# Environment: CC_FUZZ (default clang); FUZZ_EXTRA_CFLAGS, added to every compile (e.g.
# -fno-sanitize=pointer-overflow to fuzz on past a known finding; use a separate --build-dir,
# objects are not rebuilt when only the flags change).
#
# The library is compiled with clang whatever compiler the Meson build uses: libFuzzer
# needs clang's -fsanitize=fuzzer. Library sources are src/*.c and src/cpu/*.c except
# main.c, cmd_*.c, bench_*.c and pipeline_mpi.c (MPI's headers; nothing a harness reaches) (cli.c is
# included: the --ids reader lives there).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

seconds="" runs="" jobs=1 build_only=0 build_dir=build-fuzz
names=()
while (($#)); do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    --build-dir) build_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) names+=("${1%.c}"); shift ;;
  esac
done
[[ -z "$seconds" && -z "$runs" ]] && seconds=30
if ((${#names[@]} == 0)); then
  for f in tests/fuzz/fuzz_*.c; do names+=("$(basename "$f" .c)"); done
fi

CC=${CC_FUZZ:-clang}
if ! command -v "$CC" >/dev/null; then
  echo "fuzz.sh: $CC not found (Debian: apt-get install clang libclang-rt-dev)" >&2
  exit 2
fi
mkdir -p "$build_dir"/{obj,bin,corpus,artifacts,logs}

# ---- build ----------------------------------------------------------------------------
pkg_cflags=$(pkg-config --cflags libcjson libpcre2-8 libzip)
pkg_libs=$(pkg-config --libs libcjson libpcre2-8 libzip)
common=(-std=c11 -D_GNU_SOURCE -g -O1 -fno-omit-frame-pointer -Isrc $pkg_cflags
        -fsanitize=address,undefined -fno-sanitize-recover=all
        -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla -Wformat=2)
# shellcheck disable=SC2206
common+=(${FUZZ_EXTRA_CFLAGS:-})
lib_srcs=()
for f in src/*.c src/cpu/*.c; do
  case "$(basename "$f")" in main.c|cmd_*.c|bench_*.c|pipeline_mpi.c) ;; *) lib_srcs+=("$f") ;; esac
done

# Library objects carry coverage instrumentation (fuzzer-no-link); rebuilt when the source
# or any header is newer than the object. A source that does not compile is left out of the
# archive with a warning: the harnesses that need it then fail to link, the others run.
newest_header=$(ls -t src/*.h src/cpu/*.h 2>/dev/null | head -1)
obj_of() { echo "$build_dir/obj/$(echo "${1%.c}" | tr / _).o"; }
compile_lib() {
  "$CC" "${common[@]}" -fsanitize=fuzzer-no-link -c "$1" -o "$2.part" 2>"$2.err" && mv "$2.part" "$2" ||
    { rm -f "$2" "$2.part"; echo "fuzz.sh: warning: $1 does not compile with $CC:" >&2; head -20 "$2.err" >&2; }
}
pids=()
for src in "${lib_srcs[@]}"; do
  obj=$(obj_of "$src")
  if [[ ! -f "$obj" || "$src" -nt "$obj" || "$newest_header" -nt "$obj" ]]; then
    compile_lib "$src" "$obj" &
    pids+=($!)
    if ((${#pids[@]} >= $(nproc))); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
objs=()
for src in "${lib_srcs[@]}"; do [[ -f "$(obj_of "$src")" ]] && objs+=("$(obj_of "$src")"); done
rm -f "$build_dir/obj/libllmint8-fuzz.a"
ar rcs "$build_dir/obj/libllmint8-fuzz.a" "${objs[@]}" || exit 2

for name in "${names[@]}"; do
  if [[ ! -f "tests/fuzz/$name.c" ]]; then echo "fuzz.sh: no tests/fuzz/$name.c" >&2; exit 2; fi
  # shellcheck disable=SC2086
  "$CC" "${common[@]}" -Werror -DLLMINT8_SOURCE_ROOT="\"$root\"" -fsanitize=fuzzer \
    "tests/fuzz/$name.c" "$build_dir/obj/libllmint8-fuzz.a" $pkg_libs -lm -lpthread \
    -o "$build_dir/bin/$name" || { echo "fuzz.sh: $name did not compile or link" >&2; exit 2; }
done
echo "fuzz.sh: built ${names[*]} in $build_dir/bin"
((build_only)) && exit 0

# ---- run ------------------------------------------------------------------------------
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_NUM_THREADS=1

# Runs one harness; prints its summary line; returns libFuzzer's status.
run_one() {
  local name=$1 seeds="tests/fuzz/corpus/$1" work="$build_dir/corpus/$1" log="$build_dir/logs/$1.log"
  local art="$build_dir/artifacts/$1/"
  mkdir -p "$work" "$art"
  local args=(-print_final_stats=1 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048
              -artifact_prefix="$art" -max_len=65536)
  [[ -n "$seconds" ]] && args+=(-max_total_time="$seconds")
  [[ -n "$runs" ]] && args+=(-runs="$runs")
  [[ -f "tests/fuzz/$name.dict" ]] && args+=(-dict="tests/fuzz/$name.dict")
  local dirs=("$work")
  [[ -d "$seeds" ]] && dirs+=("$seeds")
  # First the inputs of past findings (tests/fuzz/crashes/NAME-*): they must pass now.
  local old=(tests/fuzz/crashes/"$name"-*)
  if [[ -f "${old[0]}" ]] && ! "$build_dir/bin/$name" "${old[@]}" >"$log.regressions" 2>&1; then
    printf '%-24s REGRESSION: a past finding fails again (log %s)\n' "$name" "$log.regressions"
    grep -m5 -E 'ERROR|runtime error|FUZZ_CHECK|SUMMARY|Running' "$log.regressions" | sed 's/^/    /'
    return 1
  fi
  local t0=$SECONDS
  "$build_dir/bin/$name" "${args[@]}" "${dirs[@]}" >"$log" 2>&1
  local rc=$?
  local execs rate
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  if ((rc == 0)) && ! grep -qE '^==[0-9]+==ERROR|runtime error:|^SUMMARY: ' "$log"; then
    printf '%-24s %12s executions in %4ds (%s exec/s), corpus %s files: no findings\n' \
      "$name" "${execs:-?}" $((SECONDS - t0)) "${rate:-?}" "$(ls "$work" | wc -l)"
    return 0
  fi
  if grep -q 'libFuzzer: run interrupted' "$log"; then
    printf '%-24s interrupted after %s executions\n' "$name" "${execs:-?}"
    return 1
  fi
  printf '%-24s FINDING after %s executions (exit %d): log %s, input %s\n' "$name" "${execs:-?}" "$rc" \
    "$log" "$(ls -t "$art" 2>/dev/null | head -1 | sed "s|^|$art|")"
  grep -m5 -E 'ERROR|runtime error|FUZZ_CHECK|SUMMARY' "$log" | sed 's/^/    /'
  return 1
}

status=0
pids=()
for name in "${names[@]}"; do
  run_one "$name" &
  pids+=($!)
  if ((${#pids[@]} >= jobs)); then wait "${pids[0]}" || status=1; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
((status)) && echo "fuzz.sh: FINDINGS (see above)" >&2
exit $status
