/* cpu/cpu_gemm.c — y = x W^T + b with W as stored in the checkpoint (F16, BF16 or F32).
 *
 * Every unquantized projection and the lm_head end up here, so this is where the CPU
 * spends its time in fp16 mode.
 *
 * Math: y[t][n] = b[n] + sum_k x[t][k] * W[n][k], accumulated in float32, with
 *   x [T, K] float32 row-major (one row per token),
 *   W [N, K] row-major, one row per output feature (nn.Linear's layout),
 *   y [T, N] float32 row-major.
 * Both operands are contiguous along k, so every output is the dot product of a row of x
 * with a row of W; we never transpose or repack anything.
 *
 * How the work is laid out (AVX2 path):
 *   - Threads take blocks of 48 output features (weight rows) as they come free. A block's
 *     rows are one contiguous stretch of the checkpoint, and stay in L2 (192 KiB for K = 2048
 *     in F16) while all the tokens pass by; a block writes its own columns of y only.
 *   - Register tile: 3 weight rows x 4 tokens. Each 8-wide chunk of weights is loaded and
 *     converted to float once (F16C for halves, a shift for bfloat16) and used for 4 tokens;
 *     each chunk of x is loaded once and used for 3 rows. 12 accumulators + 3 weight
 *     vectors + 1 x vector = the 16 ymm registers AVX2 has.
 *   - Within a block, tokens go in groups of up to ~256 KiB of x, so that both the block's
 *     weights and the group's activations stay in L2; the 3 current weight rows stay in L1
 *     while the group's tokens pass by.
 *   - T == 1 (decoding one token) is bound by memory bandwidth, not arithmetic: every
 *     weight is used once, so the tile becomes 4 rows x 1 token and the only goal is to
 *     stream W through the cores once.
 * The portable path computes the same sums with plain C (converting a chunk of a weight
 * row to float once, then dotting it with every token).
 *
 * Which path runs is decided once per process: AVX2 + FMA + F16C when the CPU has them and
 * the environment variable LLMINT8_NO_SIMD is unset, empty or "0"; the portable path
 * otherwise. (LLMINT8_NO_SIMD=1 exists so that tests can check the portable path on a
 * machine with AVX2.) The binary itself targets baseline x86-64: only the functions marked
 * TARGET_AVX2 use the newer instructions. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

/* Output features per unit of work given to a thread: a multiple of every row tile below. */
enum { BLOCK_ROWS = 48 };

/* Everything a thread needs to compute its slice of y. */
typedef struct Gemm {
    const float *x;
    const void *w;
    const float *bias;
    float *y;
    int64_t T, K, N;
    DType dt;
} Gemm;

/* Weight element i as float, for the scalar parts (portable path, k tails). Loads go through
 * memcpy because a checkpoint's tensors need not be aligned to their element size. */
