/* bench_proc.c — bench's child processes and /proc measurements (see bench_proc.h). */
#include "bench_proc.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- memory ------------------------------------------------------------------------ */

long long bench_proc_status_bytes(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    long long kb = -1;
    if (f) {
        char line[256];
        size_t klen = strlen(key);
        while (fgets(line, sizeof line, f))
            if (strncmp(line, key, klen) == 0 && sscanf(line + klen, "%lld", &kb) == 1) break;
        fclose(f);
    }
    if (kb < 0) {
        struct rusage ru;
        if (getrusage(RUSAGE_SELF, &ru) == 0) kb = ru.ru_maxrss;
    }
    return kb < 0 ? -1 : kb * 1024;
}

/* Writing "5" to clear_refs resets VmHWM. */
bool bench_reset_peak_rss(void) {
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return false;
    bool ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

/* Walks /proc/self/maps for read-only file mappings and drops, page-aligned inward, every
 * tensor that lies inside one. */
void bench_drop_checkpoint_pages(const Checkpoint *ck) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi, inode;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu", &lo, &hi, perms, &inode) != 4) continue;
        if (inode == 0 || perms[0] != 'r' || perms[1] != '-') continue;
        for (size_t i = 0; i < checkpoint_count(ck); i++) {
            const StTensor *t = checkpoint_tensor(ck, i);
            uintptr_t b = (uintptr_t)t->data, e = b + t->nbytes;
            if (b < lo || e > hi) continue;
            b = (b + page - 1) & ~(page - 1);
            e &= ~(page - 1);
            if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
        }
    }
    fclose(f);
}

/* ---- child processes --------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k, n -= (size_t)k;
    }
    return 0;
}

static size_t read_all(int fd, void *buf, size_t n) {
    char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, p + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    return got;
}

/* The child writes its status, its Error and (on success) `out`; the parent reads as much as
 * arrives, then waits for the child so that a signal can be reported as such. */
int bench_run_in_child(const char *what, BenchChildFn fn, const void *ctx, const void *arg, void *out,
                       size_t out_size, Error *err) {
    int fds[2];
    if (pipe(fds)) return err_set(err, "%s: pipe: %s", what, strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]), close(fds[1]);
        return err_set(err, "%s: fork: %s", what, strerror(errno));
    }
    if (pid == 0) {
        close(fds[0]);
        Error cerr;
        cerr.msg[0] = 0;
        int rc = fn(ctx, arg, out, &cerr);
        int ok = write_all(fds[1], &rc, sizeof rc) == 0 && write_all(fds[1], &cerr, sizeof cerr) == 0 &&
                 (rc != 0 || write_all(fds[1], out, out_size) == 0);
        close(fds[1]);
        _exit(ok && rc == 0 ? 0 : 1);
    }
    close(fds[1]);
    int rc = -1;
    Error cerr;
    size_t got = read_all(fds[0], &rc, sizeof rc);
    if (got == sizeof rc) got += read_all(fds[0], &cerr, sizeof cerr);
    if (got == sizeof rc + sizeof cerr && rc == 0) got += read_all(fds[0], out, out_size);
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) continue;
    if (WIFSIGNALED(status))
        return err_set(err, "%s: the benchmark process was killed by signal %d (%s)%s", what, WTERMSIG(status),
                       strsignal(WTERMSIG(status)),
                       WTERMSIG(status) == SIGKILL ? "; out of memory? try fewer --layers" : "");
    if (got < sizeof rc + sizeof cerr) return err_set(err, "%s: the benchmark process exited early", what);
    if (rc != 0) {
        cerr.msg[sizeof cerr.msg - 1] = 0;
        *err = cerr;
        return -1;
    }
    if (got != sizeof rc + sizeof cerr + out_size)
        return err_set(err, "%s: incomplete result from the benchmark process", what);
    return 0;
}

/* ---- the machine ------------------------------------------------------------------- */

void bench_cpu_model_name(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0) continue;
        char *v = strchr(line, ':');
        if (!v) break;
        v += 1 + strspn(v + 1, " \t");
        v[strcspn(v, "\n")] = 0;
        snprintf(buf, cap, "%s", v);
        break;
    }
    fclose(f);
}

/* Jiffies the CPUs spent busy and in total so far (first line of /proc/stat). */
static bool cpu_times(double *busy, double *total) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return false;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
                   &v[6], &v[7]);
    fclose(f);
    if (n < 4) return false;
    *total = 0;
    for (int i = 0; i < 8; i++) *total += (double)v[i];
    *busy = *total - (double)v[3] - (double)v[4]; /* all but idle and iowait */
    return true;
}

/* (busy jiffies after - before) / (all jiffies after - before), over 0.3 s. */
double bench_cpu_busy_before(void) {
    double b0, t0, b1, t1;
    if (!cpu_times(&b0, &t0)) return -1;
    struct timespec ts = {0, 300000000};
    nanosleep(&ts, NULL);
    if (!cpu_times(&b1, &t1) || t1 <= t0) return -1;
    return (b1 - b0) / (t1 - t0);
}

