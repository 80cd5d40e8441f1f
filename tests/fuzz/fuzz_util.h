/* fuzz_util.h — what the libFuzzer harnesses share: turning the fuzzer's bytes into a
 * file the code under test can open by path, and a scratch directory for the loaders
 * that take a directory.
 *
 * The modules under test take paths (st_open, config_load, tokenizer_load,
 * cli_read_ids), so each input is written to an in-memory file (memfd_create) and
 * handed over as /proc/self/fd/N: no disk traffic, and one file per process reused for
 * every input. Directories (tokenizer_load) live under /dev/shm when it exists.
 *
 * FUZZ_CHECK is the harnesses' assert: a broken promise of a module's contract (say, a
 * tensor pointer outside the file) aborts, which libFuzzer reports like a crash. */
#ifndef LLMINT8_FUZZ_UTIL_H
#define LLMINT8_FUZZ_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_CHECK(cond, ...)                                                    \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "FUZZ_CHECK failed %s:%d: %s: ", __FILE__, __LINE__, \
                    #cond);                                                      \
            fprintf(stderr, __VA_ARGS__);                                        \
            fputc('\n', stderr);                                                 \
            abort();                                                             \
        }                                                                        \
    } while (0)

/* Writes all of buf to fd at offset 0 and cuts the file to exactly len bytes. */
static inline void fuzz_write_fd(int fd, const void *buf, size_t len) {
    if (ftruncate(fd, 0) != 0) abort();
    const char *p = buf;
    size_t done = 0;
    while (done < len) {
        ssize_t w = pwrite(fd, p + done, len - done, (off_t)done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) abort();
        done += (size_t)w;
    }
}

/* One in-memory file per process; returns its /proc path after writing buf into it. */
static inline const char *fuzz_memfile(const void *buf, size_t len) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("llmint8-fuzz", 0);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    fuzz_write_fd(fd, buf, len);
    return path;
}

/* A per-process scratch directory, removed (with the files the harness names) at exit. */
static char fuzz_dir_path[256];
static const char *const *fuzz_dir_files;

static inline void fuzz_dir_cleanup(void) {
    char p[512];
    for (const char *const *f = fuzz_dir_files; f && *f; f++) {
        snprintf(p, sizeof p, "%s/%s", fuzz_dir_path, *f);
        unlink(p);
    }
    rmdir(fuzz_dir_path);
}

static inline const char *fuzz_scratch_dir(const char *const *files_to_clean) {
    struct stat st;
    const char *base = stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
    snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/llmint8-fuzz-XXXXXX", base);
    if (!mkdtemp(fuzz_dir_path)) {
        perror("mkdtemp");
        abort();
    }
    fuzz_dir_files = files_to_clean;
    atexit(fuzz_dir_cleanup);
    return fuzz_dir_path;
}

/* Writes (or, with buf == NULL, removes) dir/name. */
static inline void fuzz_put_file(const char *dir, const char *name, const void *buf, size_t len) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (!buf) {
        unlink(p);
        return;
    }
    FILE *f = fopen(p, "wb");
    if (!f || (len && fwrite(buf, 1, len, f) != len) || fclose(f) != 0) {
        perror(p);
        abort();
    }
}

/* Finds `sep` in [p, end); returns its start or end if absent. */
static inline const uint8_t *fuzz_find(const uint8_t *p, const uint8_t *end, const char *sep) {
    size_t n = strlen(sep);
    for (; p + n <= end; p++)
        if (memcmp(p, sep, n) == 0) return p;
    return end;
}

#endif
