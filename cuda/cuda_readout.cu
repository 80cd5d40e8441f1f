/* cuda_readout.cu — reading out the logits: per-token NLL, argmax, the repetition penalty
 * and the top candidates of the softmax, so that perplexity and generation bring back a
 * few numbers per token instead of whole rows of logits (250,880 floats for BLOOM).
 *
 * The contracts are in src/backend.h; the CPU backend computes the same with src/logits.c
 * (logits_nll, argmax_f32, logits_top_candidates), and tests/test_cuda.c compares the two.
 * token_nll, argmax and top_candidates return host data, so each ends with one synchronous
 * download (the only wait); penalize queues its work and returns at once.
 *
 * argmax and top_candidates run as one block of 1024 threads: a row is at most a few MB,
 * and one block avoids a second launch and a cross-block merge. So that one block can
 * stream a row, each warp reads its own contiguous stretch of x with several loads in
 * flight at a time (warp_sweep). Arithmetic is float32 with accurate expf (this file is
 * never built with --use_fast_math); sums of exponentials are kept in double, as the CPU
 * does. Needs compute capability 7.0 (__match_any_sync).
 *
 * Errors (cuda_internal.h): under a sticky error these operations do nothing on the GPU
 * and return deterministic values: NaN NLLs, argmax 0, candidate ids 0 with NaN
 * probabilities. Arguments outside the contract give the same values (never a crash). */
#include "cuda_internal.h"

#include <limits.h>
#include <string.h>

/* Rows longer than this are refused (NaN / 0 results): keeps every int index and loop
 * bound far from overflow. Vocabularies are below 2^18. */
#define READOUT_MAX_N (1 << 30)

#define NLL_THREADS 256
#define ONE_BLOCK 1024       /* argmax, top_candidates */
#define SWEEP_UNROLL 4       /* loads in flight per lane in warp_sweep */
#define PEN_THREADS 256
#define PEN_IDS 1000         /* penalised ids per launch, carried in the kernel's arguments */

/* ---- helpers ----------------------------------------------------------------------------- */

/* This warp's stretch of x[0..n): the block's warps split the row into contiguous pieces,
 * a multiple of 32 * SWEEP_UNROLL long (warps past the end get an empty one). */
static __device__ __forceinline__ void warp_segment(int n, int *lo, int *hi) {
    int nwarps = blockDim.x >> 5, step = 32 * SWEEP_UNROLL;
    int seg = ((n + nwarps - 1) / nwarps + step - 1) / step * step;
    *lo = (threadIdx.x >> 5) * seg;
    *hi = min(n, *lo + seg);
}

/* Calls f(in, i, x[i]) for every i of this warp's stretch, lanes on consecutive i (coalesced),
 * SWEEP_UNROLL loads issued before any value is used. All 32 lanes make every call together
 * (in = false past the end, with v = 0), so f may use warp votes with the full mask. */
template <typename F>
static __device__ __forceinline__ void warp_sweep(const float *__restrict__ x, int n, F f) {
    int lane = threadIdx.x & 31, lo, hi;
    warp_segment(n, &lo, &hi);
    for (int base = lo; base < hi; base += 32 * SWEEP_UNROLL) {
        float v[SWEEP_UNROLL];
#pragma unroll
        for (int u = 0; u < SWEEP_UNROLL; u++) {
            int i = base + 32 * u + lane;
            v[u] = i < hi ? x[i] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < SWEEP_UNROLL; u++) {
            int i = base + 32 * u + lane;
            f(i < hi, i, v[u]);
        }
    }
}

/* Copies device results to the host and waits; 0, or -1 with the sticky error set. */
static int fetch(CudaBackend *cb, void *dst, const void *src, size_t bytes, const char *what) {
    if (cuda_check(cb, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cb->stream), what)) return -1;
    return cuda_check(cb, cudaStreamSynchronize(cb->stream), what);
}

