/* test_int8.c — LLM.int8() math (quant.c) and the CPU int8 projections (cpu/cpu_int8.c).
 *
 *   - mode names, weight quantization (bnb Int8Params) by hand;
 *   - the int8 GEMM bit-exact against a naive sum on odd shapes, saturation cases
 *     (+-127 everywhere, large K), on every kernel this CPU runs (portable, avx2, vnni);
 *   - the fixtures' int8 unit case: SCB, SCA, outlier columns and int32 accumulators
 *     bit-equal to the goldens, output within 1e-5;
 *   - decomposition properties, per-call vs per-token outliers;
 *   - quant_ref_linear against cpu_int8_forward on random data with planted outliers;
 *   - the ablation modes against a direct transcription of docs/QUANT.md;
 *   - hostile inputs (bad checkpoints, NaN activations) fail cleanly. */
#include <cjson/cJSON.h>
#include <stdint.h>

#include "cpu/cpu_internal.h"
#include "quant.h"
#include "test_util.h"

static const char *const KERNEL_NAMES[] = {"portable", "avx2", "avx512vnni", "amx"};
enum { N_KERNELS = 4 };

/* ---- small helpers ---------------------------------------------------------------- */

static int rng_int(int lo, int hi) { return lo + (int)(rng_u32() % (uint32_t)(hi - lo + 1)); }

static bool same_bits(float a, float b) { return memcmp(&a, &b, sizeof a) == 0; }

/* Max over i of |a-b| / max(|b|, floor): relative error with a floor for values near 0. */
static double max_rel_err(const float *a, const float *b, size_t n, double floor) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / fmax(fabs((double)b[i]), floor);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* The forward under test. One scratch area serves every call of the program, as the
 * backend's does, so growing it (a larger T or K) and reusing it (a smaller one, whose
 * arrays then start at other offsets) both get exercised; a failure fails the test. */
static CpuInt8Scratch scratch;

static void forward_ex(const CpuInt8Linear *l, const float *x, int64_t T, float *y, int32_t *acc, float *sca) {
    Error err = {{0}};
    int rc = cpu_int8_forward_ex(l, &scratch, x, T, y, acc, sca, &err);
    CHECK(rc == 0, "cpu_int8_forward_ex (T %lld): %s", (long long)T, err.msg);
}

static void forward(const CpuInt8Linear *l, const float *x, int64_t T, float *y) {
    forward_ex(l, x, T, y, NULL, NULL);
}

static CpuInt8Linear *make_linear(const HostMatrix *w, const float *bias, QuantMode mode, float tau,
                                  OutlierScope scope) {
    QuantConfig q = {.mode = mode, .threshold = tau, .outliers = scope};
    Error err = {{0}};
    CpuInt8Linear *l = cpu_int8_create(w, bias, &q, &err);
    CHECK(l != NULL, "cpu_int8_create(%s): %s", quant_mode_name(mode), err.msg);
    return l;
}

static float *random_floats(size_t n, float lo, float hi) {
    float *p = malloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = rng_uniform(lo, hi);
    return p;
}

/* ---- names and weight quantization ------------------------------------------------- */

static void test_mode_names(void) {
    for (int m = 0; m < QUANT_MODE_COUNT; m++) {
        QuantMode back = QUANT_MODE_COUNT;
        CHECK(quant_mode_parse(quant_mode_name((QuantMode)m), &back) == 0 && back == (QuantMode)m,
              "mode %d round trip", m);
    }
    QuantMode m;
    CHECK(quant_mode_parse("llm.int8", &m) == 0 && m == QUANT_LLM_INT8, "llm.int8");
    CHECK(quant_mode_parse("rowwise+decomp", &m) == 0 && m == QUANT_ROWWISE_DECOMP, "rowwise+decomp");
    CHECK(quant_mode_parse("int8", &m) == -1, "unknown name rejected");
    CHECK(quant_mode_parse("", &m) == -1, "empty name rejected");
    CHECK(quant_mode_uses_decomposition(QUANT_LLM_INT8) && !quant_mode_uses_decomposition(QUANT_VECTORWISE) &&
              quant_mode_uses_decomposition(QUANT_LLM_INT8_ZEROPOINT),
          "decomposition flags");
    CHECK(quant_mode_is_rowwise_int8(QUANT_LLM_INT8) && !quant_mode_is_rowwise_int8(QUANT_ABSMAX) &&
              !quant_mode_is_rowwise_int8(QUANT_ZEROPOINT) && !quant_mode_is_rowwise_int8(QUANT_FP16),
          "row-wise int8 flags");
}

