/* cpu/cpu_backend.c — the Backend table (backend.h) for the host CPU.
 *
 * Activation buffers are ordinary float32 host memory, so upload, download and copy are
 * memcpy. Projections go to cpu_gemm.c (weights as stored) or cpu_int8.c (LLM.int8() and
 * the other quantization modes), attention to cpu_attention.c; everything else —
 * LayerNorm, activations, embeddings, the logit read-outs — is here, each op a few loops
 * beside the formula it computes.
 *
 * Weights without quantization are NOT copied: a QUANT_FP16 BkLinear and every BkMatrix
 * point straight into the host data they were created from (normally the mapped
 * checkpoint), so that data must outlive them. The model keeps its checkpoint open for
 * its whole life, which is what makes this safe.
 *
 * Status: every operation is finished when it returns, so sync() has nothing to wait for;
 * it reports (and clears) the first failure recorded since the last sync. Only int8
 * projections can fail (their scratch area may fail to grow); after a failure, projections
 * do nothing until the next sync.
 *
 * Threads: cpu_pool.c's loops, the count set in cpu_backend_create() (threads <= 0: the
 * adaptive default, which follows the load of other processes). Small ops run serially
 * (CPU_PAR_MIN). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cpu_avx2.h"
#include "cpu_internal.h"
#include "cpu_pool.h"
#include "logits.h"

typedef struct CpuBackend {
    Backend base;            /* first member: a Backend * is a CpuBackend * */
    int threads;             /* as set: > 0 exactly that many, else adaptive (cpu_pool.h) */
    CpuInt8Scratch int8;     /* per-call intermediates of int8 projections */
    bool failed;             /* the sticky status: set by the first failure since the last sync */
    Error error;             /* ... and what it was */
    char description[192];   /* describe()'s answer */
} CpuBackend;

static CpuBackend *cpu_of(Backend *bk) { return (CpuBackend *)bk; }

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

/* ---- scratch ------------------------------------------------------------------------------- */

void *cpu_scratch_reserve(CpuScratch *s, size_t bytes) {
    if (s->fail_next) {
        s->fail_next = false;
        cpu_scratch_free(s);
        return NULL;
    }
    if (bytes <= s->bytes && s->ptr) return s->ptr;
    cpu_scratch_free(s); /* first: the old contents are not kept, so never hold both */
    /* some headroom, as T grows a little at a time in generation; a multiple of 64 bytes,
     * as aligned_alloc wants */
    size_t want = bytes + bytes / 4;
    if (want < bytes || want > SIZE_MAX - 64) return NULL;
    want = (want + 63) / 64 * 64;
    if (want == 0) want = 64;
    s->ptr = aligned_alloc(64, want);
    if (s->ptr) s->bytes = want;
    return s->ptr;
}

void cpu_scratch_free(CpuScratch *s) {
    free(s->ptr);
    s->ptr = NULL;
    s->bytes = 0;
}

void cpu_backend_fail_next_scratch(Backend *bk) {
    CpuBackend *cb = cpu_of(bk);
    cb->int8.call.fail_next = true; /* the first reservation of every int8 call */
}

/* ---- status, description, destruction ---------------------------------------------------------- */

/* Keeps the first failure since the last sync. */
static void record_failure(CpuBackend *cb, const Error *e) {
    if (cb->failed) return;
    cb->failed = true;
    cb->error = *e;
}

static int cpu_sync(Backend *bk, Error *err) {
    CpuBackend *cb = cpu_of(bk);
    if (!cb->failed) return 0;
    cb->failed = false;
    return err_set(err, "CPU backend: %s", cb->error.msg);
}

static const char *cpu_describe(Backend *bk) {
    CpuBackend *cb = cpu_of(bk);
    char threads[96];
    const int n = cpu_pool_threads();
    if (cpu_pool_adaptive())
        snprintf(threads, sizeof threads, "up to %d thread%s (fewer while other processes keep CPUs busy; %d now)",
                 n, n == 1 ? "" : "s", cpu_pool_threads_in_use());
    else
        snprintf(threads, sizeof threads, "%d thread%s", n, n == 1 ? "" : "s");
    snprintf(cb->description, sizeof cb->description, "cpu: %s; int8 matmul: %s; fp16 matmul: %s", threads,
             cpu_int8_kernel(), cpu_gemm_kernel());
    return cb->description;
}

