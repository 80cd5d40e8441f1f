/* test_cuda.c — the CUDA backend against the CPU backend, op by op.
 *
 *   - memory: alloc is zero-filled, upload / download / copy round trips;
 *   - add, relu, gelu_tanh, layernorm (also in place), split_qkv, embed (F16 and BF16
 *     tables, accumulate), store_f16 (bit-equal to the CPU's rounding), attention over a
 *     16-bit KV cache (OPT and ALiBi, long and short);
 *   - fp16 projections and the tied-head matmul (F16, BF16, F32 and dequantized I8
 *     weights, odd shapes): within the error of rounding activations to fp16;
 *   - LLM.int8() projections (per-call and per-token outliers, vector-wise, an int8
 *     checkpoint weight, more outlier columns than the kernels stage at once, rows with
 *     more outliers than the per-token list holds): SCA, outlier columns and the int32
 *     accumulators bit-equal to quant_ref_linear, outputs equal to it within float
 *     rounding, and to the CPU backend;
 *   - the fixtures' int8 unit case: accumulators bit-equal to the goldens;
 *   - reading out the logits (rows of 50272 and 250880, small odd ones, never read past the
 *     end): token_nll (unscored rows NaN) within 1e-5 relative, argmax (planted ties, -inf,
 *     NaN, -0/+0) and penalize (bit-equal, launches of 1000 ids) exactly as the CPU,
 *     top_candidates (k = 1, 40, 1024; planted ties at the top and across the k-th place;
 *     all equal) with ids identical to the CPU's and probabilities within 1e-5; arguments
 *     outside the contract give NaN / 0 without a sticky error;
 *   - unsupported quant modes fail with a message; a refused operation comes back through
 *     sync() once; results are checked after a sync; no sticky error at the end.
 *
 * Without a usable GPU (no device, no driver) it prints why and exits 77 (skipped). */
#include <cjson/cJSON.h>
#include <stdint.h>

#include "backend.h"
#include "cuda_backend.h"
#include "quant.h"
#include "safetensors.h"
#include "test_util.h"

static Backend *gpu, *cpu;

/* ---- helpers ------------------------------------------------------------------------ */

static float *random_floats(size_t n, float lo, float hi) {
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = rng_uniform(lo, hi);
    return p;
}

/* A GPU buffer holding a copy of host data. */
static float *to_gpu(const float *host, size_t n) {
    float *d = gpu->alloc(gpu, n);
    CHECK(d != NULL, "gpu alloc of %zu floats", n);
    if (d && n) gpu->upload(gpu, d, host, n);
    return d;
}

/* Checks that no GPU operation since the last check failed: sync() waits for the queued
 * work and returns the first failure (backend.h). */
static void expect_synced(const char *after) {
    Error err = {{0}};
    CHECK(gpu->sync(gpu, &err) == 0, "after %s: %s", after, err.msg);
}

/* The GPU buffer's contents, malloc'ed, after checking that the work that wrote them went
 * through. */
static float *from_gpu(const float *d, size_t n) {
    float *h = malloc((n ? n : 1) * sizeof *h);
    if (n) gpu->download(gpu, h, d, n);
    expect_synced("a download");
    return h;
}

/* Checks |got - want| <= abs_tol + rel_tol * |want| everywhere (NaN fails); reports the
 * worst element. */
static void expect_close(const char *what, const float *got, const float *want, size_t n, double rel_tol,
                         double abs_tol) {
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]), lim = abs_tol + rel_tol * fabs((double)want[i]);
        if (!(d <= lim)) {
            bad++;
            double ex = d != d ? INFINITY : d - lim;
            if (ex > worst_excess) worst_excess = ex, worst = i;
        }
    }
    CHECK(bad == 0, "%s: %zu of %zu values off, e.g. [%zu] %.9g vs %.9g", what, bad, n, worst,
          bad ? (double)got[worst] : 0.0, bad ? (double)want[worst] : 0.0);
}

/* ---- memory and element-wise ops -------------------------------------------------------- */

static void test_memory(void) {
    size_t n = 1000;
    float *d = gpu->alloc(gpu, n);
    CHECK(d != NULL, "alloc");
    if (!d) return;
    float *h = from_gpu(d, n);
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i++) nonzero += h[i] != 0.0f;
    CHECK(nonzero == 0, "alloc is not zero-filled (%zu nonzero)", nonzero);
    float *src = random_floats(n, -3, 3);
    gpu->upload(gpu, d, src, n);
    float *d2 = gpu->alloc(gpu, n);
    gpu->copy(gpu, d2 + 10, d, n - 10);
    float *back = from_gpu(d, n), *back2 = from_gpu(d2, n);
    CHECK(memcmp(back, src, n * sizeof(float)) == 0, "upload/download round trip");
    CHECK(memcmp(back2 + 10, src, (n - 10) * sizeof(float)) == 0 && back2[0] == 0.0f, "copy");
    gpu->release(gpu, d);
    gpu->release(gpu, d2);
    free(h), free(src), free(back), free(back2);
}

