/* cuda_internal.h — how the CUDA backend's files divide the work (CUDA C++ only).
 *
 *   cuda_backend.cu  the Backend table: device, stream, memory, weight objects
 *                    (BkLinear / BkMatrix) and the dispatch of every operation.
 *   cuda_gemm.cu     cuBLASLt matrix products: fp16 x fp16 -> float32 (fp32 accumulation)
 *                    and int8 x int8 -> int32 (exact), with a cached plan per weight.
 *   cuda_kernels.cu  the small kernels: fp32 -> fp16 conversion, LayerNorm, add, ReLU,
 *                    GELU, embedding lookup, QKV split, causal attention.
 *   cuda_int8.cu     LLM.int8(): activation quantization with outlier detection, and the
 *                    dequantization epilogue with the 16-bit outlier product.
 *   cuda_readout.cu  reading out the logits: per-token NLL, argmax, repetition penalty and
 *                    the top candidates of the softmax (only small results come back).
 *
 * Execution model: everything runs in order on one stream (CudaBackend.stream); nothing
 * inside a layer waits for the GPU. Only sync(), download(), the readouts that return host
 * data (token_nll, argmax, top_candidates), release/free, weight creation and the growth
 * of a scratch buffer synchronise.
 *
 * Errors (the sticky status of backend.h): a failing CUDA or cuBLASLt call inside an
 * operation records the first failure with cuda_fail / cuda_check / cuda_check_launch —
 * the operation or kernel's name and CUDA's or cuBLASLt's own words — in `error`; every
 * later operation then does nothing, download() fills its output with NaN and the
 * read-outs return NaN / 0, until sync() (cuda_backend.cu) returns the error and clears it.
 * Nothing here prints. Weight creation returns its errors normally. */
#ifndef LLMINT8_CUDA_INTERNAL_H
#define LLMINT8_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "backend.h"
}

/* Rows of the padded weight and activation layouts: K (and N for int8 weights) are
 * padded with zeros so that every row starts 16-byte aligned and cuBLASLt's int8
 * kernels get the multiples of 4 they require. The padding contributes 0 to every
 * product. */
#define CUDA_PAD_K 16
#define CUDA_PAD_N 4
static inline int64_t cuda_round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* A growable device buffer for per-call intermediates (quantized activations, int32
 * accumulators, ...). Growing it synchronises the stream once; after the first call of
 * the largest size no call allocates. */
typedef struct CudaScratch {
    void *ptr;
    size_t bytes;
} CudaScratch;

/* A cuBLASLt product D = W x^T for one weight W (rows x k, row-major, padded); see the top
 * of cuda_gemm.cu for how that reads in cuBLAS's column-major terms. The layouts and the
 * chosen algorithm depend on T, so the last T's are cached. */
typedef struct LtPlan {
    bool int8;                    /* int8 -> int32, else fp16 -> float32 */
    int64_t rows, k;              /* rows of D (= ld of D), inner dimension (= ld of A, B) */
    const float *bias;            /* fused as a cuBLASLt epilogue when it has an algorithm */
    bool bias_fused;              /* false: the caller adds the bias itself */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    int T;                        /* T the cached lb, lc, algo were made for; 0 = none */
    uint32_t align_d;             /* ... and the alignment of D (bytes, power of two) */
    cublasLtMatmulAlgo_t algo;
} LtPlan;

