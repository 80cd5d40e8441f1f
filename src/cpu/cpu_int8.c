/* cpu/cpu_int8.c — int8 projections on the CPU: LLM.int8() and the paper's ablation modes.
 *
 * One call y = cpu_int8_forward(l, x[T,K]) does, whatever the mode (docs/QUANT.md):
 *
 *   1. outliers   if the mode decomposes and tau > 0: the columns where some row has
 *                 |x| >= tau (per call, as bitsandbytes) or just those entries (per token)
 *   2. quantize   x -> int8 codes qa[T,Kp], one absmax scale or one (range, zero code) per
 *                 token or for the whole call; outliers get the code that means 0
 *   3. int8 GEMM  C32[t,n] = sum_k qa[t,k] qw[n,k], exact in int32 (the micro-kernels of
 *                 cpu_int8_kernels.c)
 *   4. epilogue   zero-point corrections, dequantization by the outer product of scales,
 *                 bias, and the 16-bit product of the outlier entries with the
 *                 dequantized weight columns, written straight into y
 *
 * Steps 3 and 4 run together per block of weight rows, the blocks handed out to the
 * threads (cpu_pool.h) as they come free: the int32 results never travel through memory, and the few outlier columns
 * of a weight row are read while that row is still in cache, so the decomposition costs
 * little when there are few outlier columns. The per-call arrays (codes, statistics, the
 * 16-bit side) live in a scratch area the caller keeps between calls (CpuInt8Scratch), so a
 * call allocates nothing once the area has grown to the largest T seen.
 *
 * Weights are kept as int8 codes [Np, Kp] (rows padded to a multiple of 64 bytes and the
 * row count to a multiple of 64, padding zero, so kernels need no tail code), row-major or,
 * for the VNNI kernel, reordered in panels of 16 rows (cpu_internal.h, Int8BlockFn), plus
 * one float per row; the 16-bit source is not kept. For the bitsandbytes modes the codes
 * and scales are exactly bnb's CB and SCB, whether quantized here or read from an int8
 * checkpoint. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "cpu_pool.h"

enum {
    BLOCK_ROWS = 64,  /* weight rows per piece of work: 64 x Kp bytes stay in L2 while
                       * every token tile of a chunk passes over them */
    CHUNK_T = 64,     /* tokens per chunk: their codes (2 x 64 x Kp bytes) stay in L2 while
                       * every weight block passes over them */
};
_Static_assert(BLOCK_ROWS == INT8_PANELS * INT8_PANEL_N && INT8_PAD_N % BLOCK_ROWS == 0,
               "a block is what one Int8BlockFn call computes, and every block is whole");

/* ---- what each mode quantizes how ------------------------------------------------ */

typedef enum ActScheme {
    ACT_ABSMAX_TOKEN,   /* one absmax scale per row of x (vector-wise) */
    ACT_ABSMAX_TENSOR,  /* one absmax scale for the whole call */
    ACT_ZP_TOKEN,       /* one (range, zero code) per row */
    ACT_ZP_TENSOR,      /* one (range, zero code) for the whole call */
} ActScheme;

typedef enum WeightScheme {
    W_ABSMAX_ROW,       /* bitsandbytes CB/SCB */
    W_ABSMAX_TENSOR,    /* one absmax for the matrix */
    W_ZP_TENSOR,        /* one (range, zero code) for the matrix */
} WeightScheme;

static const struct {
    ActScheme act;
    WeightScheme w;
    bool decompose;
} MODES[QUANT_MODE_COUNT] = {
    [QUANT_LLM_INT8] = {ACT_ABSMAX_TOKEN, W_ABSMAX_ROW, true},
    [QUANT_VECTORWISE] = {ACT_ABSMAX_TOKEN, W_ABSMAX_ROW, false},
    [QUANT_ROWWISE] = {ACT_ABSMAX_TENSOR, W_ABSMAX_ROW, false},
    [QUANT_ROWWISE_DECOMP] = {ACT_ABSMAX_TENSOR, W_ABSMAX_ROW, true},
    [QUANT_ABSMAX] = {ACT_ABSMAX_TENSOR, W_ABSMAX_TENSOR, false},
    [QUANT_ZEROPOINT] = {ACT_ZP_TENSOR, W_ZP_TENSOR, false},
    [QUANT_VECTORWISE_ZEROPOINT] = {ACT_ZP_TOKEN, W_ABSMAX_ROW, false},
    [QUANT_LLM_INT8_ZEROPOINT] = {ACT_ZP_TOKEN, W_ABSMAX_ROW, true},
};

struct CpuInt8Linear {
    QuantMode mode;
    ActScheme act;
    WeightScheme wq;
    float tau;             /* outlier threshold; 0 = no decomposition */
    OutlierScope scope;
    int64_t N, K;          /* out_features, in_features */
    int64_t Np, Kp;        /* padded */
    const Int8Kernel *kern;/* the kernel chosen when it was made: it decides the layout of w */
    int8_t *w;             /* [Np, Kp] weight codes, padding 0: row-major, or in panels of 16
                            * rows for a kernel with `block` (Int8BlockFn, cpu_internal.h) */
    float *scb;            /* [Np] weight statistic per row: absmax (SCB), or the range of
                            * zero-point weights (the same value in every row for the
                            * tensor-wise schemes) */
    int32_t *wsum;         /* [Np] sum of each row's codes: zero-point and VNNI corrections */
    int32_t wzero;         /* zero-point weights: the code of 0 */
    float deq;             /* constant of the dequantization, e.g. 1/(127*127) */
    float *bias;           /* [N] or NULL */
};

/* Plain C that is compiled twice, into a portable function and into one with
 * __attribute__((target("avx2"))) where the compiler vectorizes it with AVX2. Forcing the
 * inlining makes sure the AVX2 copy really contains the loops. */
#define BODY static inline __attribute__((always_inline))

typedef float F8 __attribute__((vector_size(32)));   /* 8 floats, element-wise IEEE arithmetic */
typedef float F16V __attribute__((vector_size(64))); /* 16 floats, likewise (AVX-512 code only) */