static void test_elementwise(void) {
    size_t n = 100003; /* more than one grid's worth of odd tail */
    float *a = random_floats(n, -6, 6), *b = random_floats(n, -2, 2);
    a[5] = NAN, a[6] = -0.0f, a[7] = INFINITY, a[8] = -INFINITY;
    float *da = to_gpu(a, n), *db = to_gpu(b, n);

    float *c = malloc(n * sizeof *c);
    memcpy(c, a, n * sizeof *c);
    cpu->add(cpu, c, b, n);
    gpu->add(gpu, da, db, n);
    float *g = from_gpu(da, n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += memcmp(&g[i], &c[i], 4) != 0 && !(g[i] != g[i] && c[i] != c[i]);
    CHECK(diff == 0, "add: %zu values differ", diff);
    free(g);

    gpu->upload(gpu, da, a, n);
    memcpy(c, a, n * sizeof *c);
    cpu->relu(cpu, c, n);
    gpu->relu(gpu, da, n);
    g = from_gpu(da, n);
    CHECK(memcmp(g, c, n * sizeof *c) == 0, "relu differs (NaN must become 0 as on the CPU)");
    free(g);

    a[5] = 0.5f, a[7] = 20.0f, a[8] = -20.0f; /* tanhf of NaN/inf: not worth comparing */
    gpu->upload(gpu, da, a, n);
    memcpy(c, a, n * sizeof *c);
    cpu->gelu_tanh(cpu, c, n);
    gpu->gelu_tanh(gpu, da, n);
    g = from_gpu(da, n);
    /* 1 + tanh(..) cancels for negative x: an ulp of tanh (6e-8) times |x| <= 6 is absolute */
    expect_close("gelu_tanh", g, c, n, 1e-6, 2e-6);
    free(g);

    gpu->release(gpu, da);
    gpu->release(gpu, db);
    free(a), free(b), free(c);
}

static void test_layernorm(void) {
    const int dims[] = {64, 1000, 4096};
    for (int di = 0; di < 3; di++) {
        int T = 5, dim = dims[di];
        size_t n = (size_t)T * dim;
        float *x = random_floats(n, -2, 3), *w = random_floats((size_t)dim, 0.5f, 1.5f);
        float *b = random_floats((size_t)dim, -1, 1);
        x[3] = 40.0f; /* an outlier, as in real activations */
        float *dx = to_gpu(x, n), *dw = to_gpu(w, (size_t)dim), *db = to_gpu(b, (size_t)dim);
        float *dy = gpu->alloc(gpu, n);
        float *want = malloc(n * sizeof *want);
        char what[64];
        for (int affine = 0; affine < 2; affine++) {
            cpu->layernorm(cpu, x, affine ? w : NULL, affine ? b : NULL, 1e-5f, T, dim, want);
            gpu->layernorm(gpu, dx, affine ? dw : NULL, affine ? db : NULL, 1e-5f, T, dim, dy);
            float *g = from_gpu(dy, n);
            snprintf(what, sizeof what, "layernorm dim %d affine %d", dim, affine);
            expect_close(what, g, want, n, 2e-5, 2e-5);
            free(g);
        }
        /* in place */
        gpu->layernorm(gpu, dx, dw, db, 1e-5f, T, dim, dx);
        float *g = from_gpu(dx, n);
        snprintf(what, sizeof what, "layernorm dim %d in place", dim);
        expect_close(what, g, want, n, 2e-5, 2e-5);
        free(g);
        gpu->release(gpu, dx), gpu->release(gpu, dw), gpu->release(gpu, db), gpu->release(gpu, dy);
        free(x), free(w), free(b), free(want);
    }
}

static void test_split_qkv(void) {
    int T = 3, heads = 4, hd = 24;
    size_t D = (size_t)heads * hd, n = (size_t)T * D;
    float *qkv = random_floats(3 * n, -1, 1);
    float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4);
    cpu->split_qkv(cpu, qkv, T, heads, hd, q, k, v);
    float *dqkv = to_gpu(qkv, 3 * n), *dq = gpu->alloc(gpu, n), *dk = gpu->alloc(gpu, n), *dv = gpu->alloc(gpu, n);
    gpu->split_qkv(gpu, dqkv, T, heads, hd, dq, dk, dv);
    float *gq = from_gpu(dq, n), *gk = from_gpu(dk, n), *gv = from_gpu(dv, n);
    CHECK(memcmp(gq, q, n * 4) == 0 && memcmp(gk, k, n * 4) == 0 && memcmp(gv, v, n * 4) == 0, "split_qkv");
    gpu->release(gpu, dqkv), gpu->release(gpu, dq), gpu->release(gpu, dk), gpu->release(gpu, dv);
    free(qkv), free(q), free(k), free(v), free(gq), free(gk), free(gv);
}

/* A random 16-bit (or F32) weight [rows, cols] of the given dtype. */
static void *random_weight(DType dt, int64_t rows, int64_t cols, float lo, float hi) {
    size_t n = (size_t)(rows * cols);
    void *p = malloc(n * dtype_size(dt));
    for (size_t i = 0; i < n; i++) {
        float f = rng_uniform(lo, hi);
        if (dt == DT_F16) ((uint16_t *)p)[i] = f32_to_f16(f);
        else if (dt == DT_BF16) {
            uint32_t bits;
            memcpy(&bits, &f, 4);
            ((uint16_t *)p)[i] = (uint16_t)(bits >> 16); /* truncation: any bf16 value will do */
        } else ((float *)p)[i] = f;
    }
    return p;
}

static void test_embed(void) {
    const DType dts[] = {DT_F16, DT_BF16, DT_F32};
    for (int di = 0; di < 3; di++) {
        int64_t rows = 300, cols = 72;
        void *table = random_weight(dts[di], rows, cols, -1, 1);
        HostMatrix m = {.dtype = dts[di], .rows = rows, .cols = cols, .data = table};
        Error err = {{0}};
        BkMatrix *cm = cpu->matrix_create(cpu, &m, &err);
        BkMatrix *gm = gpu->matrix_create(gpu, &m, &err);
        CHECK(cm && gm, "matrix_create %s: %s", dtype_name(dts[di]), err.msg);
        if (!cm || !gm) continue;
        int32_t ids[] = {0, 299, 17, 17, 150};
        int T = 5;
        size_t n = (size_t)T * cols;
        float *want = random_floats(n, -1, 1);
        float *d = to_gpu(want, n);
        char what[64];
        for (int acc = 0; acc < 2; acc++) {
            cpu->embed(cpu, cm, ids, T, want, acc);
            gpu->embed(gpu, gm, ids, T, d, acc);
            float *g = from_gpu(d, n);
            /* the GPU keeps every table in fp16: exact for F16 and for BF16 values in fp16's
             * normal range (tiny ones land on fp16's subnormal grid), F32 values round */
            snprintf(what, sizeof what, "embed %s accumulate %d", dtype_name(dts[di]), acc);
            expect_close(what, g, want, n, dts[di] == DT_F32 ? 1e-3 : 0, dts[di] == DT_F16 ? 0 : 1e-7);
            free(g);
        }
        gpu->release(gpu, d);
        cpu->matrix_free(cpu, cm);
        gpu->matrix_free(gpu, gm);
        free(table), free(want);
    }
}

/* A 16-bit cache of the float rows x [n] on each side: the CPU's halves (host) and the
 * GPU's (a device buffer of (n + 1) / 2 floats, backend.h), both from store_f16. */
static uint16_t *halves_cpu(const float *x, size_t n) {
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    cpu->store_f16(cpu, x, n, h);
    return h;
}

static uint16_t *halves_gpu(const float *x, size_t n) {
    float *dx = to_gpu(x, n), *dh = gpu->alloc(gpu, (n + 1) / 2 ? (n + 1) / 2 : 1);
    CHECK(dh != NULL, "gpu alloc of %zu halves", n);
    if (dh) gpu->store_f16(gpu, dx, n, (uint16_t *)dh);
    gpu->release(gpu, dx);
    return (uint16_t *)dh;
}

/* The GPU's store_f16 rounds to nearest even bit for bit as the CPU's (specials too). */
static void test_store_f16(void) {
    enum { N = 3001 };
    float *x = random_floats(N, -70000, 70000);
    const float special[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, INFINITY, -INFINITY, NAN,
                             5.96e-8f, 2.98e-8f, 2.99e-8f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, 1e-30f};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++) x[i * 5] = special[i];
    for (int i = 100; i < 600; i++) x[i] *= 1e-10f; /* subnormal halves */
    uint16_t *want = halves_cpu(x, N), *d = halves_gpu(x, N);
    uint16_t *got = calloc(N + 1, sizeof *got);
    gpu->download(gpu, (float *)got, (const float *)d, (N + 1) / 2);
    expect_synced("store_f16");
    int bad = 0;
    for (int i = 0; i < N; i++) bad += got[i] != want[i];
    CHECK(bad == 0, "store_f16: %d of %d halves differ from the CPU's", bad, N);
    gpu->release(gpu, (float *)d);
    free(x), free(want), free(got);
}

