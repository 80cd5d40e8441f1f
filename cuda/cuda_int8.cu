/* cuda_int8.cu — LLM.int8() projections on the GPU (docs/QUANT.md, notation of src/quant.h).
 *
 * For activations X [T, K] (float32), weights CB [N, K] int8 with row scales SCB [N],
 * bias b [N] and threshold tau, one forward is three launches on the stream:
 *
 *  1. int8_quantize_kernel, one block per token row t:
 *       SCA[t]   = max{ |X[t,k]| : |X[t,k]| < tau }          (all k when tau = 0)
 *       CA[t,k]  = 0 if |X[t,k]| >= tau, else rne(X[t,k] * s(SCA[t])),  s(a) = (1/a) * 127
 *     (s as quant_scale127(), __float2int_rn = round half to even: bit-identical to the CPU),
 *     and the outlier bookkeeping:
 *       per call  (bitsandbytes): O = { k : some row has |X[t,k]| >= tau }. Each block
 *                 flags its outlier columns; the last block to finish (a counter bumped
 *                 after a __threadfence, so that it sees every block's flags) turns the
 *                 flags into the sorted list of O and clears them for the next call.
 *       per token: each row's own outlier entries, listed in ascending order (at most
 *                 ROW_CAP per row kept; a row with more is handled by a full scan below).
 *  2. cuBLASLt int8 GEMM (cuda_gemm.cu): ACC[t,n] = sum_k CA[t,k] CB[n,k], exact int32.
 *  3. int8_epilogue_kernel, one thread per output feature n and a few token rows t:
 *       C32[t,n] = ACC[t,n] - sum_{o in O} CA[t,o] CB[n,o]
 *       Y[t,n]   = C32 * SCA[t] * SCB[n] * (1/16129) + b[n]
 *                + sum_{o in O} X[t,o] * (CB[n,o] * SCB[n] * (1/127))
 *
 * Why the subtraction: bitsandbytes zeroes the outlier columns of CA in every row, also
 * where a row's own entry is small; that needs O, which is only known when all rows are
 * done. Instead of a second pass over CA, step 1 zeroes just the entries >= tau and step 3
 * removes the products of the remaining entries of the (few) outlier columns, exactly, in
 * integers — the result is the C32 of quant_ref_linear, bit for bit. The outlier product
 * reads X in float32 (as the CPU does) and the weight dequantized from CB, so no 16-bit
 * copy of any weight is kept. Per-token outliers have no such columns: their CA entries
 * are already 0.
 *
 * Floating-point order follows the CPU reference (src/quant.c): products left to right,
 * no fused multiply-add (__fmul_rn/__fadd_rn keep nvcc from contracting). */
#include "cuda_internal.h"
#include "cuda_backend.h"

#include <stdlib.h>

enum { OUTL_NONE = 0, OUTL_PER_CALL = 1, OUTL_PER_TOKEN = 2 };

#define Q_THREADS 256
#define EPI_THREADS 256
#define EPI_ROWS 8       /* token rows per epilogue block */
#define EPI_CHUNK 256    /* outlier columns staged in shared memory at a time */
#define ROW_CAP 64       /* per-token outlier entries listed per row */
#define EPI_MAX_GRID_Y 65535

/* Ordered compaction of one chunk of blockDim.x flags (one per thread, all threads must
 * call): returns how many set flags precede this thread's, and the chunk's total. */
static __device__ int block_rank(bool flag, int *total, int *warp_counts) {
    unsigned ballot = __ballot_sync(0xffffffffu, flag);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    __syncthreads(); /* the previous chunk's readers are done with warp_counts */
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0, all = 0;
    for (int w = 0; w < nwarps; w++) {
        int c = warp_counts[w];
        if (w < warp) before += c;
        all += c;
    }
    *total = all;
    return before + __popc(ballot & ((1u << lane) - 1u));
}

/* 127/absmax as quant_scale127() computes it (bnb's PyTorch path): the reciprocal, then
 * times 127, two float32 roundings; 0 for absmax 0 (every code is then 0). */
static __device__ __forceinline__ float scale127(float absmax) {
    return absmax > 0.0f ? __fmul_rn(__frcp_rn(absmax), 127.0f) : 0.0f;
}

/* rne(v) saturated to [-127, 127], NaN -> 0, as the CPU's code_absmax(). For |x| <= absmax
 * the saturation never changes anything; it keeps inf/NaN inputs defined. */
static __device__ __forceinline__ int8_t code127(float v) {
    if (v != v) return 0;
    v = fminf(fmaxf(v, -127.0f), 127.0f);
    return (int8_t)__float2int_rn(v);
}

