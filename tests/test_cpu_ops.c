/* test_cpu_ops.c — every operation of the CPU backend against a plain double-precision
 * reference written here, on random data with a fixed seed.
 *
 * The whole suite runs twice: once in a child process with LLMINT8_NO_SIMD=1 (the portable
 * C kernels), once as is (the AVX2 kernels where the CPU has them). */
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cpu/cpu_internal.h"
#include "cpu/cpu_pool.h"
#include "test_util.h"

static Backend *bk;

/* ---- random data ---------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [-1, 1) (xorshift64*). */
static float frand(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 40) / (double)(1 << 23) - 1.0);
}

static float *rand_floats(size_t n, float scale, float offset) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = offset + scale * frand();
    return p;
}

/* n random values stored as dtype dt (what a checkpoint would hold). */
static void *rand_weights(DType dt, size_t n) {
    void *p = malloc((n ? n : 1) * dtype_size(dt));
    for (size_t i = 0; i < n; i++) {
        float f = frand();
        if (dt == DT_F32) {
            ((float *)p)[i] = f;
        } else if (dt == DT_F16) {
            ((uint16_t *)p)[i] = f32_to_f16(f);
        } else {
            uint32_t bits;
            memcpy(&bits, &f, 4);
            ((uint16_t *)p)[i] = (uint16_t)(bits >> 16); /* truncation is fine for test data */
        }
    }
    return p;
}

/* ---- GEMM ------------------------------------------------------------------------------- */

/* Compares y[T,N] with the double-precision y = x W^T + b. A float32 sum of K products is
 * within about K * 2^-24 * sum|x_k w_k| of the exact value, so that is the scale of the
 * tolerance (whatever the order of accumulation). */
static int check_gemm_result(const char *what, DType dt, const float *x, const void *w, const float *bias,
                             int64_t T, int64_t K, int64_t N, const float *y) {
    int bad = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++) {
            double ref = bias ? bias[n] : 0.0, mag = bias ? fabs(bias[n]) : 0.0;
            for (int64_t k = 0; k < K; k++) {
                double p = (double)x[t * K + k] * dtype_load_f32(dt, w, (size_t)(n * K + k));
                ref += p;
                mag += fabs(p);
            }
            double got = y[t * N + n];
            if (!(fabs(got - ref) <= 1e-5 * mag + 1e-30)) {
                if (bad++ < 3)
                    CHECK(0, "%s %s T=%lld K=%lld N=%lld bias=%d: y[%lld][%lld] = %.9g, expected %.9g", what,
                          dtype_name(dt), (long long)T, (long long)K, (long long)N, bias != NULL, (long long)t,
                          (long long)n, got, ref);
            }
        }
    if (!bad) CHECK(1, "ok");
    return bad;
}

static void test_gemm_shape(DType dt, int64_t T, int64_t K, int64_t N, bool with_bias) {
    float *x = rand_floats((size_t)(T * K), 1.0f, 0.0f);
    void *w = rand_weights(dt, (size_t)(N * K));
    float *b = with_bias ? rand_floats((size_t)N, 1.0f, 0.0f) : NULL;
    float *y = malloc((size_t)(T * N) * sizeof(float));
    for (int64_t i = 0; i < T * N; i++) y[i] = NAN; /* every output must be written */
    cpu_gemm_float(x, T, K, dt, w, N, b, y);
    check_gemm_result("cpu_gemm_float", dt, x, w, b, T, K, N, y);
    free(x), free(w), free(b), free(y);
}

static void test_gemm(void) {
    static const int64_t Ts[] = {1, 2, 3, 7, 33}, Ks[] = {1, 5, 17, 64, 100}, Ns[] = {1, 3, 9, 65};
    static const DType dts[] = {DT_F16, DT_BF16, DT_F32};
    for (int d = 0; d < 3; d++) {
        for (int a = 0; a < 5; a++)
            for (int b = 0; b < 5; b++)
                for (int c = 0; c < 4; c++)
                    for (int bias = 0; bias < 2; bias++) test_gemm_shape(dts[d], Ts[a], Ks[b], Ns[c], bias);
        /* Big enough for several threads and several token blocks, with ragged edges. */
        test_gemm_shape(dts[d], 70, 1030, 77, true);
        test_gemm_shape(dts[d], 33, 4100, 29, false);
        test_gemm_shape(dts[d], 1, 2051, 203, true);
    }
}

/* Batch invariance: each token's outputs are bitwise the same whether it runs alone (T = 1,
 * the decode GEMV) or among others (the tiled GEMM, any position in a tile). */
static void test_gemm_batch_invariance(void) {
    static const DType dts[] = {DT_F16, DT_BF16, DT_F32};
    static const int64_t Ks[] = {7, 16, 48, 1030};
    enum { T = 11, N = 13 };
    for (int d = 0; d < 3; d++)
        for (int kk = 0; kk < 4; kk++) {
            const int64_t K = Ks[kk];
            float *x = rand_floats((size_t)(T * K), 1.0f, 0.0f);
            void *w = rand_weights(dts[d], (size_t)(N * K));
            float *b = rand_floats(N, 1.0f, 0.0f);
            float all[T * N], one[N];
            cpu_gemm_float(x, T, K, dts[d], w, N, b, all);
            int bad = 0;
            for (int t = 0; t < T; t++) {
                cpu_gemm_float(x + t * K, 1, K, dts[d], w, N, b, one);
                bad += memcmp(one, all + t * N, sizeof one) != 0;
            }
            CHECK(bad == 0, "%s K=%lld: %d of %d tokens differ between T=1 and T=%d", dtype_name(dts[d]),
                  (long long)K, bad, T, T);
            free(x), free(w), free(b);
        }
}

