/* cpu/cpu_pool.h — the CPU backend's worker threads: parallel loops that a thread slowed
 * down by another process cannot hold up, and a default thread count that follows the load
 * other processes put on the machine. cpu_pool.c explains how and why.
 *
 * One pool per process (like OpenMP's). One loop runs at a time: a loop started while
 * another runs (from another thread, or from inside a loop body) runs serially in its
 * caller, with the same results. */
#ifndef LLMINT8_CPU_POOL_H
#define LLMINT8_CPU_POOL_H

#include <stdbool.h>
#include <stdint.h>

/* A loop body: handles indices [begin, end) of the loop. slot (0 <= slot <
 * cpu_pool_slots()) names the thread running it, for per-thread scratch: two bodies
 * running at the same time never share a slot. */
typedef void CpuRangeFn(void *ctx, int64_t begin, int64_t end, int slot);

/* Runs fn over [0, n) in pieces of `grain` indices ([0, grain), [grain, 2 grain), ...; the
 * last may be shorter), each piece exactly once, pieces handed out one at a time to
 * whichever thread is free. With parallel false, or when one thread is in use, everything
 * runs in the caller (slot 0). Returns when every piece is done. The results of a body
 * that writes only its own piece's outputs do not depend on the thread count. */
void cpu_parallel_for(int64_t n, int64_t grain, bool parallel, CpuRangeFn *fn, void *ctx);

/* Sets the thread count (the caller included): threads >= 1 means exactly that many;
 * threads <= 0 means the adaptive default: up to one per CPU this process may run on,
 * fewer while other processes keep some of them busy (see cpu_threads_for_load). */
void cpu_pool_set_threads(int threads);
/* The count set (for adaptive: the most it will use), and how many threads run the next
 * loop (the adaptive choice of the moment). */
int cpu_pool_threads(void);
int cpu_pool_threads_in_use(void);
bool cpu_pool_adaptive(void);
/* The bound on slot + 1 for loop bodies: size per-thread scratch with this. */
int cpu_pool_slots(void);
/* CPUs this process may run on (its affinity mask; at least 1). */
int cpu_pool_cpus(void);

/* The adaptive choice, a pure function: with `cpus` CPUs of which other processes kept
 * `others_busy` busy on average (in CPUs, e.g. 1.0 = one CPU fully taken), the threads
 * to use, between 1 and max_threads. A CPU counts as taken from CPU_POOL_BUSY_SHARE of
 * it up: a thread sharing its CPU with a busy process gets only part of it, and every
 * loop would wait for that thread. */
#define CPU_POOL_BUSY_SHARE 0.4
/* Below this load from other processes (in CPUs) the machine counts as idle, and waiting
 * threads spin longer before they sleep (whatever the thread count setting). */
#define CPU_POOL_IDLE_OTHERS 0.3
int cpu_threads_for_load(int cpus, int max_threads, double others_busy);

/* How long a waiting thread spins before it sleeps, in ns: long while the last load figure
 * (measured or assumed) is below CPU_POOL_IDLE_OTHERS, short otherwise and before any. */
long cpu_pool_spin_ns(void);

/* For tests and bench: the adaptive choice (and the spin length) made now from an explicit
 * load figure, as if measured (others_busy in CPUs; negative: measure again from /proc/stat
 * from now on). */
void cpu_pool_assume_load(double others_busy);

#endif
