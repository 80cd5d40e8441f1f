/* cpu/cpu_attention.c — causal softmax attention on the CPU (the Backend operation
 * `attention`, backend.h), over the 16-bit KV cache.
 *
 * For each new token t (absolute position n_past + t) and head h, over the keys
 * j = 0 .. n_past + t (causal):
 *     s_j = scale * q.k_j + slope_h * j,   p = softmax(s),   out = sum_j p_j v_j.
 * A unit of work (one head, a block of queries) first copies the rows of its head's keys
 * and values it needs side by side, as float32: half caches are widened (F16C when
 * available; the conversion is exact either way), float32 ones copied. A unit of one or two
 * queries (decoding) skips the copy and reads the cache itself, widening a half cache's
 * values in registers: the same numbers, the same arithmetic. For one (t, h), keys are then
 * taken in chunks of ATT_CHUNK: a chunk's
 * scores go to a stack buffer, become weights exp(s_j - m), where m is the largest score
 * seen so far, and the weighted values are added to out; when a chunk raises m, what was
 * accumulated is first rescaled by exp(m_old - m_new) (the "online softmax"). With at most
 * ATT_CHUNK keys this is exactly the textbook two-pass softmax. The order of every float
 * operation for one query depends only on its number of keys, never on T, n_past or the
 * block it falls in: a sequence's output is the same whatever else runs in the batch. The
 * three steps of a chunk — scores, exponentials, weighted sum — each have a plain and an
 * AVX2 version. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_avx2.h"
#include "cpu_internal.h"
#include "cpu_pool.h"
#include "dtype.h"

enum { ATT_CHUNK = 256 };

/* What one (t, h) pair reads: rows j of K and V for this head are k + j * stride, or, when
 * k16 is set, k16 + j * stride (likewise v16): read straight from the 16-bit cache. */
typedef struct HeadView {
    const float *q, *k, *v;
    const uint16_t *k16, *v16;
    float *out;
    int64_t stride;       /* heads * head_dim, or head_dim in a widened copy */
    bool direct;          /* k, v or k16, v16 point into the cache itself (not a copy) */
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
/* The SIMD code reads rows of float copies (half = false) or of the 16-bit cache itself
 * (half = true, F16C widening each 8 values in a register: exact, so the arithmetic and its
 * result are the same either way). Each function below takes `half` as a constant. */
#define INLINE_KV static inline __attribute__((always_inline, target("avx2,fma,f16c")))
#define TARGET_KV __attribute__((target("avx2,fma,f16c")))

INLINE_KV __m256 key8(const HeadView *hv, int64_t j, int i, bool half) {
    if (half) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(hv->k16 + j * hv->stride + i)));
    return _mm256_loadu_ps(hv->k + j * hv->stride + i);
}

INLINE_KV __m256 value8(const HeadView *hv, int64_t j, int i, bool half) {
    if (half) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(hv->v16 + j * hv->stride + i)));
    return _mm256_loadu_ps(hv->v + j * hv->stride + i);
}

INLINE_KV float key1(const HeadView *hv, int64_t j, int i, bool half) {
    return half ? f16_to_f32(hv->k16[j * hv->stride + i]) : hv->k[j * hv->stride + i];
}

INLINE_KV float value1(const HeadView *hv, int64_t j, int i, bool half) {
    return half ? f16_to_f32(hv->v16[j * hv->stride + i]) : hv->v[j * hv->stride + i];
}

/* Rows of the cache are heads*head_dim halves apart — a new 4 KiB page every row or few
 * for real models — which the hardware prefetchers do not follow, so whatever reads the
 * cache asks for the rows this many keys ahead itself. */
enum { PREFETCH_KEYS = 16 };

/* Key or value row j of the cache (hv reads the cache itself: hv->direct), this many keys
 * ahead: every 64-byte line of its hd values. */
INLINE_KV void prefetch_row(const HeadView *hv, bool half, const void *base, int64_t j) {
    const int64_t bytes = (int64_t)hv->hd * (half ? 2 : 4);
    const char *row = (const char *)base + j * hv->stride * (half ? 2 : 4);
    for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(row + i, _MM_HINT_T0);
}

/* Eight keys at a time: eight independent dot products (one accumulator each), folded
 * into one vector of eight scores by a tree of horizontal adds. Needs hd % 8 == 0 (true
 * of every real model); other head sizes and the last nc % 8 keys go one by one. */