static void test_weight_rowwise(void) {
    /* Row 0: absmax 2 -> scale 63.5; 1.0 -> 63.5 -> 64 (tie to even); -0.5 -> -31.75 -> -32.
     * Row 1: all zero -> CB 0, SCB 0. Row 2: 0.1 is not a half: fp16(0.1) = 0.0999755859375
     * is the absmax and maps to exactly 127. */
    const float w[3][4] = {{1.0f, -0.5f, 2.0f, -2.0f}, {0, 0, 0, 0}, {0.1f, -0.05f, 0.0f, 0.025f}};
    int8_t cb[12];
    float scb[3];
    quant_weight_rowwise(DT_F32, w, 3, 4, cb, scb);
    CHECK(scb[0] == 2.0f && cb[0] == 64 && cb[1] == -32 && cb[2] == 127 && cb[3] == -127,
          "row 0: scb %g cb %d %d %d %d", (double)scb[0], cb[0], cb[1], cb[2], cb[3]);
    CHECK(scb[1] == 0.0f && cb[4] == 0 && cb[5] == 0 && cb[6] == 0 && cb[7] == 0, "zero row");
    CHECK(scb[2] == 0.0999755859375f && cb[8] == 127, "row 2: fp16 absmax %.10g, cb %d", (double)scb[2], cb[8]);
    float scale = (1.0f / 0.0999755859375f) * 127.0f;
    CHECK(cb[9] == (int8_t)quant_rne(f16_to_f32(f32_to_f16(-0.05f)) * scale), "row 2 value");

    /* The same matrix given as F16 quantizes identically (it is rounded to fp16 first). */
    uint16_t h[12];
    for (int i = 0; i < 12; i++) h[i] = f32_to_f16(w[i / 4][i % 4]);
    int8_t cb16[12];
    float scb16[3];
    quant_weight_rowwise(DT_F16, h, 3, 4, cb16, scb16);
    CHECK(memcmp(cb, cb16, 12) == 0 && memcmp(scb, scb16, sizeof scb) == 0, "F16 and F32 sources agree");
    CHECK(quant_rne(2.5f) == 2 && quant_rne(-2.5f) == -2 && quant_rne(3.5f) == 4, "round half to even");

    /* The scale is PyTorch's 127.0 / absmax = reciprocal(absmax) * 127: here w/absmax is
     * exactly -1/2, the product lands just below -63.5 and rounds to -63 (one IEEE
     * division would give -63.500004 -> -64). bloom-tiny's fixture holds this case. */
    const uint16_t tie[2] = {f32_to_f16(0.98779296875f), f32_to_f16(-0.493896484375f)};
    int8_t cbt[2];
    float scbt;
    quant_weight_rowwise(DT_F16, tie, 1, 2, cbt, &scbt);
    CHECK(cbt[0] == 127 && cbt[1] == -63, "reciprocal-then-multiply scale: cb %d %d", cbt[0], cbt[1]);
}

/* ---- the int8 GEMM ---------------------------------------------------------------- */

/* Runs a VECTORWISE projection whose activation codes equal the given integers: every
 * row holds a +-127, so its scale is 127/127 = 1 and x is quantized to itself. Checks
 * C32 against a naive int64 sum. */
static void gemm_case(const char *kern, int64_t T, int64_t K, int64_t N, const int8_t *a, const int8_t *b) {
    float *x = malloc((size_t)(T * K) * sizeof *x);
    float *scb = malloc((size_t)N * sizeof *scb), *y = malloc((size_t)(T * N) * sizeof *y);
    int32_t *acc = malloc((size_t)(T * N) * sizeof *acc);
    float *sca = malloc((size_t)T * sizeof *sca);
    for (int64_t i = 0; i < T * K; i++) x[i] = a[i];
    for (int64_t n = 0; n < N; n++) scb[n] = 1.0f;
    HostMatrix w = {.dtype = DT_I8, .rows = N, .cols = K, .data = b, .scb = scb};
    CpuInt8Linear *l = make_linear(&w, NULL, QUANT_VECTORWISE, 0.0f, OUTLIERS_PER_CALL);
    if (l) {
        forward_ex(l, x, T, y, acc, sca);
        int bad = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) {
                int64_t want = 0;
                for (int64_t k = 0; k < K; k++) want += (int64_t)a[t * K + k] * b[n * K + k];
                if (acc[t * N + n] != want && bad++ < 3)
                    CHECK(0, "%s T=%lld K=%lld N=%lld: C32[%lld,%lld] = %d, want %lld", kern, (long long)T,
                          (long long)K, (long long)N, (long long)t, (long long)n, acc[t * N + n], (long long)want);
            }
        CHECK(bad == 0, "%s T=%lld K=%lld N=%lld: %d wrong accumulators", kern, (long long)T, (long long)K,
              (long long)N, bad);
    }
    cpu_int8_free(l);
    free(x), free(scb), free(y), free(acc), free(sca);
}

static void test_gemm_exact(const char *kern) {
    static const int64_t shapes[][3] = {{1, 1, 1},   {3, 5, 7},    {5, 33, 9},   {4, 64, 4},    {7, 100, 13},
                                        {9, 257, 31}, {1, 1000, 6}, {17, 31, 3},  {2, 4099, 5},  {8, 96, 50},
                                        {6, 129, 1}, {13, 65, 17}, {33, 128, 20}, {70, 300, 37}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t T = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        int8_t *a = malloc((size_t)(T * K)), *b = malloc((size_t)(N * K));
        for (int64_t i = 0; i < T * K; i++) a[i] = (int8_t)rng_int(-127, 127);
        for (int64_t i = 0; i < N * K; i++)
            b[i] = (int8_t)(i % 11 == 0 ? (rng_u32() & 1 ? 127 : -127) : rng_int(-127, 127));
        for (int64_t t = 0; t < T; t++) a[t * K + rng_int(0, (int)K - 1)] = (rng_u32() & 1) ? 127 : -127;
        gemm_case(kern, T, K, N, a, b);
        free(a), free(b);
    }
    /* Saturation: every pair sum at the int16 edge, int32 near its limit. T = 5 runs both
     * the 4-token tile and the single-token kernel. */
    const int64_t T = 5, K = 65537, N = 6;
    int8_t *a = malloc((size_t)(T * K)), *b = malloc((size_t)(N * K));
    for (int64_t k = 0; k < K; k++) {
        a[0 * K + k] = 127;                       /* x all +127 */
        a[1 * K + k] = -127;                      /* x all -127 */
        a[2 * K + k] = (k & 1) ? -127 : 127;      /* alternating */
        a[3 * K + k] = 127;
        a[4 * K + k] = (k & 2) ? 127 : -127;
        b[0 * K + k] = -127;                      /* w all -127 */
        b[1 * K + k] = 127;
        b[2 * K + k] = (k & 1) ? -127 : 127;      /* products all +16129 with row 2 of x */
        b[3 * K + k] = (k & 1) ? 127 : -127;      /* ... all -16129 */
        b[4 * K + k] = (k & 2) ? 127 : -127;
        b[5 * K + k] = (k % 3 == 0) ? -127 : 127;
    }
    gemm_case(kern, T, K, N, a, b);
    free(a), free(b);
}

