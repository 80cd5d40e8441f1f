/* cpu/cpu_pool.c — the CPU backend's threads (cpu_pool.h).
 *
 * Why not OpenMP. On a machine where another process keeps a core busy, OpenMP (libgomp)
 * made two threads 15x slower than one: its workers spin at every barrier for a long time
 * (GOMP_SPINCOUNT, read from the environment before main, so a program cannot change it),
 * the scheduler then treats them as CPU hogs and shares their core with the other process
 * in slices of milliseconds, and every parallel loop (hundreds per token) ends at a barrier
 * that waits for the worker that is off its core. Two things fix that, both here:
 *
 * 1. A loop nobody has to wait for. A loop is cut into pieces; the caller posts it and
 *    then claims pieces itself, one at a time, from a shared counter, while workers that
 *    are awake claim the others. The caller waits only for pieces already claimed and
 *    running, never for a worker that has not woken up: a late worker finds nothing left
 *    and goes back to waiting. Workers spin only briefly for the next loop, then sleep on a
 *    futex; a thread that sleeps often is one the scheduler runs promptly when woken,
 *    instead of one it makes wait for a slice. How briefly follows the same load
 *    measurement as point 2: SPIN_LONG_NS while other processes leave the CPUs idle
 *    (others_busy < CPU_POOL_IDLE_OTHERS in the last window), where a long spin costs nobody
 *    anything and saves a futex wake-up between the hundred-odd short loops of a decode
 *    step; SPIN_SHORT_NS otherwise, and from every thread-count change until the first
 *    window is measured.
 *
 * 2. An adaptive default. With the default thread count (no --threads), the caller measures,
 *    at most every SAMPLE_S seconds and only when a loop starts, how busy the CPUs it may
 *    run on were since the last measurement, minus its own CPU time:
 *        others_busy = (busy ticks in /proc/stat / ticks per second - own CPU seconds) / wall seconds,
 *    busy ticks being user + nice + system + irq + softirq + steal of those CPUs. It then
 *    uses cpu_threads_for_load(cpus, cpus, others_busy) threads: one less for every CPU
 *    that other processes keep at least CPU_POOL_BUSY_SHARE busy, at least one. A thread on
 *    a CPU that it shares with a busy process would still cost more than it brings (a piece
 *    it holds when descheduled keeps the caller waiting for milliseconds). Until the first
 *    measurement (SAMPLE_S after the thread count is set) the choice comes from the threads
 *    of other processes runnable at that moment (/proc/loadavg). Workers not in use sleep
 *    until the choice changes. --threads N bypasses all of this: N threads.
 *
 * Results never depend on the thread count: every piece is computed by exactly one thread
 * with the same code, and the loop bodies of the backend write only their own piece's
 * outputs (no reduction across pieces).
 *
 * Memory ordering of a loop ("job"): the caller closes the claim counter (generation << 32
 * | CLAIM_CLOSED), writes the job's fields (release), then opens the counter (generation
 * << 32 | next piece, release), then job_seq, which workers watch. A worker reads the
 * counter (acquire), then the fields (acquire), then claims a piece with a
 * compare-and-swap of the counter value it read: if that succeeds, the job it read the
 * fields of is still the current one. Closing first matters: a worker that read the old
 * job's used-up counter and then the new job's piece count would otherwise find a piece
 * "left" and claim it from the old counter before the new one lands, running that piece
 * twice and counting it twice (done then passes the piece count, and the caller of a
 * later loop returns early or waits forever; seen in a stress test of back-to-back
 * 2-piece loops). Having seen a new field, it sees the closed counter, and its
 * compare-and-swap fails. done counts finished pieces; the
 * caller returns when it reaches the number of pieces. Sleeping: a thread announces it
 * sleeps (sleepers, caller_waiting) and then futex-waits on the value it last saw; whoever
 * changes that value checks the announcement afterwards (all sequentially consistent), so
 * a wake-up is never lost. */
#include "cpu_pool.h"

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

enum { MAX_THREADS = 1024 };
/* The low half of the claim word while a job is being posted: no piece number reaches it
 * (pieces <= INT32_MAX), so nothing can be claimed. */