static void test_attention_case(int T, int n_past, int heads, int hd, bool alibi) {
    int L = n_past + T;
    size_t D = (size_t)heads * hd;
    float *q = random_floats((size_t)T * D, -1, 1), *k = random_floats((size_t)L * D, -1, 1);
    float *v = random_floats((size_t)L * D, -2, 2), *slopes = random_floats((size_t)heads, 0.01f, 0.5f);
    float *want = malloc((size_t)T * D * sizeof *want);
    float scale = 1.0f / sqrtf((float)hd) * 3.0f; /* peaky softmax: exercises the max */
    uint16_t *kh = halves_cpu(k, (size_t)L * D), *vh = halves_cpu(v, (size_t)L * D);
    AttentionArgs a = {.q = q, .k = kh, .v = vh, .kv_f16 = true, .out = want, .T = T, .n_past = n_past, .heads = heads,
                       .head_dim = hd, .scale = scale, .alibi = alibi ? slopes : NULL};
    cpu->attention(cpu, &a);
    float *dq = to_gpu(q, (size_t)T * D);
    uint16_t *dk = halves_gpu(k, (size_t)L * D), *dv = halves_gpu(v, (size_t)L * D);
    float *dal = to_gpu(slopes, (size_t)heads), *dout = gpu->alloc(gpu, (size_t)T * D);
    AttentionArgs ga = a;
    ga.q = dq, ga.k = dk, ga.v = dv, ga.out = dout, ga.alibi = alibi ? dal : NULL;
    gpu->attention(gpu, &ga);
    float *g = from_gpu(dout, (size_t)T * D);
    char what[96];
    snprintf(what, sizeof what, "attention T %d n_past %d heads %d head_dim %d alibi %d", T, n_past, heads, hd, alibi);
    expect_close(what, g, want, (size_t)T * D, 1e-5, 1e-5);
    /* a float32 cache holding the same values: the same output, bit for bit */
    float *kw = malloc((size_t)L * D * sizeof *kw), *vw = malloc((size_t)L * D * sizeof *vw);
    for (size_t i = 0; i < (size_t)L * D; i++) kw[i] = f16_to_f32(kh[i]), vw[i] = f16_to_f32(vh[i]);
    float *dkw = to_gpu(kw, (size_t)L * D), *dvw = to_gpu(vw, (size_t)L * D), *dout32 = gpu->alloc(gpu, (size_t)T * D);
    AttentionArgs ga32 = ga;
    ga32.k = dkw, ga32.v = dvw, ga32.kv_f16 = false, ga32.out = dout32;
    gpu->attention(gpu, &ga32);
    float *g32 = from_gpu(dout32, (size_t)T * D);
    CHECK(memcmp(g32, g, (size_t)T * D * sizeof *g) == 0, "%s: float32 cache differs from the half cache", what);
    gpu->release(gpu, dkw), gpu->release(gpu, dvw), gpu->release(gpu, dout32);
    free(kw), free(vw), free(g32);
    gpu->release(gpu, dq), gpu->release(gpu, (float *)dk), gpu->release(gpu, (float *)dv), gpu->release(gpu, dal);
    gpu->release(gpu, dout);
    free(q), free(k), free(v), free(kh), free(vh), free(slopes), free(want), free(g);
}

static void test_attention(void) {
    test_attention_case(1, 0, 2, 16, false);     /* first token: one key */
    test_attention_case(7, 0, 4, 64, false);     /* prefill */
    test_attention_case(7, 0, 4, 64, true);
    test_attention_case(1, 300, 3, 128, true);   /* decode with a long cache */
    test_attention_case(4, 513, 2, 80, false);   /* head_dim not a power of two */
    test_attention_case(2, 20, 2, 256, true);    /* head_dim above the block size */
}

/* ---- projections --------------------------------------------------------------------------- */

/* sum_k |x[t,k] w[n,k]| for each output: the scale of the rounding error of a product whose
 * inputs were rounded to fp16. */
static float *abs_products(const float *x, int T, const HostMatrix *w) {
    float *s = calloc((size_t)T * (size_t)w->rows, sizeof *s);
    for (int t = 0; t < T; t++)
        for (int64_t n = 0; n < w->rows; n++) {
            double acc = 0;
            for (int64_t k = 0; k < w->cols; k++) {
                size_t i = (size_t)(n * w->cols + k);
                float wv = w->dtype == DT_I8 ? quant_dequant_weight(((const int8_t *)w->data)[i], w->scb[n])
                                             : dtype_load_f32(w->dtype, w->data, i);
                acc += fabs((double)x[(size_t)t * w->cols + k] * wv);
            }
            s[(size_t)t * w->rows + n] = (float)acc;
        }
    return s;
}

/* got and want agree within tol * sum_k |x w| + 1e-6. */
static void expect_close_scaled(const char *what, const float *got, const float *want, const float *scale,
                                size_t n, double tol) {
    size_t bad = 0, worst = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= tol * scale[i] + 1e-6)) bad++, worst = i;
    CHECK(bad == 0, "%s: %zu of %zu values off, e.g. [%zu] %.9g vs %.9g (scale %.3g)", what, bad, n, worst,
          bad ? (double)got[worst] : 0.0, bad ? (double)want[worst] : 0.0, bad ? (double)scale[worst] : 0.0);
}

