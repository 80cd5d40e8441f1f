/* cpu/cpu_backend.c — the Backend table (backend.h) for the host CPU.
 *
 * Activation buffers are ordinary float32 host memory, so upload, download and copy are
 * memcpy. Projections go to cpu_gemm.c (weights as stored) or cpu_int8.c (LLM.int8() and
 * the other quantization modes); everything else — LayerNorm, attention, activations,
 * embeddings — is here, each op a few loops beside the formula it computes.
 *
 * Weights without quantization are NOT copied: a QUANT_FP16 BkLinear and every BkMatrix
 * point straight into the host data they were created from (normally the mapped
 * checkpoint), so that data must outlive them. The model keeps its checkpoint open for
 * its whole life, which is what makes this safe.
 *
 * Threads: OpenMP, the count set once in cpu_backend_create(). Small ops run serially:
 * starting a parallel region costs a few microseconds, more than adding 2048 floats. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <omp.h>

#include "cpu_internal.h"
#include "logits.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

/* Elementwise ops on fewer elements than this stay on one thread. */
enum { PAR_MIN = 1 << 15 };

struct BkLinear {
    int64_t rows, cols;      /* [out_features, in_features] */
    /* QUANT_FP16: the weight as stored (F16/BF16/F32, not owned unless `owned`) + bias. */
    DType dtype;
    const void *w;
    float *owned;            /* an I8 checkpoint weight dequantized to F32, or NULL */
    float *bias;             /* float32 [rows] copy, or NULL */
    /* any other mode: everything lives in cpu_int8.c */
    CpuInt8Linear *q8;
};

struct BkMatrix {
    int64_t rows, cols;
    DType dtype;             /* F16, BF16 or F32 */
    const void *data;        /* as stored, not owned */
};

/* ---- activation memory ------------------------------------------------------------------ */

/* Buffers from this size up are placed on 2 MiB boundaries and offered huge pages. */
#define HUGE_PAGE ((size_t)2 << 20)

static float *cpu_alloc(Backend *bk, size_t n) {
    (void)bk;
    if (n > (SIZE_MAX - HUGE_PAGE) / sizeof(float)) return NULL;
    /* 64-byte aligned (a cache line, and any SIMD width), the size rounded up to a multiple
     * of the alignment as aligned_alloc wants. Big buffers — the KV cache above all — get
     * transparent huge pages where the system allows: attention reads a head's slice of
     * every cached row, rows a few KiB apart, and with 4 KiB pages nearly every one of
     * those reads misses the TLB (decode attention ~30% faster, measured). */
    size_t align = n * sizeof(float) >= HUGE_PAGE ? HUGE_PAGE : 64;
    size_t bytes = (n * sizeof(float) + align - 1) / align * align;
    if (bytes == 0) bytes = align;
    float *p = aligned_alloc(align, bytes);
    if (!p) return NULL;
#ifdef MADV_HUGEPAGE
    if (align == HUGE_PAGE) madvise(p, bytes, MADV_HUGEPAGE); /* only advice: failure is fine */
#endif
    memset(p, 0, bytes);
    return p;
}

static void cpu_release(Backend *bk, float *p) {
    (void)bk;
    free(p);
}

static void cpu_copy(Backend *bk, float *dst, const float *src, size_t n) {
    (void)bk;
    if (n) memmove(dst, src, n * sizeof(float));
}

static void cpu_destroy(Backend *bk) {
    free(bk);
}

/* Placeholder until the backend-contract work fills these in. */
static const char *cpu_describe(Backend *bk) {
    (void)bk;
    return "cpu";
}

static int cpu_sync(Backend *bk, Error *err) {
    (void)bk, (void)err;
    return 0;
}

/* ---- weights ---------------------------------------------------------------------------- */