/* The eight scores of keys j0+j .. j0+j+7 from their dot-product accumulators (acc[l]: the
 * 8 partial sums of key l): stored at s + j and folded into *vmax. */
INLINE_AVX2 void scores8_finish(const HeadView *hv, int j0, int j, const __m256 acc[8], float *s, __m256 *vmax) {
    /* hadd pairs, then pairs of pairs: lane halves hold partial sums of keys 0-3 / 4-7 */
    __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
    __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
    __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
    __m256 dots = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                _mm256_permute2f128_ps(h0123, h4567, 0x31));
    __m256 pos = _mm256_add_ps(_mm256_set1_ps((float)(j0 + j)), _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 sc = _mm256_fmadd_ps(_mm256_set1_ps(hv->scale), dots, _mm256_mul_ps(_mm256_set1_ps(hv->slope), pos));
    _mm256_storeu_ps(s + j, sc);
    *vmax = _mm256_max_ps(*vmax, sc);
}

/* Keys j0+j .. j0+j+7 against one query (nc: the keys of the chunk, for the prefetch). */
INLINE_KV void scores8(const HeadView *hv, int j0, int j, int nc, float *s, __m256 *vmax, bool half) {
    const int64_t k0 = j0 + j;
    if (hv->direct && j + PREFETCH_KEYS + 8 <= nc)
        for (int l = 0; l < 8; l++)
            prefetch_row(hv, half, half ? (const void *)hv->k16 : hv->k, k0 + PREFETCH_KEYS + l);
    __m256 acc[8];
#pragma GCC unroll 8
    for (int l = 0; l < 8; l++) acc[l] = _mm256_setzero_ps();
    for (int i = 0; i < hv->hd; i += 8) {
        __m256 q = _mm256_loadu_ps(hv->q + i);
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) acc[l] = _mm256_fmadd_ps(q, key8(hv, k0 + l, i, half), acc[l]);
    }
    scores8_finish(hv, j0, j, acc, s, vmax);
}

/* What scores_avx2 does after its blocks of eight (which ended at key j0 + j): the largest
 * score of those blocks, then the keys left one by one. */
INLINE_KV float scores_tail(const HeadView *hv, int j0, int j, int nc, float *s, __m256 vmax, bool half) {
    const int hd = hv->hd;
    float mx = -INFINITY, lanes[8];
    _mm256_storeu_ps(lanes, vmax);
    for (int l = 0; l < 8; l++) mx = lanes[l] > mx ? lanes[l] : mx;
    for (; j < nc; j++) {
        const int64_t key = j0 + j;
        __m256 acc = _mm256_setzero_ps();
        int i = 0;
        for (; i + 8 <= hd; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(hv->q + i), key8(hv, key, i, half), acc);
        float d = hsum8(acc);
        for (; i < hd; i++) d += hv->q[i] * key1(hv, key, i, half);
        s[j] = hv->scale * d + hv->slope * (float)(j0 + j);
        if (s[j] > mx) mx = s[j];
    }
    return mx;
}

INLINE_KV float scores_simd(const HeadView *hv, int j0, int nc, float *s, bool half) {
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    int j = 0;
    if (hv->hd % 8 == 0)
        for (; j + 8 <= nc; j += 8) scores8(hv, j0, j, nc, s, &vmax, half);
    return scores_tail(hv, j0, j, nc, s, vmax, half);
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
INLINE_KV void weighted_sum_simd(const HeadView *hv, int j0, int nc, const float *p, bool half) {
    float *out = hv->out;
    int i = 0;
    for (; i + 64 <= hv->hd; i += 64) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) acc[l] = _mm256_loadu_ps(out + i + 8 * l);
        for (int j = 0; j < nc; j++) {
            if (hv->direct && i == 0 && j + PREFETCH_KEYS < nc)
                prefetch_row(hv, half, half ? (const void *)hv->v16 : hv->v, j0 + j + PREFETCH_KEYS);
            __m256 pj = _mm256_set1_ps(p[j]);
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++) acc[l] = _mm256_fmadd_ps(pj, value8(hv, j0 + j, i + 8 * l, half), acc[l]);
        }
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) _mm256_storeu_ps(out + i + 8 * l, acc[l]);
    }
    for (; i + 8 <= hv->hd; i += 8) {
        __m256 acc = _mm256_loadu_ps(out + i);
        for (int j = 0; j < nc; j++) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), value8(hv, j0 + j, i, half), acc);
        _mm256_storeu_ps(out + i, acc);
    }
    for (; i < hv->hd; i++)
        for (int j = 0; j < nc; j++) out[i] += p[j] * value1(hv, j0 + j, i, half);
}
#endif

