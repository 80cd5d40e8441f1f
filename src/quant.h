/* quant.h — the int8 quantization math of LLM.int8() (docs/QUANT.md), backend-free.
 *
 * Notation (docs/QUANT.md, "Notation" and "The modes"), for activations X[T,K] (one row
 * per token), weights W[N,K]:
 *   weights, row-wise ("SCB"):  SCB[n] = max_k |fp16(W[n,k])|,  CB[n,k] = rne(W[n,k] * s(SCB[n]))
 *   outlier columns:            O = { k : exists t, |X[t,k]| >= tau }         (tau = 0: none)
 *   activations, per token:     SCA[t] = max{ |X[t,k]| : |X[t,k]| < tau }    (all k if tau = 0)
 *                               CA[t,k] = 0 if k in O, else rne(X[t,k] * s(SCA[t]))
 *   with s(a) = 127/a as bnb's PyTorch code computes it: quant_scale127() below.
 *   int8 GEMM (exact):          C32[t,n] = sum_k CA[t,k] * CB[n,k]
 *   dequant + bias:             Y[t,n] = C32[t,n] * SCA[t] * SCB[n] * (1/16129) + b[n]
 *   outlier part (16-bit):      Y[t,n] += sum_{k in O} X[t,k] * (CB[n,k] * SCB[n] / 127)
 *
 * The functions here are the scalar reference: the CPU backend's fast kernels
 * must agree with them (bit for bit on CA, SCA, C32), and tests compare against
 * them. */
#ifndef LLMINT8_QUANT_H
#define LLMINT8_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

/* How every projection is quantized (the paper's Table 1 rows, see docs/QUANT.md). */
typedef enum QuantMode {
    QUANT_FP16,                 /* no quantization: 16-bit weights as stored */
    QUANT_LLM_INT8,             /* vector-wise + decomposition (bitsandbytes), the default */
    QUANT_VECTORWISE,           /* vector-wise, no decomposition (= LLM_INT8 with tau = 0) */
    QUANT_ROWWISE,              /* weights row-wise, activations tensor-wise */
    QUANT_ROWWISE_DECOMP,       /* row-wise + decomposition */
    QUANT_ABSMAX,               /* tensor-wise absmax, both sides */
    QUANT_ZEROPOINT,            /* tensor-wise asymmetric (zeropoint), both sides */
    QUANT_VECTORWISE_ZEROPOINT, /* per-token zeropoint activations, row-wise weights */
    QUANT_LLM_INT8_ZEROPOINT,   /* vector-wise zeropoint + decomposition */
    QUANT_MODE_COUNT
} QuantMode;

typedef enum OutlierScope {
    OUTLIERS_PER_CALL,   /* bitsandbytes: a column is an outlier if any row of the call has |x| >= tau */
    OUTLIERS_PER_TOKEN,  /* llmint8 option: each row picks its own outlier entries */
} OutlierScope;

typedef struct QuantConfig {
    QuantMode mode;
    float threshold;         /* tau; 0 turns the decomposition off */
    OutlierScope outliers;
} QuantConfig;

/* "llm.int8", "vectorwise", ..., "fp16"; and the reverse (-1 if unknown). */
const char *quant_mode_name(QuantMode m);
int quant_mode_parse(const char *s, QuantMode *out);
/* True for modes whose weights are int8 with a per-row scale (the bitsandbytes layout). */
bool quant_mode_is_rowwise_int8(QuantMode m);
bool quant_mode_uses_decomposition(QuantMode m);

/* Round half to even, as torch.round and CUDA __float2int_rn do. */
static inline int32_t quant_rne(float x) {
    return (int32_t)__builtin_rintf(x); /* default FP environment rounds to nearest even */
}

/* The quantization scale 127/absmax exactly as bitsandbytes' default (CPU) backend gets
 * it: PyTorch evaluates `127.0 / row_stats` as row_stats.reciprocal() * 127, two float32
 * roundings, which differs from one IEEE division at rare ties (the bloom-tiny fixture
 * has one: weight [160, 30] of h.0.mlp.dense_h_to_4h). absmax 0 gives 0 (all codes 0). */
static inline float quant_scale127(float absmax) {
    return absmax > 0.0f ? (1.0f / absmax) * 127.0f : 0.0f;
}

/* bitsandbytes Int8Params._quantize on one weight matrix W[rows, cols] of dtype
 * F16/BF16/F32: rounds each value to fp16 first, SCB[r] = fp16 absmax of the row
 * (as float), CB = rne(w * quant_scale127(SCB[r])) (the bnb CPU path).
 * All-zero rows give CB = 0 and SCB = 0. */
void quant_weight_rowwise(DType dt, const void *w, int64_t rows, int64_t cols, int8_t *cb, float *scb);

/* Dequantized weight value as used by the outlier product: CB * SCB / 127 computed
 * as bnb does, CB * SCB * float32(1/127). */
static inline float quant_dequant_weight(int8_t cb, float scb) {
    return (float)cb * scb * 7.874015718698502e-3f;
}

#define QUANT_DEQUANT_SCALE 6.200012e-05f /* float32(1/16129) = 1/(127*127) */

/* The largest K (in_features) for which the int8 product is exact in int32. Codes are in
 * [-127, 127], so each product is at most 127 * 127 = 16129 in magnitude and a sum of K of
 * them at most K * 16129, which must stay <= 2^31 - 1 = 2147483647: K <= 133144.25. We
 * stop one short of that, at 133143 (133143 * 16129 = 2147463447). Every backend rejects
 * int8 projections with more input features (quant_check_int8_source). */
#define QUANT_MAX_EXACT_K 133143

/* The largest SCB a bitsandbytes weight can have: SCB is the absmax of a row of fp16
 * values, so at most fp16's largest finite value. */
#define QUANT_MAX_SCB 65504.0f

/* Checks that a weight [rows, cols] of dtype dt can become an int8 projection, before a
 * backend uses it: cols <= QUANT_MAX_EXACT_K for every dtype; for an I8 weight (a
 * bitsandbytes checkpoint's CB, `data`, with its row scales `scb`) also that scb is given,
 * that every SCB is a number in [0, QUANT_MAX_SCB] (NaN, infinities and negatives would
 * poison every output of their row), and that no code is -128 (bitsandbytes writes codes in
 * [-127, 127]; the AVX2 kernel relies on it). scb is read with memcpy: inside a mapped
 * checkpoint it need not be aligned. Returns 0, or -1 with a message naming the first
 * problem ("int8 weight: ..."). */
int quant_check_int8_source(DType dt, const void *data, const float *scb, int64_t rows, int64_t cols,
                            Error *err);

/* Reference LLM.int8() linear for float activations x[T,K] (row-major), int8 weights
 * cb[N,K] with scb[N], optional bias[N]; y[T,N]. Mirrors docs/QUANT.md (llm.int8) with the given
 * threshold and outlier scope. If acc32 is not NULL it receives C32[T,N]; if sca is
 * not NULL it receives SCA[T]; if outlier_cols is not NULL (capacity K) it receives the
 * sorted outlier columns (per-call scope) and *n_outliers their count. */
void quant_ref_linear(const float *x, int64_t T, int64_t K, const int8_t *cb, const float *scb,
                      int64_t N, const float *bias, float threshold, OutlierScope scope, float *y,
                      int32_t *acc32, float *sca, int64_t *outlier_cols, int64_t *n_outliers);

#endif