/* The dequantized weight of the outlier product, as quant_dequant_weight(): CB * SCB * (1/127). */
static __device__ __forceinline__ float dequant_weight(int8_t cb, float scb) {
    return __fmul_rn(__fmul_rn((float)cb, scb), 7.874015718698502e-3f);
}

/* Step 1 (see the top of the file). cols: [0] arrival counter (0 between calls), [1] number
 * of outlier columns, [2..] their sorted indices. */
static __global__ void int8_quantize_kernel(const float *x, int K, int kp, float tau, int mode, int8_t *ca,
                                            float *sca, int *colflags, int *cols, int *row_counts,
                                            int *row_lists) {
    __shared__ float red[32];
    __shared__ int warp_counts[32];
    __shared__ bool is_last;
    int t = blockIdx.x;
    const float *xr = x + (size_t)t * K;

    /* row absmax over the entries below the threshold; flag the outlier columns */
    float m = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
        float a = fabsf(xr[k]);
        if (mode == OUTL_NONE || a < tau) m = fmaxf(m, a);
        else if (a >= tau && mode == OUTL_PER_CALL) colflags[k] = 1;
    }
    m = block_max(m, red);
    if (threadIdx.x == 0) sca[t] = m;
    float scale = scale127(m);

    /* quantize (padding columns K..kp-1 get 0), listing per-token outliers in order */
    int8_t *car = ca + (size_t)t * kp;
    int listed = 0;
    for (int base = 0; base < kp; base += blockDim.x) {
        int k = base + threadIdx.x;
        float v = k < K ? xr[k] : 0.0f;
        bool outlier = mode != OUTL_NONE && fabsf(v) >= tau;
        if (k < kp) car[k] = outlier ? (int8_t)0 : code127(__fmul_rn(v, scale));
        if (mode == OUTL_PER_TOKEN) {
            int total, r = block_rank(outlier, &total, warp_counts);
            if (outlier && listed + r < ROW_CAP) row_lists[(size_t)t * ROW_CAP + listed + r] = k;
            listed += total;
        }
    }
    if (mode == OUTL_PER_TOKEN && threadIdx.x == 0) row_counts[t] = listed;
    if (mode != OUTL_PER_CALL) return;

    /* the last block to arrive collects the flags of all rows into the sorted list: every
     * thread's flag stores are fenced (made visible device-wide) before the barrier, and
     * only then does the block announce its arrival */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(&cols[0], 1) == (int)gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    int n = 0;
    for (int base = 0; base < K; base += blockDim.x) {
        int k = base + threadIdx.x;
        bool f = k < K && __ldcg(&colflags[k]) != 0; /* L2: other SMs wrote them */
        int total, r = block_rank(f, &total, warp_counts);
        if (f) {
            cols[2 + n + r] = k;
            colflags[k] = 0;
        }
        n += total;
    }
    if (threadIdx.x == 0) {
        cols[1] = n;
        cols[0] = 0;
    }
}

/* Step 3 (see the top of the file). A block covers EPI_THREADS output features (one per
 * thread) and EPI_ROWS token rows, so that each weight byte CB[n, o] of an outlier column is
 * read once per block rather than once per row (those reads are scattered: a row of CB per
 * thread). Sums run over the outlier columns in ascending order, as in quant_ref_linear. */
