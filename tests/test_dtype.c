/* test_dtype.c — 16-bit float conversions against known values, and the scans for values
 * a checkpoint must not hold (dtype_first_nonfinite, dtype_first_beyond_f16) against the
 * conversions, for every 16-bit pattern and float32 patterns around the limits. */
#include <stdbool.h>
#include <time.h>

#include "dtype.h"
#include "test_util.h"

/* The scans' answer for a single element, by way of the float conversions. */
static bool is_nonfinite(DType t, const void *x) { return !isfinite(dtype_load_f32(t, x, 0)); }
static bool is_beyond_f16(DType t, const void *x) {
    float v = dtype_load_f32(t, x, 0);
    return !isfinite(v) || (f32_to_f16(v) & 0x7c00) == 0x7c00;
}

static void test_scans(void) {
    /* every 16-bit pattern, alone in a buffer, as F16 and as BF16 */
    int wrong = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        uint16_t x = (uint16_t)h;
        for (int k = 0; k < 2; k++) {
            DType t = k ? DT_BF16 : DT_F16;
            if ((dtype_first_nonfinite(t, &x, 1) == 0) != is_nonfinite(t, &x)) wrong++;
            if ((dtype_first_beyond_f16(t, &x, 1) == 0) != is_beyond_f16(t, &x)) wrong++;
        }
    }
    CHECK(wrong == 0, "%d 16-bit patterns classified differently from the conversions", wrong);
    /* float32 patterns around 65504, 65520 and the exponent's all-ones, both signs */
    static const uint32_t around[] = {0x477fe000u, 0x477fefffu, 0x477ff000u, 0x477ff001u, 0x47800000u,
                                      0x7f7fffffu, 0x7f800000u, 0x7f800001u, 0x7fc00000u, 0x7fffffffu,
                                      0x00000000u, 0x00000001u, 0x3f800000u};
    wrong = 0;
    for (size_t i = 0; i < sizeof around / sizeof around[0]; i++)
        for (uint32_t sign = 0; sign <= 1; sign++) {
            uint32_t x = around[i] | sign << 31;
            if ((dtype_first_nonfinite(DT_F32, &x, 1) == 0) != is_nonfinite(DT_F32, &x)) wrong++;
            if ((dtype_first_beyond_f16(DT_F32, &x, 1) == 0) != is_beyond_f16(DT_F32, &x)) wrong++;
        }
    CHECK(wrong == 0, "%d float32 patterns near the limits classified differently", wrong);
    CHECK(dtype_first_beyond_f16(DT_F32, &(float){65519.0f}, 1) == -1, "65519 fits in float16");
    CHECK(dtype_first_beyond_f16(DT_F32, &(float){1e5f}, 1) == 0, "1e5 does not fit in float16");
    CHECK(dtype_first_nonfinite(DT_F32, &(float){1e5f}, 1) == -1, "1e5 is finite");

    /* the first bad element is found wherever it is: block edges, the tail, two of them */
    enum { N = 3 * 4096 + 17 };
    uint16_t *h = calloc(N, sizeof *h);
    float *f = calloc(N, sizeof *f);
    if (!h || !f) {
        CHECK(0, "out of memory");
        free(h), free(f);
        return;
    }
    CHECK(dtype_first_nonfinite(DT_F16, h, N) == -1 && dtype_first_nonfinite(DT_F32, f, N) == -1, "zeros are finite");
    CHECK(dtype_first_nonfinite(DT_F16, h, 0) == -1, "an empty buffer has nothing");
    static const size_t at[] = {0, 1, 4095, 4096, 4097, 8191, 12288, N - 1};
    wrong = 0;
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        h[at[i]] = 0xfe00; /* -NaN */
        f[at[i]] = -INFINITY;
        if (dtype_first_nonfinite(DT_F16, h, N) != (int64_t)at[i]) wrong++;
        if (dtype_first_nonfinite(DT_F32, f, N) != (int64_t)at[i]) wrong++;
        if (dtype_first_beyond_f16(DT_BF16, h, N) != (int64_t)at[i]) wrong++; /* 0xfe00 as BF16: -5.3e37 */
        if (at[i] > 0 && dtype_first_nonfinite(DT_F16, h, at[i]) != -1) wrong++; /* n stops before it */
        h[at[i]] = 0, f[at[i]] = 0;
    }
    h[5000] = 0x7c00, h[9000] = 0x7e00;
    if (dtype_first_nonfinite(DT_F16, h, N) != 5000) wrong++;
    CHECK(wrong == 0, "%d wrong positions", wrong);
    int8_t i8[4] = {-128, 0, 1, 127};
    CHECK(dtype_first_nonfinite(DT_I8, i8, 4) == -1 && dtype_first_beyond_f16(DT_U8, i8, 4) == -1,
          "integers have no non-finite values");
    free(h), free(f);
}

/* How fast the F16 scan runs (reported, not checked: the machine may be busy). */
static void time_scan(void) {
    size_t n = (size_t)64 << 20; /* 128 MB of float16 */
    uint16_t *h = malloc(n * sizeof *h);
    if (!h) return;
    for (size_t i = 0; i < n; i++) h[i] = (uint16_t)(0x3c00 ^ (i & 0x83ff));
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int64_t r = dtype_first_nonfinite(DT_F16, h, n);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    CHECK(r == -1, "the timed buffer is finite");
    fprintf(stderr, "dtype_first_nonfinite: %.0f MB of F16 in %.1f ms (%.1f GB/s)\n", 2.0 * (double)n / 1e6,
            1e3 * s, 2.0 * (double)n / 1e9 / s);
    free(h);
}

int main(void) {
    CHECK(f16_to_f32(0x3c00) == 1.0f, "1.0");
    CHECK(f16_to_f32(0xc000) == -2.0f, "-2.0");
    CHECK(f16_to_f32(0x7bff) == 65504.0f, "max half");
    CHECK(f16_to_f32(0x0001) == 5.960464477539063e-08f, "smallest subnormal");
    CHECK(f32_to_f16(1.0f) == 0x3c00, "1.0 -> half");
    CHECK(f32_to_f16(65520.0f) == 0x7c00, "65520 overflows to inf");
    CHECK(f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00, "tie rounds to even (down)");
    CHECK(f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02, "tie rounds to even (up)");
    CHECK(f32_to_f16(2.9802322387695312e-08f) == 0x0000, "2^-25 ties to zero");
    CHECK(bf16_to_f32(0x3f80) == 1.0f, "bf16 1.0");
    /* every finite half survives a round trip */
    int bad = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        if ((h & 0x7c00) == 0x7c00) continue;
        if (f32_to_f16(f16_to_f32((uint16_t)h)) != h) bad++;
    }
    CHECK(bad == 0, "%d halves do not round-trip", bad);
    DType t;
    CHECK(dtype_parse("BF16", &t) == 0 && t == DT_BF16, "parse BF16");
    CHECK(dtype_parse("F64", &t) != 0, "F64 is not supported");
    test_scans();
    time_scan();
    return test_finish("dtype");
}