/* ---- fixtures --------------------------------------------------------------------- */

/* Finds tensor `name` in a safetensors file (parsed here with cJSON so that this test
 * does not depend on safetensors.c); returns malloc'ed bytes and its dtype/shape. */
static void *st_read_tensor(const char *path, const char *name, char *dtype, int64_t shape[2], int *ndim) {
    size_t len = 0;
    unsigned char *buf = test_read_file(path, &len);
    void *out = NULL;
    if (!buf || len < 8) goto done;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > len - 8) goto done;
    cJSON *h = cJSON_ParseWithLength((const char *)buf + 8, (size_t)hlen);
    cJSON *e = cJSON_GetObjectItemCaseSensitive(h, name);
    cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype"), *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (cJSON_IsString(dt) && cJSON_IsArray(sh) && cJSON_GetArraySize(off) == 2 && cJSON_GetArraySize(sh) <= 2) {
        size_t b = (size_t)cJSON_GetArrayItem(off, 0)->valuedouble;
        size_t en = (size_t)cJSON_GetArrayItem(off, 1)->valuedouble;
        snprintf(dtype, 8, "%s", dt->valuestring);
        *ndim = cJSON_GetArraySize(sh);
        for (int i = 0; i < *ndim; i++) shape[i] = (int64_t)cJSON_GetArrayItem(sh, i)->valuedouble;
        if (b <= en && en <= len - 8 - hlen) {
            out = malloc(en - b + 1);
            memcpy(out, buf + 8 + hlen + b, en - b);
        }
    }
    cJSON_Delete(h);
done:
    free(buf);
    return out;
}

/* Which file of the fixture holds `name` (the index json of a sharded checkpoint). */
static void fixture_file_of(const char *dir, const char *name, char *path, size_t cap) {
    char idx[512];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
    char *text = test_read_file(idx, NULL);
    snprintf(path, cap, "%s/model.safetensors", dir);
    if (!text) return;
    cJSON *j = cJSON_Parse(text);
    cJSON *f = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "weight_map"), name);
    if (cJSON_IsString(f)) snprintf(path, cap, "%s/%s", dir, f->valuestring);
    cJSON_Delete(j);
    free(text);
}