/* ---- token_nll, one block per row ----------------------------------------------------------
 *   m      = max_i x[r][i]
 *   nll[r] = m + log(sum_i exp(x[r][i] - m)) - x[r][t],   t = targets[r]
 * exp in float32, the sum in double (per-thread partials and the block reduction): the
 * terms are in (0, 1] and logits_nll sums them in double too. Rows whose target is outside
 * [0, n) (-1: not scored) get NaN without reading the row; that test is the same for the
 * whole block, so the early return skips no barrier anyone waits at. A NaN anywhere in
 * the row makes the sum, and so the NLL, NaN (fmaxf skips it in the max, expf does not). */
static __global__ void __launch_bounds__(NLL_THREADS)
    token_nll_kernel(const float *__restrict__ x, int n, const int32_t *__restrict__ targets, double *nll) {
    __shared__ float red[32];
    __shared__ double red_d[32];
    int r = blockIdx.x, t = targets[r];
    if (t < 0 || t >= n) {
        if (threadIdx.x == 0) nll[r] = (double)NAN;
        return;
    }
    const float *xr = x + (size_t)r * (size_t)n;
    float m = -INFINITY;
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, xr[i]);
    m = block_max(m, red);
    double s = 0.0;
#pragma unroll 4
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += (double)expf(xr[i] - m);
    s = block_sum(s, red_d);
    if (threadIdx.x == 0) nll[r] = (double)m + log(s) - (double)xr[t];
}

void cuda_token_nll(CudaBackend *cb, const float *x, int rows, int n, const int32_t *targets, double *nll) {
    if (rows <= 0) return;
    size_t nr = (size_t)rows, out_bytes = nr * sizeof(double);
    bool done = false;
    if (!cb->failed && n > 0 && n <= READOUT_MAX_N &&
        cuda_scratch_reserve(cb, &cb->readout, out_bytes + nr * sizeof(int32_t), "token NLLs") == 0) {
        double *d_nll = (double *)cb->readout.ptr;
        int32_t *d_targets = (int32_t *)((char *)cb->readout.ptr + out_bytes);
        /* the wait in fetch() also covers this copy: targets may be reused after return */
        if (!cuda_check(cb, cudaMemcpyAsync(d_targets, targets, nr * sizeof(int32_t), cudaMemcpyHostToDevice,
                                            cb->stream), "token_nll: uploading the targets")) {
            token_nll_kernel<<<rows, NLL_THREADS, 0, cb->stream>>>(x, n, d_targets, d_nll);
            done = cuda_check_launch(cb, "token_nll") == 0 &&
                   fetch(cb, nll, d_nll, out_bytes, "token_nll: downloading the results") == 0;
        }
    }
    if (!done)
        for (int r = 0; r < rows; r++) nll[r] = (double)NAN;
}

/* ---- argmax, one block -----------------------------------------------------------------------
 * The first index of the largest value, as the CPU's scan `if (x[i] > x[best]) best = i`
 * from best = 0: NaN entries never win (every comparison with NaN is false), -0 and +0 are
 * equal, and a NaN in x[0] makes the answer 0. Each thread keeps its best (value, index);
 * arg_better is a strict total order on those pairs (larger value, then lower index), so
 * the tree reduction finds the same winner in any order. The start value (-inf, INT_MAX)
 * loses to any real entry, -inf included; if it survives (n = 0, all NaN) the answer is 0. */
static __device__ __forceinline__ bool arg_better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

static __device__ __forceinline__ void warp_argmax(float *bv, int *bi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, *bv, o);
        int oi = __shfl_xor_sync(0xffffffffu, *bi, o);
        if (arg_better(ov, oi, *bv, *bi)) *bv = ov, *bi = oi;
    }
}

