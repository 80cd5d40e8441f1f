/* cuda_kernels.cu — the small kernels of the CUDA backend: conversions, LayerNorm,
 * element-wise activations, embedding lookup, the QKV split and causal attention.
 *
 * Each kernel's CPU twin is the function of the same job in src/cpu/cpu_backend.c, and
 * tests/test_cuda.c compares the two on random data. Activations are float32 [T, dim]
 * row-major; all arithmetic is float32 (expf/tanhf/sqrtf are the accurate versions: this
 * file is never built with --use_fast_math). Launchers check their launch and record a
 * sticky error on failure (cuda_internal.h). */
#include "cuda_internal.h"

/* Threads per block for the element-wise kernels, and a grid large enough to fill any
 * current GPU; the kernels loop (grid-stride) over whatever is left. */
#define EW_THREADS 256
#define EW_MAX_BLOCKS 65535

static unsigned ew_blocks(size_t n) {
    size_t b = (n + EW_THREADS - 1) / EW_THREADS;
    return (unsigned)(b < EW_MAX_BLOCKS ? b : EW_MAX_BLOCKS);
}

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (size_t)gridDim.x * blockDim.x)

/* ---- fp32 -> fp16 activations, padded rows ------------------------------------------
 * out[t, c] = half_rn(x[t, c]) for c < K, 0 for K <= c < kp (the padding columns, which
 * meet the weight's zero padding in the GEMM). Round to nearest even, as torch .half(). */
static __global__ void f32_to_f16_rows_kernel(const float *x, size_t T, size_t K, size_t kp, __half *out) {
    GRID_STRIDE(i, T * kp) {
        size_t t = i / kp, c = i % kp;
        out[i] = c < K ? __float2half_rn(x[t * K + c]) : __float2half_rn(0.0f);
    }
}

void cuda_f32_to_f16_rows(CudaBackend *cb, const float *x, int T, int64_t K, int64_t kp, __half *out) {
    size_t n = (size_t)T * (size_t)kp;
    if (n == 0) return;
    f32_to_f16_rows_kernel<<<ew_blocks(n), EW_THREADS, 0, cb->stream>>>(x, (size_t)T, (size_t)K, (size_t)kp, out);
    cuda_check_launch(cb, "f32_to_f16_rows");
}

/* ---- bias: y[t, j] += bias[j] (used when cuBLASLt has no fused-bias algorithm) ---- */
static __global__ void add_bias_kernel(float *y, const float *bias, size_t T, size_t n) {
    GRID_STRIDE(i, T * n) y[i] += bias[i % n];
}

void cuda_add_bias(CudaBackend *cb, float *y, const float *bias, int T, int64_t n) {
    size_t total = (size_t)T * (size_t)n;
    if (total == 0) return;
    add_bias_kernel<<<ew_blocks(total), EW_THREADS, 0, cb->stream>>>(y, bias, (size_t)T, (size_t)n);
    cuda_check_launch(cb, "add_bias");
}

/* ---- LayerNorm, one block per row -----------------------------------------------------
 *   mean = sum_i x_i / dim
 *   var  = sum_i (x_i - mean)^2 / dim                 (two passes: no cancellation)
 *   y_i  = (x_i - mean) * rstd * w_i + b_i,  rstd = 1 / sqrt(var + eps)   (w, b optional)
 * The CPU twin accumulates the statistics in double; float32 partial sums over at most
 * dim / LN_THREADS values each, added as a tree, stay within a few ulp of that.
 * y may alias x: each thread reads x_i before it writes y_i, and the statistics are
 * complete (block-wide barrier inside block_sum) before any y_i is written. */
#define LN_THREADS 256

static __global__ void layernorm_kernel(const float *x, const float *w, const float *b, float eps, int dim,
                                        float *y) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *yr = y + (size_t)blockIdx.x * dim;
    float s = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i];
    float mean = block_sum(s, red) / (float)dim;
    float v = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float d = xr[i] - mean;
        v += d * d;
    }
    float var = block_sum(v, red) / (float)dim;
    float rstd = 1.0f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float o = (xr[i] - mean) * rstd;
        if (w) o *= w[i];
        if (b) o += b[i];
        yr[i] = o;
    }
}