static void test_fp16_linear_case(DType dt, int T, int64_t N, int64_t K, bool with_bias) {
    void *wdata = random_weight(dt, N, K, -0.5f, 0.5f);
    HostMatrix w = {.dtype = dt, .rows = N, .cols = K, .data = wdata};
    int8_t *cb = NULL;
    float *scb = NULL;
    if (dt == DT_I8) { /* an 8-bit checkpoint run with --quant fp16 */
        free(wdata);
        cb = malloc((size_t)(N * K));
        scb = malloc((size_t)N * sizeof *scb);
        for (int64_t i = 0; i < N * K; i++) cb[i] = (int8_t)((int)(rng_u32() % 255) - 127);
        for (int64_t n = 0; n < N; n++) scb[n] = rng_uniform(0.1f, 2.0f);
        w.data = wdata = cb;
        w.scb = scb;
    }
    float *bias = with_bias ? random_floats((size_t)N, -1, 1) : NULL;
    QuantConfig q = {.mode = QUANT_FP16};
    Error err = {{0}};
    BkLinear *cl = cpu->linear_create(cpu, &w, bias, &q, &err);
    CHECK(cl != NULL, "cpu linear_create: %s", err.msg);
    BkLinear *gl = gpu->linear_create(gpu, &w, bias, &q, &err);
    CHECK(gl != NULL, "gpu linear_create %s [%lld, %lld]: %s", dtype_name(dt), (long long)N, (long long)K, err.msg);
    if (cl && gl) {
        size_t nx = (size_t)T * (size_t)K, ny = (size_t)T * (size_t)N;
        float *x = random_floats(nx, -2, 2), *want = malloc(ny * sizeof *want);
        cpu->linear(cpu, cl, x, T, want);
        float *dx = to_gpu(x, nx), *dy = gpu->alloc(gpu, ny + 1);
        /* an output that is not 256-byte aligned, as model code's pointer arithmetic makes */
        gpu->linear(gpu, gl, dx, T, dy + 1);
        float *g = from_gpu(dy + 1, ny), *scale = abs_products(x, T, &w);
        char what[96];
        snprintf(what, sizeof what, "fp16 linear %s T %d [%lld, %lld] bias %d", dtype_name(dt), T, (long long)N,
                 (long long)K, with_bias);
        /* x is rounded to fp16 (2^-11 relative), F32/BF16/I8 weights too */
        expect_close_scaled(what, g, want, scale, ny, 2e-3);
        CHECK(gpu->linear_bytes(gl) >= (size_t)(N * K * 2), "linear_bytes %zu", gpu->linear_bytes(gl));
        gpu->release(gpu, dx), gpu->release(gpu, dy);
        free(x), free(want), free(g), free(scale);
    }
    if (cl) cpu->linear_free(cpu, cl);
    if (gl) gpu->linear_free(gpu, gl);
    free(wdata), free(scb), free(bias);
}

static void test_fp16_linear(void) {
    test_fp16_linear_case(DT_F16, 1, 48, 64, true);
    test_fp16_linear_case(DT_F16, 7, 37, 100, false);   /* K, N not multiples of anything */
    test_fp16_linear_case(DT_BF16, 5, 64, 96, true);
    test_fp16_linear_case(DT_F32, 3, 33, 70, true);
    test_fp16_linear_case(DT_I8, 4, 40, 64, true);
    test_fp16_linear_case(DT_F16, 33, 256, 512, true);  /* several T, then T = 1 again: plan cache */
    test_fp16_linear_case(DT_F16, 1, 256, 512, true);

    /* matmul (tied lm_head): no bias */
    int64_t V = 500, H = 64;
    int T = 6;
    void *table = random_weight(DT_F16, V, H, -1, 1);
    HostMatrix m = {.dtype = DT_F16, .rows = V, .cols = H, .data = table};
    Error err = {{0}};
    BkMatrix *cm = cpu->matrix_create(cpu, &m, &err), *gm = gpu->matrix_create(gpu, &m, &err);
    CHECK(cm && gm, "matrix_create: %s", err.msg);
    if (cm && gm) {
        float *x = random_floats((size_t)T * H, -3, 3), *want = malloc((size_t)T * V * sizeof *want);
        cpu->matmul(cpu, cm, x, T, want);
        float *dx = to_gpu(x, (size_t)T * H), *dy = gpu->alloc(gpu, (size_t)T * V);
        gpu->matmul(gpu, gm, dx, T, dy);
        float *g = from_gpu(dy, (size_t)T * V), *scale = abs_products(x, T, &m);
        expect_close_scaled("matmul", g, want, scale, (size_t)T * V, 2e-3);
        CHECK(gpu->matrix_bytes(gm) >= (size_t)(V * H * 2), "matrix_bytes");
        gpu->release(gpu, dx), gpu->release(gpu, dy);
        free(x), free(want), free(g), free(scale);
    }
    if (cm) cpu->matrix_free(cpu, cm);
    if (gm) gpu->matrix_free(gpu, gm);
    free(table);
}

/* Activations with planted outliers: `ocols` columns hold |x| >= 6 in some rows only
 * (so other rows' small entries of those columns exercise the per-call exclusion), and
 * `per_row` extra random outlier entries per row. */
static float *activations_with_outliers(int T, int64_t K, int ocols, int per_row) {
    float *x = random_floats((size_t)T * (size_t)K, -2, 2);
    for (int j = 0; j < ocols; j++) {
        int64_t k = (int64_t)((j * 7919u + 3) % (uint64_t)K);
        for (int t = 0; t < T; t++)
            if (t % 3 == j % 3) x[(size_t)t * K + k] = (rng_u32() & 1 ? 1.0f : -1.0f) * rng_uniform(6.0f, 60.0f);
    }
    for (int t = 0; t < T; t++)
        for (int i = 0; i < per_row; i++) x[(size_t)t * K + rng_u32() % K] = rng_uniform(-30.0f, 30.0f);
    if (T > 1) x[K + 1] = 6.0f; /* exactly tau: an outlier (>=) */
    return x;
}

