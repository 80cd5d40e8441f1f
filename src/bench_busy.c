/* bench_busy.c — the busy-CPU spinner of `llmint8 bench --busy-core` (bench_busy.h).
 *
 * The spinner is a forked child running an empty loop at normal priority, as a competing
 * CPU-bound program would. It is pinned to one CPU so that exactly one core is taken,
 * whichever the scheduler would otherwise have moved it to; PR_SET_PDEATHSIG kills it if
 * bench dies first, so it never outlives the run. */
#include "bench_busy.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/prctl.h>
#endif

/* The highest-numbered CPU in our affinity mask, or -1. */
static int last_allowed_cpu(void) {
#ifdef __linux__
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof mask, &mask)) return -1;
    for (int c = CPU_SETSIZE - 1; c >= 0; c--)
        if (CPU_ISSET(c, &mask)) return c;
#endif
    return -1;
}

int bench_busy_start(pid_t *pid, int *cpu, Error *err) {
    *cpu = last_allowed_cpu();
    fflush(stdout);
    fflush(stderr);
    const pid_t parent = getpid();
    pid_t p = fork();
    if (p < 0) return err_set(err, "bench --busy-core: cannot start the busy process (fork failed)");
    if (p == 0) {
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(0); /* the parent is already gone */
        if (*cpu >= 0) {
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(*cpu, &one);
            sched_setaffinity(0, sizeof one, &one); /* unpinned, it still takes a CPU's worth */
        }
#endif
        (void)parent;
        volatile unsigned long spin = 0;
        for (;;) spin++;
    }
    *pid = p;
    return 0;
}

void bench_busy_stop(pid_t pid) {
    if (pid <= 0) return;
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0) {
        /* EINTR: try again; ECHILD: already reaped */
        if (kill(pid, 0) != 0) break;
    }
}