void cuda_layernorm(CudaBackend *cb, const float *x, const float *w, const float *b, float eps, int T,
                    int dim, float *y) {
    if (T <= 0 || dim <= 0) return;
    layernorm_kernel<<<T, LN_THREADS, 0, cb->stream>>>(x, w, b, eps, dim, y);
    cuda_check_launch(cb, "layernorm");
}

/* ---- element-wise -------------------------------------------------------------------- */
static __global__ void add_kernel(float *y, const float *x, size_t n) {
    GRID_STRIDE(i, n) y[i] += x[i];
}

/* relu(x) = x > 0 ? x : 0 (NaN becomes 0, as on the CPU). */
static __global__ void relu_kernel(float *x, size_t n) {
    GRID_STRIDE(i, n) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

/* BLOOM's GELU (tanh approximation): 0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2))). */
static __global__ void gelu_tanh_kernel(float *x, size_t n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.79788456f * v * (1.0f + 0.044715f * v * v)));
    }
}

void cuda_add(CudaBackend *cb, float *y, const float *x, size_t n) {
    if (n == 0) return;
    add_kernel<<<ew_blocks(n), EW_THREADS, 0, cb->stream>>>(y, x, n);
    cuda_check_launch(cb, "add");
}

void cuda_relu(CudaBackend *cb, float *x, size_t n) {
    if (n == 0) return;
    relu_kernel<<<ew_blocks(n), EW_THREADS, 0, cb->stream>>>(x, n);
    cuda_check_launch(cb, "relu");
}

void cuda_gelu_tanh(CudaBackend *cb, float *x, size_t n) {
    if (n == 0) return;
    gelu_tanh_kernel<<<ew_blocks(n), EW_THREADS, 0, cb->stream>>>(x, n);
    cuda_check_launch(cb, "gelu_tanh");
}

/* ---- embedding lookup, one block per token ---------------------------------------------
 * out[t, c] = table[ids[t], c]  (or += when accumulate), table fp16 [rows, kp] padded.
 * The ids were checked against the table by the caller; an id outside [0, rows) still
 * reads nothing and gives a zero row (adds nothing), as on the CPU. */
static __global__ void embed_kernel(const __half *table, int64_t rows, int64_t cols, int64_t kp,
                                    const int32_t *ids, float *out, bool accumulate) {
    int32_t id = ids[blockIdx.x];
    bool valid = id >= 0 && id < rows;
    const __half *src = table + (valid ? (size_t)id * (size_t)kp : 0);
    float *dst = out + (size_t)blockIdx.x * (size_t)cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = valid ? __half2float(src[c]) : 0.0f;
        dst[c] = accumulate ? dst[c] + v : v;
    }
}

void cuda_embed(CudaBackend *cb, const __half *table, int64_t rows, int64_t cols, int64_t kp,
                const int32_t *ids, int T, float *out, bool accumulate) {
    if (T <= 0) return;
    embed_kernel<<<T, EW_THREADS, 0, cb->stream>>>(table, rows, cols, kp, ids, out, accumulate);
    cuda_check_launch(cb, "embed");
}

/* ---- BLOOM's fused QKV split ------------------------------------------------------------
 * qkv [T][heads][3][head_dim]  ->  q, k, v  [T][heads][head_dim]. */
static __global__ void split_qkv_kernel(const float *qkv, size_t T, int heads, int head_dim, float *q,
                                        float *k, float *v) {
    size_t D = (size_t)heads * head_dim;
    GRID_STRIDE(i, T * D) {
        size_t t = i / D, hd = i % D, h = hd / head_dim, d = hd % head_dim;
        const float *src = qkv + t * 3 * D + h * 3 * head_dim;
        q[i] = src[d];
        k[i] = src[head_dim + d];
        v[i] = src[2 * head_dim + d];
    }
}