/* Tensors inside a checkpoint need not be aligned to their element size. */
static void test_gemm_unaligned(void) {
    static const DType dts[] = {DT_F16, DT_BF16, DT_F32};
    enum { T = 3, K = 21, N = 7 };
    for (int d = 0; d < 3; d++) {
        size_t bytes = (size_t)N * K * dtype_size(dts[d]);
        void *w = rand_weights(dts[d], (size_t)N * K);
        char *buf = malloc(bytes + 1);
        memcpy(buf + 1, w, bytes);
        float *x = rand_floats(T * K, 1.0f, 0.0f), y[T * N];
        cpu_gemm_float(x, T, K, dts[d], buf + 1, N, NULL, y);
        check_gemm_result("unaligned W", dts[d], x, w, NULL, T, K, N, y);

        Error err = {{0}};
        HostMatrix hm = {.dtype = dts[d], .rows = N, .cols = K, .data = buf + 1};
        BkMatrix *m = bk->matrix_create(bk, &hm, &err);
        CHECK(m != NULL, "matrix_create: %s", err.msg);
        if (m) {
            const int32_t ids[2] = {6, 1};
            float e[2 * K];
            bk->embed(bk, m, ids, 2, e, false);
            int bad = 0;
            for (int i = 0; i < K; i++)
                bad += e[i] != dtype_load_f32(dts[d], w, (size_t)(6 * K + i)) ||
                       e[K + i] != dtype_load_f32(dts[d], w, (size_t)(K + i));
            CHECK(bad == 0, "embed from an unaligned %s table: %d wrong", dtype_name(dts[d]), bad);
            bk->matrix_free(bk, m);
        }
        free(w), free(buf), free(x);
    }
}

/* The same through the Backend table: linear (with a bias copy), matmul, bytes. */
static void test_linear_and_matmul(void) {
    Error err = {{0}};
    enum { T = 5, K = 37, N = 19 };
    static const DType dts[] = {DT_F16, DT_BF16, DT_F32};
    QuantConfig fp16 = {.mode = QUANT_FP16, .threshold = 0.0f, .outliers = OUTLIERS_PER_CALL};
    for (int d = 0; d < 3; d++) {
        float *x = rand_floats(T * K, 1.0f, 0.0f), *b = rand_floats(N, 1.0f, 0.0f);
        void *w = rand_weights(dts[d], (size_t)N * K);
        float y[T * N];
        HostMatrix hm = {.dtype = dts[d], .rows = N, .cols = K, .data = w};

        BkLinear *l = bk->linear_create(bk, &hm, b, &fp16, &err);
        CHECK(l != NULL, "linear_create: %s", err.msg);
        if (l) {
            CHECK(bk->linear_bytes(l) == (size_t)N * K * dtype_size(dts[d]) + N * sizeof(float), "linear_bytes %zu",
                  bk->linear_bytes(l));
            b[0] += 1.0f; /* the backend copied the bias: changing ours must not matter */
            bk->linear(bk, l, x, T, y);
            b[0] -= 1.0f;
            check_gemm_result("linear", dts[d], x, w, b, T, K, N, y);
            bk->linear_free(bk, l);
        }
        BkMatrix *m = bk->matrix_create(bk, &hm, &err);
        CHECK(m != NULL, "matrix_create: %s", err.msg);
        if (m) {
            CHECK(bk->matrix_bytes(m) == (size_t)N * K * dtype_size(dts[d]), "matrix_bytes");
            bk->matmul(bk, m, x, T, y);
            check_gemm_result("matmul", dts[d], x, w, NULL, T, K, N, y);
            bk->matrix_free(bk, m);
        }
        free(x), free(b), free(w);
    }
}

/* An int8 checkpoint weight run with QUANT_FP16: dequantized once to CB * SCB / 127. */
static void test_linear_int8_weight_fp16(void) {
    Error err = {{0}};
    enum { T = 3, K = 10, N = 4 };
    int8_t cb[N * K];
    float scb[N] = {1.0f, 2.5f, 0.0f, 127.0f}, wf[N * K], x[T * K], y[T * N];
    for (int i = 0; i < N * K; i++) cb[i] = (int8_t)((i * 37) % 255 - 127);
    for (int i = 0; i < N * K; i++) wf[i] = quant_dequant_weight(cb[i], scb[i / K]);
    for (int i = 0; i < T * K; i++) x[i] = frand();
    HostMatrix hm = {.dtype = DT_I8, .rows = N, .cols = K, .data = cb, .scb = scb};
    QuantConfig fp16 = {.mode = QUANT_FP16};
    BkLinear *l = bk->linear_create(bk, &hm, NULL, &fp16, &err);
    CHECK(l != NULL, "linear_create(I8, fp16): %s", err.msg);
    if (!l) return;
    bk->linear(bk, l, x, T, y);
    check_gemm_result("linear I8->F32", DT_F32, x, wf, NULL, T, K, N, y);
    CHECK(bk->linear_bytes(l) == (size_t)N * K * 4, "linear_bytes %zu", bk->linear_bytes(l));
    bk->linear_free(bk, l);
}

/* Int8 modes are cpu_int8.c's business (tests/test_int8.c); here only that the backend hands
 * them over: LLM.int8() output close to the float product. */
static void test_linear_int8_delegation(void) {
    Error err = {{0}};
    enum { T = 4, K = 64, N = 16 };
    float *x = rand_floats(T * K, 1.0f, 0.0f), *b = rand_floats(N, 1.0f, 0.0f), y[T * N];
    void *w = rand_weights(DT_F16, N * K);
    HostMatrix hm = {.dtype = DT_F16, .rows = N, .cols = K, .data = w};
    QuantConfig q = {.mode = QUANT_LLM_INT8, .threshold = 6.0f, .outliers = OUTLIERS_PER_CALL};
    BkLinear *l = bk->linear_create(bk, &hm, b, &q, &err);
    CHECK(l != NULL, "linear_create(llm.int8): %s", err.msg);
    if (l) {
        CHECK(bk->linear_bytes(l) > 0, "linear_bytes");
        bk->linear(bk, l, x, T, y);
        int bad = 0;
        for (int t = 0; t < T; t++)
            for (int n = 0; n < N; n++) {
                double ref = b[n], mag = fabs(b[n]);
                for (int k = 0; k < K; k++) {
                    double p = (double)x[t * K + k] * f16_to_f32(((uint16_t *)w)[n * K + k]);
                    ref += p, mag += fabs(p);
                }
                if (!(fabs(y[t * N + n] - ref) <= 0.03 * mag)) bad++;
            }
        CHECK(bad == 0, "%d int8 outputs far from the float product", bad);
        bk->linear_free(bk, l);
    }
    free(x), free(b), free(w);
}

/* A failing operation comes back through sync(): the next scratch growth of the int8
 * forward is made to fail, as if out of memory. linear() must then leave a recorded error
 * (its output is undefined), sync() must return it once, with a message, and clear it, and
 * the next linear() must work again, giving the same numbers as before the failure. */