/* The online softmax's bookkeeping, shared by attend_one and attend_group. A chunk whose
 * largest score cmax beats the running maximum m: rescale what was accumulated against the
 * old maximum (sum and out) by exp(m - cmax), then m = cmax. */
static inline void raise_max(const HeadView *hv, float cmax, float *m, float *sum) {
    if (!(cmax > *m)) return;
    if (*sum > 0.0f) {
        float r = expf(*m - cmax);
        *sum *= r;
        for (int i = 0; i < hv->hd; i++) hv->out[i] *= r;
    }
    *m = cmax;
}

/* out /= sum, as out * (1 / sum). sum >= 1 (the largest score contributes exp(0)) unless
 * scores were NaN or infinite; then the output is NaN, as in PyTorch. */
static inline void normalize(const HeadView *hv, float sum) {
    float inv = 1.0f / sum;
    for (int i = 0; i < hv->hd; i++) hv->out[i] *= inv;
}

#if HAVE_X86
/* ---- three queries at once (AVX-512VL: 32 ymm registers) ----------------------------------
 * A prompt's consecutive queries read the same keys and values. Taking three at a time, each
 * key and value row is loaded once for the three, while every query still gets exactly the
 * operations attend_one would do, in the same order (the same ymm FMAs and the same folding
 * trees; the registers are just more): a query's output stays the same whether it runs alone
 * or beside others. Only for head sizes that are a multiple of 64. */
#define INLINE_WIDE static inline __attribute__((always_inline, target("avx512f,avx512vl,avx2,fma,f16c")))
enum { ATT_GROUP = 3 };

/* scores8 for the ATT_GROUP queries of hv, sharing the key loads. */
INLINE_WIDE void scores8_group(const HeadView *hv, int j0, int j, float (*s)[ATT_CHUNK], __m256 *vmax) {
    const float *k = hv[0].k + (int64_t)(j0 + j) * hv[0].stride;
    __m256 acc[ATT_GROUP][8];
#pragma GCC unroll 3
    for (int q = 0; q < ATT_GROUP; q++)
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) acc[q][l] = _mm256_setzero_ps();
    for (int i = 0; i < hv[0].hd; i += 8) {
        __m256 qv[ATT_GROUP];
#pragma GCC unroll 3
        for (int q = 0; q < ATT_GROUP; q++) qv[q] = _mm256_loadu_ps(hv[q].q + i);
#pragma GCC unroll 8
        for (int l = 0; l < 8; l++) {
            __m256 kv = _mm256_loadu_ps(k + l * hv[0].stride + i);
#pragma GCC unroll 3
            for (int q = 0; q < ATT_GROUP; q++) acc[q][l] = _mm256_fmadd_ps(qv[q], kv, acc[q][l]);
        }
    }
#pragma GCC unroll 3
    for (int q = 0; q < ATT_GROUP; q++) scores8_finish(&hv[q], j0, j, acc[q], s[q], &vmax[q]);
}

/* weighted_sum_avx2 for the queries of hv, query q over nc[q] keys (nc ascending), sharing
 * the value loads of the keys all of them take. */
INLINE_WIDE void weighted_sum_group(const HeadView *hv, int j0, const int *nc, float (*p)[ATT_CHUNK]) {
    const int64_t stride = hv[0].stride;
    const float *vbase = hv[0].v + (int64_t)j0 * stride;
    for (int i = 0; i < hv[0].hd; i += 64) {
        __m256 acc[ATT_GROUP][8];
#pragma GCC unroll 3
        for (int q = 0; q < ATT_GROUP; q++)
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++) acc[q][l] = _mm256_loadu_ps(hv[q].out + i + 8 * l);
        for (int j = 0; j < nc[0]; j++) {
            const float *v = vbase + (int64_t)j * stride + i;
            __m256 pj[ATT_GROUP];
#pragma GCC unroll 3
            for (int q = 0; q < ATT_GROUP; q++) pj[q] = _mm256_set1_ps(p[q][j]);
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++) {
                __m256 vv = _mm256_loadu_ps(v + 8 * l);
#pragma GCC unroll 3
                for (int q = 0; q < ATT_GROUP; q++) acc[q][l] = _mm256_fmadd_ps(pj[q], vv, acc[q][l]);
            }
        }
        for (int q = 1; q < ATT_GROUP; q++) /* the keys only the later queries take */
            for (int j = nc[0]; j < nc[q]; j++) {
                const float *v = vbase + (int64_t)j * stride + i;
                __m256 pj = _mm256_set1_ps(p[q][j]);
#pragma GCC unroll 8
                for (int l = 0; l < 8; l++) acc[q][l] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 8 * l), acc[q][l]);
            }
