/* cpu_internal.h — how the CPU backend's files divide the work.
 *
 *   cpu_backend.c       the Backend table: memory (activations and the scratch arena), the
 *                       sticky status and describe(), BkLinear/BkMatrix objects, LayerNorm,
 *                       activations, embeddings, QKV split and the logit read-outs; it hands
 *                       projections and attention to the files below.
 *   cpu_gemm.c          y = x W^T (+ b) with W float-typed as stored (F16 / BF16 / F32),
 *                       SIMD (AVX-512F or AVX2+FMA+F16C chosen at run time, portable C fallback).
 *   cpu_int8.c          int8 projections: weights quantized once, activations per call,
 *                       the GEMM driver, dequantization, the 16-bit outlier product, and the
 *                       paper's ablation modes (QuantMode). The math is docs/QUANT.md's.
 *   cpu_int8_kernels.c  the int8 GEMM micro-kernels (portable C, AVX2, AVX-512 VNNI, AMX) and
 *                       the run-time choice between them.
 *   cpu_attention.c     the 16-bit KV cache: storing rows into it (F16C) and causal softmax
 *                       attention over it (online softmax, AVX2).
 *   cpu_avx2.h          AVX2 helpers shared by cpu_backend.c (GELU) and cpu_attention.c.
 *   cpu_pool.c/.h       the threads: parallel loops whose pieces go to whichever thread is
 *                       free, and the adaptive default thread count.
 *
 * Threads: cpu_pool.h; cpu_backend_create() sets the count (cpu_pool_set_threads). Every
 * parallel loop writes each output from one piece only, so results do not depend on it.
 *
 * Errors: creating objects returns errors normally. An operation that fails (only the int8
 * forward can: its scratch may fail to grow) returns -1 with an Error here, and
 * cpu_backend.c keeps the first one as the backend's sticky status (backend.h, sync). */
#ifndef LLMINT8_CPU_INTERNAL_H
#define LLMINT8_CPU_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* Ops on fewer elements than this stay on one thread: starting a parallel region costs a
 * few microseconds, more than adding 2048 floats. */
enum { CPU_PAR_MIN = 1 << 15 };

/* ---- cpu_backend.c: scratch memory ------------------------------------------------------- */

/* A growable host buffer for the intermediates of one call, kept between calls so that
 * steady-state calls allocate nothing. */
typedef struct CpuScratch {
    void *ptr;               /* 64-byte aligned, or NULL */
    size_t bytes;
    bool fail_next;          /* test hook (cpu_backend_fail_next_scratch): the next reserve fails */
} CpuScratch;

/* Makes s hold at least `bytes` (with some headroom when it grows; the old contents are not
 * kept). Returns s->ptr, or NULL when out of memory (s is then empty). */
void *cpu_scratch_reserve(CpuScratch *s, size_t bytes);
void cpu_scratch_free(CpuScratch *s);

/* For tests: the CPU backend's next scratch reservation fails as if out of memory, so that
 * the failure path of an operation (sticky status, sync) can be exercised. */
void cpu_backend_fail_next_scratch(Backend *bk);

/* ---- cpu_gemm.c ---------------------------------------------------------------------------- */

/* y[T,N] = x[T,K] W^T + bias, W[N,K] of dtype wdt (F16/BF16/F32) row-major; bias may be NULL.
 * Accumulation in float32. */
void cpu_gemm_float(const float *x, int64_t T, int64_t K, DType wdt, const void *w, int64_t N,
                    const float *bias, float *y);

/* True when the AVX2/FMA/F16C kernels are in use (cpu_gemm.c, attention, GELU): chosen once
 * from the CPU, off when LLMINT8_NO_SIMD is set to anything but "" or "0". */
int cpu_has_avx2(void);
/* True when, beyond that, the AVX-512F kernels are in use (LLMINT8_NO_AVX512 unset, "" or
 * "0"): the GEMM on zmm registers, attention's three-queries-at-once path. */