static __global__ void __launch_bounds__(ONE_BLOCK, 1) argmax_kernel(const float *__restrict__ x, int n, int32_t *out) {
    __shared__ float s_v[32];
    __shared__ int s_i[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    float bv = -INFINITY;
    int bi = INT_MAX;
    warp_sweep(x, n, [&](bool in, int i, float v) {
        if (in && arg_better(v, i, bv, bi)) bv = v, bi = i;
    });
    warp_argmax(&bv, &bi);
    if (lane == 0) s_v[warp] = bv, s_i[warp] = bi;
    __syncthreads();
    if (warp != 0) return;
    bv = lane < nwarps ? s_v[lane] : -INFINITY;
    bi = lane < nwarps ? s_i[lane] : INT_MAX;
    warp_argmax(&bv, &bi);
    if (lane == 0) *out = bi == INT_MAX || x[0] != x[0] ? 0 : bi;
}

int32_t cuda_argmax(CudaBackend *cb, const float *x, int n) {
    if (cb->failed || n <= 0 || n > READOUT_MAX_N) return 0;
    if (cuda_scratch_reserve(cb, &cb->readout, sizeof(int32_t), "argmax")) return 0;
    int32_t *d_out = (int32_t *)cb->readout.ptr, best = 0;
    argmax_kernel<<<1, ONE_BLOCK, 0, cb->stream>>>(x, n, d_out);
    if (cuda_check_launch(cb, "argmax") || fetch(cb, &best, d_out, sizeof best, "argmax: downloading the result"))
        return 0;
    return best >= 0 && best < n ? best : 0;
}

/* ---- repetition penalty, one thread per id -----------------------------------------------------
 *   x[id] = x[id] > 0 ? x[id] / penalty : x[id] * penalty      (IEEE division, as on the CPU)
 * The ids travel inside the launch itself, PEN_IDS at a time (4 KB of kernel arguments):
 * arguments are copied when the launch is queued, so the caller may reuse its array at once,
 * with no upload, no scratch and no wait. The ids are distinct (the contract), so no two
 * threads touch one entry. The caller checked them against the row length, which is not
 * passed; negative ones are skipped. */
typedef struct PenaltyIds {
    int32_t id[PEN_IDS];
} PenaltyIds;

static __global__ void penalize_kernel(float *x, PenaltyIds ids, int count, float penalty) {
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= count) return;
    int id = ids.id[j];
    if (id < 0) return;
    float v = x[id];
    x[id] = v > 0.0f ? v / penalty : v * penalty;
}

void cuda_penalize(CudaBackend *cb, float *x, const int32_t *ids, int n_ids, float penalty) {
    if (cb->failed || n_ids <= 0) return;
    PenaltyIds chunk;
    for (int done = 0; done < n_ids; done += PEN_IDS) {
        int count = min(PEN_IDS, n_ids - done);
        memcpy(chunk.id, ids + done, (size_t)count * sizeof(int32_t));
        penalize_kernel<<<(count + PEN_THREADS - 1) / PEN_THREADS, PEN_THREADS, 0, cb->stream>>>(x, chunk, count,
                                                                                                 penalty);
        if (cuda_check_launch(cb, "penalize")) return;
    }
}

/* ---- top candidates, one block -------------------------------------------------------------------
 * The k entries with the largest logits, ordered by (logit desc, id asc), with
 *   p_i = e_i / sum_j e_j,   e_i = exp((x_i - m) / temperature),   m = max_j x_j
 * (expf in float32 and the sum in double, as logits_top_candidates). p is a monotone
 * function of x, so this is the contract's order by probability, ties by the lower id, and
 * the CPU's order (ranks_above in logits.c); selecting on the logits themselves makes the
 * chosen ids independent of how expf rounds.
 *
 * Selection: each logit becomes an order-preserving 32-bit key (order_key). A radix select
 * over the keys, 8 bits at a time from the top, finds K*, the key of the k-th largest entry,
 * and `need`, how many entries with key K* are taken (the others with key K* lose to lower
 * ids): in each of 4 passes, a 256-bin histogram in shared memory counts the next digit of
 * the keys that match the digits found so far; walking the bins from the top finds the
 * digit where the running count reaches `need`. The max and the sum of e ride along with
 * the first two passes. Then the candidates are gathered into shared memory:
 *   - every entry with key > K* (there are k - need of them), at any free slot;
 *   - the `need` lowest ids with key == K*: each warp counts its own (pass 5), so warp w's
 *     entries with key K* come after those of warps 0..w-1 in id order; a warp whose
 *     count before it is under `need` walks its stretch in order, ranking with ballots,
 *     and stops as soon as `need` is reached (pass 6, usually nothing to do).
 * A bitonic sort of the k (padded to a power of two) 64-bit words (~key << 32 | id) puts
 * them in order, ascending word = key descending, then id ascending. */