static void test_int8_case(const char *label, QuantMode mode, OutlierScope scope, int T, int64_t N, int64_t K,
                           int ocols, int per_row, bool prequantized, bool with_bias) {
    void *w16 = random_weight(DT_F16, N, K, -0.4f, 0.4f);
    int8_t *cb = malloc((size_t)(N * K));
    float *scb = malloc((size_t)N * sizeof *scb);
    quant_weight_rowwise(DT_F16, w16, N, K, cb, scb);
    HostMatrix w = prequantized ? (HostMatrix){.dtype = DT_I8, .rows = N, .cols = K, .data = cb, .scb = scb}
                                : (HostMatrix){.dtype = DT_F16, .rows = N, .cols = K, .data = w16};
    float *bias = with_bias ? random_floats((size_t)N, -1, 1) : NULL;
    float tau = 6.0f;
    QuantConfig q = {.mode = mode, .threshold = tau, .outliers = scope};
    Error err = {{0}};
    BkLinear *gl = gpu->linear_create(gpu, &w, bias, &q, &err);
    CHECK(gl != NULL, "%s: gpu linear_create: %s", label, err.msg);
    BkLinear *cl = cpu->linear_create(cpu, &w, bias, &q, &err);
    CHECK(cl != NULL, "%s: cpu linear_create: %s", label, err.msg);
    size_t nx = (size_t)T * (size_t)K, ny = (size_t)T * (size_t)N;
    float *x = activations_with_outliers(T, K, ocols, per_row);
    if (gl && cl) {
        /* the reference */
        float ref_tau = mode == QUANT_LLM_INT8 ? tau : 0.0f;
        float *yref = malloc(ny * 4), *scaref = malloc((size_t)T * 4);
        int32_t *accref = malloc(ny * 4);
        int64_t *colsref = malloc((size_t)K * 8), nref = 0;
        quant_ref_linear(x, T, K, cb, scb, N, bias, ref_tau, scope, yref, accref, scaref, colsref, &nref);

        /* the GPU's intermediates */
        float *y = malloc(ny * 4), *sca = malloc((size_t)T * 4);
        int32_t *acc = malloc(ny * 4);
        int64_t *cols = malloc((size_t)K * 8), ncols = -1;
        int rc = cuda_backend_debug_int8(gpu, gl, x, T, y, acc, sca, cols, &ncols, &err);
        CHECK(rc == 0, "%s: cuda_backend_debug_int8: %s", label, err.msg);
        if (rc == 0) {
            CHECK(memcmp(sca, scaref, (size_t)T * 4) == 0, "%s: SCA differs from quant_ref_linear", label);
            size_t accdiff = 0, first = 0;
            for (size_t i = 0; i < ny; i++)
                if (acc[i] != accref[i] && accdiff++ == 0) first = i;
            CHECK(accdiff == 0, "%s: %zu int32 accumulators differ, e.g. [%zu] %d vs %d", label, accdiff, first,
                  accdiff ? acc[first] : 0, accdiff ? accref[first] : 0);
            if (mode == QUANT_LLM_INT8 && scope == OUTLIERS_PER_CALL) {
                CHECK(ncols == nref && memcmp(cols, colsref, (size_t)nref * 8) == 0,
                      "%s: outlier columns differ (%lld vs %lld)", label, (long long)ncols, (long long)nref);
            } else {
                CHECK(ncols == 0, "%s: outlier columns reported without per-call decomposition", label);
            }
            /* same formulas in the same order, no FMA: equal up to rare last-bit effects */
            char what[128];
            snprintf(what, sizeof what, "%s: output vs quant_ref_linear", label);
            expect_close(what, y, yref, ny, 1e-6, 1e-6);
        }

        /* the ordinary path, against the CPU backend */
        float *want = malloc(ny * 4);
        cpu->linear(cpu, cl, x, T, want);
        float *dx = to_gpu(x, nx), *dy = gpu->alloc(gpu, ny);
        gpu->linear(gpu, gl, dx, T, dy);
        float *g = from_gpu(dy, ny);
        char what[128];
        snprintf(what, sizeof what, "%s: output vs the CPU backend", label);
        expect_close(what, g, want, ny, 1e-5, 1e-5);
        CHECK(gpu->linear_bytes(gl) >= (size_t)(N * K), "%s: linear_bytes", label);
        gpu->release(gpu, dx), gpu->release(gpu, dy);
        free(yref), free(scaref), free(accref), free(colsref), free(y), free(sca), free(acc), free(cols), free(want);
        free(g);
    }
    if (gl) gpu->linear_free(gpu, gl);
    if (cl) cpu->linear_free(cpu, cl);
    free(w16), free(cb), free(scb), free(bias), free(x);
}

static void test_int8(void) {
    test_int8_case("llm.int8 T=1", QUANT_LLM_INT8, OUTLIERS_PER_CALL, 1, 48, 64, 2, 0, false, true);
    test_int8_case("llm.int8 T=9 odd shape", QUANT_LLM_INT8, OUTLIERS_PER_CALL, 9, 37, 100, 3, 1, false, true);
    test_int8_case("llm.int8 no outliers", QUANT_LLM_INT8, OUTLIERS_PER_CALL, 5, 64, 64, 0, 0, false, false);
    test_int8_case("llm.int8 int8 checkpoint", QUANT_LLM_INT8, OUTLIERS_PER_CALL, 6, 64, 128, 4, 0, true, true);
    test_int8_case("llm.int8 300 outlier columns", QUANT_LLM_INT8, OUTLIERS_PER_CALL, 12, 40, 640, 300, 0, false,
                   true);
    test_int8_case("llm.int8 T=70", QUANT_LLM_INT8, OUTLIERS_PER_CALL, 70, 256, 256, 5, 0, false, true);
    test_int8_case("llm.int8 per token", QUANT_LLM_INT8, OUTLIERS_PER_TOKEN, 9, 37, 100, 3, 2, false, true);
    test_int8_case("llm.int8 per token, crowded rows", QUANT_LLM_INT8, OUTLIERS_PER_TOKEN, 4, 32, 400, 0, 150,
                   false, true);
    test_int8_case("vectorwise", QUANT_VECTORWISE, OUTLIERS_PER_CALL, 7, 50, 96, 3, 1, false, true);
    test_int8_case("vectorwise T=1", QUANT_VECTORWISE, OUTLIERS_PER_CALL, 1, 64, 64, 0, 0, false, false);

    /* modes the GPU does not implement fail with a message */
    void *w16 = random_weight(DT_F16, 8, 16, -1, 1);
    HostMatrix w = {.dtype = DT_F16, .rows = 8, .cols = 16, .data = w16};
    QuantConfig q = {.mode = QUANT_ROWWISE, .threshold = 6.0f};
    Error err = {{0}};
    BkLinear *l = gpu->linear_create(gpu, &w, NULL, &q, &err);
    CHECK(l == NULL && strstr(err.msg, "not supported on CUDA"), "rowwise mode: %s", err.msg);
    if (l) gpu->linear_free(gpu, l);
    free(w16);
}

/* ---- reading out the logits ------------------------------------------------------------- */

#define GUARD 64 /* floats after a row, set huge: a kernel reading past the end would pick them */

/* A GPU copy of x [n] followed by GUARD floats of 1e30. */
static float *to_gpu_guarded(const float *x, size_t n) {
    float *h = malloc((n + GUARD) * sizeof *h);
    memcpy(h, x, n * sizeof *h);
    for (int i = 0; i < GUARD; i++) h[n + (size_t)i] = 1e30f;
    float *d = to_gpu(h, n + GUARD);
    free(h);
    return d;
}

static void test_token_nll_case(int rows, int n, float spread) {
    size_t total = (size_t)rows * (size_t)n;
    float *x = random_floats(total, -spread, spread);
    int32_t *targets = malloc((size_t)rows * sizeof *targets);
    for (int r = 0; r < rows; r++) targets[r] = r % 4 == 3 ? -1 : (int32_t)(rng_u32() % (uint32_t)n);
    x[rng_u32() % (uint32_t)n] = spread + 50.0f;                          /* a peaky row 0 */
    if (rows > 1) targets[1] = cpu->argmax(cpu, x + n, n);                 /* a likely token */
    if (rows > 2) x[2 * (size_t)n + (size_t)targets[2]] = -spread - 30.0f; /* an unlikely one */
    double *want = malloc((size_t)rows * sizeof *want), *got = malloc((size_t)rows * sizeof *got);
    cpu->token_nll(cpu, x, rows, n, targets, want);
    float *dx = to_gpu_guarded(x, total);
    gpu->token_nll(gpu, dx, rows, n, targets, got);
    expect_synced("token_nll");
    int bad = 0, first = -1;
    for (int r = 0; r < rows; r++) {
        bool ok = targets[r] < 0 ? isnan(got[r]) && isnan(want[r])
                                 : fabs(got[r] - want[r]) <= 1e-4 + 1e-5 * fabs(want[r]);
        if (!ok && bad++ == 0) first = r;
    }
    CHECK(bad == 0, "token_nll rows %d n %d: %d rows off, e.g. [%d] target %d: %.9g vs %.9g", rows, n, bad, first,
          first >= 0 ? targets[first] : 0, first >= 0 ? got[first] : 0.0, first >= 0 ? want[first] : 0.0);
    gpu->release(gpu, dx);
    free(x), free(targets), free(want), free(got);
}