static void test_failure_comes_back_through_sync(void) {
    Error err = {{0}};
    enum { T = 3, K = 96, N = 8 };
    float *x = rand_floats(T * K, 1.0f, 0.0f), y[T * N], y_before[T * N];
    void *w = rand_weights(DT_F16, N * K);
    HostMatrix hm = {.dtype = DT_F16, .rows = N, .cols = K, .data = w};
    QuantConfig q = {.mode = QUANT_LLM_INT8, .threshold = 6.0f, .outliers = OUTLIERS_PER_CALL};
    BkLinear *l = bk->linear_create(bk, &hm, NULL, &q, &err);
    CHECK(l != NULL, "linear_create(llm.int8): %s", err.msg);
    if (!l) {
        free(x), free(w);
        return;
    }
    CHECK(bk->sync(bk, &err) == 0, "sync before any failure: %s", err.msg);
    bk->linear(bk, l, x, T, y_before);
    CHECK(bk->sync(bk, &err) == 0, "sync after a good linear: %s", err.msg);

    cpu_backend_fail_next_scratch(bk);
    bk->linear(bk, l, x, T, y);
    err.msg[0] = 0;
    CHECK(bk->sync(bk, &err) == -1, "sync did not report the failed linear");
    CHECK(strstr(err.msg, "out of memory") && strstr(err.msg, "int8 projection [8 x 96]") &&
              !strstr(err.msg, " 0 bytes"),
          "sync's message: '%s'", err.msg);
    err.msg[0] = 0;
    CHECK(bk->sync(bk, &err) == 0 && err.msg[0] == 0, "the error was not cleared: '%s'", err.msg);

    for (int i = 0; i < T * N; i++) y[i] = NAN;
    bk->linear(bk, l, x, T, y);
    CHECK(bk->sync(bk, &err) == 0, "sync after recovering: %s", err.msg);
    CHECK(memcmp(y, y_before, sizeof y) == 0, "linear after the failure differs from before it");
    bk->linear_free(bk, l);
    free(x), free(w);
}

/* describe() names the kernels actually selected. */
static void test_describe(void) {
    const char *d = bk->describe(bk);
    CHECK(d && strncmp(d, "cpu: 2 threads;", 15) == 0, "describe: '%s'", d ? d : "(null)");
    char int8[64];
    snprintf(int8, sizeof int8, "int8 matmul: %s;", cpu_int8_kernel());
    CHECK(d && strstr(d, int8), "describe does not name the int8 kernel %s: '%s'", cpu_int8_kernel(), d);
    char fp16[64];
    snprintf(fp16, sizeof fp16, "fp16 matmul: %s", cpu_gemm_kernel());
    CHECK(d && strstr(d, fp16), "describe does not say '%s': '%s'", fp16, d);
}

static void test_bad_weights(void) {
    Error err = {{0}};
    uint16_t data[4] = {0};
    QuantConfig fp16 = {.mode = QUANT_FP16};
    HostMatrix bad_shape = {.dtype = DT_F16, .rows = 0, .cols = 4, .data = data};
    HostMatrix huge = {.dtype = DT_F16, .rows = INT64_MAX / 2, .cols = 4, .data = data};
    HostMatrix no_scb = {.dtype = DT_I8, .rows = 2, .cols = 2, .data = data};
    HostMatrix u8 = {.dtype = DT_U8, .rows = 2, .cols = 2, .data = data};
    HostMatrix no_data = {.dtype = DT_F16, .rows = 2, .cols = 2, .data = NULL};
    const HostMatrix *bad[] = {&bad_shape, &huge, &no_scb, &u8, &no_data};
    for (int i = 0; i < 5; i++) {
        err.msg[0] = 0;
        CHECK(bk->linear_create(bk, bad[i], NULL, &fp16, &err) == NULL && err.msg[0], "bad linear %d accepted", i);
    }
    const HostMatrix *bad_m[] = {&bad_shape, &huge, &no_scb, &u8, &no_data};
    for (int i = 0; i < 5; i++) {
        err.msg[0] = 0;
        CHECK(bk->matrix_create(bk, bad_m[i], &err) == NULL && err.msg[0], "bad matrix %d accepted", i);
    }
}

/* ---- memory, embeddings, elementwise --------------------------------------------------- */

static void test_memory(void) {
    float *p = bk->alloc(bk, 1001);
    CHECK(p != NULL && ((uintptr_t)p & 63) == 0, "alloc: 64-byte aligned");
    int nonzero = 0;
    for (int i = 0; i < 1001; i++) nonzero += p[i] != 0.0f;
    CHECK(nonzero == 0, "alloc: zero-filled");
    float src[1001], back[1001];
    for (int i = 0; i < 1001; i++) src[i] = (float)i;
    bk->upload(bk, p, src, 1001);
    float *q = bk->alloc(bk, 1001);
    bk->copy(bk, q, p, 1001);
    bk->download(bk, back, q, 1001);
    CHECK(memcmp(src, back, sizeof src) == 0, "upload / copy / download round trip");
    bk->release(bk, p);
    bk->release(bk, q);
    CHECK(bk->alloc(bk, SIZE_MAX / 2) == NULL, "alloc of an impossible size fails");
    float *z = bk->alloc(bk, 0);
    CHECK(z != NULL, "alloc(0) gives a pointer that can be released");
    bk->release(bk, z);
}

static void test_embed(void) {
    Error err = {{0}};
    enum { ROWS = 11, DIM = 13, T = 4 };
    static const DType dts[] = {DT_F16, DT_BF16, DT_F32};
    const int32_t ids[T] = {3, 0, 10, 3};
    for (int d = 0; d < 3; d++) {
        void *w = rand_weights(dts[d], ROWS * DIM);
        HostMatrix hm = {.dtype = dts[d], .rows = ROWS, .cols = DIM, .data = w};
        BkMatrix *m = bk->matrix_create(bk, &hm, &err);
        CHECK(m != NULL, "matrix_create: %s", err.msg);
        if (!m) continue;
        float out[T * DIM], base[T * DIM];
        bk->embed(bk, m, ids, T, out, false);
        int bad = 0;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < DIM; i++)
                bad += out[t * DIM + i] != dtype_load_f32(dts[d], w, (size_t)(ids[t] * DIM + i));
        CHECK(bad == 0, "embed %s: %d wrong values", dtype_name(dts[d]), bad);
        for (int i = 0; i < T * DIM; i++) out[i] = base[i] = frand();
        bk->embed(bk, m, ids, T, out, true);
        bad = 0;
        for (int t = 0; t < T; t++)
            for (int i = 0; i < DIM; i++)
                bad += out[t * DIM + i] != base[t * DIM + i] + dtype_load_f32(dts[d], w, (size_t)(ids[t] * DIM + i));
        CHECK(bad == 0, "embed %s accumulate: %d wrong values", dtype_name(dts[d]), bad);
        bk->matrix_free(bk, m);
        free(w);
    }
}

