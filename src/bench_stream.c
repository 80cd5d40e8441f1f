/* bench_stream.c — streaming-read bandwidth (bench_stream.h).
 *
 * The buffer is written once (so its pages exist), then read PASSES times in pieces of
 * PIECE bytes handed to the pool's threads as they come free, exactly as the GEMV kernels
 * take their weight blocks. The read loop sums 32-byte vectors into four independent
 * accumulators (AVX2 where the CPU has it), so the loads, not the additions, set the pace;
 * the sum is kept so that the compiler cannot drop the loads. */
#include "bench_stream.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cpu/cpu_internal.h"
#include "cpu/cpu_pool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { PIECE = 1 << 20, PASSES = 4 };

typedef struct Stream {
    const unsigned char *buf;
    size_t bytes;
    uint64_t sums[256];   /* one per slot, 64 bytes apart would be nicer; the pieces are large */
} Stream;

static uint64_t read_plain(const unsigned char *p, size_t n) {
    uint64_t s[4] = {0};
    for (size_t i = 0; i + 32 <= n; i += 32) {
        uint64_t v[4];
        memcpy(v, p + i, sizeof v);
        s[0] += v[0], s[1] += v[1], s[2] += v[2], s[3] += v[3];
    }
    return s[0] ^ s[1] ^ s[2] ^ s[3];
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static uint64_t read_avx2(const unsigned char *p, size_t n) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        s0 = _mm256_add_epi64(s0, _mm256_load_si256((const __m256i *)(const void *)(p + i)));
        s1 = _mm256_add_epi64(s1, _mm256_load_si256((const __m256i *)(const void *)(p + i + 32)));
        s2 = _mm256_add_epi64(s2, _mm256_load_si256((const __m256i *)(const void *)(p + i + 64)));
        s3 = _mm256_add_epi64(s3, _mm256_load_si256((const __m256i *)(const void *)(p + i + 96)));
    }
    __m256i s = _mm256_xor_si256(_mm256_xor_si256(s0, s1), _mm256_xor_si256(s2, s3));
    uint64_t v[4];
    memcpy(v, &s, sizeof v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}
#endif

static void read_pieces(void *ctx, int64_t i0, int64_t i1, int slot) {
    Stream *s = ctx;
    for (int64_t i = i0; i < i1; i++) {
        const unsigned char *p = s->buf + (size_t)i * PIECE;
        size_t n = s->bytes - (size_t)i * PIECE < PIECE ? s->bytes - (size_t)i * PIECE : PIECE;
#if defined(__x86_64__)
        if (cpu_has_avx2()) {
            s->sums[slot & 255] += read_avx2(p, n);
            continue;
        }
#endif
        s->sums[slot & 255] += read_plain(p, n);
    }
}

double bench_stream_read(size_t bytes, int threads, Error *err) {
    bytes = (bytes + PIECE - 1) / PIECE * PIECE;
    unsigned char *buf = aligned_alloc(64, bytes);
    if (!buf) {
        err_set(err, "out of memory for a %zu-byte bandwidth buffer", bytes);
        return 0.0;
    }
    memset(buf, 1, bytes); /* the pages must exist before the clock starts */
    cpu_pool_set_threads(threads);
    Stream s = {.buf = buf, .bytes = bytes};
    double best = 0.0;
    for (int pass = 0; pass < PASSES; pass++) {
        double t0 = cli_now();
        cpu_parallel_for((int64_t)(bytes / PIECE), 1, true, read_pieces, &s);
        double t = cli_now() - t0;
        if (t > 0 && bytes / t > best) best = (double)bytes / t;
    }
    /* the sums stay live: a volatile store the compiler must keep */
    volatile uint64_t sink = 0;
    for (int i = 0; i < 256; i++) sink ^= s.sums[i];
    (void)sink;
    free(buf);
    return best;
}