static __global__ void int8_epilogue_kernel(const int32_t *c32, int np, const float *sca, const float *scb,
                                            const float *bias, int T, int N, const float *x, int K,
                                            const int8_t *ca, int kp, const int8_t *cb, float tau, int mode,
                                            const int *cols, const int *row_counts, const int *row_lists,
                                            float *y, int32_t *dbg_acc) {
    __shared__ int s_cols[EPI_CHUNK];
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    bool active = n < N;
    float scb_n = active ? scb[n] : 0.0f;
    const int8_t *cbr = cb + (size_t)(active ? n : 0) * kp;
    for (int t0 = blockIdx.y * EPI_ROWS; t0 < T; t0 += gridDim.y * EPI_ROWS) {
        int rows = min(EPI_ROWS, T - t0);
        int32_t acc[EPI_ROWS];
        float outl[EPI_ROWS];
#pragma unroll
        for (int r = 0; r < EPI_ROWS; r++) {
            acc[r] = active && r < rows ? c32[(size_t)(t0 + r) * np + n] : 0;
            outl[r] = 0.0f;
        }
        if (mode == OUTL_PER_CALL) {
            int cnt = cols[1];
            for (int base = 0; base < cnt; base += EPI_CHUNK) {
                int m = min(EPI_CHUNK, cnt - base);
                __syncthreads(); /* the previous chunk is done with s_cols */
                for (int i = threadIdx.x; i < m; i += blockDim.x) s_cols[i] = cols[2 + base + i];
                __syncthreads();
                if (!active) continue;
                for (int i = 0; i < m; i++) {
                    int o = s_cols[i];
                    int8_t w8 = cbr[o];
                    float wq = dequant_weight(w8, scb_n);
#pragma unroll
                    for (int r = 0; r < EPI_ROWS; r++) {
                        if (r < rows) { /* the same row for every thread: loads are broadcasts */
                            size_t t = (size_t)(t0 + r);
                            acc[r] -= (int32_t)ca[t * kp + o] * (int32_t)w8;
                            outl[r] = __fadd_rn(outl[r], __fmul_rn(x[t * K + o], wq));
                        }
                    }
                }
            }
        } else if (mode == OUTL_PER_TOKEN && active) {
#pragma unroll
            for (int r = 0; r < EPI_ROWS; r++) {
                if (r >= rows) continue;
                size_t t = (size_t)(t0 + r);
                const float *xr = x + t * K;
                int cnt = row_counts[t];
                float s = 0.0f;
                if (cnt <= ROW_CAP) {
                    const int *list = row_lists + t * ROW_CAP;
                    for (int i = 0; i < cnt; i++) {
                        int o = list[i];
                        s = __fadd_rn(s, __fmul_rn(xr[o], dequant_weight(cbr[o], scb_n)));
                    }
                } else { /* more than the list holds: scan the row */
                    for (int o = 0; o < K; o++) {
                        float xv = xr[o];
                        if (fabsf(xv) >= tau) s = __fadd_rn(s, __fmul_rn(xv, dequant_weight(cbr[o], scb_n)));
                    }
                }
                outl[r] = s;
            }
        }
        if (!active) continue;
        float b = bias ? bias[n] : 0.0f;
#pragma unroll
        for (int r = 0; r < EPI_ROWS; r++) {
            if (r >= rows) continue;
            size_t t = (size_t)(t0 + r);
            float v = __fmul_rn(__fmul_rn(__fmul_rn((float)acc[r], sca[t]), scb_n), QUANT_DEQUANT_SCALE);
            if (bias) v = __fadd_rn(v, b);
            if (mode != OUTL_NONE) v = __fadd_rn(v, outl[r]);
            y[t * N + n] = v;
            if (dbg_acc) dbg_acc[t * N + n] = acc[r];
        }
    }
}

static int outlier_mode(const Int8Weight *w) {
    if (!(w->tau > 0.0f)) return OUTL_NONE;
    return w->scope == OUTLIERS_PER_TOKEN ? OUTL_PER_TOKEN : OUTL_PER_CALL;
}

void cuda_int8_forward(CudaBackend *cb, const Int8Weight *w, const float *bias, const float *x, int T,
                       float *y, int32_t *dbg_acc) {
    if (cb->failed || T <= 0) return;
    int mode = outlier_mode(w);
    size_t Tz = (size_t)T;
    if (cuda_scratch_reserve(cb, &cb->ca, Tz * (size_t)w->kp, "int8 activations") ||
        cuda_scratch_reserve(cb, &cb->sca, Tz * sizeof(float), "row scales") ||
        cuda_scratch_reserve(cb, &cb->c32, Tz * (size_t)w->np * sizeof(int32_t), "int32 accumulators"))
        return;
    if (mode == OUTL_PER_CALL &&
        (cuda_scratch_reserve(cb, &cb->colflags, (size_t)w->cols * sizeof(int), "outlier flags") ||
         cuda_scratch_reserve(cb, &cb->cols, ((size_t)w->cols + 2) * sizeof(int), "outlier columns")))
        return;
    if (mode == OUTL_PER_TOKEN &&
        cuda_scratch_reserve(cb, &cb->rows, Tz * (1 + ROW_CAP) * sizeof(int), "per-token outliers"))
        return;
    int8_t *ca = (int8_t *)cb->ca.ptr;
    float *sca = (float *)cb->sca.ptr;
    int32_t *c32 = (int32_t *)cb->c32.ptr;
    int *row_counts = (int *)cb->rows.ptr, *row_lists = row_counts ? row_counts + T : NULL;
    int K = (int)w->cols, kp = (int)w->kp, N = (int)w->rows, np = (int)w->np;

    int8_quantize_kernel<<<T, Q_THREADS, 0, cb->stream>>>(x, K, kp, w->tau, mode, ca, sca, (int *)cb->colflags.ptr,
                                                          (int *)cb->cols.ptr, row_counts, row_lists);
    if (cuda_check_launch(cb, "int8_quantize")) return;

    /* the plan caches per-T state: mutable even though the weight is not */
    if (lt_plan_run(cb, (LtPlan *)&w->plan, w->cb, ca, T, c32)) return;

    int row_tiles = (T + EPI_ROWS - 1) / EPI_ROWS;
    dim3 grid((unsigned)(((int64_t)N + EPI_THREADS - 1) / EPI_THREADS),
              (unsigned)(row_tiles < EPI_MAX_GRID_Y ? row_tiles : EPI_MAX_GRID_Y));
    int8_epilogue_kernel<<<grid, EPI_THREADS, 0, cb->stream>>>(c32, np, sca, w->scb, bias, T, N, x, K, ca, kp, w->cb,
                                                              w->tau, mode, (const int *)cb->cols.ptr, row_counts,
                                                              row_lists, y, dbg_acc);
    cuda_check_launch(cb, "int8_epilogue");
}