#pragma GCC unroll 3
        for (int q = 0; q < ATT_GROUP; q++)
#pragma GCC unroll 8
            for (int l = 0; l < 8; l++) _mm256_storeu_ps(hv[q].out + i + 8 * l, acc[q][l]);
    }
}

/* attend_one for ATT_GROUP queries, query q against keys 0 .. n_first + q - 1. */
__attribute__((target("avx512f,avx512vl,avx2,fma,f16c"))) static void attend_group(const HeadView *hv, int n_first) {
    float s[ATT_GROUP][ATT_CHUNK];
    float m[ATT_GROUP], sum[ATT_GROUP];
    for (int q = 0; q < ATT_GROUP; q++) {
        m[q] = -INFINITY, sum[q] = 0.0f;
        memset(hv[q].out, 0, (size_t)hv[q].hd * sizeof(float));
    }
    for (int j0 = 0; j0 < n_first + ATT_GROUP - 1; j0 += ATT_CHUNK) {
        int nc[ATT_GROUP]; /* keys of this chunk per query: ascending, 0 for one that has none */
        for (int q = 0; q < ATT_GROUP; q++) {
            int left = n_first + q - j0;
            nc[q] = left <= 0 ? 0 : left < ATT_CHUNK ? left : ATT_CHUNK;
        }
        __m256 vmax[ATT_GROUP];
        for (int q = 0; q < ATT_GROUP; q++) vmax[q] = _mm256_set1_ps(-INFINITY);
        int shared = 0;
        for (; shared + 8 <= nc[0]; shared += 8) scores8_group(hv, j0, shared, s, vmax);
        for (int q = 0; q < ATT_GROUP; q++) {
            if (nc[q] == 0) continue;
            int j = shared;
            for (; j + 8 <= nc[q]; j += 8) scores8(&hv[q], j0, j, nc[q], s[q], &vmax[q], false);
            float cmax = scores_tail(&hv[q], j0, j, nc[q], s[q], vmax[q], false);
            raise_max(&hv[q], cmax, &m[q], &sum[q]);
            sum[q] += softmax_weights_avx2(s[q], nc[q], m[q]);
        }
        weighted_sum_group(hv, j0, nc, s);
    }
    for (int q = 0; q < ATT_GROUP; q++) normalize(&hv[q], sum[q]);
}
#endif

#if HAVE_X86
/* attend_one's SIMD form: the same steps as its plain loop below, on float copies or (half)
 * on the 16-bit cache. */
INLINE_KV void attend_one_simd(const HeadView *hv, int n_keys, bool half) {
    float s[ATT_CHUNK];
    float m = -INFINITY, sum = 0.0f;
    memset(hv->out, 0, (size_t)hv->hd * sizeof(float));
    for (int j0 = 0; j0 < n_keys; j0 += ATT_CHUNK) {
        int nc = n_keys - j0 < ATT_CHUNK ? n_keys - j0 : ATT_CHUNK;
        raise_max(hv, scores_simd(hv, j0, nc, s, half), &m, &sum);
        sum += softmax_weights_avx2(s, nc, m);
        weighted_sum_simd(hv, j0, nc, s, half);
    }
    normalize(hv, sum);
}

TARGET_KV static void attend_one_f32(const HeadView *hv, int n_keys) { attend_one_simd(hv, n_keys, false); }
TARGET_KV static void attend_one_f16(const HeadView *hv, int n_keys) { attend_one_simd(hv, n_keys, true); }
#endif

