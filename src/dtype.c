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
