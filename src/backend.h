/* backend.h — the operations the model code needs, and nothing else.
 *
 * A backend (CPU in src/cpu/, CUDA in cuda/) is a table of these functions. Model
 * code (model.c's blocks, arch_*.c's stages) describes each network once by calling
 * them and never touches activation memory directly (unless host_memory says it may): activation buffers are float32 arrays that
 * belong to the backend (host memory on CPU, device memory on CUDA), so model code
 * may do pointer arithmetic on them but must not dereference them. Backends know
 * nothing of OPT or BLOOM.
 *
 * All activations are row-major float32 [T, dim], one row per token. The KV cache is either
 * float32 too, or the one 16-bit buffer: IEEE half values (uint16_t bit patterns), rows of
 * heads*head_dim, held in an ordinary backend buffer, alloc((n + 1) / 2) floats for n
 * halves, cast to uint16_t *; only store_f16 writes it and only attention reads it. */
#ifndef LLMINT8_BACKEND_H
#define LLMINT8_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"
#include "quant.h"

/* A weight matrix as found on the host (usually inside the mapped checkpoint). */
typedef struct HostMatrix {
    DType dtype;          /* F16, BF16, F32; or I8 for a pre-quantized projection */
    int64_t rows, cols;   /* [out_features, in_features] */
    const void *data;
    const float *scb;     /* I8 only: per-row absmax [rows] */
} HostMatrix;

/* A projection (nn.Linear) in the backend's format: 16-bit as stored, or int8 with
 * per-row scales, according to the QuantConfig it was created with. */
typedef struct BkLinear BkLinear;
/* A 16-bit matrix kept as stored: embedding tables, the tied lm_head. */
typedef struct BkMatrix BkMatrix;

typedef struct AttentionArgs {
    const float *q;       /* [T, heads*head_dim], the new tokens' queries */
    const void *k, *v;    /* caches [n_past + T, heads*head_dim]; rows 0..n_past+T-1 are valid
                           * (the new tokens' rows already stored) */
    bool kv_f16;          /* the caches hold IEEE half (uint16_t) values, else float32 */
    float *out;           /* [T, heads*head_dim] */
    int T, n_past, heads, head_dim;
    float scale;          /* multiplies q.k before the softmax */
    const float *alibi;   /* backend buffer [heads] of ALiBi slopes (BLOOM), or NULL (OPT) */
} AttentionArgs;

typedef struct Backend Backend;
struct Backend {
    const char *name;       /* "cpu", "cuda" */
    /* True when activation buffers are ordinary host memory (CPU): the caller may read and
     * write them directly instead of going through download/upload. */
    bool host_memory;
    void (*destroy)(Backend *bk);
    /* One line naming what this backend selected at run time, e.g.
     *   "cpu: 2 threads; int8 matmul: avx512vnni; fp16 matmul: avx2+fma+f16c"
     *   "cuda: NVIDIA H100 80GB HBM3 (compute capability 9.0); int8 matmul: cuBLASLt int8
     *    (COMPUTE_32I); fp16 matmul: cuBLASLt fp16 (COMPUTE_32F)"
     * for --version, info and bench. The string belongs to the backend (valid until the
     * next describe or destroy). */
    const char *(*describe)(Backend *bk);
    /* Failure is sticky, as on a CUDA stream: an operation that fails (out of memory in its
     * scratch area, a kernel launch error, ...) records the first error and leaves its output
     * undefined; later operations may do nothing. Backends never print. sync() waits for all
     * queued work (the CPU's operations are finished when they return; CUDA's are queued on
     * a stream) and returns 0, or -1 with that first error in err, and clears it, so that the
     * next operations run again. Every model call ends with a sync, so no failure goes
     * unreported. Creating objects (linear_create, matrix_create) reports its errors
     * directly instead. */
    int (*sync)(Backend *bk, Error *err);

    /* ---- activation memory (float32) ---- */
    float *(*alloc)(Backend *bk, size_t n);          /* zero-filled; NULL on out-of-memory */
    void (*release)(Backend *bk, float *p);
    void (*upload)(Backend *bk, float *dst, const float *src, size_t n);
    void (*download)(Backend *bk, float *dst, const float *src, size_t n);
    void (*copy)(Backend *bk, float *dst, const float *src, size_t n);

    /* ---- weights ---- */
    /* Creates a projection y = x W^T + b from host weights. With a 16-bit W and an int8
     * mode, quantizes on creation (the 16-bit copy is not kept); with an I8 W (int8
     * checkpoint) uses it as is. bias (host, float32 [rows]) may be NULL. */
    BkLinear *(*linear_create)(Backend *bk, const HostMatrix *w, const float *bias,
                               const QuantConfig *q, Error *err);
    void (*linear_free)(Backend *bk, BkLinear *l);
    BkMatrix *(*matrix_create)(Backend *bk, const HostMatrix *m, Error *err);
    void (*matrix_free)(Backend *bk, BkMatrix *m);
    /* Bytes of backend memory the object holds (for `info` and `bench`). */
    size_t (*linear_bytes)(const BkLinear *l);
    size_t (*matrix_bytes)(const BkMatrix *m);
    /* Bytes of device memory in use on the backend's device, by anyone (0 for the CPU,
     * whose memory shows in the process's RSS). For `bench`. */
    size_t (*device_memory_in_use)(Backend *bk);

