#!/usr/bin/env bash
# Builds the current commit a second time with its parallel loops on OpenMP instead of the
# thread pool (src/cpu/cpu_pool.c), for the idle-machine comparison of issue 10: the same
# kernels and the same pieces of work, only the threading differs (OpenMP's dynamic schedule,
# one piece at a time, libgomp's default wait policy, as the project used before the pool).
#
#   tools/openmp_baseline.sh /tmp/omp          # -> /tmp/omp/build/llmint8
#   tools/compare_builds.py --rounds 9 /tmp/omp/build/llmint8 build/llmint8 -- --shape opt-125m
#
# The copy is a `git worktree` of HEAD (uncommitted changes are not in it); nothing in this
# checkout changes. It is a measuring aid: the product never builds this way.
set -euo pipefail
dest=${1:?usage: tools/openmp_baseline.sh DIR}
cd "$(dirname "$0")/.."
[[ -e "$dest" ]] && { echo "openmp_baseline: $dest exists; give a new directory" >&2; exit 2; }
git worktree add --detach "$dest" HEAD >/dev/null
cd "$dest"
python3 - <<'PY'
import re
path = "src/cpu/cpu_pool.c"
src = open(path).read()
cut = src.index("void cpu_parallel_for(")
src = src[:cut] + r'''#include <omp.h>
/* OpenMP stand-in (tools/openmp_baseline.sh): the same pieces, handed out by libgomp. */
void cpu_parallel_for(int64_t n, int64_t grain, bool parallel, CpuRangeFn *fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    const int64_t pieces = (n - 1) / grain + 1;
    pthread_once(&init_once, init);
    if (!parallel || pieces < 2 || omp_in_parallel()) {
        fn(ctx, 0, n, 0);
        return;
    }
    omp_set_num_threads(P.threads);
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t p = 0; p < pieces; p++) {
        int64_t b = p * grain, e = n - b < grain ? n : b + grain;
        fn(ctx, b, e, omp_get_thread_num());
    }
}
'''
open(path, "w").write(src)
m = open("meson.build").read()
m = m.replace("threads = dependency('threads')", "threads = [dependency('threads'), dependency('openmp')]", 1)
open("meson.build", "w").write(m)
PY
[[ -d /usr/local/cuda/bin ]] && export PATH="$PATH:/usr/local/cuda/bin"
meson setup build -Dcuda=disabled >/dev/null
ninja -C build llmint8 >/dev/null
echo "openmp_baseline: $dest/build/llmint8"
