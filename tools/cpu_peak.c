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
#include <stdio.h>
#include <time.h>

enum { CHAINS = 12 };
static const long ROUNDS = 100000000;

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Twelve accumulators in named variables (an array would be stored back every round). */
#define TWELVE(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)

static double vnni_per_second(void) {
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
#define DECL(i) __m512i acc##i = _mm512_set1_epi32(i);
    TWELVE(DECL)
    double t = seconds();
    for (long r = 0; r < ROUNDS; r++) {
#define DP(i) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc##i) : "v"(a), "v"(b));
        TWELVE(DP)
    }
    t = seconds() - t;
    __m512i s = _mm512_setzero_si512();
#define SUMI(i) s = _mm512_add_epi32(s, acc##i);
    TWELVE(SUMI)
    printf("  (checksum %d)\n", _mm512_reduce_add_epi32(s));
    return (double)ROUNDS * CHAINS / t;
}

static double fma_per_second(void) {
    const __m512 x = _mm512_set1_ps(1.0f), y = _mm512_set1_ps(1e-9f);
#define DECLF(i) __m512 f##i = _mm512_set1_ps((float)i);
    TWELVE(DECLF)
    double t = seconds();
    for (long r = 0; r < ROUNDS; r++) {
#define FMA(i) __asm__("vfmadd231ps %2, %1, %0" : "+v"(f##i) : "v"(x), "v"(y));
        TWELVE(FMA)
    }
    t = seconds() - t;
    __m512 s = _mm512_setzero_ps();
#define SUMF(i) s = _mm512_add_ps(s, f##i);
    TWELVE(SUMF)
    printf("  (checksum %.1f)\n", (double)_mm512_reduce_add_ps(s));
    return (double)ROUNDS * CHAINS / t;
}

int main(void) {
    const double vnni = vnni_per_second();
    printf("vpdpbusd zmm: %.2f G instructions/s = %.0f int8 GOP/s per core\n", vnni / 1e9, vnni * 128 / 1e9);
    const double fma = fma_per_second();
    printf("vfmadd231ps zmm: %.2f G instructions/s = %.0f float GFLOP/s per core\n", fma / 1e9, fma * 32 / 1e9);
    return 0;
}
