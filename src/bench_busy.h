/* bench_busy.h — a process that keeps one CPU busy, for `llmint8 bench --busy-core`: it
 * measures how the thread count copes when another program (a compiler, a browser tab, a
 * second job on a shared server) takes one of the cores. Linux; elsewhere the spinner is
 * not pinned to a CPU. */
#ifndef LLMINT8_BENCH_BUSY_H
#define LLMINT8_BENCH_BUSY_H

#include <sys/types.h>

#include "error.h"

/* Forks a child that spins on one CPU (the last this process may run on, pinned there
 * with sched_setaffinity) until bench_busy_stop, or until the parent dies. Returns 0 with
 * *pid and *cpu (the CPU it was pinned to, -1 if none), or -1 with err. */
int bench_busy_start(pid_t *pid, int *cpu, Error *err);

/* Kills and reaps the spinner. */
void bench_busy_stop(pid_t pid);

#endif