static __device__ __forceinline__ uint32_t order_key(float v) {
    uint32_t b = __float_as_uint(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0;  /* NaN: below everything */
    if ((b & 0x7fffffffu) == 0) b = 0;              /* -0 is +0: equal logits, equal keys */
    return b & 0x80000000u ? ~b : b | 0x80000000u;  /* negatives reversed, below positives */
}

/* One histogram count per lane, with the lanes of a warp that share a digit adding once
 * (logits cluster in a few digits, which would otherwise serialise on one counter).
 * Called by all 32 lanes together. */
static __device__ __forceinline__ void count_digit(int *hist, bool counted, uint32_t digit) {
    unsigned active = __ballot_sync(0xffffffffu, counted);
    if (counted) {
        unsigned peers = __match_any_sync(active, digit);
        if ((int)(threadIdx.x & 31) == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
    }
}

/* By one whole warp: the digit b where counting the bins from 255 down reaches `need`,
 * i.e. above < need <= above + hist[b] with above = sum of hist[d] for d > b. Lane l sums
 * bins 255-8l .. 248-8l, a scan over the lanes finds the lane, which walks its 8 bins. */
static __device__ void find_digit(const int *hist, int need, int *digit, int *above_out) {
    int lane = threadIdx.x & 31, c[8], tot = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        c[j] = hist[255 - 8 * lane - j];
        tot += c[j];
    }
    int incl = tot;
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    int above = incl - tot;
    if (above < need && need <= incl) { /* exactly one lane */
        bool found = false;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (!found && need <= above + c[j]) {
                *digit = 255 - 8 * lane - j;
                *above_out = above;
                found = true;
            }
            if (!found) above += c[j];
        }
    }
}

static __device__ __forceinline__ unsigned long long cand_word(uint32_t key, int id) {
    return (unsigned long long)(~key) << 32 | (uint32_t)id;
}