static float *f16_tensor_to_f32(const void *p, int64_t n) {
    float *f = malloc((size_t)n * sizeof *f);
    for (int64_t i = 0; i < n; i++) f[i] = f16_to_f32(((const uint16_t *)p)[i]);
    return f;
}

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
    cJSON *jsca = cJSON_GetObjectItemCaseSensitive(unit, "SCA_row_absmax");
    cJSON *jscb = cJSON_GetObjectItemCaseSensitive(unit, "SCB_row_absmax");
    cJSON *jout = cJSON_GetObjectItemCaseSensitive(unit, "outlier_cols");
    cJSON *ishape = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(unit, "input"), "shape");
    cJSON *oshape = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(unit, "output"), "shape");
    CHECK(cJSON_IsString(lin) && cJSON_IsArray(jsca) && cJSON_IsArray(jscb) && cJSON_IsArray(jout) &&
              cJSON_GetArraySize(ishape) == 2 && cJSON_GetArraySize(oshape) == 2,
          "%s: golden.json int8.unit incomplete", name);
    if (!cJSON_IsString(lin) || cJSON_GetArraySize(ishape) != 2 || cJSON_GetArraySize(oshape) != 2) {
        cJSON_Delete(g), free(text);
        return;
    }
    const int64_t T = (int64_t)cJSON_GetArrayItem(ishape, 0)->valuedouble;
    const int64_t K = (int64_t)cJSON_GetArrayItem(ishape, 1)->valuedouble;
    const int64_t N = (int64_t)cJSON_GetArrayItem(oshape, 1)->valuedouble;

    char wname[256], bname[256], dtype[8] = "", bdtype[8] = "";
    snprintf(wname, sizeof wname, "%s.weight", lin->valuestring);
    snprintf(bname, sizeof bname, "%s.bias", lin->valuestring);
    int64_t wshape[2] = {0, 0}, bshape[2] = {0, 0};
    int wnd = 0, bnd = 0;
    fixture_file_of(dir, wname, path, sizeof path);
    void *wdata = st_read_tensor(path, wname, dtype, wshape, &wnd);
    fixture_file_of(dir, bname, path, sizeof path);
    void *bdata = st_read_tensor(path, bname, bdtype, bshape, &bnd);
    CHECK(wdata && strcmp(dtype, "F16") == 0 && wnd == 2 && wshape[0] == N && wshape[1] == K, "%s: weight %s",
          name, wname);
    CHECK(bdata && strcmp(bdtype, "F16") == 0 && bnd == 1 && bshape[0] == N, "%s: bias %s", name, bname);

    snprintf(path, sizeof path, "%s/int8_unit_x.f32", dir);
    float *x = test_read_f32(path, (size_t)(T * K));
    snprintf(path, sizeof path, "%s/int8_unit_y.f32", dir);
    float *ygold = test_read_f32(path, (size_t)(T * N));
    snprintf(path, sizeof path, "%s/int8_unit_acc.i32", dir);
    int32_t *accgold = (int32_t *)test_read_f32(path, (size_t)(T * N)); /* 4-byte LE values too */

    if (wdata && bdata && x && ygold && accgold && wshape[0] == N && wshape[1] == K && bshape[0] == N) {
        float *bias = f16_tensor_to_f32(bdata, N);
        int8_t *cb = malloc((size_t)(N * K));
        float *scb = malloc((size_t)N * sizeof *scb);
        quant_weight_rowwise(DT_F16, wdata, N, K, cb, scb);
        int scb_bad = cJSON_GetArraySize(jscb) != N;
        for (int64_t n = 0; !scb_bad && n < N; n++)
            scb_bad += scb[n] != (float)cJSON_GetArrayItem(jscb, (int)n)->valuedouble;
        CHECK(!scb_bad, "%s: SCB differs from golden SCB_row_absmax", name);

        /* the reference */
        float *y = malloc((size_t)(T * N) * sizeof *y), *sca = malloc((size_t)T * sizeof *sca);
        int32_t *acc = malloc((size_t)(T * N) * sizeof *acc);
        int64_t *cols = malloc((size_t)K * sizeof *cols), n_out = -1;
        quant_ref_linear(x, T, K, cb, scb, N, bias, 6.0f, OUTLIERS_PER_CALL, y, acc, sca, cols, &n_out);
        CHECK(memcmp(acc, accgold, (size_t)(T * N) * 4) == 0, "%s: reference C32 differs from golden", name);
        int sca_bad = cJSON_GetArraySize(jsca) != T;
        for (int64_t t = 0; !sca_bad && t < T; t++)
            sca_bad += sca[t] != (float)cJSON_GetArrayItem(jsca, (int)t)->valuedouble;
        CHECK(!sca_bad, "%s: SCA differs from golden", name);
        int cols_bad = n_out != cJSON_GetArraySize(jout);
        for (int64_t j = 0; !cols_bad && j < n_out; j++)
            cols_bad += cols[j] != (int64_t)cJSON_GetArrayItem(jout, (int)j)->valuedouble;
        CHECK(!cols_bad, "%s: outlier columns differ from golden (%lld found)", name, (long long)n_out);
        double e = max_rel_err(y, ygold, (size_t)(T * N), 1.0);
        CHECK(e <= 1e-5, "%s: reference output off the golden by %.3g", name, e);

        /* the CPU backend path, on 16-bit weights and on the int8 checkpoint form */
        HostMatrix w16 = {.dtype = DT_F16, .rows = N, .cols = K, .data = wdata};
        HostMatrix w8 = {.dtype = DT_I8, .rows = N, .cols = K, .data = cb, .scb = scb};
        float *y2 = malloc((size_t)(T * N) * sizeof *y2), *sca2 = malloc((size_t)T * sizeof *sca2);
        int32_t *acc2 = malloc((size_t)(T * N) * sizeof *acc2);
        for (int k = 0; k < N_KERNELS; k++) {
            if (cpu_int8_use_kernel(KERNEL_NAMES[k]) != 0) continue;
            for (int src = 0; src < 2; src++) {
                CpuInt8Linear *l = make_linear(src ? &w8 : &w16, bias, QUANT_LLM_INT8, 6.0f, OUTLIERS_PER_CALL);
                if (!l) continue;
                forward_ex(l, x, T, y2, acc2, sca2);
                CHECK(memcmp(acc2, accgold, (size_t)(T * N) * 4) == 0, "%s %s src %d: C32 differs from golden",
                      name, KERNEL_NAMES[k], src);
                CHECK(memcmp(sca2, sca, (size_t)T * 4) == 0, "%s %s: SCA differs", name, KERNEL_NAMES[k]);
                CHECK(memcmp(y2, y, (size_t)(T * N) * 4) == 0, "%s %s src %d: output differs from quant_ref_linear",
                      name, KERNEL_NAMES[k], src);
                e = max_rel_err(y2, ygold, (size_t)(T * N), 1.0);
                CHECK(e <= 1e-5, "%s %s: output off the golden by %.3g", name, KERNEL_NAMES[k], e);
                cpu_int8_free(l);
            }
        }
        free(bias), free(cb), free(scb), free(y), free(sca), free(acc), free(cols), free(y2), free(sca2), free(acc2);
    }
    free(wdata), free(bdata), free(x), free(ygold), free(accgold);
    cJSON_Delete(g);
    free(text);
}

/* ---- random data with planted outliers --------------------------------------------- */

typedef struct Problem {
    int64_t T, K, N;
    float *x, *bias, *scb;
    int8_t *cb;
    uint16_t *w16;
} Problem;

/* x ~ U(-3, 3) with a few columns forced to +-20 in some rows (and row 0 left clean),
 * weights ~ U(-0.4, 0.4) stored as fp16. */
static Problem problem_new(int64_t T, int64_t K, int64_t N, int n_planted) {
    Problem p = {.T = T, .K = K, .N = N};
    p.x = random_floats((size_t)(T * K), -3.0f, 3.0f);
    p.bias = random_floats((size_t)N, -1.0f, 1.0f);
    for (int i = 0; i < n_planted; i++) {
        int64_t col = rng_int(0, (int)K - 1);
        for (int64_t t = 1; t < T; t++)
            if (rng_u32() % 3) p.x[t * K + col] = (rng_u32() & 1) ? 20.0f : -20.0f;
    }
    p.w16 = malloc((size_t)(N * K) * sizeof *p.w16);
    for (int64_t i = 0; i < N * K; i++) p.w16[i] = f32_to_f16(rng_uniform(-0.4f, 0.4f));
    p.cb = malloc((size_t)(N * K));
    p.scb = malloc((size_t)N * sizeof *p.scb);
    quant_weight_rowwise(DT_F16, p.w16, N, K, p.cb, p.scb);
    return p;
}