/* One query against keys 0 .. n_keys-1 (see the top of this section). */
static void attend_one(const HeadView *hv, int n_keys, bool simd) {
#if HAVE_X86
    if (simd) {
        if (hv->k16) attend_one_f16(hv, n_keys);
        else attend_one_f32(hv, n_keys);
        return;
    }
#endif
    float s[ATT_CHUNK];
    float m = -INFINITY, sum = 0.0f;
    memset(hv->out, 0, (size_t)hv->hd * sizeof(float));
    for (int j0 = 0; j0 < n_keys; j0 += ATT_CHUNK) {
        int nc = n_keys - j0 < ATT_CHUNK ? n_keys - j0 : ATT_CHUNK;
        raise_max(hv, scores_plain(hv, j0, nc, s), &m, &sum);
        sum += softmax_weights_plain(s, nc, m);
        weighted_sum_plain(hv, j0, nc, s);
    }
    normalize(hv, sum);
    (void)simd;
}

#if HAVE_X86
/* dst[j][0..hd) = float(src[j * stride + 0..hd)) for j < n, 8 values at a time by F16C. */
__attribute__((target("avx2,f16c"))) static void widen_rows_f16c(const uint16_t *src, int64_t stride, int n, int hd,
                                                                float *dst) {
    for (int j = 0; j < n; j++) {
        const uint16_t *row = src + j * stride;
        if (j + PREFETCH_KEYS < n)
            for (int i = 0; i < hd; i += 32) _mm_prefetch((const char *)(row + PREFETCH_KEYS * stride + i), _MM_HINT_T0);
        float *out = dst + (int64_t)j * hd;
        int i = 0;
        for (; i + 8 <= hd; i += 8)
            _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + i))));
        for (; i < hd; i++) out[i] = f16_to_f32(row[i]);
    }
}
#endif

/* dst[j][0..hd) = the float values of cache row j's slice at src, for j < n. */
static void widen_rows(const void *cache, bool f16, int64_t offset, int64_t stride, int n, int hd, float *dst,
                       bool simd) {
    if (!f16) {
        const float *src = (const float *)cache + offset;
        for (int j = 0; j < n; j++) memcpy(dst + (int64_t)j * hd, src + j * stride, (size_t)hd * sizeof(float));
        return;
    }
    const uint16_t *src = (const uint16_t *)cache + offset;
#if HAVE_X86
    if (simd) {
        widen_rows_f16c(src, stride, n, hd, dst);
        return;
    }
#endif
    for (int j = 0; j < n; j++)
        for (int i = 0; i < hd; i++) dst[(int64_t)j * hd + i] = f16_to_f32(src[j * stride + i]);
    (void)simd;
}

/* Queries per unit of work; the unit's queries share one widened copy of their head's keys
 * and values. A unit of at most ATT_DIRECT queries (decoding: one) reads the cache (16-bit
 * or float32) directly instead, asking for rows PREFETCH_KEYS ahead: it reads each row
 * about once, and copying it first only adds a write and a read (and attend_group, which
 * wants the copy, needs three queries). */
enum { ATT_QUERIES = 64, ATT_DIRECT = 2 };

/* Units of work are (head, block of up to ATT_QUERIES new tokens), the blocks with the most
 * keys first. Each thread slot holds one float copy of a head's keys (rows 0..len-1) and
 * values; the copy also puts a head's rows side by side, which the cache does not: there
 * they are heads*head_dim apart, a power of two for most models, so all fall into the same
 * few cache sets. */
typedef struct AttentionJob {
    const AttentionArgs *a;
    int nblocks;
    bool simd;
    bool group;      /* queries three at a time (attend_group) */
    float **kv;      /* per thread slot, made on first use */
    int *failed;     /* per thread slot: its copy could not be allocated */
} AttentionJob;

