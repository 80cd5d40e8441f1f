#include "dtype.h"

static const struct { const char *name; size_t size; } DTYPES[DT_COUNT] = {
    [DT_F16] = {"F16", 2}, [DT_BF16] = {"BF16", 2}, [DT_F32] = {"F32", 4},
    [DT_I8] = {"I8", 1},   [DT_U8] = {"U8", 1},
};

size_t dtype_size(DType t) { return t < DT_COUNT ? DTYPES[t].size : 0; }
const char *dtype_name(DType t) { return t < DT_COUNT ? DTYPES[t].name : "?"; }

int dtype_parse(const char *s, DType *out) {
    for (int t = 0; t < DT_COUNT; t++)
        if (strcmp(s, DTYPES[t].name) == 0) { *out = (DType)t; return 0; }
    return -1;
}

uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 | ((absx >> 13) & 0x3ff) : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* result is subnormal or zero: exponent < -14 */
        if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25 rounds to 0 */
        uint32_t man = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(absx >> 23); /* 14..24 extra bits to drop */
        /* round to nearest even on the dropped bits */
        uint32_t rem = man & ((1u << (shift)) - 1);
        uint32_t mid = 1u << (shift - 1);
        uint32_t half = man >> shift;
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t exp = (absx >> 23) - 127 + 15;
    uint32_t man = absx & 0x7fffff;
    uint32_t h = (exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* carries into exponent correctly */
    return (uint16_t)(sign | h);
}

/* ---- scans for values a checkpoint must not hold --------------------------------------------
 * An element is beyond a limit when its magnitude bits (sign cleared) are >= the limit's
 * bits: IEEE floats of one sign order like their bit patterns, and every NaN and infinity
 * lies above every finite value. Each scan takes the largest magnitude bits of a block of
 * elements (a max-reduction without branches, which compilers vectorise) and only when that
 * reaches the limit looks for the first such element in the block. */

#define SCAN_BLOCK 4096

/* First i with (x[i] & 0x7fff) >= limit, over 16-bit elements. */
static int64_t first_at_least_u16(const uint16_t *x, size_t n, uint16_t limit) {
    for (size_t b = 0; b < n; b += SCAN_BLOCK) {
        size_t end = n - b < SCAN_BLOCK ? n : b + SCAN_BLOCK;
        uint16_t largest = 0;
        for (size_t i = b; i < end; i++) {
            uint16_t m = x[i] & 0x7fff;
            largest = m > largest ? m : largest;
        }
        if (largest >= limit)
            for (size_t i = b; i < end; i++)
                if ((x[i] & 0x7fff) >= limit) return (int64_t)i;
    }
    return -1;
}

/* The same over 32-bit elements. */
static int64_t first_at_least_u32(const uint32_t *x, size_t n, uint32_t limit) {
    for (size_t b = 0; b < n; b += SCAN_BLOCK) {
        size_t end = n - b < SCAN_BLOCK ? n : b + SCAN_BLOCK;
        uint32_t largest = 0;
        for (size_t i = b; i < end; i++) {
            uint32_t m = x[i] & 0x7fffffffu;
            largest = m > largest ? m : largest;
        }
        if (largest >= limit)
            for (size_t i = b; i < end; i++)
                if ((x[i] & 0x7fffffffu) >= limit) return (int64_t)i;
    }
    return -1;
}

/* Magnitude bits at and above which a value is NaN or infinite: the exponent field all ones. */
#define F16_INF 0x7c00u
#define BF16_INF 0x7f80u
#define F32_INF 0x7f800000u
/* The smallest float32 magnitude that f32_to_f16 rounds to infinity: 65520 = 0x477ff000
 * (half-way between float16's largest, 65504, and 65536 rounds to even: infinity). A
 * bfloat16 is the top half of a float32, so the bfloat16 limit is 0x4780 (65536); the one
 * below, 0x477f (65280), fits in float16. */
#define F32_BEYOND_F16 0x477ff000u
#define BF16_BEYOND_F16 0x4780u

int64_t dtype_first_nonfinite(DType t, const void *data, size_t n) {
    switch (t) {
    case DT_F16: return first_at_least_u16(data, n, F16_INF);
    case DT_BF16: return first_at_least_u16(data, n, BF16_INF);
    case DT_F32: return first_at_least_u32(data, n, F32_INF);
    default: return -1;
    }
}

int64_t dtype_first_beyond_f16(DType t, const void *data, size_t n) {
    switch (t) {
    case DT_F16: return first_at_least_u16(data, n, F16_INF);
    case DT_BF16: return first_at_least_u16(data, n, BF16_BEYOND_F16);
    case DT_F32: return first_at_least_u32(data, n, F32_BEYOND_F16);
    default: return -1;
    }
}