static void test_token_nll(void) {
    test_token_nll_case(5, 50272, 8.0f);   /* OPT's vocabulary */
    test_token_nll_case(3, 250880, 10.0f); /* BLOOM's */
    test_token_nll_case(300, 37, 3.0f);    /* many short, odd rows: unaligned row starts */
    test_token_nll_case(1, 1, 1.0f);       /* nll = 0 */

    /* a target outside [0, n) is outside the contract: NaN, no sticky error */
    float *dx = to_gpu_guarded((const float[]){1, 2, 3}, 3);
    int32_t t[2] = {3, -7};
    double nll[2] = {0, 0};
    gpu->token_nll(gpu, dx, 1, 3, t, nll);
    gpu->token_nll(gpu, dx, 1, 3, t + 1, nll + 1);
    CHECK(isnan(nll[0]) && isnan(nll[1]), "token_nll with targets 3 and -7 of n 3: %g %g", nll[0], nll[1]);
    expect_synced("token_nll with targets outside the contract");
    gpu->release(gpu, dx);
}

/* argmax of x [n] on both backends (at an unaligned device address), checked against expect. */
static void argmax_case(const char *what, const float *x, int n, int32_t expect) {
    float *dx = gpu->alloc(gpu, (size_t)n + 1 + GUARD);
    float *h = malloc(((size_t)n + 1 + GUARD) * sizeof *h);
    h[0] = 1e30f;
    memcpy(h + 1, x, (size_t)n * sizeof *h);
    for (int i = 0; i < GUARD; i++) h[(size_t)n + 1 + (size_t)i] = 1e30f;
    gpu->upload(gpu, dx, h, (size_t)n + 1 + GUARD);
    int32_t want = cpu->argmax(cpu, x, n), got = gpu->argmax(gpu, dx + 1, n);
    expect_synced("argmax");
    CHECK(got == want && got == expect, "argmax %s (n %d): gpu %d, cpu %d, expected %d", what, n, got, want, expect);
    gpu->release(gpu, dx);
    free(h);
}

static void test_argmax(void) {
    int n = 50272;
    float *x = random_floats(250880, -5, 5);
    x[40000] = x[1234] = 9.0f; /* equal maxima: the first */
    argmax_case("two equal maxima", x, n, 1234);
    x[1234] = x[40000] = 0.0f;

    n = 250880;
    x[n - 1] = 12.0f;
    argmax_case("max at the end", x, n, n - 1);
    x[200000] = x[130000] = x[7] = 12.0f; /* ties in different warps' stretches */
    argmax_case("four equal maxima", x, n, 7);
    x[0] = 12.0f;
    argmax_case("tie at 0", x, n, 0);
    x[0] = NAN; /* the CPU's scan: nothing beats a NaN in x[0] */
    argmax_case("NaN at 0", x, n, 0);
    x[0] = 0.0f, x[7] = NAN; /* NaN elsewhere is skipped */
    argmax_case("NaN in the middle", x, n, 130000);
    free(x);

    float one = -3.0f;
    argmax_case("n = 1", &one, 1, 0);
    float small[7] = {-1, -2, -0.0f, -5, 0.0f, -1, -0.5f};
    argmax_case("-0 and +0 equal", small, 7, 2);
    float *minf = malloc(1000 * sizeof *minf);
    for (int i = 0; i < 1000; i++) minf[i] = -INFINITY;
    argmax_case("all -inf", minf, 1000, 0);
    minf[999] = -1e30f;
    argmax_case("all -inf but the last", minf, 1000, 999);
    for (int i = 0; i < 1000; i++) minf[i] = 0.25f;
    argmax_case("all equal", minf, 1000, 0);
    free(minf);
}