typedef struct CudaBackend {
    Backend base;                 /* first member: a Backend * is a CudaBackend * */
    int device;
    char device_name[256];        /* as the driver names it, e.g. "NVIDIA H100 80GB HBM3" */
    char description[512];        /* describe()'s answer (backend.h) */
    int cc_major, cc_minor;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace;              /* cuBLASLt workspace */
    size_t workspace_bytes;
    size_t attn_max_smem;         /* dynamic shared memory the attention kernel may use */

    /* per-call intermediates */
    CudaScratch x16;              /* fp16 activations [T, Kp] */
    CudaScratch ca;               /* int8 activations [T, Kp] */
    CudaScratch sca;              /* float [T] row scales */
    CudaScratch c32;              /* int32 accumulators [T, Np] */
    CudaScratch colflags;         /* int32 [K] outlier-column flags, all 0 between calls */
    CudaScratch cols;             /* int32: arrival counter, count, sorted outlier columns */
    CudaScratch rows;             /* int32: per-token outlier counts [T] and lists [T, cap] */
    CudaScratch ids;              /* int32 token ids [T] */
    CudaScratch readout;          /* results of the readouts: NLLs and targets, argmax, candidates */

    /* host staging for weight uploads (pinned when possible) */
    void *staging;
    size_t staging_bytes;
    bool staging_pinned;

    /* the sticky status (see the top of this file) */
    bool failed;
    char error[512];
} CudaBackend;

/* Weights in fp16, [rows, kp] row-major with zero padding columns. */
typedef struct Fp16Weight {
    __half *w;
    int64_t rows, cols, kp;
    LtPlan plan;
} Fp16Weight;

/* An int8 projection in the bitsandbytes layout: CB [np, kp] int8 (zero padding rows and
 * columns), SCB [np] float (0 in the padding rows). */
typedef struct Int8Weight {
    int8_t *cb;
    float *scb;
    int64_t rows, cols, np, kp;
    float tau;                    /* outlier threshold; 0 = no decomposition (vector-wise) */
    OutlierScope scope;
    LtPlan plan;
} Int8Weight;

struct BkLinear {
    bool is_int8;
    Fp16Weight f16;               /* QUANT_FP16 */
    Int8Weight i8;                /* QUANT_LLM_INT8, QUANT_VECTORWISE */
    float *bias;                  /* device [rows] or NULL */
    size_t bytes;
};

struct BkMatrix {
    Fp16Weight f16;
    size_t bytes;
};

/* ---- reductions shared by the kernels (blockDim.x a multiple of 32, at most 1024) ---- */
/* Sums of float, double (read-outs: sums of exponentials) or int (counts). */
template <typename T> static __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Sum / max over the block; every thread gets the result. `red` is __shared__ T[32] (float
 * for block_max). Starts with a barrier so that `red` may be reused by consecutive calls. */
template <typename T> static __device__ __forceinline__ T block_sum(T v, T *red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nwarps ? red[lane] : T(0);
    return warp_sum(v);
}
static __device__ __forceinline__ float block_max(float v, float *red) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nwarps ? red[lane] : -INFINITY;
    return warp_max(v);
}