static void test_layernorm(void) {
    static const int dims[] = {1, 7, 64, 1000};
    const float eps = 1e-5f;
    for (int di = 0; di < 4; di++)
        for (int affine = 0; affine < 2; affine++)
            for (int alias = 0; alias < 2; alias++) {
                const int T = 3, dim = dims[di];
                /* An offset much larger than the spread: one-pass float statistics would fail. */
                float *x = rand_floats((size_t)T * dim, 1.0f, 100.0f);
                float *w = affine ? rand_floats(dim, 1.0f, 1.0f) : NULL;
                float *b = affine ? rand_floats(dim, 1.0f, 0.0f) : NULL;
                float *x0 = malloc((size_t)T * dim * sizeof(float)), *y = malloc((size_t)T * dim * sizeof(float));
                memcpy(x0, x, (size_t)T * dim * sizeof(float));
                float *out = alias ? x : y;
                bk->layernorm(bk, x, w, b, eps, T, dim, out);
                int bad = 0;
                for (int t = 0; t < T; t++) {
                    const float *r = x0 + t * dim;
                    double mean = 0, var = 0;
                    for (int i = 0; i < dim; i++) mean += r[i];
                    mean /= dim;
                    for (int i = 0; i < dim; i++) var += (r[i] - mean) * (r[i] - mean);
                    var /= dim;
                    for (int i = 0; i < dim; i++) {
                        double ref = (r[i] - mean) / sqrt(var + eps) * (w ? w[i] : 1.0) + (b ? b[i] : 0.0);
                        /* x is ~100 and known to 2^-24 relative: (x - mean) carries ~1e-5 absolute */
                        if (!(fabs(out[t * dim + i] - ref) <= 5e-5 * (1.0 + fabs(ref)))) {
                            if (bad++ < 3)
                                CHECK(0, "layernorm dim=%d affine=%d alias=%d: y[%d][%d] = %.8g, expected %.8g", dim,
                                      affine, alias, t, i, out[t * dim + i], ref);
                        }
                    }
                }
                CHECK(bad == 0, "layernorm dim=%d affine=%d alias=%d: %d wrong", dim, affine, alias, bad);
                free(x), free(w), free(b), free(x0), free(y);
            }
}

static void test_elementwise(void) {
    enum { N = 40000 }; /* above the threshold where the ops use threads */
    float *x = rand_floats(N, 8.0f, 0.0f), *orig = malloc(N * sizeof(float)), *d = rand_floats(N, 1.0f, 0.0f);
    x[0] = 0.0f, x[1] = 30.0f, x[2] = -30.0f, x[3] = 1e-20f, x[4] = -0.0f;
    memcpy(orig, x, N * sizeof(float));

    bk->gelu_tanh(bk, x, N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        double v = orig[i];
        double ref = 0.5 * v * (1.0 + tanh(0.79788456 * v * (1.0 + 0.044715 * v * v)));
        if (!(fabs(x[i] - ref) <= 1e-6 + 2e-6 * fabs(ref))) {
            if (bad++ < 3) CHECK(0, "gelu(%.8g) = %.8g, expected %.8g", v, x[i], ref);
        }
    }
    CHECK(bad == 0, "gelu_tanh: %d wrong", bad);

    memcpy(x, orig, N * sizeof(float));
    bk->relu(bk, x, N);
    bad = 0;
    for (int i = 0; i < N; i++) bad += x[i] != (orig[i] > 0.0f ? orig[i] : 0.0f);
    CHECK(bad == 0, "relu: %d wrong", bad);

    memcpy(x, orig, N * sizeof(float));
    bk->add(bk, x, d, N);
    bad = 0;
    for (int i = 0; i < N; i++) bad += x[i] != orig[i] + d[i];
    CHECK(bad == 0, "add: %d wrong", bad);
    free(x), free(orig), free(d);
}

static void test_split_qkv(void) {
    enum { T = 3, H = 4, D = 5 };
    float qkv[T * H * 3 * D], q[T * H * D], k[T * H * D], v[T * H * D];
    for (int i = 0; i < T * H * 3 * D; i++) qkv[i] = (float)i;
    bk->split_qkv(bk, qkv, T, H, D, q, k, v);
    int bad = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int d = 0; d < D; d++) {
                int o = (t * H + h) * D + d, s = ((t * H + h) * 3) * D + d;
                bad += q[o] != qkv[s] || k[o] != qkv[s + D] || v[o] != qkv[s + 2 * D];
            }
    CHECK(bad == 0, "split_qkv: %d wrong", bad);
}

/* ---- attention ---------------------------------------------------------------------------- */

/* out as double; smax[t * heads + h] = the largest |score| of that row. */
static void attention_ref(const AttentionArgs *a, const float *slopes, double *out, double *smax) {
    const int hd = a->head_dim, stride = a->heads * hd;
    double *s = malloc((size_t)(a->n_past + a->T) * sizeof(double));
    for (int t = 0; t < a->T; t++)
        for (int h = 0; h < a->heads; h++) {
            int n = a->n_past + t + 1;
            double m = -INFINITY, sum = 0, big = 0;
            for (int j = 0; j < n; j++) {
                double d = 0;
                for (int i = 0; i < hd; i++)
                    d += (double)a->q[t * stride + h * hd + i] * f16_to_f32(((const uint16_t *)a->k)[j * stride + h * hd + i]);
                s[j] = a->scale * d + (slopes ? slopes[h] * (double)j : 0.0);
                if (s[j] > m) m = s[j];
                if (fabs(s[j]) > big) big = fabs(s[j]);
            }
            smax[t * a->heads + h] = big;
            for (int j = 0; j < n; j++) sum += (s[j] = exp(s[j] - m));
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int j = 0; j < n; j++) o += s[j] / sum * f16_to_f32(((const uint16_t *)a->v)[j * stride + h * hd + i]);
                out[t * stride + h * hd + i] = o;
            }
        }
    free(s);
}