/* ---- scalar quantization helpers (the reference arithmetic of quant.c) ------------- */

/* rne(v) saturated to [-127, 127], NaN -> 0; see sat_rne127 in quant.c. */
BODY int8_t code_absmax(float v) {
    if (v != v) v = 0.0f;
    v = v > 127.0f ? 127.0f : v;
    v = v < -127.0f ? -127.0f : v;
    return (int8_t)quant_rne(v);
}

/* Zero-point code: rne(v) + zero, saturated to [-127, 127] (v = x * 254/range). */
BODY int8_t code_zeropoint(float v, int32_t zero) {
    if (v != v) v = 0.0f;
    v = v > 254.0f ? 254.0f : v;
    v = v < -254.0f ? -254.0f : v;
    int32_t q = quant_rne(v) + zero;
    return (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
}

/* Scale and zero code of a zero-point range [lo, hi] that contains 0 (docs/QUANT.md):
 * s = 254/(hi-lo) maps the range onto 254 steps, zero = rne(-lo*s) - 127 moves lo to
 * code -127, so codes are in [-127, 127] and 0 is exactly code `zero`. A range of 0
 * (all entries 0) or an infinite one gives s = 0 and zero = 0: every code is 0. */
static void zeropoint_params(float lo, float hi, float *range, float *scale, int32_t *zero) {
    *range = hi - lo;
    *scale = *range > 0.0f && *range < INFINITY ? 254.0f / *range : 0.0f;
    int32_t z = *scale > 0.0f ? quant_rne(-lo * *scale) - 127 : 0;
    *zero = z > 127 ? 127 : z < -127 ? -127 : z;
}

static float round_to_f16(float v) { return f16_to_f32(f32_to_f16(v)); }

/* ================================================================================== */
/* Creating a projection: the weight side.                                            */
/* ================================================================================== */

/* Weight value (n, k) as the 16-bit number bitsandbytes starts from: fp16-rounded. An
 * int8 checkpoint used with a mode that needs other codes stands for its dequantized
 * values CB * SCB / 127. */
static float weight_value(const HostMatrix *w, int64_t n, int64_t k) {
    size_t i = (size_t)n * (size_t)w->cols + (size_t)k;
    if (w->dtype == DT_I8) {
        float scb;
        memcpy(&scb, w->scb + n, sizeof scb); /* may be unaligned inside the checkpoint */
        return round_to_f16(quant_dequant_weight(((const int8_t *)w->data)[i], scb));
    }
    return round_to_f16(dtype_load_f32(w->dtype, w->data, i));
}

typedef struct WeightRowsJob {
    CpuInt8Linear *l;
    const HostMatrix *w;
} WeightRowsJob;

/* Rows [n0, n1) of a 16-bit weight, quantized row-wise (W_ABSMAX_ROW). */
static void quantize_weight_rows(void *ctx, int64_t n0, int64_t n1, int slot) {
    const WeightRowsJob *j = ctx;
    const size_t row_bytes = (size_t)j->l->K * dtype_size(j->w->dtype);
    (void)slot;
    for (int64_t n = n0; n < n1; n++)
        quant_weight_rowwise(j->w->dtype, (const char *)j->w->data + (size_t)n * row_bytes, 1, j->l->K,
                             j->l->w + n * j->l->Kp, &j->l->scb[n]);
}

static void quantize_weights(CpuInt8Linear *l, const HostMatrix *w) {
    const int64_t N = l->N, K = l->K, Kp = l->Kp;
    switch (l->wq) {
    case W_ABSMAX_ROW:
        if (w->dtype == DT_I8) { /* a bitsandbytes checkpoint: CB and SCB as they are */
            for (int64_t n = 0; n < N; n++) memcpy(l->w + n * Kp, (const int8_t *)w->data + n * K, (size_t)K);
            memcpy(l->scb, w->scb, (size_t)N * sizeof(float));
        } else {
            WeightRowsJob j = {.l = l, .w = w};
            cpu_parallel_for(N, 16, N * K >= (1 << 20), quantize_weight_rows, &j);
        }
        break;
    case W_ABSMAX_TENSOR: {
        float absmax = 0.0f;
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                float a = fabsf(weight_value(w, n, k));
                if (a > absmax) absmax = a;
            }
        float scale = quant_scale127(absmax);
        for (int64_t n = 0; n < N; n++) {
            for (int64_t k = 0; k < K; k++) l->w[n * Kp + k] = code_absmax(weight_value(w, n, k) * scale);
            l->scb[n] = absmax;
        }
        break;
    }
    case W_ZP_TENSOR: {
        float lo = 0.0f, hi = 0.0f, range, scale;
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                float v = weight_value(w, n, k);
                if (v < lo) lo = v;
                if (v > hi) hi = v;
            }
        zeropoint_params(lo, hi, &range, &scale, &l->wzero);
        for (int64_t n = 0; n < N; n++) {
            for (int64_t k = 0; k < K; k++) l->w[n * Kp + k] = code_zeropoint(weight_value(w, n, k) * scale, l->wzero);
            l->scb[n] = range;
        }
        break;
    }
    }
    for (int64_t n = 0; n < l->Np; n++) {
        int32_t s = 0;
        for (int64_t k = 0; k < K; k++) s += l->w[n * Kp + k];
        l->wsum[n] = s;
    }
}

typedef struct PackJob {
    CpuInt8Linear *l;
    int8_t *copies; /* one panel's worth of bytes per thread slot */
} PackJob;

/* Panels [p0, p1) from row-major to the packed layout, in place (a panel's 16 rows occupy
 * the same bytes in both), through the slot's copy; 4-byte groups of k move as one. */
static void pack_panel_range(void *ctx, int64_t p0, int64_t p1, int slot) {
    const PackJob *j = ctx;
    const int64_t Kp = j->l->Kp, bytes = INT8_PANEL_N * Kp;
    int8_t *rows = j->copies + slot * bytes;
    for (int64_t p = p0; p < p1; p++) {
        int8_t *panel = j->l->w + p * bytes;
        memcpy(rows, panel, (size_t)bytes);
        for (int64_t k = 0; k < Kp; k += 4)
            for (int r = 0; r < INT8_PANEL_N; r++) memcpy(panel + k * INT8_PANEL_N + 4 * r, rows + r * Kp + k, 4);
    }
}