static inline float load_w1(DType dt, const void *w, int64_t i) {
    if (dt == DT_F32) {
        float f;
        memcpy(&f, (const char *)w + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)w + 2 * i, 2);
    return dt == DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

/* ---- dispatch -------------------------------------------------------------------------- */

/* -1: not decided yet; 0: portable; 1: AVX2 + FMA + F16C; 2: the same plus AVX-512F (the
 * GEMM then runs on zmm registers; everything else keeps its AVX2 code). */
static int simd_choice = -1;

static bool env_off(const char *name) {
    const char *v = getenv(name);
    return v && v[0] && strcmp(v, "0") != 0;
}

static int simd_level(void) {
    int c = __atomic_load_n(&simd_choice, __ATOMIC_RELAXED);
    if (c < 0) {
        /* Two threads may both get here; they compute the same answer. */
        c = 0;
#if HAVE_X86
        /* F16C is CPUID leaf 1, ECX bit 29 (not every compiler's __builtin_cpu_supports knows it). */
        unsigned a, b, ecx = 0, d;
        bool f16c = __get_cpuid(1, &a, &b, &ecx, &d) && (ecx >> 29 & 1);
        __builtin_cpu_init();
        if (!env_off("LLMINT8_NO_SIMD") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
            c = !env_off("LLMINT8_NO_AVX512") && __builtin_cpu_supports("avx512f") ? 2 : 1;
#endif
        __atomic_store_n(&simd_choice, c, __ATOMIC_RELAXED);
    }
    return c;
}

int cpu_has_avx2(void) { return simd_level() >= 1; }

int cpu_has_avx512(void) { return simd_level() >= 2; }

const char *cpu_gemm_kernel(void) {
    static const char *const names[3] = {"portable C", "avx2+fma+f16c", "avx512f+f16c"};
    return names[simd_level()];
}

/* ---- portable path --------------------------------------------------------------------- */

/* A chunk of a weight row, converted to float once and reused for every token. 256 floats
 * = 1 KiB: stays in L1 next to the x rows it meets. */
enum { PORTABLE_KC = 256 };

/* Dot product with 8 independent partial sums: keeps the additions from forming one long
 * dependency chain, and lets the compiler use whatever vector width the baseline allows. */
static float dot_portable(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int k = 0;
    for (; k + 8 <= n; k += 8)
        for (int l = 0; l < 8; l++) acc[l] += a[k + l] * b[k + l];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; k < n; k++) s += a[k] * b[k];
    return s;
}

static void rows_portable(const Gemm *g, int64_t n_begin, int64_t n_end) {
    float wbuf[PORTABLE_KC];
    for (int64_t n = n_begin; n < n_end; n++) {
        for (int64_t t = 0; t < g->T; t++) g->y[t * g->N + n] = g->bias ? g->bias[n] : 0.0f;
        for (int64_t k0 = 0; k0 < g->K; k0 += PORTABLE_KC) {
            int kc = (int)(g->K - k0 < PORTABLE_KC ? g->K - k0 : PORTABLE_KC);
            for (int k = 0; k < kc; k++) wbuf[k] = load_w1(g->dt, g->w, n * g->K + k0 + k);
            for (int64_t t = 0; t < g->T; t++)
                g->y[t * g->N + n] += dot_portable(wbuf, g->x + t * g->K + k0, kc);
        }
    }
}

/* ---- AVX2 path ------------------------------------------------------------------------- */
#if HAVE_X86

#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
/* Kernels are always inlined into their caller, where dt, R and M are constants: the dtype
 * switch disappears and the tile loops unroll into straight-line code on registers. */
#define KERNEL static inline __attribute__((always_inline, target("avx2,fma,f16c")))

enum { TILE_R = 3, TILE_M = 4, DECODE_R = 4 };

/* Weights w[i .. i+7] as 8 floats. */
KERNEL __m256 load_w8(DType dt, const void *w, int64_t i) {
    if (dt == DT_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    if (dt == DT_BF16) /* bfloat16 is the top half of a float: widen and shift left 16 */
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i))), 16));
    return _mm256_loadu_ps((const float *)w + i);
}

KERNEL float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The register tile: y[t0 .. t0+M-1][n0 .. n0+R-1] over all of K (R <= 4, M <= 4).
 * acc[r][m] holds 8 partial sums of y[t0+m][n0+r]; they are added up at the end, together
 * with the K % 8 leftover products and the bias. */
KERNEL void tile(DType dt, int R, int M, const Gemm *g, int64_t n0, int64_t t0) {
    const int64_t K = g->K;
    const float *x = g->x + t0 * K;
    __m256 acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) acc[r][m] = _mm256_setzero_ps();

    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = load_w8(dt, g->w, (n0 + r) * K + k);
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
            __m256 xv = _mm256_loadu_ps(x + m * K + k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][m] = _mm256_fmadd_ps(wv[r], xv, acc[r][m]);
        }
    }

#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
            float s = hsum8(acc[r][m]);
            for (int64_t kk = k; kk < K; kk++) s += load_w1(dt, g->w, (n0 + r) * K + kk) * x[m * K + kk];
            if (g->bias) s += g->bias[n0 + r];
            g->y[(t0 + m) * g->N + n0 + r] = s;
        }
}

/* Tokens t_begin .. t_end-1 against weight rows n0 .. n0+R-1, 4 tokens at a time. */
KERNEL void row_group(DType dt, int R, const Gemm *g, int64_t n0, int64_t t_begin, int64_t t_end) {
    int64_t t = t_begin;
    for (; t + TILE_M <= t_end; t += TILE_M) tile(dt, R, TILE_M, g, n0, t);
    switch (t_end - t) {
    case 3: tile(dt, R, 3, g, n0, t); break;
    case 2: tile(dt, R, 2, g, n0, t); break;
    case 1: tile(dt, R, 1, g, n0, t); break;
    default: break;
    }
}