static void test_attention_case(int T, int n_past, int heads, int head_dim, bool alibi, float qscale) {
    const int stride = heads * head_dim, len = n_past + T;
    float *q = rand_floats((size_t)T * stride, qscale, 0.0f);
    float *k = rand_floats((size_t)len * stride, 1.0f, 0.0f), *v = rand_floats((size_t)len * stride, 1.0f, 0.0f);
    /* the cache holds halves: the reference reads the same halves, widened exactly */
    uint16_t *kh = malloc((size_t)len * stride * sizeof *kh), *vh = malloc((size_t)len * stride * sizeof *vh);
    bk->store_f16(bk, k, (size_t)len * stride, kh);
    bk->store_f16(bk, v, (size_t)len * stride, vh);
    float *out = malloc((size_t)T * stride * sizeof(float));
    double *ref = malloc((size_t)T * stride * sizeof(double)), *smax = malloc((size_t)T * heads * sizeof(double));
    float slopes[8] = {0.5f, 0.25f, 0.125f, 0.0625f, 0.7071f, 0.3536f, 0.1768f, 0.0884f};
    AttentionArgs a = {.q = q, .k = kh, .v = vh, .kv_f16 = true, .out = out, .T = T, .n_past = n_past, .heads = heads,
                       .head_dim = head_dim, .scale = 1.0f / sqrtf((float)head_dim), .alibi = alibi ? slopes : NULL};
    bk->attention(bk, &a);
    attention_ref(&a, alibi ? slopes : NULL, ref, smax);
    int bad = 0;
    for (int i = 0; i < T * stride; i++) {
        /* A float32 score s carries an error of ~|s| 2^-24, which becomes a relative error of
         * the softmax weights: large (ALiBi) scores get a proportionally larger tolerance. */
        double tol = 2e-6 + 1e-5 * fabs(ref[i]) + 4 * 6e-8 * smax[i / head_dim];
        if (!(fabs(out[i] - ref[i]) <= tol)) {
            if (bad++ < 3)
                CHECK(0, "attention T=%d n_past=%d heads=%d hd=%d alibi=%d: out[%d] = %.8g, expected %.8g", T, n_past,
                      heads, head_dim, alibi, i, out[i], ref[i]);
        }
    }
    CHECK(bad == 0, "attention T=%d n_past=%d heads=%d hd=%d alibi=%d: %d wrong", T, n_past, heads, head_dim, alibi,
          bad);

    /* A float32 cache holding the same (widened) values gives bit for bit the same output. */
    float *kw = malloc((size_t)len * stride * sizeof *kw), *vw = malloc((size_t)len * stride * sizeof *vw);
    float *out32 = malloc((size_t)T * stride * sizeof(float));
    for (int i = 0; i < len * stride; i++) kw[i] = f16_to_f32(kh[i]), vw[i] = f16_to_f32(vh[i]);
    AttentionArgs a32 = a;
    a32.k = kw, a32.v = vw, a32.kv_f16 = false, a32.out = out32;
    bk->attention(bk, &a32);
    CHECK(memcmp(out32, out, (size_t)T * stride * sizeof(float)) == 0,
          "attention T=%d n_past=%d: float32 cache differs from the half cache with the same values", T, n_past);
    free(kw), free(vw), free(out32);

    /* Decoding token by token gives bit for bit what the prompt pass gave. */
    float *one = malloc((size_t)stride * sizeof(float));
    bad = 0;
    for (int t = 0; t < T; t++) {
        AttentionArgs d = a;
        d.q = q + t * stride, d.out = one, d.T = 1, d.n_past = n_past + t;
        bk->attention(bk, &d);
        bad += memcmp(one, out + t * stride, (size_t)stride * sizeof(float)) != 0;
    }
    CHECK(bad == 0, "attention: %d tokens differ between prompt and one-at-a-time", bad);

    /* Causal: changing the keys and values of later positions changes no earlier token.
     * (The last token must notice, unless its softmax is too peaked to see the change.) */
    if (T > 1) {
        float *out2 = malloc((size_t)T * stride * sizeof(float));
        for (int i = (n_past + 1) * stride; i < len * stride; i++) k[i] += 1.0f, v[i] -= 1.0f;
        bk->store_f16(bk, k, (size_t)len * stride, kh);
        bk->store_f16(bk, v, (size_t)len * stride, vh);
        a.out = out2;
        bk->attention(bk, &a);
        CHECK(memcmp(out2, out, (size_t)stride * sizeof(float)) == 0, "attention: token 0 sees later keys");
        CHECK(qscale > 1.0f ||
                  memcmp(out2 + (T - 1) * stride, out + (T - 1) * stride, (size_t)stride * sizeof(float)) != 0,
              "attention T=%d n_past=%d: last token ignores its keys", T, n_past);
        free(out2);
    }
    free(q), free(k), free(v), free(kh), free(vh), free(out), free(ref), free(smax), free(one);
}

/* store_f16 rounds to nearest even exactly as f32_to_f16 (torch's .half()), with SIMD and
 * scalar tails alike: ties, subnormals, overflow to inf, NaN, signed zero. */
static void test_store_f16(void) {
    enum { N = 4099 };
    float *x = rand_floats(N, 8.0f, 0.0f);
    const float special[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -70000.0f, INFINITY, -INFINITY, NAN,
                             5.96e-8f, 2.98e-8f, 2.99e-8f, 6.1e-5f, 1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048,
                             1e-30f, 3.1415927f};
    for (size_t i = 0; i < sizeof special / sizeof *special; i++) x[i * 7] = x[N - 1 - i] = special[i];
    for (int i = 100; i < 400; i++) x[i] *= 1e-6f; /* subnormal halves */
    uint16_t *h = malloc(N * sizeof *h);
    bk->store_f16(bk, x, N, h);
    int bad = 0;
    for (int i = 0; i < N; i++)
        if (h[i] != f32_to_f16(x[i]) && bad++ < 3) CHECK(0, "store_f16(%.9g) = 0x%04x, expected 0x%04x", x[i], h[i], f32_to_f16(x[i]));
    CHECK(bad == 0, "store_f16: %d of %d wrong", bad, N);
    free(x), free(h);
}

