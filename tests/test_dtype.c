/* test_dtype.c — 16-bit float conversions against known values. */
#include "dtype.h"
#include "test_util.h"

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
    return test_finish("dtype");
}