/* ---- test hook (cuda_backend.h) ---------------------------------------------------- */
extern "C" int cuda_backend_debug_int8(Backend *bk, const BkLinear *l, const float *x_host, int T, float *y_host,
                                       int32_t *acc_host, float *sca_host, int64_t *outlier_cols,
                                       int64_t *n_outliers, Error *err) {
    CudaBackend *cb = (CudaBackend *)bk;
    cuda_make_current(cb);
    if (!l->is_int8) return err_set(err, "cuda_backend_debug_int8: the projection is not int8");
    if (T <= 0) return err_set(err, "cuda_backend_debug_int8: T must be positive");
    if (cb->failed) return err_set(err, "CUDA backend: %s", cb->error);
    const Int8Weight *w = &l->i8;
    size_t nx = (size_t)T * (size_t)w->cols, ny = (size_t)T * (size_t)w->rows;
    float *x = NULL, *y = NULL;
    int32_t *acc = NULL;
    int *host_cols = NULL;
    int rc = -1;
    cudaError_t e = cudaMalloc(&x, nx * sizeof(float));
    if (e == cudaSuccess) e = cudaMalloc(&y, ny * sizeof(float));
    if (e == cudaSuccess) e = cudaMalloc(&acc, ny * sizeof(int32_t));
    if (e == cudaSuccess) e = cudaMemcpyAsync(x, x_host, nx * sizeof(float), cudaMemcpyHostToDevice, cb->stream);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* reported here: it must not resurface at the next kernel launch */
        err_set(err, "cuda_backend_debug_int8: %s", cudaGetErrorString(e));
        goto done;
    }
    cuda_int8_forward(cb, w, l->bias, x, T, y, acc);
    e = cudaStreamSynchronize(cb->stream);
    if (e != cudaSuccess) cuda_check(cb, e, "cuda_backend_debug_int8");
    if (cb->failed) {
        err_set(err, "CUDA backend: %s", cb->error);
        goto done;
    }
    e = cudaMemcpy(y_host, y, ny * sizeof(float), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess && acc_host) e = cudaMemcpy(acc_host, acc, ny * sizeof(int32_t), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess && sca_host)
        e = cudaMemcpy(sca_host, cb->sca.ptr, (size_t)T * sizeof(float), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess && n_outliers) {
        *n_outliers = 0;
        if (outlier_mode(w) == OUTL_PER_CALL) {
            host_cols = (int *)malloc(((size_t)w->cols + 2) * sizeof(int));
            if (!host_cols) {
                err_set(err, "cuda_backend_debug_int8: out of memory");
                goto done;
            }
            e = cudaMemcpy(host_cols, cb->cols.ptr, ((size_t)w->cols + 2) * sizeof(int), cudaMemcpyDeviceToHost);
            if (e == cudaSuccess) {
                *n_outliers = host_cols[1];
                for (int i = 0; outlier_cols && i < host_cols[1] && i < w->cols; i++)
                    outlier_cols[i] = host_cols[2 + i];
            }
        }
    }
    if (e != cudaSuccess) {
        cudaGetLastError(); /* reported here: it must not resurface at the next kernel launch */
        err_set(err, "cuda_backend_debug_int8: %s", cudaGetErrorString(e));
        goto done;
    }
    rc = 0;
done:
    cudaStreamSynchronize(cb->stream);
    cudaFree(x);
    cudaFree(y);
    cudaFree(acc);
    free(host_cols);
    return rc;
}