static void test_attention(void) {
    test_attention_case(1, 0, 1, 1, false, 1.0f);     /* a single key: out = v */
    test_attention_case(4, 0, 3, 5, false, 1.0f);
    test_attention_case(5, 6, 2, 16, false, 1.0f);    /* a prompt after a cached prefix */
    test_attention_case(3, 9, 4, 64, true, 1.0f);     /* BLOOM: ALiBi slopes */
    test_attention_case(1, 40, 8, 17, true, 1.0f);    /* decode, odd head_dim */
    test_attention_case(2, 30, 2, 80, true, 1.0f);    /* head_dim = 64 + 16 */
    test_attention_case(9, 40, 2, 136, false, 1.0f);  /* head_dim = 2 * 64 + 8 */
    test_attention_case(150, 3, 2, 16, true, 1.0f);   /* several blocks of queries */
    test_attention_case(7, 600, 3, 24, true, 1.0f);   /* several key chunks, rising ALiBi scores */
    test_attention_case(3, 520, 2, 64, false, 30.0f); /* peaked softmax across chunks */
    /* head sizes of 64 and 128 take queries three at a time (AVX-512): groups that straddle
     * a key chunk (one query without keys in the next), and leftovers after the groups */
    test_attention_case(7, 254, 2, 64, true, 1.0f);
    test_attention_case(70, 200, 2, 128, false, 1.0f);
}

/* ---- threads -------------------------------------------------------------------------------- */

/* The adaptive choice: one thread less per CPU that other processes keep at least 40% busy. */
static void test_threads_for_load(void) {
    static const struct { int cpus, max; double busy; int want; } cases[] = {
        {2, 2, 0.0, 2},  {2, 2, 0.15, 2}, {2, 2, 0.39, 2}, /* background noise: all CPUs */
        {2, 2, 0.45, 1}, {2, 2, 1.0, 1},  {2, 2, 1.5, 1},  {2, 2, 2.0, 1}, /* one CPU taken */
        {2, 2, 9.0, 1},  {2, 2, -0.2, 2}, {2, 2, NAN, 2},  /* at least one; nonsense reads as idle */
        {8, 8, 2.2, 6},  {8, 8, 2.5, 5},  {8, 4, 1.0, 4},  /* never more than the most allowed */
        {1, 1, 0.9, 1},  {16, 16, 15.5, 1}, {4, 0, 0.0, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int got = cpu_threads_for_load(cases[i].cpus, cases[i].max, cases[i].busy);
        CHECK(got == cases[i].want, "cpu_threads_for_load(%d, %d, %g) = %d, expected %d", cases[i].cpus, cases[i].max,
              cases[i].busy, got, cases[i].want);
    }
}

enum { COVER_N = 1003 };
static _Atomic int cover_count[COVER_N];
static _Atomic int cover_bad_slot, cover_bad_range;

static void cover_body(void *ctx, int64_t begin, int64_t end, int slot) {
    const int64_t grain = *(const int64_t *)ctx;
    if (slot < 0 || slot >= cpu_pool_slots()) atomic_fetch_add(&cover_bad_slot, 1);
    if (begin < 0 || end > COVER_N || begin >= end || (grain > 0 && begin % grain != 0))
        atomic_fetch_add(&cover_bad_range, 1);
    for (int64_t i = begin; i < end; i++) atomic_fetch_add(&cover_count[i], 1);
}

/* A loop body that starts another loop: the inner one runs serially in its caller. */
static void nested_body(void *ctx, int64_t begin, int64_t end, int slot) {
    (void)slot;
    for (int64_t i = begin; i < end; i++) {
        int64_t grain = 1;
        (void)ctx;
        cpu_parallel_for(1, 1, true, cover_body, &grain); /* counts index 0 once per outer index */
        atomic_fetch_add(&cover_count[i], 1);
    }
}

/* Every index is handled exactly once, in pieces of the grain, by a valid thread slot,
 * whatever the thread count, serial or not, and with nested loops. */
static void test_parallel_for_covers(void) {
    static const int counts[] = {1, 2, 3, 5, 0};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        cpu_pool_set_threads(counts[c]);
        for (int round = 0; round < 20; round++) {
            int64_t grain = round % 5 + 1;
            bool parallel = round != 7;
            for (int i = 0; i < COVER_N; i++) atomic_store(&cover_count[i], 0);
            if (round == 9) grain = 0; /* taken as 1 */
            cpu_parallel_for(COVER_N, grain, parallel, cover_body, &grain);
            int bad = 0;
            for (int i = 0; i < COVER_N; i++) bad += atomic_load(&cover_count[i]) != 1;
            CHECK(bad == 0, "threads %d, grain %lld: %d indices not covered exactly once", counts[c], (long long)grain,
                  bad);
        }
        for (int i = 0; i < COVER_N; i++) atomic_store(&cover_count[i], 0);
        cpu_parallel_for(100, 1, true, nested_body, NULL);
        int bad = atomic_load(&cover_count[0]) != 101;
        for (int i = 1; i < 100; i++) bad += atomic_load(&cover_count[i]) != 1;
        CHECK(bad == 0, "threads %d: nested loops: %d indices wrong", counts[c], bad);
    }
    CHECK(atomic_load(&cover_bad_slot) == 0, "%d loop bodies got a slot outside [0, slots)", atomic_load(&cover_bad_slot));
    CHECK(atomic_load(&cover_bad_range) == 0, "%d loop bodies got a range not on the grain",
          atomic_load(&cover_bad_range));
    int64_t zero = 0;
    cpu_parallel_for(0, 1, true, cover_body, &zero); /* nothing to do: no call */
    cpu_parallel_for(-5, 1, true, cover_body, &zero);
}

/* Loops posted back to back, each of 2 to 4 one-index pieces, the worker often finishing
 * a loop's last piece just as the next is posted: every piece must run exactly once, and
 * no loop may hang. (Before the claim counter was closed while a loop was posted, a worker
 * could claim a piece of the new loop through the old counter: this hung within 500,000
 * loops in 6 runs of 6.) A hang ends the test through alarm(). */
static _Atomic int b2b_runs[4];

static void b2b_body(void *ctx, int64_t b, int64_t e, int slot) {
    (void)ctx, (void)slot;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&b2b_runs[i], 1);
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "FAIL: back-to-back parallel loops hung\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(1);
}