int cpu_has_avx512(void);
/* The GEMM kernels in use: "avx512f+f16c" (zmm; when the CPU has AVX-512F and
 * LLMINT8_NO_AVX512 is unset, "" or "0"), "avx2+fma+f16c" or "portable C". Each sums a
 * token's outputs in its own fixed order, the same for every T. */
const char *cpu_gemm_kernel(void);

/* ---- cpu_attention.c ------------------------------------------------------------------------- */

/* The Backend operation `attention` (backend.h, AttentionArgs): 0, or -1 when out of memory
 * for its per-thread float copies of the keys and values. */
int cpu_attention(const AttentionArgs *a);
/* The Backend operation `store_f16`: dst[i] = half(x[i]), round to nearest even. */
void cpu_store_f16(const float *x, size_t n, uint16_t *dst);

/* ---- cpu_int8.c ------------------------------------------------------------------------------ */

typedef struct CpuInt8Linear CpuInt8Linear;

/* Per-call intermediates of int8 projections (activation codes and statistics; the 16-bit
 * side of the decomposition, whose size depends on the outliers found). Zero-initialise. */
typedef struct CpuInt8Scratch {
    CpuScratch call;         /* sized by T and K */
    CpuScratch outliers;     /* sized by T, the number of outlier columns and the threads */
} CpuInt8Scratch;

/* Builds an int8 projection for mode q->mode (any mode but QUANT_FP16) from 16-bit weights
 * (quantized here; nothing of w is kept) or from an I8 HostMatrix with scb (used as is).
 * bias: host float32 [N] or NULL (copied). */
CpuInt8Linear *cpu_int8_create(const HostMatrix *w, const float *bias, const QuantConfig *q, Error *err);
void cpu_int8_free(CpuInt8Linear *l);
size_t cpu_int8_bytes(const CpuInt8Linear *l);
/* y[T,N] = the quantized product of x[T,K] (see quant.h for the math of each mode).
 * Intermediates live in `scratch`, grown when a call needs more (NULL: a temporary one,
 * freed before returning). Returns 0, or -1 with err set when scratch cannot grow (out of
 * memory; y is then left as it was). */
int cpu_int8_forward(const CpuInt8Linear *l, CpuInt8Scratch *scratch, const float *x, int64_t T, float *y,
                     Error *err);
/* The same, also returning the exact int32 accumulators C32[T,N] and the activation
 * statistic per row (SCA, the absmax; the range for zero-point modes); either may be NULL. */
int cpu_int8_forward_ex(const CpuInt8Linear *l, CpuInt8Scratch *scratch, const float *x, int64_t T, float *y,
                        int32_t *acc32, float *sca, Error *err);
void cpu_int8_scratch_free(CpuInt8Scratch *s);

/* ---- cpu_int8_kernels.c: the int8 GEMM micro-kernels ------------------------------------------ */

enum {
    INT8_PAD_K = 64,   /* bytes: every row of codes is a multiple of this (one zmm, two ymm) */
    INT8_TILE_T = 4,   /* tokens per register tile */
    INT8_ROWS = 4,     /* weight rows of a tile group: tile1's rows, a multiple of tile4's */
    INT8_AMX_N = 16,   /* weight rows of an AMX tile */
    INT8_AMX_T = 16,   /* tokens of an AMX tile */
    INT8_PANEL_N = 16, /* weight rows of a panel (the packed layout of Int8BlockFn) */
    INT8_PANELS = 4,   /* panels of a block: the rows one Int8BlockFn call computes */
    INT8_PAD_N = 64,   /* weight rows are padded to a multiple of this (the widest row tile) */
};

/* Every kernel computes out[t*ld + r] = sum_k a[t*Kp + k] * w[r*Kp + k] over k < Kp,
 * exactly in int32 (Kp <= QUANT_MAX_EXACT_K rounded up, padding 0). a2 is a second copy of
 * the activation codes prepared for the kernel (see Int8A2), wsum the row sums of w. */
