/* tools/cpu_peak.c — how many 512-bit vpdpbusd (int8) and vfmadd231ps (float) instructions
 * one core issues per second, with 12 independent accumulators (no dependency stalls, no
 * memory): the ceiling the int8 and fp16 GEMM kernels of src/cpu/ are measured against in
 * docs/PERFORMANCE.md. Needs AVX512-VNNI.
 *
 *   cc -O2 -march=native tools/cpu_peak.c -o /tmp/cpu_peak && /tmp/cpu_peak
 *
 * One vpdpbusd on zmm is 64 multiply-adds (128 int8 operations); one vfmadd231ps on zmm is
 * 16 (32 float operations). */
#include <immintrin.h>
#include <stdbool.h>
#include <stdio.h>
#include <time.h>

enum { CHAINS = 12 };
static const long ROUNDS = 100000000;

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Twelve accumulators in named variables (an array would be stored back every round). The
 * asm operands are only registers, so one integer vector type serves both instructions. */
#define TWELVE(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
#define ROUNDS_OF(INSN)                                                                \
    for (long r = 0; r < ROUNDS; r++) {                                               \
        TWELVE(STEP_##INSN)                                                           \
    }
#define STEP_vpdpbusd(i) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc##i) : "v"(a), "v"(b));
#define STEP_vfmadd231ps(i) __asm__("vfmadd231ps %2, %1, %0" : "+v"(acc##i) : "v"(a), "v"(b));

/* Instructions per second of vpdpbusd (fma false: a, b bytes 3 and 5) or vfmadd231ps (fma
 * true: a = 1.0f, b = 1e-9f, so the sums stay normal numbers). */
static double per_second(bool fma) {
    const __m512i a = fma ? _mm512_castps_si512(_mm512_set1_ps(1.0f)) : _mm512_set1_epi8(3);
    const __m512i b = fma ? _mm512_castps_si512(_mm512_set1_ps(1e-9f)) : _mm512_set1_epi8(5);
#define DECL(i) __m512i acc##i = fma ? _mm512_castps_si512(_mm512_set1_ps((float)i)) : _mm512_set1_epi32(i);
    TWELVE(DECL)
    double t = seconds();
    if (fma) ROUNDS_OF(vfmadd231ps)
    else ROUNDS_OF(vpdpbusd)
    t = seconds() - t;
    __m512i s = _mm512_setzero_si512(); /* the results are used: nothing can be left out */
#define FOLD(i) s = _mm512_xor_si512(s, acc##i);
    TWELVE(FOLD)
    printf("  (checksum %d)\n", _mm512_reduce_add_epi32(s));
    return (double)ROUNDS * CHAINS / t;
}

int main(void) {
    const double vnni = per_second(false);
    printf("vpdpbusd zmm: %.2f G instructions/s = %.0f int8 GOP/s per core\n", vnni / 1e9, vnni * 128 / 1e9);
    const double fma = per_second(true);
    printf("vfmadd231ps zmm: %.2f G instructions/s = %.0f float GFLOP/s per core\n", fma / 1e9, fma * 32 / 1e9);
    return 0;
}