static void test_parallel_for_back_to_back(void) {
    enum { LOOPS = 500000 };
    cpu_pool_set_threads(2);
    signal(SIGALRM, on_alarm);
    alarm(120);
    long bad = 0;
    for (long it = 0; it < LOOPS; it++) {
        const int n = 2 + (int)(it % 3);
        for (int i = 0; i < n; i++) atomic_store(&b2b_runs[i], 0);
        cpu_parallel_for(n, 1, true, b2b_body, NULL);
        for (int i = 0; i < n; i++) bad += atomic_load(&b2b_runs[i]) != 1;
    }
    alarm(0);
    CHECK(bad == 0, "%ld pieces of %d back-to-back loops ran other than once", bad, LOOPS);
}

/* Outputs of every parallel op, for comparing thread counts bit for bit. */
typedef struct OpOutputs {
    float *fp16, *int8, *ln, *add, *relu, *gelu, *att;
    double *nll;
} OpOutputs;

enum { TI_T = 70, TI_K = 200, TI_N = 300, TI_LN = 1024, TI_EL = 100000, TI_HEADS = 4, TI_HD = 32, TI_PAST = 10,
       TI_ROWS = 8, TI_VOCAB = 5000 };

static void run_parallel_ops(Backend *b, const float *x, const void *w, const float *bias, const float *big,
                             const float *kv, const int32_t *targets, OpOutputs *o) {
    Error err = {{0}};
    HostMatrix hm = {.dtype = DT_F16, .rows = TI_N, .cols = TI_K, .data = w};
    QuantConfig fp16 = {.mode = QUANT_FP16};
    QuantConfig q8 = {.mode = QUANT_LLM_INT8, .threshold = 2.5f, .outliers = OUTLIERS_PER_CALL};
    BkLinear *l = b->linear_create(b, &hm, bias, &fp16, &err);
    CHECK(l != NULL, "linear_create: %s", err.msg);
    if (l) b->linear(b, l, x, TI_T, o->fp16), b->linear_free(b, l);
    l = b->linear_create(b, &hm, bias, &q8, &err);
    CHECK(l != NULL, "linear_create(int8): %s", err.msg);
    if (l) b->linear(b, l, x, TI_T, o->int8), b->linear_free(b, l);
    CHECK(b->sync(b, &err) == 0, "sync: %s", err.msg);
    b->layernorm(b, big, big + TI_LN, big + 2 * TI_LN, 1e-5f, TI_EL / TI_LN, TI_LN, o->ln);
    memcpy(o->add, big, TI_EL * sizeof(float));
    b->add(b, o->add, big + 1, TI_EL);
    memcpy(o->relu, big, TI_EL * sizeof(float));
    b->relu(b, o->relu, TI_EL);
    memcpy(o->gelu, big, TI_EL * sizeof(float));
    b->gelu_tanh(b, o->gelu, TI_EL);
    const int stride = TI_HEADS * TI_HD, len = TI_PAST + TI_T;
    AttentionArgs a = {.q = kv, .k = kv + (size_t)TI_T * stride, .v = kv + (size_t)(TI_T + len) * stride,
                       .out = o->att, .T = TI_T, .n_past = TI_PAST, .heads = TI_HEADS, .head_dim = TI_HD,
                       .scale = 0.2f};
    b->attention(b, &a);
    b->token_nll(b, big, TI_ROWS, TI_VOCAB, targets, o->nll);
}

static void op_outputs_alloc(OpOutputs *o) {
    o->fp16 = malloc(TI_T * TI_N * sizeof(float)), o->int8 = malloc(TI_T * TI_N * sizeof(float));
    o->ln = malloc(TI_EL * sizeof(float)), o->add = malloc(TI_EL * sizeof(float));
    o->relu = malloc(TI_EL * sizeof(float)), o->gelu = malloc(TI_EL * sizeof(float));
    o->att = malloc((size_t)TI_T * TI_HEADS * TI_HD * sizeof(float)), o->nll = malloc(TI_ROWS * sizeof(double));
}

static void op_outputs_free(OpOutputs *o) {
    free(o->fp16), free(o->int8), free(o->ln), free(o->add), free(o->relu), free(o->gelu), free(o->att), free(o->nll);
}

/* Every parallel op gives the same bits with 1, 2, 3 or 4 threads and with the adaptive
 * default at either load, the int8 projection with outlier columns included. */
static void test_thread_count_invariance(void) {
    float *x = rand_floats(TI_T * TI_K, 1.0f, 0.0f), *bias = rand_floats(TI_N, 1.0f, 0.0f);
    for (int t = 0; t < TI_T; t += 3) x[t * TI_K + (t * 7) % TI_K] = 9.0f; /* outlier columns */
    void *w = rand_weights(DT_F16, (size_t)TI_N * TI_K);
    float *big = rand_floats(TI_EL + 2, 3.0f, 0.5f);
    const int stride = TI_HEADS * TI_HD, len = TI_PAST + TI_T;
    float *kv = rand_floats((size_t)(TI_T + 2 * len) * stride, 1.0f, 0.0f);
    int32_t targets[TI_ROWS];
    for (int r = 0; r < TI_ROWS; r++) targets[r] = r == 3 ? -1 : (r * 613) % TI_VOCAB;
    OpOutputs ref, got;
    op_outputs_alloc(&ref), op_outputs_alloc(&got);
    Error err = {{0}};
    Backend *one = cpu_backend_create(1, &err);
    CHECK(one != NULL, "cpu_backend_create(1): %s", err.msg);
    if (!one) goto done;
    run_parallel_ops(one, x, w, bias, big, kv, targets, &ref);
    one->destroy(one);
    static const struct { int threads; double load; } runs[] = {{2, -1}, {3, -1}, {4, -1}, {0, 0.0}, {0, 64.0}};
    for (size_t r = 0; r < sizeof runs / sizeof runs[0]; r++) {
        cpu_pool_assume_load(runs[r].load);
        Backend *b = cpu_backend_create(runs[r].threads, &err);
        CHECK(b != NULL, "cpu_backend_create(%d): %s", runs[r].threads, err.msg);
        if (!b) continue;
        run_parallel_ops(b, x, w, bias, big, kv, targets, &got);
        const char *what = NULL;
        if (memcmp(got.fp16, ref.fp16, TI_T * TI_N * sizeof(float))) what = "fp16 linear";
        else if (memcmp(got.int8, ref.int8, TI_T * TI_N * sizeof(float))) what = "int8 linear";
        else if (memcmp(got.ln, ref.ln, TI_EL / TI_LN * TI_LN * sizeof(float))) what = "layernorm";
        else if (memcmp(got.add, ref.add, TI_EL * sizeof(float))) what = "add";
        else if (memcmp(got.relu, ref.relu, TI_EL * sizeof(float))) what = "relu";
        else if (memcmp(got.gelu, ref.gelu, TI_EL * sizeof(float))) what = "gelu";
        else if (memcmp(got.att, ref.att, (size_t)TI_T * stride * sizeof(float))) what = "attention";
        else if (memcmp(got.nll, ref.nll, TI_ROWS * sizeof(double))) what = "token_nll";
        CHECK(what == NULL, "%s differs between 1 thread and %d (adaptive load %g, %d in use)", what ? what : "",
              runs[r].threads, runs[r].load, cpu_pool_threads_in_use());
        b->destroy(b);
    }
    cpu_pool_assume_load(-1.0);
done:
    op_outputs_free(&ref), op_outputs_free(&got);
    free(x), free(bias), free(w), free(big), free(kv);
}

