/* bench_proc.h — what `llmint8 bench` measures about its own processes: it runs each
 * measurement in a forked child (its own peak-RSS counter, and worker-thread / GPU state kept out of
 * the parent, which would make fork unsafe), reads memory figures from /proc/self, and
 * samples how busy the machine was before the run. Linux; degrades to "unknown" elsewhere. */
#ifndef LLMINT8_BENCH_PROC_H
#define LLMINT8_BENCH_PROC_H

#include <stdbool.h>
#include <stddef.h>

#include "checkpoint.h"
#include "error.h"

/* A measurement run in the child: fills `out` (out_size bytes), returns 0, or -1 with err. */
typedef int (*BenchChildFn)(const void *ctx, const void *arg, void *out, Error *err);

/* Runs fn(ctx, arg, out, err) in a forked child and copies its `out` (or its Error) back
 * through a pipe. A child killed by a signal, or one that exits early, is an error naming
 * `what`. stdout and stderr are flushed first so nothing is printed twice. */
int bench_run_in_child(const char *what, BenchChildFn fn, const void *ctx, const void *arg, void *out,
                       size_t out_size, Error *err);

/* A "VmHWM:" / "VmRSS:" figure of /proc/self/status in bytes; getrusage's peak if absent;
 * -1 if neither is known. */
long long bench_proc_status_bytes(const char *key);

/* Resets the peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); false if it could not. */
bool bench_reset_peak_rss(void);

/* Removes the pages of the checkpoint's tensors from this process's page tables (madvise
 * DONTNEED; the data stays in the page cache). Only inside read-only file mappings: on
 * anonymous memory DONTNEED would zero the data. */
void bench_drop_checkpoint_pages(const Checkpoint *ck);

/* Share of the machine's CPU time that other processes used during 0.3 s (it sleeps that
 * long), from /proc/stat; -1 if unknown. Anything else running makes timings unreliable. */
double bench_cpu_busy_before(void);

/* The "model name" of /proc/cpuinfo, or "unknown CPU". */
void bench_cpu_model_name(char *buf, size_t cap);

#endif
