/* test_util.h — the little that every C test needs: checks that count failures,
 * reading golden files, and the path of the test data.
 *
 * Tests run with the repository root as working directory (meson `workdir`), so
 * data lives at tests/data/... . A test prints one line per failed check and ends
 * with a summary; main() returns test_finish(). Exit code 77 means "skipped". */
#ifndef LLMINT8_TEST_UTIL_H
#define LLMINT8_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_checks, test_failures;

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        test_checks++;                                                            \
        if (!(cond)) {                                                            \
            test_failures++;                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
        }                                                                         \
    } while (0)

static inline int test_finish(const char *name) {
    fprintf(stderr, "%s: %d checks, %d failed\n", name, test_checks, test_failures);
    return test_failures ? 1 : 0;
}

/* Reads a whole file; returns malloc'ed bytes (NUL-terminated) and *len, or NULL. */
static inline void *test_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) { buf[n] = 0; if (len) *len = (size_t)n; }
    return buf;
}

/* Reads a little-endian float32 golden file, checking it holds exactly `count` values. */
static inline float *test_read_f32(const char *path, size_t count) {
    size_t len = 0;
    float *p = test_read_file(path, &len);
    if (!p || len != count * 4) {
        fprintf(stderr, "FAIL: %s: expected %zu floats, got %zu bytes\n", path, count, len);
        test_failures++;
        free(p);
        return NULL;
    }
    return p;
}

/* Reproducible random numbers: xorshift64 (Marsaglia), one stream per test program, seeded
 * by assigning *test_rng_state() before the first draw. */
static inline uint64_t *test_rng_state(void) {
    static uint64_t state = 0x9e3779b97f4a7c15ull;
    return &state;
}
static inline uint32_t rng_u32(void) {
    uint64_t *s = test_rng_state();
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (uint32_t)(*s >> 11);
}
/* Uniform in [lo, hi), 24 bits. */
static inline float rng_uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rng_u32() >> 8) / 16777216.0f; }

#define TEST_FIXTURES "tests/data/fixtures"
#define TEST_TOKENIZERS "tests/data/tokenizers"

#endif