static __global__ void __launch_bounds__(ONE_BLOCK, 1)
    top_candidates_kernel(const float *__restrict__ x, int n, float temperature, int k, int32_t *out_ids,
                          float *out_probs) {
    __shared__ int hist[256];
    __shared__ unsigned long long cand[BACKEND_MAX_CANDIDATES];
    __shared__ float red[32];
    __shared__ double red_d[32];
    __shared__ int s_digit, s_above, s_gt, s_eq[32];
    int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    /* passes 1-4: radix select of K*; the max and the sum of e on the way */
    float mx = -INFINITY;
    double sum = 0.0;
    uint32_t prefix = 0;  /* the digits of K* found so far */
    int need = k;         /* how many entries still to take among those matching prefix */
    for (int pass = 0; pass < 4; pass++) {
        int shift = 24 - 8 * pass;
        uint32_t high = pass == 0 ? 0u : ~0u << (shift + 8); /* the digits already found */
        if (tid < 256) hist[tid] = 0;
        __syncthreads();
        float m = -INFINITY;
        double s = 0.0;
        warp_sweep(x, n, [&](bool in, int, float v) {
            if (in && pass == 0) m = fmaxf(m, v);
            if (in && pass == 1) s += (double)expf((v - mx) / temperature);
            uint32_t key = order_key(v);
            count_digit(hist, in && (key & high) == prefix, (key >> shift) & 255u);
        });
        if (pass == 0) mx = block_max(m, red);      /* pass is the same in every thread */
        if (pass == 1) sum = block_sum(s, red_d);
        __syncthreads();                            /* the histogram is complete */
        if (warp == 0) find_digit(hist, need, &s_digit, &s_above);
        __syncthreads();
        prefix |= (uint32_t)s_digit << shift;
        need -= s_above;
    }
    const uint32_t kstar = prefix;
    const int take_eq = need, gt = k - need;

    /* pass 5: the entries above K*, and per warp the count of those equal to it */
    int P = 1;
    while (P < k) P <<= 1;
    for (int j = tid; j < P; j += blockDim.x) cand[j] = ~0ull; /* padding (j >= k) sorts last */
    if (tid == 0) s_gt = 0;
    __syncthreads();
    int eq = 0;
    warp_sweep(x, n, [&](bool in, int i, float v) {
        uint32_t key = order_key(v);
        if (in && key > kstar) {
            int slot = atomicAdd(&s_gt, 1);
            if (slot < k) cand[slot] = cand_word(key, i); /* always true; guards shared memory */
        }
        eq += in && key == kstar;
    });
    eq = warp_sum(eq);
    if (lane == 0) s_eq[warp] = eq;
    __syncthreads();

    /* pass 6: the take_eq lowest ids with key K*, after the gt entries */
    int before = 0;
    for (int w = 0; w < warp; w++) before += s_eq[w];
    int lo, hi;
    warp_segment(n, &lo, &hi);
    for (int base = lo; base < hi && before < take_eq; base += 32) { /* before is warp-uniform */
        int i = base + lane;
        bool is_eq = i < hi && order_key(x[i]) == kstar;
        unsigned ballot = __ballot_sync(0xffffffffu, is_eq);
        int r = before + __popc(ballot & ((1u << lane) - 1u));
        if (is_eq && r < take_eq && gt + r < k) cand[gt + r] = cand_word(kstar, i);
        before += __popc(ballot);
    }

    /* bitonic sort of cand[0..P), ascending; every thread runs every step's barrier */
    for (int size = 2; size <= P; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            __syncthreads();
            int j = tid ^ stride;
            if (tid < P && j > tid) {
                unsigned long long a = cand[tid], b = cand[j];
                bool ascending = (tid & size) == 0;
                if ((a > b) == ascending) cand[tid] = b, cand[j] = a;
            }
        }
    }
    __syncthreads();

    if (tid < k) {
        int id = (int)(uint32_t)cand[tid];
        if (id < 0 || id >= n) id = 0; /* cannot happen (k slots filled); keeps the read in bounds */
        float e = expf((x[id] - mx) / temperature); /* the same expression as in pass 2 */
        out_ids[tid] = id;
        out_probs[tid] = (float)((double)e / sum);
    }
}

void cuda_top_candidates(CudaBackend *cb, const float *x, int n, float temperature, int k, int32_t *ids,
                         float *probs) {
    if (k <= 0) return;
    bool done = false;
    size_t bytes = (size_t)k * sizeof(int32_t);
    if (!cb->failed && n > 0 && n <= READOUT_MAX_N && k <= n && k <= BACKEND_MAX_CANDIDATES &&
        temperature > 0.0f &&
        cuda_scratch_reserve(cb, &cb->readout, 2 * BACKEND_MAX_CANDIDATES * sizeof(int32_t), "top candidates") ==
            0) {
        int32_t *d_ids = (int32_t *)cb->readout.ptr;
        float *d_probs = (float *)(d_ids + BACKEND_MAX_CANDIDATES);
        top_candidates_kernel<<<1, ONE_BLOCK, 0, cb->stream>>>(x, n, temperature, k, d_ids, d_probs);
        done = cuda_check_launch(cb, "top_candidates") == 0 &&
               cuda_check(cb, cudaMemcpyAsync(ids, d_ids, bytes, cudaMemcpyDeviceToHost, cb->stream),
                          "top_candidates: downloading the ids") == 0 &&
               fetch(cb, probs, d_probs, bytes, "top_candidates: downloading the probabilities") == 0;
    }
    if (!done)
        for (int j = 0; j < k; j++) ids[j] = 0, probs[j] = NAN;
}