void cuda_split_qkv(CudaBackend *cb, const float *qkv, int T, int heads, int head_dim, float *q, float *k,
                    float *v) {
    size_t n = (size_t)T * (size_t)heads * (size_t)head_dim;
    if (n == 0) return;
    split_qkv_kernel<<<ew_blocks(n), EW_THREADS, 0, cb->stream>>>(qkv, (size_t)T, heads, head_dim, q, k, v);
    cuda_check_launch(cb, "split_qkv");
}

/* ---- the 16-bit KV cache: dst[i] = half_rn(x[i]) (round to nearest even) ----------------- */
static __global__ void store_f16_kernel(const float *x, size_t n, __half *dst) {
    GRID_STRIDE(i, n) dst[i] = __float2half_rn(x[i]);
}

void cuda_store_f16(CudaBackend *cb, const float *x, size_t n, uint16_t *dst) {
    if (n == 0) return;
    store_f16_kernel<<<ew_blocks(n), EW_THREADS, 0, cb->stream>>>(x, n, reinterpret_cast<__half *>(dst));
    cuda_check_launch(cb, "store_f16");
}

/* ---- causal attention, one block per (query token t, head h) ----------------------------
 * The query at position p = n_past + t sees keys j = 0..p:
 *   s_j   = scale * (q . k_j) + slope_h * j          (ALiBi term only for BLOOM)
 *   a_j   = exp(s_j - max_j s_j) / sum_j exp(s_j - max_j s_j)    (softmax in float32)
 *   out   = sum_j a_j v_j
 * Keys and values are float32 or IEEE half in the cache (the kernel's KV type), widened
 * to float as they are read.
 * The L = p + 1 scores live in dynamic shared memory, next to q and a partial-sum area:
 * (head_dim + L + ATT_THREADS) floats. The limit is raised once at start-up to what the
 * GPU allows (cuda_attention_setup): 227 KB on H100, i.e. about 58,000 positions.
 *
 * Work split: each warp computes the dot products of every (nwarps)-th key, its lanes
 * striding over head_dim (coalesced reads of the key row); for the weighted sum of
 * values, the block is cut into groups of head_dim threads, each group summing every
 * (groups)-th position, and the groups' partial sums are added at the end. */
#define ATT_THREADS 128

static __device__ __forceinline__ float kv_load(const float *p) { return *p; }
static __device__ __forceinline__ float kv_load(const __half *p) { return __half2float(*p); }

template <typename KV>
static __global__ void attention_kernel(const float *q, const KV *k, const KV *v, float *out,
                                        int n_past, int heads, int head_dim, float scale,
                                        const float *alibi) {
    extern __shared__ float smem[];
    __shared__ float red[32];
    int t = blockIdx.x, h = blockIdx.y;
    size_t D = (size_t)heads * head_dim;
    int L = n_past + t + 1;
    float *sq = smem, *sc = smem + head_dim, *part = smem + head_dim + L;
    const float *qrow = q + (size_t)t * D + (size_t)h * head_dim;
    const KV *kh = k + (size_t)h * head_dim, *vh = v + (size_t)h * head_dim;

    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) sq[d] = qrow[d];
    __syncthreads();

    /* scores */
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float slope = alibi ? alibi[h] : 0.0f;
    for (int j = warp; j < L; j += nwarps) {
        const KV *kr = kh + (size_t)j * D;
        float dot = 0.0f;
        for (int d = lane; d < head_dim; d += 32) dot += sq[d] * kv_load(kr + d);
        dot = warp_sum(dot);
        if (lane == 0) sc[j] = alibi ? scale * dot + slope * (float)j : scale * dot;
    }
    __syncthreads();

    /* softmax */
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < L; j += blockDim.x) mx = fmaxf(mx, sc[j]);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < L; j += blockDim.x) {
        float e = expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    sum = block_sum(sum, red); /* its barriers also publish every sc[j] */

    /* out = sum_j e_j v_j / sum */
    float *orow = out + (size_t)t * D + (size_t)h * head_dim;
    if (head_dim <= (int)blockDim.x) {
        int groups = blockDim.x / head_dim, g = threadIdx.x / head_dim, d = threadIdx.x % head_dim;
        if (g < groups) {
            float acc = 0.0f;
            for (int j = g; j < L; j += groups) acc += sc[j] * kv_load(vh + (size_t)j * D + d);
            part[g * head_dim + d] = acc;
        }
        __syncthreads();
        if (threadIdx.x < head_dim) {
            float acc = 0.0f;
            for (int gg = 0; gg < groups; gg++) acc += part[gg * head_dim + threadIdx.x];
            orow[threadIdx.x] = acc / sum;
        }
    } else {
        for (int dd = threadIdx.x; dd < head_dim; dd += blockDim.x) {
            float acc = 0.0f;
            for (int j = 0; j < L; j++) acc += sc[j] * kv_load(vh + (size_t)j * D + dd);
            orow[dd] = acc / sum;
        }
    }
}