typedef void Int8TileFn(const int8_t *a, const uint8_t *a2, const int8_t *w, const int32_t *wsum,
                        int64_t Kp, int32_t *out, int64_t ld);

/* AMX: the same sums for nt <= 4 * INT8_AMX_T tokens x INT8_AMX_N weight rows, from the
 * activation codes packed as AMX reads them (INT8_A2_AMX_PACK); apack points at the first
 * token's tile (a token index that is a multiple of INT8_AMX_T). */
typedef void Int8Rows16Fn(const uint8_t *apack, int64_t nt, const int8_t *w, int64_t Kp, int32_t *out, int64_t ld);

/* VNNI: the same sums for nt tokens (any count; rows of a + 128 at a_u8 + t Kp) x the
 * INT8_PANELS * INT8_PANEL_N = 64 weight rows of one block, the weights packed in panels:
 * panel p holds rows 16 p .. 16 p + 15 in the same 16 Kp bytes as the row-major layout,
 * reordered so that 4 bytes of k of the 16 rows follow one another,
 *     wp[p * 16 Kp + (k / 4) * 64 + (r % 16) * 4 + k % 4] = w[16 p + r % 16][k],
 * and wp points at the block's first panel. wsum: the block's 64 row sums. */
typedef void Int8BlockFn(const uint8_t *a_u8, int64_t nt, const int8_t *wp, const int32_t *wsum, int64_t Kp,
                         int32_t *out, int64_t ld);

/* The second copy of the activation codes a kernel reads: none, |a| (AVX2), a + 128 (VNNI),
 * or (AMX, for calls of 2 tokens or more) the codes of each INT8_AMX_T tokens t0.. as one
 * block of Kp * INT8_AMX_T bytes: 64-byte slab s of k, then row i < 16 of the slab holds
 * 4 bytes k = 64 s + 4 i .. + 3 of every token in turn:
 *     apack[(t / 16) * 16 Kp + s * 1024 + i * 64 + 4 (t % 16) + j] = a[t][64 s + 4 i + j],
 * tokens past T reading 0 (the "VNNI layout" of the right-hand side of AMX's TDPBSSD). */
typedef enum Int8A2 { INT8_A2_NONE, INT8_A2_ABS, INT8_A2_OFFSET, INT8_A2_AMX_PACK } Int8A2;

typedef struct Int8Kernel {
    const char *name;        /* "portable", "avx2", "avx512vnni", "amx" */
    int rows4;               /* weight rows R of tile4 (divides INT8_ROWS) */
    Int8TileFn *tile4;       /* INT8_TILE_T tokens x rows4 rows (NULL for AMX and VNNI) */
    Int8TileFn *tile1;       /* 1 token x INT8_ROWS rows (AMX: reads a, not a2; NULL for VNNI) */
    Int8Rows16Fn *rows16;    /* AMX: every call of 2 tokens or more; NULL for the others */
    Int8BlockFn *block;      /* VNNI: every call, on weights packed in panels; NULL for the others */
    Int8A2 a2;
    bool avx2;               /* the CPU has AVX2: cpu_int8.c may run its AVX2-compiled loops too */
    bool avx512;             /* and AVX-512F (the VNNI and AMX kernels): its AVX-512 loops too */
} Int8Kernel;

/* The kernel in use: the best this CPU runs, chosen once ("portable" when LLMINT8_NO_SIMD
 * is set to anything but "" or "0"). */
const Int8Kernel *cpu_int8_active_kernel(void);
/* Its name; cpu_int8_use_kernel forces one by name (tests, bench): 0, or -1 if unknown or
 * this CPU lacks it. */
const char *cpu_int8_kernel(void);
int cpu_int8_use_kernel(const char *name);

#endif