/* The weights into the kernel's layout: 0, or -1 when out of memory (w unchanged). */
static int pack_weights(CpuInt8Linear *l) {
    if (!l->kern->block) return 0;
    PackJob j = {.l = l, .copies = malloc((size_t)cpu_pool_slots() * INT8_PANEL_N * (size_t)l->Kp)};
    if (!j.copies) return -1;
    cpu_parallel_for(l->Np / INT8_PANEL_N, 4, l->Np * l->Kp >= (1 << 20), pack_panel_range, &j);
    free(j.copies);
    return 0;
}

CpuInt8Linear *cpu_int8_create(const HostMatrix *w, const float *bias, const QuantConfig *q, Error *err) {
    if (!w || !q || !w->data) {
        err_set(err, "int8 projection: no weight given");
        return NULL;
    }
    if (q->mode == QUANT_FP16 || (unsigned)q->mode >= QUANT_MODE_COUNT) {
        err_set(err, "int8 projection: quantization mode %d is not an int8 mode", (int)q->mode);
        return NULL;
    }
    if (q->outliers != OUTLIERS_PER_CALL && q->outliers != OUTLIERS_PER_TOKEN) {
        err_set(err, "int8 projection: unknown outlier scope %d", (int)q->outliers);
        return NULL;
    }
    if (!(q->threshold >= 0.0f)) {
        err_set(err, "int8 projection: outlier threshold %g must be >= 0", (double)q->threshold);
        return NULL;
    }
    if (w->dtype != DT_F16 && w->dtype != DT_BF16 && w->dtype != DT_F32 && w->dtype != DT_I8) {
        err_set(err, "int8 projection: weight dtype %s cannot be quantized", dtype_name(w->dtype));
        return NULL;
    }
    if (w->rows < 1 || w->cols < 1 || w->rows > ((int64_t)1 << 31)) {
        err_set(err, "int8 projection: weight shape [%lld x %lld] is not supported",
                (long long)w->rows, (long long)w->cols);
        return NULL;
    }
    if (quant_check_int8_source(w->dtype, w->data, w->scb, w->rows, w->cols, err)) return NULL;

    CpuInt8Linear *l = calloc(1, sizeof *l);
    if (!l) goto oom;
    l->mode = q->mode;
    l->act = MODES[q->mode].act;
    l->wq = MODES[q->mode].w;
    l->tau = MODES[q->mode].decompose ? q->threshold : 0.0f;
    l->scope = q->outliers;
    l->kern = cpu_int8_active_kernel();
    l->N = w->rows;
    l->K = w->cols;
    l->Np = (l->N + INT8_PAD_N - 1) / INT8_PAD_N * INT8_PAD_N;
    l->Kp = (l->K + INT8_PAD_K - 1) / INT8_PAD_K * INT8_PAD_K;
    bool zp_act = l->act == ACT_ZP_TOKEN || l->act == ACT_ZP_TENSOR;
    l->deq = !zp_act ? QUANT_DEQUANT_SCALE
             : l->wq == W_ZP_TENSOR ? (float)(1.0 / (254.0 * 254.0))
                                    : (float)(1.0 / (254.0 * 127.0));

    size_t wbytes = (size_t)l->Np * (size_t)l->Kp; /* a multiple of 64, as aligned_alloc wants */
    l->w = aligned_alloc(64, wbytes);
    l->scb = calloc((size_t)l->Np, sizeof(float)); /* padding rows: 0 */
    l->wsum = calloc((size_t)l->Np, sizeof(int32_t));
    if (!l->w || !l->scb || !l->wsum) goto oom;
    memset(l->w, 0, wbytes);
    if (bias) {
        l->bias = malloc((size_t)l->N * sizeof(float));
        if (!l->bias) goto oom;
        memcpy(l->bias, bias, (size_t)l->N * sizeof(float));
    }
    quantize_weights(l, w);
    if (pack_weights(l)) goto oom;
    return l;
oom:
    err_set(err, "int8 projection [%lld x %lld]: out of memory", (long long)w->rows, (long long)w->cols);
    cpu_int8_free(l);
    return NULL;
}

void cpu_int8_free(CpuInt8Linear *l) {
    if (!l) return;
    free(l->w);
    free(l->scb);
    free(l->wsum);
    free(l->bias);
    free(l);
}

size_t cpu_int8_bytes(const CpuInt8Linear *l) {
    if (!l) return 0;
    return sizeof *l + (size_t)l->Np * (size_t)l->Kp + (size_t)l->Np * sizeof(float) +
           (size_t)l->Np * sizeof(int32_t) + (l->bias ? (size_t)l->N * sizeof(float) : 0);
}

/* ================================================================================== */
/* One call: the activation side, then GEMM + epilogue.                               */
/* ================================================================================== */

typedef struct Call {
    const CpuInt8Linear *l;
    const Int8Kernel *kern;
    const float *x;
    int64_t T;
    uint8_t *outlier_col;  /* [K] 1 if the column has some |x| >= tau */
    int64_t n_out, *cols;  /* the outlier columns, ascending */
    float *xo;             /* [T, n_out] the 16-bit side of the decomposition */
    int8_t *qa;            /* [T, Kp] activation codes, padding 0 */
    uint8_t *qa2;          /* [T, Kp] the kernel's second copy (|qa| or qa + 128) */
    float *lo, *hi;        /* [T] zero-point: range of the row's entries (0 included) */
    float *sa;             /* [T] activation statistic: absmax, or range for zero-point */
    float *scale;          /* [T] code = rne(x * scale) (+ zero): 127/absmax or 254/range */
    int32_t *za;           /* [T] activation code of 0 (zero-point), else 0 */
    int64_t *suma;         /* [T] sum of each row's codes (zero-point weights only) */
} Call;