static void attention_units(void *ctx, int64_t i0, int64_t i1, int slot) {
    const AttentionJob *j = ctx;
    const AttentionArgs *a = j->a;
    const int hd = a->head_dim, len = a->n_past + a->T, nblocks = j->nblocks;
    const int64_t stride = (int64_t)a->heads * hd;
    for (int64_t i = i0; i < i1; i++) {
        const int h = (int)(i % a->heads), blk = nblocks - 1 - (int)(i / a->heads);
        const int t0 = blk * ATT_QUERIES, t1 = t0 + ATT_QUERIES < a->T ? t0 + ATT_QUERIES : a->T;
        const int n = a->n_past + t1; /* the keys the block's last query sees */
        HeadView hv = {.hd = hd, .scale = a->scale, .slope = a->alibi ? a->alibi[h] : 0.0f};
        if (j->simd && t1 - t0 <= ATT_DIRECT) {
            if (a->kv_f16) {
                hv.k16 = (const uint16_t *)a->k + (int64_t)h * hd;
                hv.v16 = (const uint16_t *)a->v + (int64_t)h * hd;
            } else {
                hv.k = (const float *)a->k + (int64_t)h * hd;
                hv.v = (const float *)a->v + (int64_t)h * hd;
            }
            hv.stride = stride;
            hv.direct = true;
        } else {
            if (!j->kv[slot]) j->kv[slot] = malloc((size_t)len * (size_t)hd * 2 * sizeof(float));
            float *kc = j->kv[slot], *vc = kc + (size_t)len * hd;
            if (!kc) {
                j->failed[slot] = 1;
                return;
            }
            widen_rows(a->k, a->kv_f16, (int64_t)h * hd, stride, n, hd, kc, j->simd);
            widen_rows(a->v, a->kv_f16, (int64_t)h * hd, stride, n, hd, vc, j->simd);
            hv.k = kc, hv.v = vc, hv.stride = hd;
        }
        int t = t0;
#if HAVE_X86
        for (; j->group && t + ATT_GROUP <= t1; t += ATT_GROUP) {
            HeadView g[ATT_GROUP];
            for (int q = 0; q < ATT_GROUP; q++) {
                g[q] = hv;
                g[q].q = a->q + (t + q) * stride + (int64_t)h * hd;
                g[q].out = a->out + (t + q) * stride + (int64_t)h * hd;
            }
            attend_group(g, a->n_past + t + 1);
        }
#endif
        for (; t < t1; t++) {
            hv.q = a->q + t * stride + (int64_t)h * hd;
            hv.out = a->out + t * stride + (int64_t)h * hd;
            attend_one(&hv, a->n_past + t + 1, j->simd);
        }
    }
}

/* Whether attend_group runs: the AVX-512 kernels in use and AVX-512VL (its 32 ymm registers
 * hold three queries' accumulators), and a head size that is a multiple of 64. */
static bool attention_groups(int head_dim) {
#if HAVE_X86
    __builtin_cpu_init();
    return cpu_has_avx512() && __builtin_cpu_supports("avx512vl") && head_dim % 64 == 0;
#else
    (void)head_dim;
    return false;
#endif
}

/* Returns -1 when a thread's copy cannot be allocated. */
int cpu_attention(const AttentionArgs *a) {
    if (a->T <= 0 || a->heads <= 0 || a->head_dim <= 0 || a->n_past < 0) return 0;
    const int len = a->n_past + a->T;
    const int64_t stride = (int64_t)a->heads * a->head_dim;
    const int nblocks = (a->T + ATT_QUERIES - 1) / ATT_QUERIES, items = a->heads * nblocks;
    const bool par = items > 1 && (int64_t)a->T * len * stride >= CPU_PAR_MIN;
    const int slots = cpu_pool_slots();
    AttentionJob j = {.a = a, .nblocks = nblocks, .simd = cpu_has_avx2(), .group = attention_groups(a->head_dim),
                      .kv = calloc((size_t)slots, sizeof(float *)), .failed = calloc((size_t)slots, sizeof(int))};
    int failed = !j.kv || !j.failed;
    if (!failed) cpu_parallel_for(items, 1, par, attention_units, &j);
    for (int s = 0; s < slots; s++) {
        if (j.kv) free(j.kv[s]);
        if (j.failed && j.failed[s]) failed = 1;
    }
    free(j.kv), free(j.failed);
    return failed ? -1 : 0;
}

/* ---- storing keys and values ------------------------------------------------------------- */

#if HAVE_X86
/* F16C's conversion with the round-to-nearest-even mode gives the same bits as f32_to_f16
 * (subnormals, overflow to inf and quiet NaNs included). */
__attribute__((target("avx2,f16c"))) static size_t store_f16c(const float *x, size_t n, uint16_t *dst) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    return i;
}
#endif

void cpu_store_f16(const float *x, size_t n, uint16_t *dst) {
    size_t i = 0;
#if HAVE_X86
    if (cpu_has_avx2()) i = store_f16c(x, n, dst);
#endif
    for (; i < n; i++) dst[i] = f32_to_f16(x[i]);
}