/* Checks a host matrix's shape; `what` names the object for the message. */
static int check_matrix(const HostMatrix *m, const char *what, Error *err) {
    if (!m || !m->data) return err_set(err, "%s: no weight data", what);
    if (m->rows <= 0 || m->cols <= 0)
        return err_set(err, "%s: invalid shape [%lld, %lld]", what, (long long)m->rows, (long long)m->cols);
    size_t es = dtype_size(m->dtype);
    if (es == 0 || (uint64_t)m->rows > SIZE_MAX / (uint64_t)m->cols / es)
        return err_set(err, "%s: shape [%lld, %lld] is too large", what, (long long)m->rows,
                       (long long)m->cols);
    if (m->cols > INT32_MAX)
        return err_set(err, "%s: %lld input features is more than this backend supports", what,
                       (long long)m->cols);
    return 0;
}

static bool is_float_dtype(DType t) {
    return t == DT_F16 || t == DT_BF16 || t == DT_F32;
}

static void cpu_linear_free(Backend *bk, BkLinear *l) {
    (void)bk;
    if (!l) return;
    if (l->q8) cpu_int8_free(l->q8);
    free(l->owned);
    free(l->bias);
    free(l);
}

static BkLinear *cpu_linear_create(Backend *bk, const HostMatrix *w, const float *bias,
                                   const QuantConfig *q, Error *err) {
    (void)bk;
    if (check_matrix(w, "linear layer", err)) return NULL;
    QuantMode mode = q ? q->mode : QUANT_FP16;
    BkLinear *l = calloc(1, sizeof *l);
    if (!l) {
        err_set(err, "out of memory creating a [%lld, %lld] linear layer", (long long)w->rows,
                (long long)w->cols);
        return NULL;
    }
    l->rows = w->rows;
    l->cols = w->cols;

    if (mode != QUANT_FP16) {
        l->q8 = cpu_int8_create(w, bias, q, err);
        if (!l->q8) { cpu_linear_free(bk, l); return NULL; }
        return l;
    }

    size_t n = (size_t)w->rows * (size_t)w->cols;
    if (is_float_dtype(w->dtype)) {
        l->dtype = w->dtype;
        l->w = w->data; /* kept as stored: see the top of this file */
    } else if (w->dtype == DT_I8 && w->scb) {
        /* An 8-bit checkpoint run unquantized: W = CB * SCB / 127, once, in float32. */
        l->owned = n <= SIZE_MAX / sizeof(float) ? malloc(n * sizeof(float)) : NULL;
        if (!l->owned) {
            err_set(err, "out of memory dequantizing a [%lld, %lld] int8 weight", (long long)w->rows,
                    (long long)w->cols);
            cpu_linear_free(bk, l);
            return NULL;
        }
        const int8_t *cb = w->data;
        for (int64_t r = 0; r < w->rows; r++) {
            float scb;
            memcpy(&scb, w->scb + r, sizeof scb); /* may be unaligned inside the checkpoint */
            for (int64_t c = 0; c < w->cols; c++)
                l->owned[r * w->cols + c] = quant_dequant_weight(cb[r * w->cols + c], scb);
        }
        l->dtype = DT_F32;
        l->w = l->owned;
    } else {
        err_set(err, "linear layer: weight dtype %s is not usable without quantization%s",
                dtype_name(w->dtype), w->dtype == DT_I8 ? " (int8 weight without its SCB scales)" : "");
        cpu_linear_free(bk, l);
        return NULL;
    }
    if (bias) {
        l->bias = malloc((size_t)w->rows * sizeof(float));
        if (!l->bias) {
            err_set(err, "out of memory copying a bias of %lld values", (long long)w->rows);
            cpu_linear_free(bk, l);
            return NULL;
        }
        memcpy(l->bias, bias, (size_t)w->rows * sizeof(float));
    }
    return l;
}

static size_t cpu_linear_bytes(const BkLinear *l) {
    if (l->q8) return cpu_int8_bytes(l->q8);
    return (size_t)l->rows * (size_t)l->cols * dtype_size(l->dtype) +
           (l->bias ? (size_t)l->rows * sizeof(float) : 0);
}