    /* ---- operations ---- */
    /* y[T, rows] = x[T, cols] W^T + b, with the quantization chosen at creation. */
    void (*linear)(Backend *bk, const BkLinear *l, const float *x, int T, float *y);
    /* y[T, rows] = x[T, cols] M^T  (tied lm_head: logits from the embedding table). */
    void (*matmul)(Backend *bk, const BkMatrix *m, const float *x, int T, float *y);
    /* out[t] = M[ids[t]] (or out[t] += M[ids[t]] when accumulate); ids is a host array,
     * already checked to be < rows. */
    void (*embed)(Backend *bk, const BkMatrix *m, const int32_t *ids, int T, float *out, bool accumulate);
    /* LayerNorm over the last dim: y = (x - mean) / sqrt(var + eps) * w + b, statistics
     * in float32; w and b are backend buffers [dim] or NULL (no affine). y may alias x. */
    void (*layernorm)(Backend *bk, const float *x, const float *w, const float *b, float eps,
                      int T, int dim, float *y);
    void (*add)(Backend *bk, float *y, const float *x, size_t n);   /* y += x */
    void (*relu)(Backend *bk, float *x, size_t n);
    /* 0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2))) */
    void (*gelu_tanh)(Backend *bk, float *x, size_t n);
    /* [T][heads][3][head_dim] (BLOOM fused QKV) -> q, k, v each [T][heads*head_dim]. */
    void (*split_qkv)(Backend *bk, const float *qkv, int T, int heads, int head_dim,
                      float *q, float *k, float *v);
    /* dst[i] = x[i] rounded to IEEE half, to nearest even (torch's .half()), for i < n:
     * new keys and values into the KV cache. Overflow gives +-inf, NaN stays NaN. */
    void (*store_f16)(Backend *bk, const float *x, size_t n, uint16_t *dst);
    /* Causal softmax attention; see AttentionArgs. Half keys and values are widened to
     * float exactly; scores, softmax and the weighted sum are float32. The result for
     * one query depends only on its own q and the cache rows it sees (not on T or n_past
     * otherwise): the reduction order is the same whatever the batch. */
    void (*attention)(Backend *bk, const AttentionArgs *a);

    /* ---- reading out the logits: only small results come back to the host ---- */
    /* Per-token negative log-likelihood for perplexity, rows of x [rows, n]:
     *   nll[r] = log(sum_i exp(x[r][i])) - x[r][targets[r]]
     * computed as max + log(sum exp(x - max)) so nothing overflows. targets (host [rows],
     * each < n) may hold -1 for rows not scored, whose nll is NaN. nll is a host array. */
    void (*token_nll)(Backend *bk, const float *x, int rows, int n, const int32_t *targets, double *nll);
    /* Index of the largest of x[0..n) (the first one on ties, as torch.argmax). */
    int32_t (*argmax)(Backend *bk, const float *x, int n);
    /* Hugging Face's repetition penalty on the listed ids (host array, distinct, each < n):
     * x[id] = x[id] > 0 ? x[id] / penalty : x[id] * penalty. */
    void (*penalize)(Backend *bk, float *x, const int32_t *ids, int n_ids, float penalty);
    /* The k most probable entries of p = softmax(x[0..n) / temperature): ids[j] and
     * probs[j] = p[ids[j]] (host arrays [k]), ordered by probability, highest first, ties
     * by the lower id. 1 <= k <= min(n, BACKEND_MAX_CANDIDATES); temperature > 0. The
     * probabilities are normalised over all n entries, not over the k returned. */
    void (*top_candidates)(Backend *bk, const float *x, int n, float temperature, int k, int32_t *ids,
                           float *probs);
};

/* The most candidates top_candidates returns; sampling that needs more (a nucleus wider
 * than this with no top-k) downloads the whole row instead. */
#define BACKEND_MAX_CANDIDATES 1024

/* Creates the backend named "cpu", "cuda" or "cuda:N" (GPU N); "auto" is CUDA when a GPU is usable, else
 * the CPU, and then fallback (when not NULL) receives a sentence saying why, for the
 * caller to show (it is left empty otherwise). threads <= 0 means one per core (CPU). */
Backend *backend_create(const char *name, int threads, Error *fallback, Error *err);
/* Names of the backends compiled into this binary, e.g. "cpu, cuda". */
const char *backend_compiled_list(void);

Backend *cpu_backend_create(int threads, Error *err);
#ifdef LLMINT8_HAVE_CUDA
Backend *cuda_backend_create(Error *err);   /* fails with a clear message when no GPU */
/* The same on GPU `device` (0 = the first that CUDA_VISIBLE_DEVICES shows). Backends on
 * different GPUs may be used from one thread one after another (a pipeline's stages). */
Backend *cuda_backend_create_on(int device, Error *err);
#endif

#endif