static void problem_free(Problem *p) { free(p->x), free(p->bias), free(p->scb), free(p->cb), free(p->w16); }

static void test_ref_vs_cpu(const char *kern) {
    /* the last ones take every tile of the VNNI kernel: 1-3 tokens x 4 panels, 4-16 tokens
     * x 1 panel, more in tiles of up to 6 x 4 panels, across chunks of 64 tokens */
    static const int64_t shapes[][3] = {{1, 64, 40},   {13, 96, 37},  {4, 200, 8},   {33, 130, 65}, {2, 2048, 12},
                                        {3, 192, 130}, {5, 192, 130}, {8, 192, 130}, {16, 192, 130},
                                        {17, 192, 130}, {23, 192, 130}, {70, 192, 130}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        Problem p = problem_new(shapes[s][0], shapes[s][1], shapes[s][2], 3);
        const int64_t T = p.T, N = p.N;
        HostMatrix w = {.dtype = DT_F16, .rows = N, .cols = p.K, .data = p.w16};
        float *y = malloc((size_t)(T * N) * 4), *y2 = malloc((size_t)(T * N) * 4);
        float *sca = malloc((size_t)T * 4), *sca2 = malloc((size_t)T * 4);
        int32_t *acc = malloc((size_t)(T * N) * 4), *acc2 = malloc((size_t)(T * N) * 4);
        for (int scope = 0; scope < 2; scope++) {
            OutlierScope sc = scope ? OUTLIERS_PER_TOKEN : OUTLIERS_PER_CALL;
            quant_ref_linear(p.x, T, p.K, p.cb, p.scb, N, p.bias, 6.0f, sc, y, acc, sca, NULL, NULL);
            CpuInt8Linear *l = make_linear(&w, p.bias, QUANT_LLM_INT8, 6.0f, sc);
            if (!l) continue;
            forward_ex(l, p.x, T, y2, acc2, sca2);
            CHECK(memcmp(acc, acc2, (size_t)(T * N) * 4) == 0, "%s shape %zu scope %d: C32 differs", kern, s, scope);
            CHECK(memcmp(sca, sca2, (size_t)T * 4) == 0, "%s shape %zu scope %d: SCA differs", kern, s, scope);
            double e = max_rel_err(y2, y, (size_t)(T * N), 1.0);
            CHECK(e <= 1e-6, "%s shape %zu scope %d: output off the reference by %.3g", kern, s, scope, e);
            cpu_int8_free(l);
        }
        free(y), free(y2), free(sca), free(sca2), free(acc), free(acc2);
        problem_free(&p);
    }
}

static void test_decomposition_properties(void) {
    Problem p = problem_new(13, 96, 40, 4);
    const int64_t T = p.T, K = p.K, N = p.N;
    HostMatrix w = {.dtype = DT_F16, .rows = N, .cols = K, .data = p.w16};
    float *y = malloc((size_t)(T * N) * 4), *y2 = malloc((size_t)(T * N) * 4), *y1 = malloc((size_t)N * 4);
    int32_t *acc = malloc((size_t)(T * N) * 4);

    /* tau above every |x|: exactly plain vector-wise int8 */
    CpuInt8Linear *a = make_linear(&w, p.bias, QUANT_LLM_INT8, 1000.0f, OUTLIERS_PER_CALL);
    CpuInt8Linear *b = make_linear(&w, p.bias, QUANT_VECTORWISE, 6.0f, OUTLIERS_PER_CALL);
    CpuInt8Linear *c0 = make_linear(&w, p.bias, QUANT_LLM_INT8, 0.0f, OUTLIERS_PER_CALL);
    if (a && b && c0) {
        forward(a, p.x, T, y);
        forward(b, p.x, T, y2);
        CHECK(memcmp(y, y2, (size_t)(T * N) * 4) == 0, "tau above max |x| != vectorwise");
        forward(c0, p.x, T, y);
        CHECK(memcmp(y, y2, (size_t)(T * N) * 4) == 0, "tau = 0 != vectorwise");
    }
    cpu_int8_free(a), cpu_int8_free(b), cpu_int8_free(c0);

    /* every column an outlier: the int8 part vanishes, y = b + x . dequant(W) */
    for (int64_t i = 0; i < T * K; i++)
        if (p.x[i] == 0.0f) p.x[i] = 0.5f;
    a = make_linear(&w, p.bias, QUANT_LLM_INT8, 1e-6f, OUTLIERS_PER_CALL);
    if (a) {
        forward_ex(a, p.x, T, y, acc, NULL);
        int bad = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < N; n++) {
                float s = 0.0f;
                for (int64_t k = 0; k < K; k++) s += p.x[t * K + k] * quant_dequant_weight(p.cb[n * K + k], p.scb[n]);
                bad += acc[t * N + n] != 0 || !same_bits(y[t * N + n], p.bias[n] + s);
            }
        CHECK(bad == 0, "all-outlier case: %d outputs differ from the 16-bit product", bad);
    }
    cpu_int8_free(a);

    /* per-token outliers: a row's result does not depend on the batch; per-call ones do */
    p.x[0 * K + 7] = 0.25f; /* row 0 stays clean, the others have planted outliers */
    for (int scope = 0; scope < 2; scope++) {
        OutlierScope sc = scope ? OUTLIERS_PER_TOKEN : OUTLIERS_PER_CALL;
        a = make_linear(&w, p.bias, QUANT_LLM_INT8, 6.0f, sc);
        if (!a) continue;
        forward(a, p.x, T, y);
        int differ = 0;
        for (int64_t t = 0; t < T; t++) {
            forward(a, p.x + t * K, 1, y1);
            differ += memcmp(y1, y + t * N, (size_t)N * 4) != 0;
        }
        if (sc == OUTLIERS_PER_TOKEN) CHECK(differ == 0, "per-token: %d rows depend on the batch", differ);
        else CHECK(differ > 0, "per-call: expected batch-dependent rows (row 0 has no outliers alone)");
        cpu_int8_free(a);
    }
    free(y), free(y2), free(y1), free(acc);
    problem_free(&p);
}