static BkMatrix *cpu_matrix_create(Backend *bk, const HostMatrix *m, Error *err) {
    (void)bk;
    if (check_matrix(m, "matrix", err)) return NULL;
    if (!is_float_dtype(m->dtype)) {
        err_set(err, "matrix: dtype %s is not supported for embeddings (F16, BF16 or F32 expected)",
                dtype_name(m->dtype));
        return NULL;
    }
    BkMatrix *bm = malloc(sizeof *bm);
    if (!bm) {
        err_set(err, "out of memory creating a matrix");
        return NULL;
    }
    *bm = (BkMatrix){.rows = m->rows, .cols = m->cols, .dtype = m->dtype, .data = m->data};
    return bm;
}

static void cpu_matrix_free(Backend *bk, BkMatrix *m) {
    (void)bk;
    free(m);
}

static size_t cpu_matrix_bytes(const BkMatrix *m) {
    return (size_t)m->rows * (size_t)m->cols * dtype_size(m->dtype);
}

/* ---- projections -------------------------------------------------------------------------- */

static void cpu_linear(Backend *bk, const BkLinear *l, const float *x, int T, float *y) {
    (void)bk;
    if (l->q8)
        cpu_int8_forward(l->q8, x, T, y);
    else
        cpu_gemm_float(x, T, l->cols, l->dtype, l->w, l->rows, l->bias, y);
}

static void cpu_matmul(Backend *bk, const BkMatrix *m, const float *x, int T, float *y) {
    (void)bk;
    cpu_gemm_float(x, T, m->cols, m->dtype, m->data, m->rows, NULL, y);
}

/* Element i of a float-typed array as float. Through memcpy: tensors inside a checkpoint
 * need not be aligned to their element size. */
static inline float load_elem(DType dt, const void *p, int64_t i) {
    if (dt == DT_F32) {
        float f;
        memcpy(&f, (const char *)p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)p + 2 * i, 2);
    return dt == DT_F16 ? f16_to_f32(h) : bf16_to_f32(h);
}

/* out[t] = M[ids[t]] (or +=), converted to float32. */
static void cpu_embed(Backend *bk, const BkMatrix *m, const int32_t *ids, int T, float *out, bool accumulate) {
    (void)bk;
    const int64_t dim = m->cols;
    const size_t es = dtype_size(m->dtype);
    for (int t = 0; t < T; t++) {
        float *o = out + (int64_t)t * dim;
        if (ids[t] < 0 || ids[t] >= m->rows) { /* the caller checks; never read outside M */
            if (!accumulate) memset(o, 0, (size_t)dim * sizeof(float));
            continue;
        }
        const char *row = (const char *)m->data + (size_t)ids[t] * (size_t)dim * es;
        for (int64_t i = 0; i < dim; i++) {
            float v = load_elem(m->dtype, row, i);
            o[i] = accumulate ? o[i] + v : v;
        }
    }
}

/* ---- SIMD helpers ------------------------------------------------------------------------ */
/* AVX2 versions of the inner loops below, used when cpu_has_avx2() (the same choice as
 * cpu_gemm.c, so LLMINT8_NO_SIMD=1 turns them off too). */
#if HAVE_X86
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#define INLINE_AVX2 static inline __attribute__((always_inline, target("avx2,fma")))

/* e^x for 8 floats, within 1 ulp of the exact value (Cephes' method): e^x = 2^n e^r with
 * n = round(x / ln 2) and |r| <= ln(2)/2, where e^r is a degree-7 polynomial. Below -87.3
 * (where 2^n would be subnormal) the result is 0, and from 88.37 (where 2^n would overflow)
 * it is +inf: a little early, as e^x stays finite up to 88.72, which our callers (softmax
 * weights <= 1, GELU's denominator) never care about. NaN stays NaN. */
INLINE_AVX2 __m256 exp8(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.3762626f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x)); /* min/max return the 2nd operand on NaN */
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* r = x - n ln2, with ln2 split in two so that n * 0.693359375 is exact */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n: n + 127 in the exponent field (n is in [-126, 127]) */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(under, y);
    return _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), over);
}