#define CLAIM_CLOSED UINT32_MAX
#define SPIN_SHORT_NS 100000L /* how long a waiting thread spins before it sleeps: 100 us, */
#define SPIN_LONG_NS 1000000L /* or 1 ms while the other processes leave the CPUs idle */
#define SAMPLE_S 0.1         /* adaptive: the shortest window the load is measured over */
#define FIRST_LOOKS 5        /* adaptive: snapshots of the runnable threads before the first window */

static struct {
    pthread_mutex_t lock;       /* threads, workers, the load sample */
    int threads;                /* the count set (adaptive: the most used) */
    bool adaptive;
    int cpus;                   /* in the affinity mask */
    _Atomic int n_workers;      /* started: slots 1 .. n_workers */
    _Atomic int in_use;         /* threads running the next loop, the caller included */
    _Atomic uint32_t config_seq; /* futex: workers not in use sleep on it; bumped when in_use changes */
    atomic_flag busy;           /* a loop is running */
    uint32_t gen;               /* generation of the last job (the caller's only) */
    /* the job */
    _Atomic uint64_t claim;     /* gen << 32 | next piece */
    _Atomic(CpuRangeFn *) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n, grain;
    _Atomic uint32_t pieces;
    _Atomic uint32_t done;      /* futex: pieces finished */
    _Atomic uint32_t job_seq;   /* futex: workers in use wait for it to change */
    _Atomic int sleepers;       /* workers asleep on job_seq */
    _Atomic int caller_waiting; /* the caller asleep on done */
    _Atomic long spin_ns;       /* how long a waiting thread spins: SPIN_SHORT_NS or SPIN_LONG_NS */
    /* adaptive: the last load sample, and a load figure imposed by tests (< 0: none) */
    bool have_sample;
    double sample_wall, sample_own, sample_busy_s;
    double assumed_load;
} P = {.lock = PTHREAD_MUTEX_INITIALIZER, .busy = ATOMIC_FLAG_INIT, .spin_ns = SPIN_SHORT_NS, .assumed_load = -1.0};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static _Thread_local int my_slot; /* 0 for every thread but the workers */

/* ---- waiting ---------------------------------------------------------------------------- */

static void futex_wait(_Atomic uint32_t *word, uint32_t seen) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
#else
    (void)word, (void)seen;
    sched_yield();
#endif
}

static void futex_wake(_Atomic uint32_t *word) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Spins until *word != seen, for at most P.spin_ns (a worker: or until it is no longer in
 * use). Returns the value seen last. */
static uint32_t spin_while_equal(_Atomic uint32_t *word, uint32_t seen, int slot) {
    const long spin_ns = atomic_load_explicit(&P.spin_ns, memory_order_relaxed);
    long long start = 0;
    for (unsigned i = 0;; i++) {
        uint32_t v = atomic_load_explicit(word, memory_order_acquire);
        if (v != seen) return v;
        if ((i & 63) == 63) {
            if (slot >= atomic_load_explicit(&P.in_use, memory_order_relaxed)) return v;
            long long t = now_ns();
            if (start == 0) start = t;
            else if (t - start > spin_ns) return v;
        }
        cpu_relax();
    }
}

/* ---- running pieces ------------------------------------------------------------------------- */

