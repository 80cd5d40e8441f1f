/* dtype.h — element types found in checkpoints, and 16-bit float conversions.
 *
 * The conversions are the scalar reference; SIMD kernels convert many values at
 * once with F16C but must agree with these bit for bit. */
#ifndef LLMINT8_DTYPE_H
#define LLMINT8_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum DType { DT_F16, DT_BF16, DT_F32, DT_I8, DT_U8, DT_COUNT } DType;

/* Bytes per element. */
size_t dtype_size(DType t);
/* The safetensors spelling: "F16", "BF16", "F32", "I8", "U8". */
const char *dtype_name(DType t);
/* Parses a safetensors dtype string; returns 0 and sets *out, or -1 if unknown. */
int dtype_parse(const char *s, DType *out);

/* ---- finding values a checkpoint must not hold -------------------------------------------
 * Both scans look at the exponent field of each element with integer operations only (no
 * conversion to float), in blocks that compilers vectorise, so they run at memory speed.
 * `data` holds n elements of type t, aligned to the element size (safetensors tensors are:
 * st_open copies the rare unaligned one). I8 and U8 hold no such values: the answer is -1. */

/* Index of the first element that is NaN, +infinity or -infinity, or -1 if every one is a
 * finite number. */
int64_t dtype_first_nonfinite(DType t, const void *data, size_t n);

/* Index of the first element that float16 cannot hold: NaN, an infinity, or a finite value
 * that rounds to infinity in float16 (|x| >= 65520, beyond float16's largest 65504); -1 if
 * there is none. For F16 data this is dtype_first_nonfinite. This is the rule for every
 * float tensor that becomes float16 or int8: `convert` applies it to all of them, and so
 * must loading in an int8 mode, which quantizes the float16 copy (an infinite row absmax
 * would make the whole row 0). A caller reports the tensor, the index and the value
 * (dtype_load_f32 reads it). */
int64_t dtype_first_beyond_f16(DType t, const void *data, size_t n);

/* IEEE half -> float (exact). */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* float -> IEEE half, round to nearest even (what torch's .half() does). */
uint16_t f32_to_f16(float f);

/* bfloat16 -> float (exact: bf16 is the top half of a float). */
static inline float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Reads element i of a float-typed array (F16, BF16 or F32) as float. */
static inline float dtype_load_f32(DType t, const void *data, size_t i) {
    switch (t) {
    case DT_F16: return f16_to_f32(((const uint16_t *)data)[i]);
    case DT_BF16: return bf16_to_f32(((const uint16_t *)data)[i]);
    case DT_F32: { float f; memcpy(&f, (const char *)data + 4 * i, 4); return f; }
    default: return 0.0f;
    }
}

#endif