INLINE_AVX2 float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* ---- LayerNorm and elementwise ops -------------------------------------------------------- */

/* y = (x - mean) / sqrt(var + eps) * w + b over each row of dim values. The statistics are
 * accumulated in double (two passes: mean, then the mean square deviation; four partial
 * sums each, to keep the adds from waiting on one another), which gives the float32 result
 * of the exact statistics whatever the row length; y may alias x because each element is
 * read before it is written. */
static void cpu_layernorm(Backend *bk, const float *x, const float *w, const float *b, float eps, int T,
                          int dim, float *y) {
    (void)bk;
    if (dim <= 0) return;
#pragma omp parallel for schedule(static) if ((int64_t)T * dim >= PAR_MIN)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (int64_t)t * dim;
        float *yr = y + (int64_t)t * dim;
        double s[4] = {0}, ss[4] = {0};
        int i = 0;
        for (; i + 4 <= dim; i += 4)
            for (int l = 0; l < 4; l++) s[l] += xr[i + l];
        for (; i < dim; i++) s[0] += xr[i];
        double mean = ((s[0] + s[1]) + (s[2] + s[3])) / dim;
        for (i = 0; i + 4 <= dim; i += 4)
            for (int l = 0; l < 4; l++) ss[l] += (xr[i + l] - mean) * (xr[i + l] - mean);
        for (; i < dim; i++) ss[0] += (xr[i] - mean) * (xr[i] - mean);
        double var = ((ss[0] + ss[1]) + (ss[2] + ss[3])) / dim;
        float meanf = (float)mean;
        float rstd = (float)(1.0 / sqrt(var + (double)eps));
        for (i = 0; i < dim; i++) {
            float v = (xr[i] - meanf) * rstd;
            if (w) v *= w[i];
            if (b) v += b[i];
            yr[i] = v;
        }
    }
}

static void cpu_add(Backend *bk, float *y, const float *x, size_t n) {
    (void)bk;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

static void cpu_relu(Backend *bk, float *x, size_t n) {
    (void)bk;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

/* GELU, tanh approximation (BLOOM): 0.5 x (1 + tanh(u)), u = 0.79788456 x (1 + 0.044715 x^2)
 * (0.79788456 is sqrt(2/pi)). Computed through the identity (1 + tanh(u)) / 2 =
 * 1 / (1 + e^(-2u)), i.e. gelu = x / (1 + e^(-2u)): one exponential, and accurate on both
 * tails (no 1 + tanh cancellation for very negative x). */
static inline float gelu1(float x) {
    float u = 0.79788456f * x * (1.0f + 0.044715f * x * x);
    return x / (1.0f + expf(-2.0f * u));
}

#if HAVE_X86
TARGET_AVX2 static void gelu_avx2(float *x, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 v2 = _mm256_mul_ps(v, v);
        __m256 u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.79788456f), v),
                                 _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), v2, _mm256_set1_ps(1.0f)));
        __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
        _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0f), e)));
    }
    for (; i < n; i++) x[i] = gelu1(x[i]);
}
#endif

static void cpu_gelu_tanh(Backend *bk, float *x, size_t n) {
    (void)bk;
    enum { BLOCK = 4096 };
    const bool simd = cpu_has_avx2();
    const size_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (n >= PAR_MIN / 8)
    for (size_t blk = 0; blk < nblocks; blk++) {
        float *p = x + blk * BLOCK;
        size_t len = n - blk * BLOCK < BLOCK ? n - blk * BLOCK : BLOCK;
#if HAVE_X86
        if (simd) {
            gelu_avx2(p, len);
            continue;
        }
#endif
        for (size_t i = 0; i < len; i++) p[i] = gelu1(p[i]);
    }
    (void)simd;
}