/* The default thread count follows the load: all CPUs when idle, fewer when others keep
 * CPUs busy, and --threads N means N whatever the load. */
static void test_adaptive_default(void) {
    Error err = {{0}};
    Backend *b = cpu_backend_create(0, &err);
    CHECK(b != NULL, "cpu_backend_create(0): %s", err.msg);
    if (!b) return;
    const int cpus = cpu_pool_cpus();
    CHECK(cpu_pool_adaptive() && cpu_pool_threads() == cpus, "default: adaptive over %d CPUs, got %d threads",
          cpus, cpu_pool_threads());
    const char *d = b->describe(b);
    CHECK(d && strncmp(d, "cpu: up to ", 11) == 0, "describe (adaptive): '%s'", d ? d : "(null)");
    cpu_pool_assume_load(0.0);
    CHECK(cpu_pool_threads_in_use() == cpus, "idle: %d threads in use, expected %d", cpu_pool_threads_in_use(), cpus);
    cpu_pool_assume_load(1.0);
    int want = cpus > 1 ? cpus - 1 : 1;
    CHECK(cpu_pool_threads_in_use() == want, "one CPU busy: %d threads in use, expected %d",
          cpu_pool_threads_in_use(), want);
    cpu_pool_assume_load((double)cpus);
    CHECK(cpu_pool_threads_in_use() == 1, "all CPUs busy: %d threads in use", cpu_pool_threads_in_use());
    /* waiting threads spin long only while the others leave the CPUs idle */
    cpu_pool_assume_load(0.0);
    const long spin_idle = cpu_pool_spin_ns();
    cpu_pool_assume_load(CPU_POOL_IDLE_OTHERS);
    const long spin_edge = cpu_pool_spin_ns();
    cpu_pool_assume_load(1.0);
    const long spin_busy = cpu_pool_spin_ns();
    CHECK(spin_idle > spin_busy && spin_edge == spin_busy && spin_busy > 0,
          "spin: idle %ld ns, at the idle limit %ld ns, one CPU busy %ld ns", spin_idle, spin_edge, spin_busy);
    /* measured from /proc/stat again: whatever the machine's load, between 1 and all */
    cpu_pool_assume_load(-1.0);
    int64_t grain = 1;
    for (int i = 0; i < COVER_N; i++) atomic_store(&cover_count[i], 0);
    cpu_parallel_for(COVER_N, grain, true, cover_body, &grain);
    int in_use = cpu_pool_threads_in_use();
    CHECK(in_use >= 1 && in_use <= cpus, "measured: %d threads in use of %d CPUs", in_use, cpus);
    b->destroy(b);
    /* an explicit count is not adapted */
    cpu_pool_assume_load((double)cpus);
    b = cpu_backend_create(3, &err);
    CHECK(b && !cpu_pool_adaptive() && cpu_pool_threads_in_use() == 3, "--threads 3 under load: %d in use",
          cpu_pool_threads_in_use());
    CHECK(cpu_pool_spin_ns() == spin_busy, "--threads 3 under load: spin %ld ns, expected the short %ld",
          cpu_pool_spin_ns(), spin_busy);
    cpu_pool_assume_load(0.0);
    CHECK(cpu_pool_spin_ns() == spin_idle, "--threads 3 idle: spin %ld ns, expected the long %ld", cpu_pool_spin_ns(),
          spin_idle);
    cpu_pool_assume_load(-1.0);
    if (b) b->destroy(b);
}

/* ---- driver ------------------------------------------------------------------------------- */

static int run_all(const char *name) {
    Error err = {{0}};
    bk = cpu_backend_create(2, &err);
    CHECK(bk != NULL, "cpu_backend_create: %s", err.msg);
    if (!bk) return test_finish(name);
    CHECK(strcmp(bk->name, "cpu") == 0, "name");
    test_gemm();
    test_gemm_unaligned();
    test_gemm_batch_invariance();
    test_linear_and_matmul();
    test_linear_int8_weight_fp16();
    test_linear_int8_delegation();
    test_failure_comes_back_through_sync();
    test_describe();
    test_bad_weights();
    test_memory();
    test_embed();
    test_layernorm();
    test_elementwise();
    test_split_qkv();
    test_store_f16();
    test_attention();
    bk->destroy(bk);
    test_threads_for_load();
    test_parallel_for_covers();
    test_parallel_for_back_to_back();
    test_thread_count_invariance();
    test_adaptive_default();
    return test_finish(name);
}

int main(void) {
    if (getenv("LLMINT8_NO_SIMD")) return run_all(cpu_has_avx2() ? "test_cpu_ops (SIMD)" : "test_cpu_ops (portable)");

    /* Portable kernels first, in a child: the SIMD choice is made once per process. */
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("LLMINT8_NO_SIMD", "1", 1);
        _exit(run_all("test_cpu_ops (portable)"));
    }
    int status = 0;
    int child_failed = pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    if (child_failed) fprintf(stderr, "FAIL: the portable-kernel run failed\n");
    /* With AVX-512 the GEMM runs on zmm: the AVX2 kernels get their own child run. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) {
        fflush(stderr);
        pid = fork();
        if (pid == 0) {
            setenv("LLMINT8_NO_AVX512", "1", 1);
            _exit(run_all("test_cpu_ops (AVX2, AVX-512 off)"));
        }
        status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "FAIL: the AVX2-kernel run failed\n");
            child_failed = 1;
        }
    }
    int rc = run_all(cpu_has_avx2() ? "test_cpu_ops (SIMD)" : "test_cpu_ops (portable)");
    return rc || child_failed;
}