int cuda_attention_setup(CudaBackend *cb, size_t *max_smem, Error *err) {
    int optin = 0;
    cudaError_t e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, cb->device);
    if (e != cudaSuccess) {
        return err_set(err, "CUDA backend: cudaDeviceGetAttribute(MaxSharedMemoryPerBlockOptin): %s",
                       cudaGetErrorString(e));
    }
    /* This is also the first touch of this file's kernels: a build without code for this
     * GPU's architecture fails here with "no kernel image is available". */
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, attention_kernel<__half>);
    /* the kernel's static shared memory comes out of the same per-block budget (the same
     * for both cache types: the scores and partial sums are float either way) */
    size_t dyn = e == cudaSuccess && (size_t)optin > fa.sharedSizeBytes ? (size_t)optin - fa.sharedSizeBytes : 0;
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(attention_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dyn);
    if (e == cudaSuccess)
        e = cudaFuncSetAttribute(attention_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dyn);
    if (e != cudaSuccess) {
        return err_set(err, "CUDA backend: cannot use GPU '%s' (compute capability %d.%d): %s; rebuild with "
                       "-Dgpu_arch=... including %d%d",
                       cb->device_name, cb->cc_major, cb->cc_minor, cudaGetErrorString(e), cb->cc_major,
                       cb->cc_minor);
    }
    *max_smem = dyn;
    return 0;
}

void cuda_attention(CudaBackend *cb, const AttentionArgs *a) {
    if (a->T <= 0 || a->heads <= 0 || a->head_dim <= 0) return;
    if (a->n_past < 0 || (int64_t)a->n_past + a->T > INT32_MAX / 2) {
        cuda_fail(cb, "attention: invalid n_past %d / T %d", a->n_past, a->T);
        return;
    }
    if (a->heads > 65535) {
        cuda_fail(cb, "attention: %d heads is more than this kernel's grid allows (65535)", a->heads);
        return;
    }
    int L = a->n_past + a->T; /* the longest row: the last query token */
    size_t smem = ((size_t)a->head_dim + (size_t)L + ATT_THREADS) * sizeof(float);
    if (smem > cb->attn_max_smem) {
        cuda_fail(cb, "attention over %d positions with head_dim %d needs %zu bytes of shared memory; this GPU "
                  "allows %zu", L, a->head_dim, smem, cb->attn_max_smem);
        return;
    }
    dim3 grid((unsigned)a->T, (unsigned)a->heads);
    if (a->kv_f16)
        attention_kernel<__half><<<grid, ATT_THREADS, smem, cb->stream>>>(
            a->q, static_cast<const __half *>(a->k), static_cast<const __half *>(a->v), a->out, a->n_past, a->heads,
            a->head_dim, a->scale, a->alibi);
    else
        attention_kernel<float><<<grid, ATT_THREADS, smem, cb->stream>>>(
            a->q, static_cast<const float *>(a->k), static_cast<const float *>(a->v), a->out, a->n_past, a->heads,
            a->head_dim, a->scale, a->alibi);
    cuda_check_launch(cb, "attention");
}