/* BLOOM's fused QKV output is [T][heads][3][head_dim]: per head, its q, then k, then v. */
static void cpu_split_qkv(Backend *bk, const float *qkv, int T, int heads, int head_dim, float *q, float *k,
                          float *v) {
    (void)bk;
    const size_t hd = (size_t)head_dim, row = (size_t)heads * hd;
    for (size_t t = 0; t < (size_t)T; t++)
        for (size_t h = 0; h < (size_t)heads; h++) {
            const float *src = qkv + (t * (size_t)heads + h) * 3 * hd;
            memcpy(q + t * row + h * hd, src, hd * sizeof(float));
            memcpy(k + t * row + h * hd, src + hd, hd * sizeof(float));
            memcpy(v + t * row + h * hd, src + 2 * hd, hd * sizeof(float));
        }
}

/* ---- attention ---------------------------------------------------------------------------- */
/* For each new token t (absolute position n_past + t) and head h, over the keys
 * j = 0 .. n_past + t (causal):
 *     s_j = scale * q.k_j + slope_h * j,   p = softmax(s),   out = sum_j p_j v_j.
 * For one (t, h), keys are taken in chunks of ATT_CHUNK: a chunk's scores go to a stack
 * buffer, become weights exp(s_j - m), where m is the largest score seen so far, and the
 * weighted values are added to out; when a chunk raises m, what was accumulated is first
 * rescaled by exp(m_old - m_new) (the "online softmax"). With at most ATT_CHUNK keys this
 * is exactly the textbook two-pass softmax; either way every key and value row is read
 * once per query. The three steps of a chunk — scores, exponentials, weighted sum — each
 * have a plain and an AVX2 version. */

enum { ATT_CHUNK = 256 };

/* What one (t, h) pair reads: rows j of K and V for this head are k + j * stride. */
typedef struct HeadView {
    const float *q, *k, *v;
    float *out;
    int64_t stride;       /* heads * head_dim */
    int hd;
    float scale, slope;
} HeadView;

/* s[j] = scale * q.k_{j0+j} + slope * (j0 + j) for j < nc; returns the largest. */
static float scores_plain(const HeadView *hv, int j0, int nc, float *s) {
    float mx = -INFINITY;
    for (int j = 0; j < nc; j++) {
        const float *k = hv->k + (int64_t)(j0 + j) * hv->stride;
        float acc[8] = {0}, d;
        int i = 0;
        for (; i + 8 <= hv->hd; i += 8)
            for (int l = 0; l < 8; l++) acc[l] += hv->q[i + l] * k[i + l];
        d = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (; i < hv->hd; i++) d += hv->q[i] * k[i];
        s[j] = hv->scale * d + hv->slope * (float)(j0 + j);
        if (s[j] > mx) mx = s[j];
    }
    return mx;
}

/* s[j] = exp(s[j] - m); returns their sum. */
static float softmax_weights_plain(float *s, int nc, float m) {
    float sum = 0.0f;
    for (int j = 0; j < nc; j++) sum += (s[j] = expf(s[j] - m));
    return sum;
}

/* out += sum_j p[j] v_{j0+j}. */
static void weighted_sum_plain(const HeadView *hv, int j0, int nc, const float *p) {
    for (int j = 0; j < nc; j++) {
        const float *v = hv->v + (int64_t)(j0 + j) * hv->stride;
        for (int i = 0; i < hv->hd; i++) hv->out[i] += p[j] * v[i];
    }
}

#if HAVE_X86
/* Rows of the cache are heads*head_dim floats apart — a new 4 KiB page every row or two
 * for real models — which the hardware prefetchers do not follow, so when reading the
 * cache in place (decoding) we ask for the rows this many keys ahead ourselves (~10%
 * faster decode attention, measured). Contiguous copies need no help. */
enum { PREFETCH_KEYS = 16 };

INLINE_AVX2 void prefetch_row(const float *row, int hd) {
    for (int i = 0; i < hd; i += 16) _mm_prefetch((const char *)(row + i), _MM_HINT_T0);
}