/* ---- cuda_backend.cu ---- */
/* Makes cb's GPU the calling thread's current device (every backend entry point does). */
void cuda_make_current(CudaBackend *cb);
/* Records the first failure as the sticky error (printf-style message); returns -1. */
int cuda_fail(CudaBackend *cb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Checks a CUDA status / the last kernel launch; on failure records "what: reason". */
int cuda_check(CudaBackend *cb, cudaError_t e, const char *what);
int cuda_check_launch(CudaBackend *cb, const char *kernel);
/* Makes s hold at least `bytes` of device memory; memory new to s is zero-filled (in stream
 * order). Returns 0, or -1 with the sticky error set. */
int cuda_scratch_reserve(CudaBackend *cb, CudaScratch *s, size_t bytes, const char *what);

/* ---- cuda_gemm.cu ---- */
/* cuBLASLt is loaded at run time (dlopen), not linked: its library is half a gigabyte,
 * and merely loading it costs every start of llmint8 about 0.2 s and 200 MB (seconds
 * from a cold disk), also on machines that never use a GPU. cuda_backend_create() calls
 * cuda_lt_load(); every cuBLASLt call goes through this table. */
typedef struct LtApi {
    decltype(&cublasLtCreate) Create;
    decltype(&cublasLtDestroy) Destroy;
    decltype(&cublasLtMatmul) Matmul;
    decltype(&cublasLtMatmulAlgoGetHeuristic) MatmulAlgoGetHeuristic;
    decltype(&cublasLtMatmulDescCreate) MatmulDescCreate;
    decltype(&cublasLtMatmulDescDestroy) MatmulDescDestroy;
    decltype(&cublasLtMatmulDescSetAttribute) MatmulDescSetAttribute;
    decltype(&cublasLtMatmulPreferenceCreate) MatmulPreferenceCreate;
    decltype(&cublasLtMatmulPreferenceDestroy) MatmulPreferenceDestroy;
    decltype(&cublasLtMatmulPreferenceSetAttribute) MatmulPreferenceSetAttribute;
    decltype(&cublasLtMatrixLayoutCreate) MatrixLayoutCreate;
    decltype(&cublasLtMatrixLayoutDestroy) MatrixLayoutDestroy;
} LtApi;
extern LtApi LT;
/* Loads libcublasLt.so.<major of the headers> once: from the library path, else from the
 * toolkit this was built with (CUDA_LIB_DIR). 0, or -1 with a message. */
int cuda_lt_load(Error *err);

const char *cuda_lt_status_name(cublasStatus_t s);
/* Prepares a plan for W [rows, k] (already padded). bias (device, float [rows]) is only
 * used by fp16 plans. */
int lt_plan_init(CudaBackend *cb, LtPlan *p, bool int8, int64_t rows, int64_t k, const float *bias,
                 Error *err);
void lt_plan_free(LtPlan *p);
/* D [T, rows] (row-major, int32 or float32) = x [T, k] W^T (+ bias if p->bias_fused).
 * Failures set the sticky error and return -1. */
int lt_plan_run(CudaBackend *cb, LtPlan *p, const void *w, const void *x, int T, void *d);

/* ---- cuda_kernels.cu ---- (launchers; each checks its launch) */
void cuda_f32_to_f16_rows(CudaBackend *cb, const float *x, int T, int64_t K, int64_t kp, __half *out);
void cuda_add_bias(CudaBackend *cb, float *y, const float *bias, int T, int64_t n);
void cuda_layernorm(CudaBackend *cb, const float *x, const float *w, const float *b, float eps, int T,
                    int dim, float *y);
void cuda_add(CudaBackend *cb, float *y, const float *x, size_t n);
void cuda_relu(CudaBackend *cb, float *x, size_t n);
void cuda_gelu_tanh(CudaBackend *cb, float *x, size_t n);
void cuda_embed(CudaBackend *cb, const __half *table, int64_t rows, int64_t cols, int64_t kp,
                const int32_t *ids, int T, float *out, bool accumulate);
void cuda_split_qkv(CudaBackend *cb, const float *qkv, int T, int heads, int head_dim, float *q,
                    float *k, float *v);
void cuda_store_f16(CudaBackend *cb, const float *x, size_t n, uint16_t *dst);
void cuda_attention(CudaBackend *cb, const AttentionArgs *a);
/* Raises the attention kernel's dynamic shared memory limit; returns the bytes allowed. */
int cuda_attention_setup(CudaBackend *cb, size_t *max_smem, Error *err);

/* ---- cuda_int8.cu ---- */
/* y [T, rows] = the LLM.int8() product of x [T, cols] (see quant.h), plus bias. When
 * dbg_acc (device int32 [T, rows]) is not NULL it receives the exact accumulators
 * C32 with the outlier columns excluded, as quant_ref_linear defines them. */
void cuda_int8_forward(CudaBackend *cb, const Int8Weight *w, const float *bias, const float *x, int T,
                       float *y, int32_t *dbg_acc);

/* ---- cuda_readout.cu ---- (the Backend operations of the same names, src/backend.h; host
 * arrays in and out; under a sticky error: NaN NLLs and probabilities, argmax and ids 0) */
void cuda_token_nll(CudaBackend *cb, const float *x, int rows, int n, const int32_t *targets, double *nll);
int32_t cuda_argmax(CudaBackend *cb, const float *x, int n);
void cuda_penalize(CudaBackend *cb, float *x, const int32_t *ids, int n_ids, float penalty);
void cuda_top_candidates(CudaBackend *cb, const float *x, int n, float temperature, int k, int32_t *ids,
                         float *probs);

#endif