/* ---- ablation modes ---------------------------------------------------------------- */

/* docs/QUANT.md transcribed directly: codes, scales, corrections, for one mode. */
typedef struct ModeSpec {
    QuantMode mode;
    bool tensor_act, zp_act, decomp;
    int weights; /* 0 row absmax, 1 tensor absmax, 2 tensor zero-point */
} ModeSpec;

static const ModeSpec MODE_SPECS[] = {
    {QUANT_LLM_INT8, false, false, true, 0},        {QUANT_VECTORWISE, false, false, false, 0},
    {QUANT_ROWWISE, true, false, false, 0},         {QUANT_ROWWISE_DECOMP, true, false, true, 0},
    {QUANT_ABSMAX, true, false, false, 1},          {QUANT_ZEROPOINT, true, true, false, 2},
    {QUANT_VECTORWISE_ZEROPOINT, false, true, false, 0}, {QUANT_LLM_INT8_ZEROPOINT, false, true, true, 0},
};

static int clamp127(int v) { return v > 127 ? 127 : v < -127 ? -127 : v; }

/* Zero-point parameters of a range [lo, hi] (0 included). */
static void zp_params(float lo, float hi, float *range, float *s, int *z) {
    *range = hi - lo;
    *s = *range > 0.0f && *range < INFINITY ? 254.0f / *range : 0.0f;
    *z = *s > 0.0f ? clamp127(quant_rne(-lo * *s) - 127) : 0;
}

static void spec_forward(const ModeSpec *m, const Problem *p, float tau, OutlierScope scope, float *y, int32_t *acc) {
    const int64_t T = p->T, K = p->K, N = p->N;
    if (!m->decomp) tau = 0.0f;
    /* weights */
    int8_t *qw = malloc((size_t)(N * K));
    float *sw = malloc((size_t)N * 4);
    int zw = 0;
    float wlo = 0, whi = 0, wmax = 0;
    for (int64_t i = 0; i < N * K; i++) {
        float v = f16_to_f32(p->w16[i]);
        wlo = fminf(wlo, v), whi = fmaxf(whi, v), wmax = fmaxf(wmax, fabsf(v));
    }
    if (m->weights == 0) {
        memcpy(qw, p->cb, (size_t)(N * K));
        memcpy(sw, p->scb, (size_t)N * 4);
    } else if (m->weights == 1) {
        for (int64_t i = 0; i < N * K; i++)
            qw[i] = (int8_t)quant_rne(f16_to_f32(p->w16[i]) * ((1.0f / wmax) * 127.0f));
        for (int64_t n = 0; n < N; n++) sw[n] = wmax;
    } else {
        float range, s;
        zp_params(wlo, whi, &range, &s, &zw);
        for (int64_t i = 0; i < N * K; i++) qw[i] = (int8_t)clamp127(quant_rne(f16_to_f32(p->w16[i]) * s) + zw);
        for (int64_t n = 0; n < N; n++) sw[n] = range;
    }
    /* activations: statistics over the entries below tau */
    bool *ocol = calloc((size_t)K, 1);
    for (int64_t i = 0; tau > 0 && i < T * K; i++)
        if (fabsf(p->x[i]) >= tau) ocol[i % K] = true;
    float *lo = calloc((size_t)T, 4), *hi = calloc((size_t)T, 4), *am = calloc((size_t)T, 4);
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++) {
            float v = p->x[t * K + k];
            if (tau > 0 && fabsf(v) >= tau) continue;
            int64_t r = m->tensor_act ? 0 : t;
            lo[r] = fminf(lo[r], v), hi[r] = fmaxf(hi[r], v), am[r] = fmaxf(am[r], fabsf(v));
        }
    int8_t *qa = malloc((size_t)(T * K));
    float *sa = malloc((size_t)T * 4);
    int *za = calloc((size_t)T, sizeof(int));
    for (int64_t t = 0; t < T; t++) {
        int64_t r = m->tensor_act ? 0 : t;
        float s;
        if (m->zp_act) zp_params(lo[r], hi[r], &sa[t], &s, &za[t]);
        else sa[t] = am[r], s = am[r] > 0 ? (1.0f / am[r]) * 127.0f : 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float v = p->x[t * K + k];
            bool out = tau > 0 && (scope == OUTLIERS_PER_CALL ? ocol[k] : fabsf(v) >= tau);
            qa[t * K + k] = (int8_t)(out ? za[t] : clamp127(quant_rne(v * s) + za[t]));
        }
    }
    float deq = !m->zp_act ? QUANT_DEQUANT_SCALE : m->weights == 2 ? (float)(1.0 / (254.0 * 254.0))
                                                                     : (float)(1.0 / (254.0 * 127.0));
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++) {
            int64_t c = 0, sum_a = 0, sum_w = 0;
            for (int64_t k = 0; k < K; k++) {
                c += qa[t * K + k] * qw[n * K + k];
                sum_a += qa[t * K + k], sum_w += qw[n * K + k];
            }
            acc[t * N + n] = (int32_t)c;
            int64_t cc = c - (int64_t)za[t] * sum_w - (int64_t)zw * sum_a + K * (int64_t)za[t] * zw;
            float v = (float)cc * sa[t] * sw[n] * deq + p->bias[n];
            bool any = false;
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                if (!ocol[k]) continue;
                any = true;
                float xv = p->x[t * K + k];
                if (scope == OUTLIERS_PER_TOKEN && !(fabsf(xv) >= tau)) continue;
                s += xv * quant_dequant_weight(qw[n * K + k], sw[n]);
            }
            y[t * N + n] = any ? v + s : v;
        }
    free(qw), free(sw), free(ocol), free(lo), free(hi), free(am), free(qa), free(sa), free(za);
}