/* Eight keys at a time: eight independent dot products (one accumulator each), folded
 * into one vector of eight scores by a tree of horizontal adds. Needs hd % 8 == 0 (true
 * of every real model); other head sizes and the last nc % 8 keys go one by one. */
TARGET_AVX2 static float scores_avx2(const HeadView *hv, int j0, int nc, float *s) {
    const int hd = hv->hd;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int j = 0;
    if (hd % 8 == 0) {
        for (; j + 8 <= nc; j += 8) {
            const float *k = hv->k + (int64_t)(j0 + j) * hv->stride;
            for (int l = 0; l < 8 && hv->stride != hd && j + PREFETCH_KEYS + l < nc; l++)
                prefetch_row(k + (PREFETCH_KEYS + l) * hv->stride, hd);
            __m256 acc[8];
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++) acc[l] = _mm256_setzero_ps();
            for (int i = 0; i < hd; i += 8) {
                __m256 q = _mm256_loadu_ps(hv->q + i);
#pragma GCC unroll 8
                for (int l = 0; l < 8; l++)
                    acc[l] = _mm256_fmadd_ps(q, _mm256_loadu_ps(k + l * hv->stride + i), acc[l]);
            }
            /* hadd pairs, then pairs of pairs: lane halves hold partial sums of keys 0-3 / 4-7 */
            __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
            __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
            __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
            __m256 dots = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                        _mm256_permute2f128_ps(h0123, h4567, 0x31));
            __m256 pos = _mm256_add_ps(_mm256_set1_ps((float)(j0 + j)),
                                       _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7));
            __m256 sc = _mm256_fmadd_ps(_mm256_set1_ps(hv->scale), dots,
                                        _mm256_mul_ps(_mm256_set1_ps(hv->slope), pos));
            _mm256_storeu_ps(s + j, sc);
            vmax = _mm256_max_ps(vmax, sc);
        }
    }
    float mx = -INFINITY, lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    for (int l = 0; l < 8; l++) mx = lanes[l] > mx ? lanes[l] : mx;
    for (; j < nc; j++) {
        const float *k = hv->k + (int64_t)(j0 + j) * hv->stride;
        __m256 acc = _mm256_setzero_ps();
        int i = 0;
        for (; i + 8 <= hd; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(hv->q + i), _mm256_loadu_ps(k + i), acc);
        float d = hsum8(acc);
        for (; i < hd; i++) d += hv->q[i] * k[i];
        s[j] = hv->scale * d + hv->slope * (float)(j0 + j);
        if (s[j] > mx) mx = s[j];
    }
    return mx;
}

TARGET_AVX2 static float softmax_weights_avx2(float *s, int nc, float m) {
    __m256 vsum = _mm256_setzero_ps(), vm = _mm256_set1_ps(m);
    int j = 0;
    for (; j + 8 <= nc; j += 8) {
        __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        _mm256_storeu_ps(s + j, p);
        vsum = _mm256_add_ps(vsum, p);
    }
    float sum = hsum8(vsum);
    for (; j < nc; j++) sum += (s[j] = expf(s[j] - m));
    return sum;
}

/* out += sum_j p[j] v_j, 64 output values at a time held in 8 registers while all the
 * chunk's value rows go by (then 8 at a time, then the last hd % 8 one by one). */
TARGET_AVX2 static void weighted_sum_avx2(const HeadView *hv, int j0, int nc, const float *p) {
    const float *vbase = hv->v + (int64_t)j0 * hv->stride;
    float *out = hv->out;
    int i = 0;
    for (; i + 64 <= hv->hd; i += 64) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) acc[l] = _mm256_loadu_ps(out + i + 8 * l);
        for (int j = 0; j < nc; j++) {
            const float *v = vbase + (int64_t)j * hv->stride + i;
            if (hv->stride != hv->hd && j + PREFETCH_KEYS < nc) prefetch_row(v + PREFETCH_KEYS * hv->stride, 64);
            __m256 pj = _mm256_set1_ps(p[j]);
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++) acc[l] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 8 * l), acc[l]);
        }
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) _mm256_storeu_ps(out + i + 8 * l, acc[l]);
    }
    for (; i + 8 <= hv->hd; i += 8) {
        __m256 acc = _mm256_loadu_ps(out + i);
        for (int j = 0; j < nc; j++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(vbase + (int64_t)j * hv->stride + i), acc);
        _mm256_storeu_ps(out + i, acc);
    }
    for (; i < hv->hd; i++)
        for (int j = 0; j < nc; j++) out[i] += p[j] * vbase[(int64_t)j * hv->stride + i];
}
#endif