static inline bool is_zeropoint(ActScheme a) { return a == ACT_ZP_TOKEN || a == ACT_ZP_TENSOR; }

/* Row statistics over the entries that stay in int8: those below tau (as in bitsandbytes,
 * the non-outlier entries of outlier columns still count: docs/QUANT.md, "Outlier
 * decomposition"). Entries left out count as 0,
 * which changes neither the absmax nor a range that contains 0 anyway. (Written on GCC's
 * vector types, 8 lanes, so that the AVX2 copy keeps its statistics in registers; maxima
 * and minima are exact, so the lanes give the same bits as one pass in order.) */
BODY void row_stats(const Call *c, int64_t t) {
    enum { L = 8 }; /* lanes: lane i takes k = i mod 8, the same for every path */
    typedef int32_t I8V __attribute__((vector_size(32)));
    const int64_t K = c->l->K;
    const float *xr = c->x + t * K;
    const float tau = c->l->tau;
    const bool zp = is_zeropoint(c->l->act);
    /* whole groups of 8 on vectors: v = x, or 0 where left out; max |v|, min v, max v per
     * lane (comparisons with NaN are false, so NaN never enters). Only the statistic of
     * the scheme is computed. */
    const F8 tau8 = {tau, tau, tau, tau, tau, tau, tau, tau};
    const I8V keep_all = tau == 0.0f ? (I8V){-1, -1, -1, -1, -1, -1, -1, -1} : (I8V){0};
    const I8V abs_bits = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                          0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    F8 m8 = {0}, mn8 = {0}, mx8 = {0};
    int64_t k0 = 0;
    for (; k0 + L <= K; k0 += L) {
        F8 x;
        memcpy(&x, xr + k0, sizeof x);
        const F8 ax = (F8)((I8V)x & abs_bits);
        const I8V keep = keep_all | (I8V)(ax < tau8);
        const F8 v = (F8)((I8V)x & keep), a = (F8)((I8V)v & abs_bits);
        const I8V gt = (I8V)(a > m8);
        m8 = (F8)(((I8V)a & gt) | ((I8V)m8 & ~gt));
        if (zp) {
            const I8V lt = (I8V)(v < mn8), gt2 = (I8V)(v > mx8);
            mn8 = (F8)(((I8V)v & lt) | ((I8V)mn8 & ~lt));
            mx8 = (F8)(((I8V)v & gt2) | ((I8V)mx8 & ~gt2));
        }
    }
    float m[L], mn[L], mx[L];
    memcpy(m, &m8, sizeof m), memcpy(mn, &mn8, sizeof mn), memcpy(mx, &mx8, sizeof mx);
    for (int64_t k = k0; k < K; k++) { /* the last partial group, each entry in its lane */
        const int i = (int)(k - k0);
        const float x = xr[k];
        const float v = tau == 0.0f || fabsf(x) < tau ? x : 0.0f, a = fabsf(v);
        m[i] = a > m[i] ? a : m[i];
        mn[i] = v < mn[i] ? v : mn[i];
        mx[i] = v > mx[i] ? v : mx[i];
    }
    for (int i = 1; i < L; i++) {
        m[0] = m[i] > m[0] ? m[i] : m[0];
        mn[0] = mn[i] < mn[0] ? mn[i] : mn[0];
        mx[0] = mx[i] > mx[0] ? mx[i] : mx[0];
    }
    if (zp) c->lo[t] = mn[0], c->hi[t] = mx[0];
    else c->sa[t] = m[0];
}

/* Codes of row t from its scale (and zero); the kernel's copy; the row's code sum.
 * Outliers get the code that stands for 0: per call the whole outlier columns, per
 * token the row's own entries >= tau. */
BODY void row_codes(const Call *c, int64_t t) {
    const CpuInt8Linear *l = c->l;
    const int64_t K = l->K, Kp = l->Kp;
    const float *xr = c->x + t * K;
    const float scale = c->scale[t], tau = l->tau;
    const int32_t zero = c->za[t];
    const int8_t zcode = (int8_t)zero;
    int8_t *restrict q = c->qa + t * Kp;
    if (is_zeropoint(l->act))
        for (int64_t k = 0; k < K; k++) q[k] = code_zeropoint(xr[k] * scale, zero);
    else
        for (int64_t k = 0; k < K; k++) q[k] = code_absmax(xr[k] * scale);
    for (int64_t k = K; k < Kp; k++) q[k] = 0; /* padding: the kernels run over Kp */
    if (tau > 0.0f) {
        if (l->scope == OUTLIERS_PER_CALL) {
            for (int64_t j = 0; j < c->n_out; j++) q[c->cols[j]] = zcode;
        } else {
            for (int64_t k = 0; k < K; k++) q[k] = fabsf(xr[k]) >= tau ? zcode : q[k];
        }
    }
    if (c->suma) {
        int64_t sum = 0;
        for (int64_t k = 0; k < K; k++) sum += q[k];
        c->suma[t] = sum;
    }
    uint8_t *restrict q2 = c->qa2 ? c->qa2 + t * Kp : NULL;
    if (c->kern->a2 == INT8_A2_ABS)
        for (int64_t k = 0; k < Kp; k++) q2[k] = (uint8_t)(q[k] < 0 ? -q[k] : q[k]);
    else if (c->kern->a2 == INT8_A2_OFFSET)
        for (int64_t k = 0; k < Kp; k++) q2[k] = (uint8_t)(q[k] + 128);
    /* INT8_A2_AMX_PACK: pack_amx_slabs, once all rows have their codes */
}

/* Statistics (codes = false) or codes (true) of rows [t0, t1). Compiled twice (below) so
 * that the loops vectorize with AVX2 where the CPU has it. */
BODY void quantize_rows_body(const Call *c, int64_t t0, int64_t t1, bool codes) {
    for (int64_t t = t0; t < t1; t++) {
        if (codes) row_codes(c, t);
        else row_stats(c, t);
    }
}