static void test_penalize(void) {
    int n = 50272;
    float *x = random_floats((size_t)n, -5, 5);
    x[10] = 0.0f, x[11] = -0.0f, x[12] = 1e-40f, x[13] = -1e-40f, x[14] = INFINITY, x[15] = -INFINITY;
    /* distinct ids: a shuffled prefix of 0..n-1, with the special entries and both ends in it */
    int32_t *perm = malloc((size_t)n * sizeof *perm);
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_u32() % (uint32_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    int32_t special[] = {0, 10, 11, 12, 13, 14, 15, n - 1};
    for (int s = 0; s < 8; s++)
        for (int i = 0; i < n; i++)
            if (perm[i] == special[s]) {
                perm[i] = perm[s], perm[s] = special[s];
                break;
            }
    float *dx = to_gpu(x, (size_t)n), *want = malloc((size_t)n * sizeof *want);
    memcpy(want, x, (size_t)n * sizeof *want);
    const int counts[] = {2500, 1000, 1001, 1, 0};
    const float penalties[] = {1.3f, 0.7f, 1.1f, 2.0f, 1.5f};
    for (int c = 0; c < 5; c++) {
        /* the host array is overwritten right after the call: the GPU must already hold the ids */
        int32_t *ids = malloc(((size_t)counts[c] + 1) * sizeof *ids);
        memcpy(ids, perm + 100 * c, (size_t)counts[c] * sizeof *ids);
        cpu->penalize(cpu, want, ids, counts[c], penalties[c]);
        gpu->penalize(gpu, dx, ids, counts[c], penalties[c]);
        for (int i = 0; i < counts[c]; i++) ids[i] = 0;
        free(ids);
        float *g = from_gpu(dx, (size_t)n);
        size_t diff = 0, first = 0;
        for (size_t i = 0; i < (size_t)n; i++)
            if (memcmp(&g[i], &want[i], 4) != 0 && diff++ == 0) first = i;
        CHECK(diff == 0, "penalize %d ids by %g: %zu entries differ, e.g. [%zu] %.9g vs %.9g", counts[c],
              (double)penalties[c], diff, first, diff ? (double)g[first] : 0.0, diff ? (double)want[first] : 0.0);
        free(g);
    }
    gpu->release(gpu, dx);
    free(x), free(perm), free(want);
}

/* top_candidates of x [n] on both backends: ids identical, probabilities within 1e-5, the
 * order non-increasing. expect (k ids, or NULL) is checked too. */
static void top_case(const char *what, const float *x, int n, float temperature, int k, const int32_t *expect) {
    int32_t *ci = malloc((size_t)k * sizeof *ci), *gi = malloc((size_t)k * sizeof *gi);
    float *cp = malloc((size_t)k * sizeof *cp), *gp = malloc((size_t)k * sizeof *gp);
    cpu->top_candidates(cpu, x, n, temperature, k, ci, cp);
    float *dx = to_gpu_guarded(x, (size_t)n);
    gpu->top_candidates(gpu, dx, n, temperature, k, gi, gp);
    expect_synced("top_candidates");
    int idiff = 0, pdiff = 0, first = -1, order = 0, exp_diff = 0;
    for (int j = 0; j < k; j++) {
        if (gi[j] != ci[j] && idiff++ == 0) first = j;
        if (!(fabs((double)gp[j] - cp[j]) <= 1e-5 * fabs((double)cp[j]) + 1e-30)) pdiff++;
        if (j > 0 && !(gp[j] <= gp[j - 1])) order++;
        if (expect && gi[j] != expect[j]) exp_diff++;
    }
    CHECK(idiff == 0, "top_candidates %s (n %d, k %d, T %g): %d ids differ from the CPU's, first at [%d]: %d vs %d",
          what, n, k, (double)temperature, idiff, first, first >= 0 ? gi[first] : 0, first >= 0 ? ci[first] : 0);
    CHECK(pdiff == 0, "top_candidates %s (n %d, k %d): %d probabilities off, e.g. [0] %.9g vs %.9g", what, n, k,
          pdiff, (double)gp[0], (double)cp[0]);
    CHECK(order == 0, "top_candidates %s (n %d, k %d): probabilities not in order", what, n, k);
    CHECK(exp_diff == 0, "top_candidates %s (n %d, k %d): %d ids not the expected ones", what, n, k, exp_diff);
    gpu->release(gpu, dx);
    free(ci), free(gi), free(cp), free(gp);
}

static void test_top_candidates(void) {
    const int ks[] = {1, 40, 1024};
    float *x = random_floats(250880, -5, 5);
    for (int ki = 0; ki < 3; ki++) {
        top_case("random", x, 50272, 1.0f, ks[ki], NULL);
        top_case("random", x, 250880, 0.7f, ks[ki], NULL);
    }
    top_case("k = n", x, 1024, 1.0f, 1024, NULL);
    top_case("k near n", x, 1500, 1.3f, 1024, NULL);
    top_case("tiny", x, 5, 1.0f, 3, NULL);
    float one = 2.0f;
    int32_t zero = 0;
    top_case("n = 1", &one, 1, 1.0f, 1, &zero);

    /* planted ties: 10 entries at 7 (the top), 2000 at 6 (across the k-th place for k > 10),
     * scattered over every warp's stretch */
    int n = 50272;
    int32_t top[10], *expect = malloc(1024 * sizeof *expect);
    for (int j = 0; j < 10; j++) top[j] = (int32_t)(j * 5003 + 17) % n; /* ascending */
    for (int j = 0; j < 2000; j++) x[(size_t)(j * 25 + 3)] = 6.0f;      /* ids 3, 28, ... 49978 */
    for (int j = 0; j < 10; j++) x[top[j]] = 7.0f;
    const int tie_ks[] = {1, 5, 10, 11, 40, 1024};
    for (int ki = 0; ki < 6; ki++) {
        int k = tie_ks[ki], m = 0;
        for (int j = 0; j < 10 && m < k; j++) expect[m++] = top[j];
        for (int j = 0; j < 2000 && m < k; j++)
            if (x[(size_t)(j * 25 + 3)] == 6.0f) expect[m++] = j * 25 + 3; /* a top id may sit on the grid */
        top_case("planted ties", x, n, 0.8f, k, expect);
    }
    free(x);

    /* all equal, +0 and -0 mixed: the lowest ids, each 1/n */
    n = 3000;
    x = malloc((size_t)n * sizeof *x);
    for (int i = 0; i < n; i++) x[i] = i % 3 ? 0.0f : -0.0f;
    for (int j = 0; j < 1024; j++) expect[j] = j;
    top_case("all equal", x, n, 1.0f, 1024, expect);
    top_case("all equal", x, n, 1.0f, 40, expect);
    int32_t ids[4];
    float probs[4];
    float *dx = to_gpu_guarded(x, (size_t)n);
    gpu->top_candidates(gpu, dx, n, 1.0f, 1, ids, probs);
    CHECK(ids[0] == 0 && fabs(probs[0] - 1.0 / n) < 1e-9, "all equal: id %d prob %.9g", ids[0], (double)probs[0]);

    /* outside the contract (k > n, temperature 0): ids 0, NaN, and no sticky error */
    gpu->top_candidates(gpu, dx, 3, 1.0f, 4, ids, probs);
    CHECK(ids[3] == 0 && isnan(probs[0]) && isnan(probs[3]), "top_candidates with k > n: %d %g", ids[3],
          (double)probs[0]);
    gpu->top_candidates(gpu, dx, n, 0.0f, 2, ids, probs);
    CHECK(ids[1] == 0 && isnan(probs[1]), "top_candidates at temperature 0: %d %g", ids[1], (double)probs[1]);
    CHECK(gpu->argmax(gpu, dx, 0) == 0, "argmax of n = 0");
    expect_synced("read-outs outside the contract");
    gpu->release(gpu, dx);
    free(x), free(expect);
}

/* ---- the fixtures' int8 unit case ------------------------------------------------------- */

static void test_fixture(const char *name) {
    char dir[256], path[512];
    snprintf(dir, sizeof dir, "%s/%s", TEST_FIXTURES, name);
    snprintf(path, sizeof path, "%s/golden.json", dir);
    char *text = test_read_file(path, NULL);
    CHECK(text != NULL, "%s missing", path);
    if (!text) return;
    cJSON *g = cJSON_Parse(text);
    cJSON *unit = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(g, "int8"), "unit");
    cJSON *lin = cJSON_GetObjectItemCaseSensitive(unit, "linear");
    cJSON *jout = cJSON_GetObjectItemCaseSensitive(unit, "outlier_cols");
    cJSON *ishape = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(unit, "input"), "shape");
    cJSON *oshape = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(unit, "output"), "shape");
    bool ok = cJSON_IsString(lin) && cJSON_IsArray(jout) && cJSON_GetArraySize(ishape) == 2 &&
              cJSON_GetArraySize(oshape) == 2;
    CHECK(ok, "%s: golden.json int8.unit incomplete", name);
    StFile *st = NULL;
    Error err = {{0}};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (ok) {
        int rc = st_open(path, &st, &err);
        CHECK(rc == 0, "%s", err.msg);
        ok = rc == 0;
    }
    if (!ok) {
        cJSON_Delete(g), free(text);
        return;
    }
    int64_t T = (int64_t)cJSON_GetArrayItem(ishape, 0)->valuedouble;
    int64_t K = (int64_t)cJSON_GetArrayItem(ishape, 1)->valuedouble;
    int64_t N = (int64_t)cJSON_GetArrayItem(oshape, 1)->valuedouble;
    char wname[256], bname[256];
    snprintf(wname, sizeof wname, "%s.weight", lin->valuestring);
    snprintf(bname, sizeof bname, "%s.bias", lin->valuestring);
    const StTensor *wt = st_find(st, wname), *bt = st_find(st, bname);
    CHECK(wt && bt && wt->ndim == 2 && wt->shape[0] == N && wt->shape[1] == K && bt->numel == N &&
              (bt->dtype == DT_F16 || bt->dtype == DT_BF16 || bt->dtype == DT_F32),
          "%s: tensors %s / %s", name, wname, bname);
    snprintf(path, sizeof path, "%s/int8_unit_x.f32", dir);
    float *x = test_read_f32(path, (size_t)(T * K));
    snprintf(path, sizeof path, "%s/int8_unit_y.f32", dir);
    float *ygold = test_read_f32(path, (size_t)(T * N));
    snprintf(path, sizeof path, "%s/int8_unit_acc.i32", dir);
    int32_t *accgold = (int32_t *)test_read_f32(path, (size_t)(T * N)); /* 4-byte LE values too */
    if (wt && bt && wt->ndim == 2 && wt->shape[0] == N && wt->shape[1] == K && bt->numel == N && x && ygold &&
        accgold) {
        float *bias = malloc((size_t)N * sizeof *bias);
        for (int64_t n = 0; n < N; n++) bias[n] = dtype_load_f32(bt->dtype, bt->data, (size_t)n);
        HostMatrix w = {.dtype = wt->dtype, .rows = N, .cols = K, .data = wt->data};
        QuantConfig q = {.mode = QUANT_LLM_INT8, .threshold = 6.0f, .outliers = OUTLIERS_PER_CALL};
        BkLinear *l = gpu->linear_create(gpu, &w, bias, &q, &err);
        CHECK(l != NULL, "%s: linear_create: %s", name, err.msg);
        if (l) {
            float *y = malloc((size_t)(T * N) * 4);
            int32_t *acc = malloc((size_t)(T * N) * 4);
            int64_t *cols = malloc((size_t)K * 8), ncols = -1;
            int rc = cuda_backend_debug_int8(gpu, l, x, (int)T, y, acc, NULL, cols, &ncols, &err);
            CHECK(rc == 0, "%s: %s", name, err.msg);
            if (rc == 0) {
                CHECK(memcmp(acc, accgold, (size_t)(T * N) * 4) == 0, "%s: int32 accumulators differ from golden",
                      name);
                int bad = ncols != cJSON_GetArraySize(jout);
                for (int64_t j = 0; !bad && j < ncols; j++)
                    bad += cols[j] != (int64_t)cJSON_GetArrayItem(jout, (int)j)->valuedouble;
                CHECK(!bad, "%s: outlier columns differ from golden (%lld found)", name, (long long)ncols);
                char what[96];
                snprintf(what, sizeof what, "%s: int8 unit output vs golden", name);
                expect_close(what, y, ygold, (size_t)(T * N), 1e-5, 1e-5);
            }
            free(y), free(acc), free(cols);
            gpu->linear_free(gpu, l);
        }
        free(bias);
    }
    free(x), free(ygold), free(accgold);
    st_close(st);
    cJSON_Delete(g);
    free(text);
}