/* One query against keys 0 .. n_keys-1 (see the top of this section). */
static void attend_one(const HeadView *hv, int n_keys, bool simd) {
    float s[ATT_CHUNK];
    float m = -INFINITY, sum = 0.0f;

    memset(hv->out, 0, (size_t)hv->hd * sizeof(float));
    for (int j0 = 0; j0 < n_keys; j0 += ATT_CHUNK) {
        int nc = n_keys - j0 < ATT_CHUNK ? n_keys - j0 : ATT_CHUNK;
#if HAVE_X86
        float cmax = simd ? scores_avx2(hv, j0, nc, s) : scores_plain(hv, j0, nc, s);
#else
        float cmax = scores_plain(hv, j0, nc, s);
#endif
        if (cmax > m) { /* new maximum: rescale what was accumulated against the old one */
            if (sum > 0.0f) {
                float r = expf(m - cmax);
                sum *= r;
                for (int i = 0; i < hv->hd; i++) hv->out[i] *= r;
            }
            m = cmax;
        }
#if HAVE_X86
        if (simd) {
            sum += softmax_weights_avx2(s, nc, m);
            weighted_sum_avx2(hv, j0, nc, s);
            continue;
        }
#endif
        sum += softmax_weights_plain(s, nc, m);
        weighted_sum_plain(hv, j0, nc, s);
    }
    /* sum >= 1 (the largest score contributes exp(0)) unless scores were NaN or infinite;
     * then the output is NaN, as in PyTorch. */
    float inv = 1.0f / sum;
    for (int i = 0; i < hv->hd; i++) hv->out[i] *= inv;
    (void)simd;
}

/* Queries per unit of work; the unit's queries share one copy of their head's keys and values. */
enum { ATT_QUERIES = 64 };

/* Units of work are (head, block of up to ATT_QUERIES new tokens). A block of several
 * queries first copies its head's key and value rows side by side: in the cache they are
 * heads*head_dim floats apart, a power of two for most models, so all of them fall into the
 * same few cache sets and evict one another before the next query can reuse them (3x
 * slower, measured). A single query reads each row once, and uses the cache as it is. */
static void cpu_attention(Backend *bk, const AttentionArgs *a) {
    (void)bk;
    if (a->T <= 0 || a->heads <= 0 || a->head_dim <= 0 || a->n_past < 0) return;
    const bool simd = cpu_has_avx2();
    const int hd = a->head_dim, len = a->n_past + a->T;
    const int64_t stride = (int64_t)a->heads * hd;
    const int nblocks = (a->T + ATT_QUERIES - 1) / ATT_QUERIES, items = a->heads * nblocks;
    const bool par = items > 1 && (int64_t)a->T * len * stride >= PAR_MIN;

#pragma omp parallel if (par)
    {
        /* this thread's copy of one head's keys (rows 0..len-1) then values; NULL: no copies */
        float *kv = a->T >= 4 ? malloc((size_t)len * (size_t)hd * 2 * sizeof(float)) : NULL;
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < items; i++) {
            /* the last blocks (the most keys) first, so that the threads finish together */
            const int h = i % a->heads, blk = nblocks - 1 - i / a->heads;
            const int t0 = blk * ATT_QUERIES, t1 = t0 + ATT_QUERIES < a->T ? t0 + ATT_QUERIES : a->T;
            HeadView hv = {.k = a->k + (int64_t)h * hd, .v = a->v + (int64_t)h * hd, .stride = stride,
                           .hd = hd, .scale = a->scale, .slope = a->alibi ? a->alibi[h] : 0.0f};
            if (kv && t1 - t0 >= 4) {
                const int n = a->n_past + t1; /* the keys the block's last query sees */
                float *kc = kv, *vc = kv + (size_t)len * hd;
                for (int j = 0; j < n; j++) {
                    memcpy(kc + (size_t)j * hd, hv.k + j * stride, (size_t)hd * sizeof(float));
                    memcpy(vc + (size_t)j * hd, hv.v + j * stride, (size_t)hd * sizeof(float));
                }
                hv.k = kc, hv.v = vc, hv.stride = hd;
            }
            for (int t = t0; t < t1; t++) {
                hv.q = a->q + t * stride + (int64_t)h * hd;
                hv.out = a->out + t * stride + (int64_t)h * hd;
                attend_one(&hv, a->n_past + t + 1, simd);
            }
        }
        free(kv);
    }
}