static void quantize_rows_portable(const Call *c, int64_t t0, int64_t t1, bool codes) {
    quantize_rows_body(c, t0, t1, codes);
}

__attribute__((target("avx2"))) static void quantize_rows_avx2(const Call *c, int64_t t0, int64_t t1,
                                                               bool codes) {
    quantize_rows_body(c, t0, t1, codes);
}

typedef struct QuantizeRowsJob {
    const Call *c;
    bool codes;
} QuantizeRowsJob;

static void quantize_row_range(void *ctx, int64_t t0, int64_t t1, int slot) {
    const QuantizeRowsJob *j = ctx;
    (void)slot;
    if (j->c->kern->avx2) quantize_rows_avx2(j->c, t0, t1, j->codes);
    else quantize_rows_portable(j->c, t0, t1, j->codes);
}

static void quantize_rows(const Call *c, bool codes) {
    QuantizeRowsJob j = {.c = c, .codes = codes};
    const int64_t rows_per_piece = (1 << 14) / c->l->K + 1;
    cpu_parallel_for(c->T, rows_per_piece, c->T * c->l->K >= CPU_PAR_MIN, quantize_row_range, &j);
}

/* The AMX copy of the codes (INT8_A2_AMX_PACK in cpu_internal.h), 64-byte slabs [s0, s1)
 * of every tile of INT8_AMX_T tokens: slab s of tile g is 1 KiB, row i of it holds 4 bytes
 * k = 64 s + 4 i .. + 3 of each of the tile's tokens (tokens past T: 0). One piece writes
 * whole slabs; splitting by token instead would have both threads write every cache line
 * (each line holds 4 bytes of all 16 tokens). */
static void pack_amx_slabs(void *ctx, int64_t s0, int64_t s1, int slot) {
    const Call *c = ctx;
    (void)slot;
    const int64_t Kp = c->l->Kp, slabs = Kp / 64;
    for (int64_t gs = s0; gs < s1; gs++) {
        const int64_t g = gs / slabs, s = gs % slabs, t0 = g * INT8_AMX_T;
        uint8_t *dst = c->qa2 + t0 * Kp + s * 1024;
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < INT8_AMX_T; j++) {
                if (t0 + j < c->T) memcpy(dst + 64 * i + 4 * j, c->qa + (t0 + j) * Kp + 64 * s + 4 * i, 4);
                else memset(dst + 64 * i + 4 * j, 0, 4);
            }
    }
}

/* flag[k] = 1 if some row has |x[t,k]| >= tau (branch-free, so that it vectorizes). */
BODY void mark_outliers_body(const float *x, int64_t T, int64_t K, float tau, uint8_t *restrict flag) {
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++) flag[k] |= (uint8_t)(fabsf(x[t * K + k]) >= tau);
}

static void mark_outliers_portable(const float *x, int64_t T, int64_t K, float tau, uint8_t *flag) {
    mark_outliers_body(x, T, K, tau, flag);
}

__attribute__((target("avx2"))) static void mark_outliers_avx2(const float *x, int64_t T, int64_t K, float tau,
                                                               uint8_t *flag) {
    mark_outliers_body(x, T, K, tau, flag);
}

static void quantize_activations(Call *c) {
    const CpuInt8Linear *l = c->l;
    const int64_t T = c->T, K = l->K;
    /* 1. outlier columns: any row with |x| >= tau */
    if (l->tau > 0.0f) {
        if (c->kern->avx2) mark_outliers_avx2(c->x, T, K, l->tau, c->outlier_col);
        else mark_outliers_portable(c->x, T, K, l->tau, c->outlier_col);
        for (int64_t k = 0; k < K; k++)
            if (c->outlier_col[k]) c->cols[c->n_out++] = k;
    }
    /* 2. statistics per row, reduced to one for the whole call for the tensor-wise schemes */
    quantize_rows(c, false);
    if (l->act == ACT_ABSMAX_TENSOR) {
        float m = 0.0f;
        for (int64_t t = 0; t < T; t++) m = c->sa[t] > m ? c->sa[t] : m;
        for (int64_t t = 0; t < T; t++) c->sa[t] = m;
    } else if (l->act == ACT_ZP_TENSOR) {
        float lo = 0.0f, hi = 0.0f;
        for (int64_t t = 0; t < T; t++) {
            lo = c->lo[t] < lo ? c->lo[t] : lo;
            hi = c->hi[t] > hi ? c->hi[t] : hi;
        }
        for (int64_t t = 0; t < T; t++) c->lo[t] = lo, c->hi[t] = hi;
    }
    for (int64_t t = 0; t < T; t++) {
        if (is_zeropoint(l->act)) {
            zeropoint_params(c->lo[t], c->hi[t], &c->sa[t], &c->scale[t], &c->za[t]);
        } else {
            c->scale[t] = quant_scale127(c->sa[t]);
            c->za[t] = 0;
        }
    }
    /* 3. codes, then (AMX, 2 tokens or more) their packed copy */
    quantize_rows(c, true);
    if (c->kern->a2 == INT8_A2_AMX_PACK && T >= 2) {
        const int64_t n = (T + INT8_AMX_T - 1) / INT8_AMX_T * (l->Kp / 64);
        cpu_parallel_for(n, 8, T * K >= CPU_PAR_MIN, pack_amx_slabs, c);
    }
}

/* The 16-bit side, gathered once per call: xo[t, j] = x[t, cols[j]] (per call: every
 * row's value; per token: only the entries >= tau, others 0). */
static void gather_outlier_inputs(Call *c) {
    const CpuInt8Linear *l = c->l;
    for (int64_t t = 0; t < c->T; t++)
        for (int64_t j = 0; j < c->n_out; j++) {
            float v = c->x[t * l->K + c->cols[j]];
            if (l->scope == OUTLIERS_PER_TOKEN && !(fabsf(v) >= l->tau)) v = 0.0f;
            c->xo[t * c->n_out + j] = v;
        }
}