/* Claims and runs pieces of the current job until none is left. */
static void run_pieces(int slot) {
    for (;;) {
        if (slot >= atomic_load_explicit(&P.in_use, memory_order_relaxed)) return; /* a worker no longer in use */
        uint64_t c = atomic_load_explicit(&P.claim, memory_order_acquire);
        uint32_t piece = (uint32_t)c, pieces = atomic_load_explicit(&P.pieces, memory_order_acquire);
        if (piece >= pieces) return; /* used up, or closed */
        CpuRangeFn *fn = atomic_load_explicit(&P.fn, memory_order_acquire);
        void *ctx = atomic_load_explicit(&P.ctx, memory_order_acquire);
        int64_t n = atomic_load_explicit(&P.n, memory_order_acquire);
        int64_t grain = atomic_load_explicit(&P.grain, memory_order_acquire);
        /* the claim succeeds only if the word is still c: then fn .. grain are c's job's */
        if (!atomic_compare_exchange_weak_explicit(&P.claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int64_t begin = (int64_t)piece * grain, end = n - begin < grain ? n : begin + grain;
        fn(ctx, begin, end, slot);
        uint32_t finished = atomic_fetch_add(&P.done, 1) + 1;
        if (finished == pieces && atomic_load(&P.caller_waiting)) futex_wake(&P.done);
    }
}

static void *worker_main(void *arg) {
    const int slot = (int)(intptr_t)arg;
    my_slot = slot;
    uint32_t seen = atomic_load(&P.job_seq);
    for (;;) {
        /* not in use: sleep until the choice changes */
        uint32_t config = atomic_load(&P.config_seq);
        if (slot >= atomic_load(&P.in_use)) {
            futex_wait(&P.config_seq, config);
            seen = atomic_load(&P.job_seq); /* jobs posted meanwhile are over or taken */
            continue;
        }
        uint32_t seq = spin_while_equal(&P.job_seq, seen, slot);
        if (seq == seen) {
            if (slot >= atomic_load(&P.in_use)) continue;
            atomic_fetch_add(&P.sleepers, 1);
            futex_wait(&P.job_seq, seen); /* returns at once if job_seq moved on meanwhile */
            atomic_fetch_sub(&P.sleepers, 1);
            continue;
        }
        seen = seq;
        run_pieces(slot);
    }
    return NULL;
}

/* Starts workers up to `want` (slots 1 .. want); returns how many there are. */
static int start_workers(int want) {
    if (atomic_load(&P.n_workers) >= want) return want;
    pthread_mutex_lock(&P.lock);
    while (P.n_workers < want) {
        pthread_t t;
        pthread_attr_t attr;
        if (pthread_attr_init(&attr)) break;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)(P.n_workers + 1));
        pthread_attr_destroy(&attr);
        if (rc) break; /* fewer threads: the caller does the rest */
        P.n_workers++;
    }
    int have = P.n_workers;
    pthread_mutex_unlock(&P.lock);
    return have;
}

/* ---- the thread count ----------------------------------------------------------------------- */

int cpu_threads_for_load(int cpus, int max_threads, double others_busy) {
    if (max_threads < 1) max_threads = 1;
    if (cpus < 1) cpus = 1;
    if (!(others_busy > 0.0)) others_busy = 0.0; /* also NaN */
    if (others_busy > cpus) others_busy = cpus;
    int taken = (int)floor(others_busy + (1.0 - CPU_POOL_BUSY_SHARE));
    int t = cpus - taken;
    if (t > max_threads) t = max_threads;
    return t < 1 ? 1 : t;
}

static int affinity_cpus(cpu_set_t *mask) {
    CPU_ZERO(mask);
    if (sched_getaffinity(0, sizeof *mask, mask) == 0) {
        int n = CPU_COUNT(mask);
        if (n > 0) return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    CPU_ZERO(mask);
    for (long i = 0; i < n && i < CPU_SETSIZE; i++) CPU_SET(i, mask);
    return n > 0 ? (int)(n < MAX_THREADS ? n : MAX_THREADS) : 1;
}

/* The spin length for a load figure (others_busy, in CPUs). */
static void set_spin_for_load(double others_busy) {
    atomic_store(&P.spin_ns, others_busy >= 0.0 && others_busy < CPU_POOL_IDLE_OTHERS ? SPIN_LONG_NS : SPIN_SHORT_NS);
}

static void set_in_use(int t) {
    if (atomic_load(&P.in_use) == t) return;
    atomic_store(&P.in_use, t);
    atomic_fetch_add(&P.config_seq, 1);
    futex_wake(&P.config_seq);
}

/* Busy seconds of the CPUs in our affinity mask since boot (from /proc/stat), and this
 * process's CPU seconds. Returns -1 when /proc/stat cannot be read. */
static int read_load(double *busy_s, double *own_s) {
    cpu_set_t mask;
    affinity_cpus(&mask);
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[512];
    unsigned long long busy = 0;
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "cpu", 3) != 0) break; /* the per-CPU lines come first */
        unsigned cpu;
        unsigned long long user, nice, sys, idle, iowait, irq, softirq, steal;
        if (sscanf(line + 3, "%u %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &user, &nice, &sys, &idle,
                   &iowait, &irq, &softirq, &steal) != 9)
            continue; /* the "cpu " total line */
        if (cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &mask)) continue;
        busy += user + nice + sys + irq + softirq + steal;
        found++;
    }
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    if (!found || hz <= 0) return -1;
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)) return -1;
    *busy_s = (double)busy / (double)hz;
    *own_s = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    return 0;
}