KERNEL void rows_avx2_dt(DType dt, const Gemm *g, int64_t n_begin, int64_t n_end) {
    if (g->T == 1) {
        int64_t n = n_begin;
        for (; n + DECODE_R <= n_end; n += DECODE_R) tile(dt, DECODE_R, 1, g, n, 0);
        for (; n < n_end; n++) tile(dt, 1, 1, g, n, 0);
        return;
    }
    /* Token block: as many x rows as fit in ~256 KiB (at least one tile's worth). */
    int64_t tb = (256 * 1024) / (g->K * (int64_t)sizeof(float));
    tb = tb < TILE_M ? TILE_M : tb / TILE_M * TILE_M;
    for (int64_t t0 = 0; t0 < g->T; t0 += tb) {
        int64_t t1 = t0 + tb < g->T ? t0 + tb : g->T;
        int64_t n = n_begin;
        for (; n + TILE_R <= n_end; n += TILE_R) row_group(dt, TILE_R, g, n, t0, t1);
        for (; n < n_end; n++) row_group(dt, 1, g, n, t0, t1);
    }
}

TARGET_AVX2 static void rows_avx2(const Gemm *g, int64_t n_begin, int64_t n_end) {
    switch (g->dt) {
    case DT_F16: rows_avx2_dt(DT_F16, g, n_begin, n_end); break;
    case DT_BF16: rows_avx2_dt(DT_BF16, g, n_begin, n_end); break;
    default: rows_avx2_dt(DT_F32, g, n_begin, n_end); break;
    }
}

/* ---- AVX-512 path ----------------------------------------------------------------------
 * The same tiles on zmm registers: 16 floats per load, 32 registers. Each output keeps two
 * accumulators, one for the even and one for the odd 16-wide steps of k (the decode GEMV
 * then has 2 x 4 independent FMA chains while the weights stream in). Every output is
 * summed the same way whatever the tile it belongs to (R, M) and whatever T:
 *   acc0 += the even 16-blocks, acc1 += the odd ones, s = reduce(acc0 + acc1), then the
 *   K % 16 leftover products in order, then the bias;
 * so a token's result does not depend on the other tokens of the call (batch invariance). */

#define KERNEL512 static inline __attribute__((always_inline, target("avx512f,avx2,fma,f16c")))

KERNEL512 __m512 load_w16(DType dt, const void *w, int64_t i) {
    if (dt == DT_F32) return _mm512_loadu_ps((const float *)w + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)((const uint16_t *)w + i));
    if (dt == DT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); /* bfloat16 */
}

/* y[t0 .. t0+M-1][n0 .. n0+R-1] over all of K (R <= 4, M <= 4, R * M <= 12). */
KERNEL512 void tile512(DType dt, int R, int M, const Gemm *g, int64_t n0, int64_t t0) {
    const int64_t K = g->K;
    const float *x = g->x + t0 * K;
    __m512 acc[4][4][2];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) acc[r][m][0] = acc[r][m][1] = _mm512_setzero_ps();

    /* 16-bit weights come straight from memory (decoding reads each once; with more tokens
     * the first tile of a row group does): ask for the rows about two groups ahead while
     * these compute (one 64-byte line per row per step). */
    const bool prefetch = dt != DT_F32;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        if (prefetch)
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                _mm_prefetch((const char *)((const uint16_t *)g->w + (n0 + 2 * DECODE_R + r) * K + k), _MM_HINT_T1);
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m512 wv[4];
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) wv[r] = load_w16(dt, g->w, (n0 + r) * K + k + 16 * h);
#pragma GCC unroll 4
            for (int m = 0; m < M; m++) {
                __m512 xv = _mm512_loadu_ps(x + m * K + k + 16 * h);
                __asm__("" : "+v"(xv)); /* one load for the R FMAs below, not one folded into each */
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) acc[r][m][h] = _mm512_fmadd_ps(wv[r], xv, acc[r][m][h]);
            }
        }
    }
    if (k + 16 <= K) {
        __m512 wv[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) wv[r] = load_w16(dt, g->w, (n0 + r) * K + k);
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_loadu_ps(x + m * K + k);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[r][m][0] = _mm512_fmadd_ps(wv[r], xv, acc[r][m][0]);
        }
        k += 16;
    }