/* A failing operation comes back through sync(): attention with n_past = -1 is refused by
 * the launcher (nothing is read), and the failure must be returned by the next sync(),
 * once, with the operation's name; later operations run again. */
static void test_failure_comes_back_through_sync(void) {
    Error err = {{0}};
    expect_synced("the tests before");
    AttentionArgs bad = {.T = 1, .n_past = -1, .heads = 1, .head_dim = 8, .scale = 1.0f};
    gpu->attention(gpu, &bad);
    CHECK(gpu->sync(gpu, &err) == -1 && strstr(err.msg, "attention") && strstr(err.msg, "n_past"),
          "sync after a refused attention: '%s'", err.msg);
    err.msg[0] = 0;
    CHECK(gpu->sync(gpu, &err) == 0 && err.msg[0] == 0, "the error was not cleared: '%s'", err.msg);
    float one[4] = {1, 2, 3, 4}, *d = to_gpu(one, 4);
    gpu->add(gpu, d, d, 4);
    float *back = from_gpu(d, 4);
    CHECK(back[0] == 2 && back[3] == 8, "add after recovering: %g %g", (double)back[0], (double)back[3]);
    gpu->release(gpu, d);
    free(back);
}

int main(void) {
    Error err = {{0}};
    *test_rng_state() = 0x2545f4914f6cdd1dull;
    gpu = cuda_backend_create(&err);
    if (!gpu) {
        /* no device or no driver: nothing to test here (CI machines have no GPU) */
        if (strstr(err.msg, "no CUDA device available")) {
            printf("test_cuda: skipped: no CUDA device (%s)\n", err.msg);
            return 77;
        }
        fprintf(stderr, "test_cuda: a GPU is present but the CUDA backend failed: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "test_cuda: on %s\n", gpu->describe(gpu));
    CHECK(strstr(gpu->describe(gpu), "cuBLASLt int8 (COMPUTE_32I)") != NULL, "describe: %s", gpu->describe(gpu));
    cpu = cpu_backend_create(2, &err);
    if (!cpu) {
        fprintf(stderr, "test_cuda: cpu_backend_create: %s\n", err.msg);
        return 1;
    }

    test_memory();
    test_elementwise();
    test_layernorm();
    test_split_qkv();
    test_store_f16();
    test_embed();
    test_attention();
    test_fp16_linear();
    test_int8();
    if (cpu->token_nll && cpu->argmax && cpu->penalize && cpu->top_candidates) {
        test_token_nll();
        test_argmax();
        test_penalize();
        test_top_candidates();
    } else {
        CHECK(0, "the CPU backend lacks the read-out operations");
    }
    const char *fixtures[] = {"opt-tiny", "opt-tiny-postln", "bloom-tiny"};
    for (int i = 0; i < 3; i++) test_fixture(fixtures[i]);
    test_failure_comes_back_through_sync();

    CHECK(gpu->sync(gpu, &err) == 0, "sticky CUDA error: %s", err.msg);
    gpu->destroy(gpu);
    cpu->destroy(cpu);
    return test_finish("test_cuda");
}