/* Step 4 for tokens [t0, t0+nt) x the rows [n0, n0+nb) of one block, from their int32
 * sums c32[i][r] (row stride BLOCK_ROWS). woT holds the block's dequantized outlier
 * columns transposed, [n_out][BLOCK_ROWS], so that every loop here runs along the rows
 * (vectorizes) while each output still sums its outlier terms in ascending column
 * order — the same float operations in the same order as quant_ref_linear. */
BODY void epilogue_body(const Call *c, const int32_t *c32, int64_t t0, int nt, int64_t n0,
                                 int64_t nb, const float *woT, float *y, int32_t *acc32, bool wide) {
    const CpuInt8Linear *l = c->l;
    const int64_t N = l->N, nv = n0 + nb <= N ? nb : N - n0; /* rows past N are padding */
    const float *scb = l->scb + n0, *bias = l->bias ? l->bias + n0 : NULL;
    float v[BLOCK_ROWS] = {0}; /* rows past nv (up to a multiple of 8) stay 0 and are not stored */
    for (int i = 0; i < nt; i++) {
        const int64_t t = t0 + i;
        const int32_t *cr = c32 + i * BLOCK_ROWS;
        const float sa = c->sa[t], deq = l->deq;
        if (c->za[t] == 0 && !c->suma) { /* absmax activations: C32 as is */
            for (int64_t r = 0; r < nv; r++) v[r] = (float)cr[r] * sa * scb[r] * deq;
        } else { /* zero-point: sum (qa - za)(qw - wz) from sum qa qw (docs/QUANT.md) */
            const int64_t za = c->za[t], wz = l->wzero;
            const int64_t corr = c->suma ? l->K * za * wz - wz * c->suma[t] : 0;
            for (int64_t r = 0; r < nv; r++) {
                int64_t cc = cr[r] - za * l->wsum[n0 + r] + corr;
                v[r] = (float)cc * sa * scb[r] * deq;
            }
        }
        if (bias)
            for (int64_t r = 0; r < nv; r++) v[r] += bias[r];
        if (c->n_out > 0 && wide) {
            /* AVX-512: all BLOCK_ROWS rows at once, in four 16-float vectors, so each xo[j]
             * is loaded once per token; lane e of each still computes the scalar loop's sum
             * in the scalar loop's order (rows past nv compute zeros and are not stored) */
            const float *xo = c->xo + t * c->n_out;
            F16V s[BLOCK_ROWS / 16] = {{0}};
            for (int64_t j = 0; j < c->n_out; j++) {
                const float xj = xo[j];
                for (int q = 0; q < BLOCK_ROWS / 16; q++) {
                    F16V w16;
                    memcpy(&w16, woT + j * BLOCK_ROWS + 16 * q, sizeof w16);
                    s[q] += xj * w16;
                }
            }
            for (int q = 0; q < BLOCK_ROWS / 16; q++) {
                F16V v16;
                memcpy(&v16, v + 16 * q, sizeof v16);
                v16 += s[q];
                memcpy(v + 16 * q, &v16, sizeof v16);
            }
        } else if (c->n_out > 0) {
            /* 8 rows at a time in a GCC vector (one ymm register with AVX2): lane e
             * computes the same sum, in the same order, as the scalar loop would */
            const float *xo = c->xo + t * c->n_out;
            for (int64_t r0 = 0; r0 < nv; r0 += 8) {
                F8 s = {0}, w8, v8;
                for (int64_t j = 0; j < c->n_out; j++) {
                    memcpy(&w8, woT + j * BLOCK_ROWS + r0, sizeof w8);
                    s += xo[j] * w8;
                }
                memcpy(&v8, v + r0, sizeof v8);
                v8 += s;
                memcpy(v + r0, &v8, sizeof v8);
            }
        }
        float *yr = y + t * N + n0;
        for (int64_t r = 0; r < nv; r++) yr[r] = v[r];
        if (acc32) memcpy(acc32 + t * N + n0, cr, (size_t)nv * sizeof *cr);
    }
}

static void epilogue_portable(const Call *c, const int32_t *c32, int64_t t0, int nt, int64_t n0, int64_t nb,
                              const float *woT, float *y, int32_t *acc32) {
    epilogue_body(c, c32, t0, nt, n0, nb, woT, y, acc32, false);
}

__attribute__((target("avx2"))) static void epilogue_avx2(const Call *c, const int32_t *c32, int64_t t0, int nt,
                                                          int64_t n0, int64_t nb, const float *woT, float *y,
                                                          int32_t *acc32) {
    epilogue_body(c, c32, t0, nt, n0, nb, woT, y, acc32, false);
}

__attribute__((target("avx512f,avx2"))) static void epilogue_avx512(const Call *c, const int32_t *c32, int64_t t0,
                                                                    int nt, int64_t n0, int64_t nb, const float *woT,
                                                                    float *y, int32_t *acc32) {
    epilogue_body(c, c32, t0, nt, n0, nb, woT, y, acc32, true);
}

/* woT[j][r] = the dequantized weight of gathered code gq[j][r] of row n0 + r. */
BODY void dequant_outliers_body(const CpuInt8Linear *l, const int8_t *gq, int64_t n_out, int64_t n0,
                                         int64_t nb, float *woT) {
    const float *scb = l->scb + n0;
    for (int64_t j = 0; j < n_out; j++) {
        for (int64_t r = 0; r < nb; r++)
            woT[j * BLOCK_ROWS + r] = quant_dequant_weight(gq[j * BLOCK_ROWS + r], scb[r]);
        for (int64_t r = nb; r < BLOCK_ROWS; r++) woT[j * BLOCK_ROWS + r] = 0.0f; /* read by the epilogue */
    }
}

static void dequant_outliers_portable(const CpuInt8Linear *l, const int8_t *gq, int64_t n_out, int64_t n0,
                                      int64_t nb, float *woT) {
    dequant_outliers_body(l, gq, n_out, n0, nb, woT);
}

__attribute__((target("avx2"))) static void dequant_outliers_avx2(const CpuInt8Linear *l, const int8_t *gq,
                                                                  int64_t n_out, int64_t n0, int64_t nb,
                                                                  float *woT) {
    dequant_outliers_body(l, gq, n_out, n0, nb, woT);
}