static void test_modes(const char *kern) {
    Problem p = problem_new(11, 160, 24, 3);
    const int64_t T = p.T, K = p.K, N = p.N;
    for (int64_t i = 0; i < T * K; i++) p.x[i] += 1.0f; /* asymmetric, as zero-point likes it */
    HostMatrix w = {.dtype = DT_F16, .rows = N, .cols = K, .data = p.w16};
    float *y = malloc((size_t)(T * N) * 4), *y2 = malloc((size_t)(T * N) * 4), *yf = malloc((size_t)(T * N) * 4);
    int32_t *acc = malloc((size_t)(T * N) * 4), *acc2 = malloc((size_t)(T * N) * 4);
    /* the exact float product, for a sanity bound on every mode's error */
    double ref_norm = 0.0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++) {
            double s = p.bias[n];
            for (int64_t k = 0; k < K; k++) s += (double)p.x[t * K + k] * f16_to_f32(p.w16[n * K + k]);
            yf[t * N + n] = (float)s;
            ref_norm = fmax(ref_norm, fabs(s));
        }
    for (size_t i = 0; i < sizeof MODE_SPECS / sizeof MODE_SPECS[0]; i++) {
        const ModeSpec *m = &MODE_SPECS[i];
        for (int scope = 0; scope < (m->decomp ? 2 : 1); scope++) {
            OutlierScope sc = scope ? OUTLIERS_PER_TOKEN : OUTLIERS_PER_CALL;
            spec_forward(m, &p, 6.0f, sc, y, acc);
            CpuInt8Linear *l = make_linear(&w, p.bias, m->mode, 6.0f, sc);
            if (!l) continue;
            forward_ex(l, p.x, T, y2, acc2, NULL);
            CHECK(memcmp(acc, acc2, (size_t)(T * N) * 4) == 0, "%s %s scope %d: C32 differs from the spec", kern,
                  quant_mode_name(m->mode), scope);
            double e = max_rel_err(y2, y, (size_t)(T * N), ref_norm);
            CHECK(e <= 1e-6, "%s %s scope %d: output off the spec by %.3g", kern, quant_mode_name(m->mode), scope, e);
            e = max_rel_err(y2, yf, (size_t)(T * N), ref_norm);
            CHECK(e <= 0.1, "%s %s: error %.3g against the float product is implausible", kern,
                  quant_mode_name(m->mode), e);
            cpu_int8_free(l);
        }
    }
    free(y), free(y2), free(yf), free(acc), free(acc2);
    problem_free(&p);
}

/* A pre-quantized (I8) checkpoint gives bit-identical results to quantizing on load, in
 * every mode; the projection holds int8 weights only. */
static void test_int8_source(void) {
    Problem p = problem_new(6, 80, 20, 2);
    HostMatrix w16 = {.dtype = DT_F16, .rows = p.N, .cols = p.K, .data = p.w16};
    HostMatrix w8 = {.dtype = DT_I8, .rows = p.N, .cols = p.K, .data = p.cb, .scb = p.scb};
    float *y = malloc((size_t)(p.T * p.N) * 4), *y2 = malloc((size_t)(p.T * p.N) * 4);
    for (int m = QUANT_LLM_INT8; m < QUANT_MODE_COUNT; m++) {
        if (!quant_mode_is_rowwise_int8((QuantMode)m)) continue;
        CpuInt8Linear *a = make_linear(&w16, p.bias, (QuantMode)m, 6.0f, OUTLIERS_PER_CALL);
        CpuInt8Linear *b = make_linear(&w8, p.bias, (QuantMode)m, 6.0f, OUTLIERS_PER_CALL);
        if (a && b) {
            forward(a, p.x, p.T, y);
            forward(b, p.x, p.T, y2);
            CHECK(memcmp(y, y2, (size_t)(p.T * p.N) * 4) == 0, "%s: I8 source differs from F16 source",
                  quant_mode_name((QuantMode)m));
            /* the codes (rows padded to a multiple of 64, the widest kernel tile) and little else */
            CHECK(cpu_int8_bytes(a) < (size_t)((p.N + 63) / 64 * 64 * 128 + 4096), "%s: %zu bytes held",
                  quant_mode_name((QuantMode)m),
                  cpu_int8_bytes(a));
        }
        cpu_int8_free(a), cpu_int8_free(b);
    }
    /* non row-wise modes accept an int8 checkpoint too (requantizing its dequantized values) */
    CpuInt8Linear *z = make_linear(&w8, p.bias, QUANT_ZEROPOINT, 6.0f, OUTLIERS_PER_CALL);
    cpu_int8_free(z);
    free(y), free(y2);
    problem_free(&p);
}