static void cpu_destroy(Backend *bk) {
    if (!bk) return;
    cpu_int8_scratch_free(&cpu_of(bk)->int8);
    free(bk);
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
    CpuBackend *cb = cpu_of(bk);
    if (cb->failed) return; /* the output is undefined after a failure anyway: skip the work */
    if (l->q8) {
        Error e;
        if (cpu_int8_forward(l->q8, &cb->int8, x, T, y, &e)) record_failure(cb, &e);
    } else {
        cpu_gemm_float(x, T, l->cols, l->dtype, l->w, l->rows, l->bias, y);
    }
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

/* ---- LayerNorm and elementwise ops -------------------------------------------------------- */

/* y = (x - mean) / sqrt(var + eps) * w + b over each row of dim values. The statistics are
 * accumulated in double (two passes: mean, then the mean square deviation; four partial
 * sums each, to keep the adds from waiting on one another), which gives the float32 result
 * of the exact statistics whatever the row length; y may alias x because each element is
 * read before it is written. */
typedef struct LayerNormJob {
    const float *x, *w, *b;
    float eps;
    int dim;
    float *y;
} LayerNormJob;

static void layernorm_rows(void *ctx, int64_t t0, int64_t t1, int slot) {
    const LayerNormJob *j = ctx;
    const float *x = j->x, *w = j->w, *b = j->b;
    const int dim = j->dim;
    float *y = j->y;
    (void)slot;
    for (int64_t t = t0; t < t1; t++) {
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
        float rstd = (float)(1.0 / sqrt(var + (double)j->eps));
        for (i = 0; i < dim; i++) {
            float v = (xr[i] - meanf) * rstd;
            if (w) v *= w[i];
            if (b) v += b[i];
            yr[i] = v;
        }
    }
}

static void cpu_layernorm(Backend *bk, const float *x, const float *w, const float *b, float eps, int T,
                          int dim, float *y) {
    (void)bk;
    if (dim <= 0) return;
    LayerNormJob j = {.x = x, .w = w, .b = b, .eps = eps, .dim = dim, .y = y};
    const int64_t grain = CPU_PAR_MIN / 2 / dim + 1; /* rows per piece */
    cpu_parallel_for(T, grain, (int64_t)T * dim >= CPU_PAR_MIN, layernorm_rows, &j);
}

/* Elementwise ops go in pieces of this many elements. */
enum { ELEMENTS_PER_PIECE = CPU_PAR_MIN / 2 };

typedef struct ElementwiseJob {
    float *y;
    const float *x;
} ElementwiseJob;

static void add_range(void *ctx, int64_t i0, int64_t i1, int slot) {
    const ElementwiseJob *j = ctx;
    (void)slot;
    for (int64_t i = i0; i < i1; i++) j->y[i] += j->x[i];
}

static void cpu_add(Backend *bk, float *y, const float *x, size_t n) {
    (void)bk;
    ElementwiseJob j = {.y = y, .x = x};
    cpu_parallel_for((int64_t)n, ELEMENTS_PER_PIECE, n >= CPU_PAR_MIN, add_range, &j);
}

static void relu_range(void *ctx, int64_t i0, int64_t i1, int slot) {
    float *x = ((const ElementwiseJob *)ctx)->y;
    (void)slot;
    for (int64_t i = i0; i < i1; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

static void cpu_relu(Backend *bk, float *x, size_t n) {
    (void)bk;
    ElementwiseJob j = {.y = x};
    cpu_parallel_for((int64_t)n, ELEMENTS_PER_PIECE, n >= CPU_PAR_MIN, relu_range, &j);
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

/* GELU goes in pieces of 4096 values (the same pieces, so the same SIMD/scalar split of
 * each, whatever the thread count). */
enum { GELU_PIECE = 4096 };

static void gelu_range(void *ctx, int64_t i0, int64_t i1, int slot) {
    float *x = ((const ElementwiseJob *)ctx)->y;
    (void)slot;
    for (int64_t blk = i0; blk < i1; blk += GELU_PIECE) {
        float *p = x + blk;
        size_t len = (size_t)(i1 - blk < GELU_PIECE ? i1 - blk : GELU_PIECE);
#if HAVE_X86
        if (cpu_has_avx2()) {
            gelu_avx2(p, len);
            continue;
        }
#endif
        for (size_t i = 0; i < len; i++) p[i] = gelu1(p[i]);
    }
}

static void cpu_gelu_tanh(Backend *bk, float *x, size_t n) {
    (void)bk;
    ElementwiseJob j = {.y = x};
    cpu_parallel_for((int64_t)n, GELU_PIECE, n >= CPU_PAR_MIN / 8, gelu_range, &j);
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

static void cpu_attention_op(Backend *bk, const AttentionArgs *a) {
    CpuBackend *cb = cpu_of(bk);
    if (cb->failed) return;
    if (cpu_attention(a)) {
        Error e;
        err_set(&e, "attention: out of memory for the float copies of %d cached positions", a->n_past + a->T);
        record_failure(cb, &e);
    }
}

static void cpu_store_f16_op(Backend *bk, const float *x, size_t n, uint16_t *dst) {
    (void)bk;
    cpu_store_f16(x, n, dst);
}

static size_t cpu_device_memory_in_use(Backend *bk) {
    (void)bk;
    return 0;
}

/* ---- reading out the logits (the math is in logits.c) ---------------------------------------- */

typedef struct NllJob {
    const float *x;
    int n;
    const int32_t *targets;
    double *nll;
} NllJob;

static void nll_rows(void *ctx, int64_t r0, int64_t r1, int slot) {
    const NllJob *j = ctx;
    (void)slot;
    for (int64_t r = r0; r < r1; r++)
        j->nll[r] = j->targets[r] < 0 ? NAN : logits_nll(j->x + (size_t)r * (size_t)j->n, j->n, j->targets[r]);
}

static void cpu_token_nll(Backend *bk, const float *x, int rows, int n, const int32_t *targets, double *nll) {
    (void)bk;
    /* Each row is a pass over the vocabulary, independent of the others. */
    NllJob j = {.x = x, .n = n, .targets = targets, .nll = nll};
    cpu_parallel_for(rows, 1, rows > 1 && (int64_t)rows * n >= CPU_PAR_MIN, nll_rows, &j);
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
    CpuBackend *cb = calloc(1, sizeof *cb);
    if (!cb) {
        err_set(err, "out of memory creating the CPU backend");
        return NULL;
    }
    cb->threads = threads > 0 ? threads : 0;
    cpu_pool_set_threads(cb->threads);
    cb->base = (Backend){
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
        .store_f16 = cpu_store_f16_op,
        .attention = cpu_attention_op,
        .token_nll = cpu_token_nll,
        .argmax = cpu_argmax,
        .penalize = cpu_penalize,
        .top_candidates = cpu_top_candidates,
    };
    return &cb->base;
}