static size_t cpu_device_memory_in_use(Backend *bk) {
    (void)bk;
    return 0;
}

/* ---- reading out the logits (the math is in logits.c) ---------------------------------------- */

static void cpu_token_nll(Backend *bk, const float *x, int rows, int n, const int32_t *targets, double *nll) {
    (void)bk;
    /* Each row is a pass over the vocabulary, independent of the others. */
#pragma omp parallel for schedule(static) if (rows > 1 && (int64_t)rows * n >= PAR_MIN)
    for (int r = 0; r < rows; r++)
        nll[r] = targets[r] < 0 ? NAN : logits_nll(x + (size_t)r * (size_t)n, n, targets[r]);
}

static int32_t cpu_argmax(Backend *bk, const float *x, int n) {
    (void)bk;
    return argmax_f32(x, n);
}

static void cpu_penalize(Backend *bk, float *x, const int32_t *ids, int n_ids, float penalty) {
    (void)bk;
    for (int i = 0; i < n_ids; i++) {
        float *l = &x[ids[i]];
        *l = *l > 0 ? *l / penalty : *l * penalty;
    }
}

static void cpu_top_candidates(Backend *bk, const float *x, int n, float temperature, int k, int32_t *ids,
                               float *probs) {
    (void)bk;
    logits_top_candidates(x, n, temperature, k, ids, probs);
}

/* ---- the table ------------------------------------------------------------------------------ */

Backend *cpu_backend_create(int threads, Error *err) {
    Backend *bk = malloc(sizeof *bk);
    if (!bk) {
        err_set(err, "out of memory creating the CPU backend");
        return NULL;
    }
    omp_set_num_threads(threads > 0 ? threads : omp_get_num_procs());
    *bk = (Backend){
        .name = "cpu",
        .host_memory = true,
        .destroy = cpu_destroy,
        .describe = cpu_describe,
        .sync = cpu_sync,
        .alloc = cpu_alloc,
        .release = cpu_release,
        .upload = cpu_copy,
        .download = cpu_copy,
        .copy = cpu_copy,
        .linear_create = cpu_linear_create,
        .linear_free = cpu_linear_free,
        .matrix_create = cpu_matrix_create,
        .matrix_free = cpu_matrix_free,
        .linear_bytes = cpu_linear_bytes,
        .matrix_bytes = cpu_matrix_bytes,
        .device_memory_in_use = cpu_device_memory_in_use,
        .linear = cpu_linear,
        .matmul = cpu_matmul,
        .embed = cpu_embed,
        .layernorm = cpu_layernorm,
        .add = cpu_add,
        .relu = cpu_relu,
        .gelu_tanh = cpu_gelu_tanh,
        .split_qkv = cpu_split_qkv,
        .attention = cpu_attention,
        .token_nll = cpu_token_nll,
        .argmax = cpu_argmax,
        .penalize = cpu_penalize,
        .top_candidates = cpu_top_candidates,
    };
    return bk;
}