/* Steps 3-4 for tokens [t0, t1) (t1 - t0 <= CHUNK_T) and the weight rows [n0, n1) of one
 * block. gq and woT are the thread's scratch for the block's outlier columns,
 * [n_out][BLOCK_ROWS]. Three ways to the int32 sums, by kernel: AMX's 16-row tiles, the
 * VNNI kernel's whole block (it picks its own tiles), or the row-major tiles of the others,
 * whose loops go weight rows outside, tokens inside: a group of INT8_ROWS weight rows
 * (4 x Kp bytes) stays in L1 while every token tile of the chunk passes over it, so each
 * weight load from L2 serves all the chunk's tokens. The int32 results of the whole chunk
 * x block wait in c32 for the epilogue, which then runs per token tile exactly as before:
 * every output's arithmetic is the same whatever T. */
static void run_block(const Call *c, int64_t t0, int64_t t1, int64_t n0, int64_t n1, int8_t *gq, float *woT,
                      float *y, int32_t *acc32) {
    const CpuInt8Linear *l = c->l;
    const Int8Kernel *kern = c->kern;
    const int64_t Kp = l->Kp, n_out = c->n_out;
    const bool simd = kern->avx2;
    int32_t c32[CHUNK_T * BLOCK_ROWS];
    if (kern->rows16 && c->T >= 2) {
        /* AMX: all the chunk's tokens against 16 weight rows at a time */
        for (int64_t n = n0; n < n1; n += INT8_AMX_N) {
            kern->rows16(c->qa2 + t0 * Kp, t1 - t0, l->w + n * Kp, Kp, c32 + (n - n0), BLOCK_ROWS);
            for (int64_t j = 0; j < n_out; j++)
                for (int64_t r = n; r < n + INT8_AMX_N; r++) gq[j * BLOCK_ROWS + (r - n0)] = l->w[r * Kp + c->cols[j]];
        }
    } else if (kern->block) {
        /* VNNI: the block's 64 rows at once for all the chunk's tokens, from the panels */
        const int8_t *wp = l->w + n0 * Kp;
        kern->block(c->qa2 + t0 * Kp, t1 - t0, wp, l->wsum + n0, Kp, c32, BLOCK_ROWS);
        /* column k of a panel's 16 rows: every 4th byte of one 64-byte line */
        for (int64_t j = 0; j < n_out; j++) {
            const int64_t k = c->cols[j];
            for (int p = 0; p < INT8_PANELS; p++) {
                const int8_t *line = wp + p * INT8_PANEL_N * Kp + k / 4 * 64 + k % 4;
                for (int r = 0; r < INT8_PANEL_N; r++) gq[j * BLOCK_ROWS + p * INT8_PANEL_N + r] = line[4 * r];
            }
        }
    } else {
        for (int64_t n = n0; n < n1; n += INT8_ROWS) {
            for (int64_t t = t0; t < t1;) {
                const int nt = t1 - t >= INT8_TILE_T ? INT8_TILE_T : 1;
                int32_t *out = c32 + (t - t0) * BLOCK_ROWS + (n - n0);
                const int8_t *a = c->qa + t * Kp;
                const uint8_t *a2 = c->qa2 ? c->qa2 + t * Kp : NULL;
                if (nt == INT8_TILE_T) {
                    for (int64_t r = 0; r < INT8_ROWS; r += kern->rows4)
                        kern->tile4(a, a2, l->w + (n + r) * Kp, l->wsum + n + r, Kp, out + r, BLOCK_ROWS);
                } else {
                    kern->tile1(a, a2, l->w + n * Kp, l->wsum + n, Kp, out, BLOCK_ROWS);
                }
                t += nt;
            }
            /* The codes of the outlier columns, picked up while these rows are still in L1. */
            for (int64_t j = 0; j < n_out; j++)
                for (int64_t r = n; r < n + INT8_ROWS; r++) gq[j * BLOCK_ROWS + (r - n0)] = l->w[r * Kp + c->cols[j]];
        }
    }
    if (n_out > 0) {
        if (simd) dequant_outliers_avx2(l, gq, n_out, n0, n1 - n0, woT);
        else dequant_outliers_portable(l, gq, n_out, n0, n1 - n0, woT);
    }
    for (int64_t t = t0; t < t1;) {
        const int nt = t1 - t >= INT8_TILE_T ? INT8_TILE_T : 1;
        const int32_t *tc = c32 + (t - t0) * BLOCK_ROWS;
        if (kern->avx512) epilogue_avx512(c, tc, t, nt, n0, n1 - n0, woT, y, acc32);
        else if (simd) epilogue_avx2(c, tc, t, nt, n0, n1 - n0, woT, y, acc32);
        else epilogue_portable(c, tc, t, nt, n0, n1 - n0, woT, y, acc32);
        t += nt;
    }
}

/* Per-thread scratch for run_block: dequantized outlier columns of a block (floats)
 * followed by their codes (bytes). */
static size_t block_scratch_bytes(int64_t n_out) { return (size_t)n_out * BLOCK_ROWS * (sizeof(float) + 1); }

typedef struct GemmJob {
    const Call *c;
    float *y;
    int32_t *acc32;
    unsigned char *block_scratch; /* one block_scratch_bytes(n_out) per thread slot, or NULL */
    int64_t n_blocks;
} GemmJob;

/* Pieces [i0, i1): piece i is token chunk i / n_blocks times weight block i % n_blocks. */
static void gemm_pieces(void *ctx, int64_t i0, int64_t i1, int slot) {
    const GemmJob *j = ctx;
    const Call *c = j->c;
    const CpuInt8Linear *l = c->l;
    unsigned char *mine = j->block_scratch ? j->block_scratch + (size_t)slot * block_scratch_bytes(c->n_out) : NULL;
    float *woT = (float *)(void *)mine;
    int8_t *gq = mine ? (int8_t *)(mine + (size_t)c->n_out * BLOCK_ROWS * sizeof(float)) : NULL;
    for (int64_t i = i0; i < i1; i++) {
        const int64_t t0 = i / j->n_blocks * CHUNK_T, t1 = t0 + CHUNK_T < c->T ? t0 + CHUNK_T : c->T;
        const int64_t n0 = i % j->n_blocks * BLOCK_ROWS, n1 = n0 + BLOCK_ROWS < l->Np ? n0 + BLOCK_ROWS : l->Np;
        run_block(c, t0, t1, n0, n1, gq, woT, j->y, j->acc32);
    }
}