static void test_hostile(void) {
    Error err = {{0}};
    QuantConfig q = {.mode = QUANT_LLM_INT8, .threshold = 6.0f, .outliers = OUTLIERS_PER_CALL};
    int8_t cb[8] = {1, 2, 3, -128, 5, 6, 7, 8};
    float scb[2] = {1.0f, 1.0f};
    HostMatrix w = {.dtype = DT_I8, .rows = 2, .cols = 4, .data = cb, .scb = scb};
    CHECK(cpu_int8_create(&w, NULL, &q, &err) == NULL && strstr(err.msg, "-128"), "-128 code: %s", err.msg);
    cb[3] = 4;
    scb[1] = NAN;
    CHECK(cpu_int8_create(&w, NULL, &q, &err) == NULL && strstr(err.msg, "SCB"), "NaN SCB: %s", err.msg);
    const float bad_scales[] = {-1.0f, INFINITY, 65505.0f, 1e30f};
    for (int i = 0; i < 4; i++) {
        scb[1] = bad_scales[i];
        err.msg[0] = 0;
        CHECK(cpu_int8_create(&w, NULL, &q, &err) == NULL && strstr(err.msg, "SCB[1]"), "SCB %g: %s",
              (double)bad_scales[i], err.msg);
    }
    scb[1] = 65504.0f; /* the largest fp16 absmax is a valid scale */
    CpuInt8Linear *edge = cpu_int8_create(&w, NULL, &q, &err);
    CHECK(edge != NULL, "SCB 65504 rejected: %s", err.msg);
    cpu_int8_free(edge);
    scb[1] = 1.0f;
    w.scb = NULL;
    CHECK(cpu_int8_create(&w, NULL, &q, &err) == NULL, "I8 without SCB");
    w.scb = scb;
    q.mode = QUANT_FP16;
    CHECK(cpu_int8_create(&w, NULL, &q, &err) == NULL, "fp16 mode rejected");
    q.mode = QUANT_LLM_INT8;
    q.threshold = -1.0f;
    CHECK(cpu_int8_create(&w, NULL, &q, &err) == NULL, "negative threshold rejected");
    q.threshold = NAN;
    CHECK(cpu_int8_create(&w, NULL, &q, &err) == NULL, "NaN threshold rejected");
    q.threshold = 6.0f;
    HostMatrix big = {.dtype = DT_I8, .rows = 1, .cols = 200000, .data = cb, .scb = scb};
    CHECK(cpu_int8_create(&big, NULL, &q, &err) == NULL && strstr(err.msg, "int32"), "huge K: %s", err.msg);
    HostMatrix empty = {.dtype = DT_F16, .rows = 0, .cols = 4, .data = cb};
    CHECK(cpu_int8_create(&empty, NULL, &q, &err) == NULL, "empty matrix rejected");

    /* NaN / inf / huge activations and an all-zero row: defined (no UB), finite where they can be */
    CpuInt8Linear *l = cpu_int8_create(&w, NULL, &q, &err);
    CHECK(l != NULL, "%s", err.msg);
    if (l) {
        float x[4 * 4] = {NAN, 1, 2, 3, INFINITY, -INFINITY, 1, 0, 0, 0, 0, 0, 1e30f, -1e30f, 5, 1};
        float y[4 * 2];
        for (int mm = QUANT_LLM_INT8; mm < QUANT_MODE_COUNT; mm++) {
            cpu_int8_free(l);
            q.mode = (QuantMode)mm;
            l = cpu_int8_create(&w, NULL, &q, &err);
            if (l) { /* without a scratch area: the forward makes a temporary one */
                int rc = cpu_int8_forward(l, NULL, x, 4, y, &err);
                CHECK(rc == 0, "%s without scratch: %s", quant_mode_name(q.mode), err.msg);
            }
        }
        CHECK(y[4] == 0.0f && y[5] == 0.0f, "all-zero row gives 0 (%g %g)", (double)y[4], (double)y[5]);
        cpu_int8_free(l);
    }
}

int main(void) {
    /* the kernel chosen before any forcing honours LLMINT8_NO_SIMD, like cpu_gemm.c */
    const char *no_simd = getenv("LLMINT8_NO_SIMD");
    if (no_simd && *no_simd && strcmp(no_simd, "0") != 0)
        CHECK(strcmp(cpu_int8_kernel(), "portable") == 0, "LLMINT8_NO_SIMD set but kernel %s", cpu_int8_kernel());
    else
        CHECK(strcmp(cpu_int8_kernel(), "portable") != 0 || !__builtin_cpu_supports("avx2"), "no SIMD kernel chosen");
    test_mode_names();
    test_weight_rowwise();
    CHECK(!__builtin_cpu_supports("avx2") || cpu_int8_use_kernel("avx2") == 0, "avx2 kernel must be usable here");
    for (int k = 0; k < N_KERNELS; k++) {
        if (cpu_int8_use_kernel(KERNEL_NAMES[k]) != 0) {
            fprintf(stderr, "int8: kernel %s not supported on this CPU, skipped\n", KERNEL_NAMES[k]);
            continue;
        }
        test_gemm_exact(KERNEL_NAMES[k]);
        test_ref_vs_cpu(KERNEL_NAMES[k]);
        test_modes(KERNEL_NAMES[k]);
    }
    static const char *const fixtures[] = {"opt-tiny", "opt-tiny-postln", "opt-tiny-sharded", "bloom-tiny"};
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) test_fixture(fixtures[i]);
    test_decomposition_properties();
    test_int8_source();
    test_hostile();
    cpu_int8_scratch_free(&scratch);
    return test_finish("int8");
}