#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
            float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][m][0], acc[r][m][1]));
            for (int64_t kk = k; kk < K; kk++) s += load_w1(dt, g->w, (n0 + r) * K + kk) * x[m * K + kk];
            if (g->bias) s += g->bias[n0 + r];
            g->y[(t0 + m) * g->N + n0 + r] = s;
        }
}

/* Tokens t0 .. t0+M-1 against weight rows n_begin .. n_end-1, TILE_R rows at a time. */
KERNEL512 void rows_tile512(DType dt, int M, const Gemm *g, int64_t n_begin, int64_t n_end, int64_t t0) {
    int64_t n = n_begin;
    for (; n + TILE_R <= n_end; n += TILE_R) tile512(dt, TILE_R, M, g, n, t0);
    for (; n < n_end; n++) tile512(dt, 1, M, g, n, t0);
}

KERNEL512 void rows_avx512_dt(DType dt, const Gemm *g, int64_t n_begin, int64_t n_end) {
    if (g->T == 1) {
        int64_t n = n_begin;
        for (; n + DECODE_R <= n_end; n += DECODE_R) tile512(dt, DECODE_R, 1, g, n, 0);
        for (; n < n_end; n++) tile512(dt, 1, 1, g, n, 0);
        return;
    }
    /* Token tiles outside, the block's rows inside: a tile's TILE_M rows of x stay in L1
     * (4 x K floats) while the block's weights come by from L2, so the loads of x (one per
     * 16 values for the tile's TILE_R rows) hit L1. */
    int64_t t = 0;
    for (; t + TILE_M <= g->T; t += TILE_M) rows_tile512(dt, TILE_M, g, n_begin, n_end, t);
    switch (g->T - t) {
    case 3: rows_tile512(dt, 3, g, n_begin, n_end, t); break;
    case 2: rows_tile512(dt, 2, g, n_begin, n_end, t); break;
    case 1: rows_tile512(dt, 1, g, n_begin, n_end, t); break;
    default: break;
    }
}

__attribute__((target("avx512f,avx2,fma,f16c"))) static void rows_avx512(const Gemm *g, int64_t n_begin,
                                                                          int64_t n_end) {
    switch (g->dt) {
    case DT_F16: rows_avx512_dt(DT_F16, g, n_begin, n_end); break;
    case DT_BF16: rows_avx512_dt(DT_BF16, g, n_begin, n_end); break;
    default: rows_avx512_dt(DT_F32, g, n_begin, n_end); break;
    }
}
#endif /* HAVE_X86 */

/* ---- entry point ----------------------------------------------------------------------- */

/* Weight-row blocks [b0, b1) (cpu_pool.h's loop body). */
static void gemm_blocks(void *ctx, int64_t b0, int64_t b1, int slot) {
    const Gemm *g = ctx;
    (void)slot;
    for (int64_t b = b0; b < b1; b++) {
        int64_t n_begin = b * BLOCK_ROWS, n_end = n_begin + BLOCK_ROWS < g->N ? n_begin + BLOCK_ROWS : g->N;
#if HAVE_X86
        if (simd_level() == 2) {
            rows_avx512(g, n_begin, n_end);
            continue;
        }
        if (simd_level() == 1) {
            rows_avx2(g, n_begin, n_end);
            continue;
        }
#endif
        rows_portable(g, n_begin, n_end);
    }
}

void cpu_gemm_float(const float *x, int64_t T, int64_t K, DType wdt, const void *w, int64_t N,
                    const float *bias, float *y) {
    if (T <= 0 || N <= 0) return;
    if (K <= 0) { /* empty sum: y = b */
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) y[t * N + n] = bias ? bias[n] : 0.0f;
        return;
    }
    Gemm g = {.x = x, .w = w, .bias = bias, .y = y, .T = T, .K = K, .N = N,
              .dt = wdt == DT_F16 || wdt == DT_BF16 ? wdt : DT_F32};
    /* Threads only pay off past a few hundred thousand multiply-adds. */
    const bool par = (double)T * (double)K * (double)N >= 1 << 17;
    /* One block per piece, handed out as threads come free: a thread slowed down by
     * something else on its core does not hold the others up. */
    const int64_t nblocks = (N + BLOCK_ROWS - 1) / BLOCK_ROWS;
    cpu_parallel_for(nblocks, 1, par, gemm_blocks, &g);
}