static void gemm_and_epilogue(const Call *c, float *y, int32_t *acc32, unsigned char *block_scratch) {
    const CpuInt8Linear *l = c->l;
    const int64_t T = c->T, n_blocks = (l->Np + BLOCK_ROWS - 1) / BLOCK_ROWS;
    const int64_t n_chunks = (T + CHUNK_T - 1) / CHUNK_T;
    const double work = (double)T * (double)l->Np * (double)l->Kp;
    /* Tokens go by chunks whose codes stay in L2 while every weight block passes over
     * them (pieces are taken in order: chunk by chunk); blocks are handed out as threads
     * come free (the machine may be shared). */
    GemmJob j = {.c = c, .y = y, .acc32 = acc32, .block_scratch = block_scratch, .n_blocks = n_blocks};
    cpu_parallel_for(n_chunks * n_blocks, 1, work >= 1e6, gemm_pieces, &j);
}

/* ---- the per-call arrays, carved out of the scratch areas ---- */

/* Consecutive pieces of a buffer, each starting on a 64-byte boundary (a cache line; the
 * kernels' loads do not need it, but rows of codes then never straddle more lines than
 * necessary). With base NULL it only measures: used is then the size to reserve. */
typedef struct Carver {
    unsigned char *base;
    size_t used;
} Carver;

static void *carve(Carver *cv, size_t bytes) {
    void *p = cv->base ? cv->base + cv->used : NULL;
    cv->used += (bytes + 63) / 64 * 64;
    return p;
}

/* The arrays whose size T and K decide (everything of Call but the 16-bit side). */
static void carve_call(Call *c, Carver *cv) {
    const CpuInt8Linear *l = c->l;
    const size_t T = (size_t)c->T, K = (size_t)l->K, codes = T * (size_t)l->Kp;
    c->outlier_col = carve(cv, K);
    c->cols = carve(cv, K * sizeof *c->cols);
    c->qa = carve(cv, codes);
    const size_t amx_codes = (T + INT8_AMX_T - 1) / INT8_AMX_T * INT8_AMX_T * (size_t)l->Kp;
    c->qa2 = c->kern->a2 == INT8_A2_NONE ? NULL : carve(cv, c->kern->a2 == INT8_A2_AMX_PACK ? amx_codes : codes);
    c->lo = carve(cv, T * sizeof *c->lo);
    c->hi = carve(cv, T * sizeof *c->hi);
    c->sa = carve(cv, T * sizeof *c->sa);
    c->scale = carve(cv, T * sizeof *c->scale);
    c->za = carve(cv, T * sizeof *c->za);
    c->suma = l->wq == W_ZP_TENSOR ? carve(cv, T * sizeof *c->suma) : NULL;
}

/* The 16-bit side, once the outlier columns are known: xo, then every thread's block scratch. */
static unsigned char *carve_outliers(Call *c, Carver *cv) {
    c->xo = carve(cv, (size_t)c->T * (size_t)c->n_out * sizeof *c->xo);
    return carve(cv, (size_t)cpu_pool_slots() * block_scratch_bytes(c->n_out));
}

static int out_of_memory(const CpuInt8Linear *l, int64_t T, size_t bytes, Error *err) {
    return err_set(err, "int8 projection [%lld x %lld]: out of memory for %zu bytes of scratch (%lld tokens)",
                   (long long)l->N, (long long)l->K, bytes, (long long)T);
}

static int forward(const CpuInt8Linear *l, CpuInt8Scratch *scratch, const float *x, int64_t T, float *y,
                   int32_t *acc32, float *sca, Error *err) {
    Call c = {.l = l, .kern = l->kern, .x = x, .T = T};
    Carver size = {0};
    carve_call(&c, &size);
    Carver cv = {.base = cpu_scratch_reserve(&scratch->call, size.used)};
    if (!cv.base) return out_of_memory(l, T, size.used, err);
    carve_call(&c, &cv);
    memset(c.outlier_col, 0, (size_t)l->K);

    quantize_activations(&c);
    unsigned char *block_scratch = NULL;
    if (c.n_out > 0) {
        size = (Carver){0};
        carve_outliers(&c, &size);
        cv = (Carver){.base = cpu_scratch_reserve(&scratch->outliers, size.used)};
        if (!cv.base) return out_of_memory(l, T, size.used, err);
        block_scratch = carve_outliers(&c, &cv);
        gather_outlier_inputs(&c);
    }
    gemm_and_epilogue(&c, y, acc32, block_scratch);
    if (sca) memcpy(sca, c.sa, (size_t)T * sizeof *sca);
    return 0;
}

int cpu_int8_forward_ex(const CpuInt8Linear *l, CpuInt8Scratch *scratch, const float *x, int64_t T, float *y,
                        int32_t *acc32, float *sca, Error *err) {
    if (T <= 0) return 0;
    if (scratch) return forward(l, scratch, x, T, y, acc32, sca, err);
    CpuInt8Scratch temporary;
    memset(&temporary, 0, sizeof temporary);
    int rc = forward(l, &temporary, x, T, y, acc32, sca, err);
    cpu_int8_scratch_free(&temporary);
    return rc;
}

int cpu_int8_forward(const CpuInt8Linear *l, CpuInt8Scratch *scratch, const float *x, int64_t T, float *y,
                     Error *err) {
    return cpu_int8_forward_ex(l, scratch, x, T, y, NULL, NULL, err);
}

void cpu_int8_scratch_free(CpuInt8Scratch *s) {
    cpu_scratch_free(&s->call);
    cpu_scratch_free(&s->outliers);
}