/* This process's threads that are runnable right now (state R in /proc/self/task/TID/stat,
 * the calling thread included); -1 if unknown. */
static int own_running_now(void) {
    DIR *dir = opendir("/proc/self/task");
    if (!dir) return -1;
    int running = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char path[64], stat[512];
        snprintf(path, sizeof path, "/proc/self/task/%.20s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue; /* the thread has just exited */
        size_t got = fread(stat, 1, sizeof stat - 1, f);
        fclose(f);
        stat[got] = '\0';
        const char *paren = strrchr(stat, ')'); /* "TID (name) STATE ...": the name may hold ')' */
        if (paren && paren[1] == ' ' && paren[2] == 'R') running++;
    }
    closedir(dir);
    return running > 0 ? running : 1;
}

/* Threads of other processes that are runnable right now: the 4th field of /proc/loadavg
 * ("running/total", all CPUs) less this process's runnable threads; -1 if unknown. A
 * snapshot, so only a first guess until a measurement over time replaces it. */
static double running_now(void) {
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return -1.0;
    double l1, l5, l15;
    int running = 0;
    int got = fscanf(f, "%lf %lf %lf %d/", &l1, &l5, &l15, &running);
    fclose(f);
    if (got != 4 || running < 1) return -1.0;
    int ours = own_running_now();
    if (ours < 0) return -1.0;
    return running > ours ? (double)(running - ours) : 0.0;
}

/* A new load sample when the last is SAMPLE_S old, and the spin length it gives; with the
 * adaptive default, also the thread count it gives. */
static void adapt(void) {
    double wall = now_s();
    if (P.have_sample && wall - P.sample_wall < SAMPLE_S) return;
    double busy_s, own_s;
    if (read_load(&busy_s, &own_s)) return; /* no /proc: keep the current choice */
    if (P.have_sample) {
        double others = (busy_s - P.sample_busy_s - (own_s - P.sample_own)) / (wall - P.sample_wall);
        if (!(others > 0.0)) others = 0.0; /* ticks of 10 ms make a 0.1 s window read up to 0.2 low */
        set_spin_for_load(others);
        if (P.adaptive) set_in_use(cpu_threads_for_load(P.cpus, P.threads, others));
    }
    P.have_sample = true;
    P.sample_wall = wall, P.sample_busy_s = busy_s, P.sample_own = own_s;
}

static void apply_threads(int threads) {
    cpu_set_t mask;
    P.cpus = affinity_cpus(&mask);
    P.adaptive = threads <= 0;
    P.threads = P.adaptive ? P.cpus : threads;
    if (P.threads > MAX_THREADS) P.threads = MAX_THREADS;
    P.have_sample = false;
    set_spin_for_load(P.assumed_load); /* short until measured, unless a load is imposed */
    if (P.adaptive && P.assumed_load >= 0.0) {
        set_in_use(cpu_threads_for_load(P.cpus, P.threads, P.assumed_load));
    } else if (P.adaptive) { /* until the first measurement: what runs right now (the least of
                                * a few looks 0.5 ms apart, so a thread runnable for an instant,
                                * such as a kernel worker, does not count) */
        double others = running_now();
        for (int look = 1; look < FIRST_LOOKS && others > 0.0; look++) {
            nanosleep(&(struct timespec){.tv_nsec = 500000}, NULL);
            double again = running_now();
            if (again < others) others = again;
        }
        set_in_use(others >= 0.0 ? cpu_threads_for_load(P.cpus, P.threads, others) : P.threads);
    } else {
        set_in_use(P.threads);
    }
}

/* After fork() only the calling thread exists in the child: start workers afresh there. */
static void after_fork_in_child(void) {
    P.n_workers = 0;
    atomic_flag_clear(&P.busy);
    atomic_store(&P.sleepers, 0);
    atomic_store(&P.caller_waiting, 0);
    pthread_mutex_init(&P.lock, NULL);
    my_slot = 0;
}

static void init(void) {
    pthread_atfork(NULL, NULL, after_fork_in_child);
    apply_threads(0);
}

