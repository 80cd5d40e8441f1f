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

int main(void) {
    __m512i acc[CHAINS];
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_epi32(i);
    double t = seconds();
    for (long r = 0; r < ROUNDS; r++)
        for (int i = 0; i < CHAINS; i++) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc[i]) : "v"(a), "v"(b));
    t = seconds() - t;
    __m512i s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = _mm512_add_epi32(s, acc[i]);
    const double vnni = (double)ROUNDS * CHAINS / t;
    printf("vpdpbusd zmm: %.2f G instructions/s = %.0f int8 GOP/s per core (checksum %d)\n", vnni / 1e9,
           vnni * 128 / 1e9, _mm512_reduce_add_epi32(s));

    __m512 f[CHAINS];
    const __m512 x = _mm512_set1_ps(1.0f), y = _mm512_set1_ps(1e-9f);
    for (int i = 0; i < CHAINS; i++) f[i] = _mm512_set1_ps((float)i);
    t = seconds();
    for (long r = 0; r < ROUNDS; r++)
        for (int i = 0; i < CHAINS; i++) __asm__("vfmadd231ps %2, %1, %0" : "+v"(f[i]) : "v"(x), "v"(y));
    t = seconds() - t;
    __m512 fs = f[0];
    for (int i = 1; i < CHAINS; i++) fs = _mm512_add_ps(fs, f[i]);
    const double fma = (double)ROUNDS * CHAINS / t;
    printf("vfmadd231ps zmm: %.2f G instructions/s = %.0f float GFLOP/s per core (checksum %.1f)\n", fma / 1e9,
           fma * 32 / 1e9, (double)_mm512_reduce_add_ps(fs));
    return 0;
}
