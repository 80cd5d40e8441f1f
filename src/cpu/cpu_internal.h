/* cpu_internal.h — how the CPU backend's files divide the work.
 *
 *   cpu_backend.c  the Backend table: memory, LayerNorm, attention, activations, embeddings,
 *                  and BkLinear/BkMatrix objects, dispatching projections to:
 *   cpu_gemm.c     y = x W^T (+ b) with W float-typed as stored (F16 / BF16 / F32),
 *                  SIMD (AVX2+FMA+F16C chosen at run time, portable C fallback), OpenMP.
 *   cpu_int8.c     int8 projections: weights quantized once, activations per call,
 *                  exact int32 GEMM, dequantization, the 16-bit outlier product, and the
 *                  paper's ablation modes (QuantMode).
 *
 * Threads: OpenMP; cpu_backend_create() sets the count once (omp_set_num_threads). */
#ifndef LLMINT8_CPU_INTERNAL_H
#define LLMINT8_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"

/* y[T,N] = x[T,K] W^T + bias, W[N,K] of dtype wdt (F16/BF16/F32) row-major; bias may be NULL.
 * Accumulation in float32. */
void cpu_gemm_float(const float *x, int64_t T, int64_t K, DType wdt, const void *w, int64_t N,
                    const float *bias, float *y);

/* True when the AVX2/FMA/F16C kernels are in use (for `--version` and `bench`). */
int cpu_has_avx2(void);

typedef struct CpuInt8Linear CpuInt8Linear;

/* Builds an int8 projection for mode q->mode (any mode but QUANT_FP16) from 16-bit weights
 * (quantized here; nothing of w is kept) or from an I8 HostMatrix with scb (used as is).
 * bias: host float32 [N] or NULL (copied). */
CpuInt8Linear *cpu_int8_create(const HostMatrix *w, const float *bias, const QuantConfig *q, Error *err);
void cpu_int8_free(CpuInt8Linear *l);
size_t cpu_int8_bytes(const CpuInt8Linear *l);
/* y[T,N] = the quantized product of x[T,K] (see quant.h for the math of each mode). */
void cpu_int8_forward(const CpuInt8Linear *l, const float *x, int64_t T, float *y);
/* The same, also returning the exact int32 accumulators C32[T,N] and the activation
 * statistic per row (SCA, the absmax; the range for zero-point modes); either may be NULL. */
void cpu_int8_forward_ex(const CpuInt8Linear *l, const float *x, int64_t T, float *y, int32_t *acc32,
                         float *sca);
/* The int8 GEMM kernel in use: "avx512vnni", "avx2" or "portable", chosen once from the
 * CPU's features ("portable" when LLMINT8_NO_SIMD=1). cpu_int8_use_kernel forces one
 * (tests, bench); -1 if unknown or this CPU lacks it. */
const char *cpu_int8_kernel(void);
int cpu_int8_use_kernel(const char *name);

#endif