void cpu_pool_set_threads(int threads) {
    pthread_once(&init_once, init);
    pthread_mutex_lock(&P.lock);
    apply_threads(threads);
    if (P.assumed_load < 0.0) adapt(); /* the first sample: the window starts now */
    pthread_mutex_unlock(&P.lock);
}

void cpu_pool_assume_load(double others_busy) {
    pthread_once(&init_once, init);
    pthread_mutex_lock(&P.lock);
    P.assumed_load = others_busy >= 0.0 ? others_busy : -1.0;
    P.have_sample = false;
    set_spin_for_load(P.assumed_load);
    if (P.assumed_load < 0.0) adapt();
    else if (P.adaptive) set_in_use(cpu_threads_for_load(P.cpus, P.threads, P.assumed_load));
    pthread_mutex_unlock(&P.lock);
}

int cpu_pool_threads(void) {
    pthread_once(&init_once, init);
    return P.threads;
}

int cpu_pool_threads_in_use(void) {
    pthread_once(&init_once, init);
    return atomic_load(&P.in_use);
}

bool cpu_pool_adaptive(void) {
    pthread_once(&init_once, init);
    return P.adaptive;
}

int cpu_pool_slots(void) {
    pthread_once(&init_once, init);
    return P.threads; /* >= in_use, and workers past in_use claim nothing */
}

long cpu_pool_spin_ns(void) {
    pthread_once(&init_once, init);
    return atomic_load(&P.spin_ns);
}

int cpu_pool_cpus(void) {
    pthread_once(&init_once, init);
    return P.cpus;
}

/* ---- loops ---------------------------------------------------------------------------------- */

void cpu_parallel_for(int64_t n, int64_t grain, bool parallel, CpuRangeFn *fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if ((n - 1) / grain + 1 > INT32_MAX) grain = (n - 1) / INT32_MAX + 1; /* pieces fit the counter */
    const int64_t pieces = (n - 1) / grain + 1;
    pthread_once(&init_once, init);
    if (!parallel || pieces < 2 || atomic_flag_test_and_set(&P.busy)) {
        fn(ctx, 0, n, my_slot); /* serial, nested, or another thread's loop is running */
        return;
    }
    if (pthread_mutex_trylock(&P.lock) == 0) { /* taken: set_threads is busy; measure next time */
        if (P.assumed_load < 0.0) adapt();
        pthread_mutex_unlock(&P.lock);
    }
    int use = atomic_load(&P.in_use);
    if (use > 1 && start_workers(use - 1) < 1) use = 1;
    if (use <= 1) {
        fn(ctx, 0, n, my_slot);
        atomic_flag_clear(&P.busy);
        return;
    }
    /* Post the job. First close the last one: a worker may have read its (used up) claim
     * word and then this job's piece count, and would otherwise claim "piece k" of the old
     * word before the new word lands, running a piece twice and counting it in `done`. With
     * the word closed first, that claim fails; and a worker that sees any of the new fields
     * (release/acquire) also sees the closed word. */
    const uint32_t gen = ++P.gen;
    atomic_store_explicit(&P.claim, (uint64_t)gen << 32 | CLAIM_CLOSED, memory_order_relaxed);
    atomic_store_explicit(&P.fn, fn, memory_order_release);
    atomic_store_explicit(&P.ctx, ctx, memory_order_release);
    atomic_store_explicit(&P.n, n, memory_order_release);
    atomic_store_explicit(&P.grain, grain, memory_order_release);
    atomic_store_explicit(&P.pieces, (uint32_t)pieces, memory_order_release);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    atomic_store_explicit(&P.claim, (uint64_t)gen << 32, memory_order_release);
    atomic_store(&P.job_seq, gen);
    if (atomic_load(&P.sleepers) > 0) futex_wake(&P.job_seq);
    /* work on it, then wait for the pieces others are still running */
    run_pieces(0);
    for (;;) {
        uint32_t d = atomic_load(&P.done);
        if (d == (uint32_t)pieces) break;
        d = spin_while_equal(&P.done, d, 0); /* returns on progress, or after spin_ns without */
        if (d == (uint32_t)pieces) break;
        atomic_store(&P.caller_waiting, 1);
        d = atomic_load(&P.done);
        if (d != (uint32_t)pieces) futex_wait(&P.done, d);
        atomic_store(&P.caller_waiting, 0);
    }
    atomic_flag_clear(&P.busy);
}
