/* cpu/cpu_int8_kernels.c — the int8 GEMM micro-kernels and the run-time choice between them.
 *
 * A kernel computes the exact int32 products of activation codes with weight codes (the
 * contracts are Int8TileFn, Int8Rows16Fn and Int8BlockFn in cpu_internal.h). cpu_int8.c
 * drives them over blocks of weight rows and does everything else (quantization, epilogue).
 * Four implementations, one chosen per process from the CPU's features: portable C and AVX2
 * (tiles of 4 tokens x R rows, 1 token x 4 rows, on row-major weights), AVX-512 VNNI (zmm
 * registers, on weights packed in panels of 16 rows) and AMX. The reasoning for exactness is
 * beside each one and in docs/QUANT.md. */
#include <cpuid.h>
#include <stdbool.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cpu_internal.h"

/* ---- portable C (any x86-64; LLMINT8_NO_SIMD=1) ---- */

static inline int32_t dot_portable(const int8_t *a, const int8_t *w, int64_t n) {
    int32_t acc = 0; /* exact: n <= QUANT_MAX_EXACT_K + padding of zeros */
    for (int64_t k = 0; k < n; k++) acc += (int32_t)a[k] * (int32_t)w[k];
    return acc;
}

static void portable_tile4(const int8_t *a, const uint8_t *a2, const int8_t *w, const int32_t *wsum,
                           int64_t Kp, int32_t *out, int64_t ld) {
    (void)a2, (void)wsum;
    for (int t = 0; t < INT8_TILE_T; t++)
        for (int r = 0; r < INT8_ROWS; r++) out[t * ld + r] = dot_portable(a + t * Kp, w + r * Kp, Kp);
}

static void portable_tile1(const int8_t *a, const uint8_t *a2, const int8_t *w, const int32_t *wsum,
                           int64_t Kp, int32_t *out, int64_t ld) {
    (void)a2, (void)wsum, (void)ld; /* one token: a single output row */
    for (int r = 0; r < INT8_ROWS; r++) out[r] = dot_portable(a, w + r * Kp, Kp);
}

/* ---- AVX2 ----
 * vpmaddubsw multiplies unsigned bytes by signed bytes and adds adjacent pairs into
 * int16 *with saturation*, so a plain a*b would be wrong whenever a pair sum leaves
 * int16. Instead we feed |a| (unsigned) and b with a's sign moved onto it (vpsignb):
 * each pair sum is then at most 2*128*127 = 32512 < 32767 — exact, for any a in
 * [-128,127] and b in [-127,127] (weights never hold -128: checked at load). vpmaddwd
 * with ones widens the int16 pairs to int32 exactly, and int32 sums are exact for
 * K <= QUANT_MAX_EXACT_K. */

__attribute__((target("avx2"))) static inline __m256i avx2_dot32(__m256i acc, __m256i a_abs,
                                                                 __m256i a, __m256i b) {
    __m256i pairs = _mm256_maddubs_epi16(a_abs, _mm256_sign_epi8(b, a));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

__attribute__((target("avx2"))) static inline int32_t avx2_hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

#define LOAD256(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))

/* 4 tokens x 2 rows: 8 accumulators, 2 weight vectors and one |a| fit the 16 ymm. */
__attribute__((target("avx2"))) static void avx2_tile4(const int8_t *a, const uint8_t *a_abs,
                                                       const int8_t *w, const int32_t *wsum,
                                                       int64_t Kp, int32_t *out, int64_t ld) {
    (void)wsum;
    __m256i acc[INT8_TILE_T][2];
    for (int t = 0; t < INT8_TILE_T; t++) acc[t][0] = acc[t][1] = _mm256_setzero_si256();
    for (int64_t k = 0; k < Kp; k += 32) {
        __m256i b0 = LOAD256(w + k), b1 = LOAD256(w + Kp + k);
        for (int t = 0; t < INT8_TILE_T; t++) {
            __m256i aa = LOAD256(a_abs + t * Kp + k), as = LOAD256(a + t * Kp + k);
            acc[t][0] = avx2_dot32(acc[t][0], aa, as, b0);
            acc[t][1] = avx2_dot32(acc[t][1], aa, as, b1);
        }
    }
    for (int t = 0; t < INT8_TILE_T; t++) {
        out[t * ld + 0] = avx2_hsum(acc[t][0]);
        out[t * ld + 1] = avx2_hsum(acc[t][1]);
    }
}

/* 1 token x 4 rows: the decode GEMV, streaming 4 weight rows per activation load. */
__attribute__((target("avx2"))) static void avx2_tile1(const int8_t *a, const uint8_t *a_abs,
                                                       const int8_t *w, const int32_t *wsum,
                                                       int64_t Kp, int32_t *out, int64_t ld) {
    (void)wsum, (void)ld; /* one token: a single output row */
    __m256i acc[INT8_ROWS];
    for (int r = 0; r < INT8_ROWS; r++) acc[r] = _mm256_setzero_si256();
    for (int64_t k = 0; k < Kp; k += 32) {
        __m256i aa = LOAD256(a_abs + k), as = LOAD256(a + k);
        for (int r = 0; r < INT8_ROWS; r++) acc[r] = avx2_dot32(acc[r], aa, as, LOAD256(w + r * Kp + k));
    }
    for (int r = 0; r < INT8_ROWS; r++) out[r] = avx2_hsum(acc[r]);
}

/* ---- AVX512-VNNI on zmm registers ----
 * vpdpbusd adds four u8*s8 products into each int32 lane without any saturation. With
 * activations shifted to unsigned, a + 128 in [1, 255], one instruction does 64
 * multiply-adds:  sum (a+128) b = sum a b + 128 sum b,  and the second term is the
 * precomputed row sum. Intermediate int32 wrap-around cancels in the subtraction.
 * Kp is a multiple of INT8_PAD_K = 64 bytes, one zmm. Two users: the VNNI kernel proper,
 * on weights packed in panels (vnni_block, below), and the AMX kernel's decoding, a GEMV on
 * row-major weights (vnni_gemv4). */
#define VNNI_TARGET "avx512vnni,avx512vl,avx512bw,avx512f,avx2"
#define LOAD512(p) _mm512_loadu_si512((const void *)(p))
#define PREFETCH_T1(p) _mm_prefetch((const char *)(p), _MM_HINT_T1)

__attribute__((target(VNNI_TARGET))) static inline int32_t vnni_finish(__m512i acc, int32_t wsum) {
    return (int32_t)((uint32_t)_mm512_reduce_add_epi32(acc) - 128u * (uint32_t)wsum);
}

/* 1 token x 4 row-major rows (the AMX kernel's decoding): two accumulators per row (even and
 * odd 64-byte steps), so that 8 independent dpbusd chains hide its latency while the weights
 * stream in. a holds the signed codes, made a + 128 here as a XOR 0x80 (AMX keeps no
 * offset copy). */
__attribute__((target(VNNI_TARGET))) static inline __attribute__((always_inline)) void
vnni_gemv4(const int8_t *a, const int8_t *w, const int32_t *wsum, int64_t Kp, int32_t *out) {
    const int8_t *x = a;
    const __m512i mask = _mm512_set1_epi8((char)0x80);
    __m512i acc[2][INT8_ROWS];
    for (int r = 0; r < INT8_ROWS; r++) acc[0][r] = acc[1][r] = _mm512_setzero_si512();
    int64_t k = 0;
    for (; k + 128 <= Kp; k += 128) {
        __m512i au0 = _mm512_xor_si512(LOAD512(x + k), mask), au1 = _mm512_xor_si512(LOAD512(x + k + 64), mask);
        for (int r = 0; r < INT8_ROWS; r++) {
            acc[0][r] = _mm512_dpbusd_epi32(acc[0][r], au0, LOAD512(w + r * Kp + k));
            acc[1][r] = _mm512_dpbusd_epi32(acc[1][r], au1, LOAD512(w + r * Kp + k + 64));
            PREFETCH_T1(w + (2 * INT8_ROWS + r) * Kp + k);
            PREFETCH_T1(w + (2 * INT8_ROWS + r) * Kp + k + 64);
        }
    }
    if (k < Kp) {
        __m512i au0 = _mm512_xor_si512(LOAD512(x + k), mask);
        for (int r = 0; r < INT8_ROWS; r++) acc[0][r] = _mm512_dpbusd_epi32(acc[0][r], au0, LOAD512(w + r * Kp + k));
    }
    /* int32 addition is exact (modulo 2^32, undone by the correction): any order gives the same sum */
    for (int r = 0; r < INT8_ROWS; r++) out[r] = vnni_finish(_mm512_add_epi32(acc[0][r], acc[1][r]), wsum[r]);
}

/* The same instruction on weights packed in panels (Int8BlockFn, cpu_internal.h): one zmm
 * load holds 4 bytes of k for 16 weight rows, and one 4-byte broadcast of a token's a + 128
 * meets all 16 at once, so each lane of an accumulator is one output's own sum and no
 * horizontal sums are needed. A tile is NT tokens x the 4 panels of a block (64 rows):
 * 4 NT accumulators, 4 weight vectors and one broadcast in the 32 zmm registers (NT <= 6).
 * Per 4 bytes of k it loads 4 x 64 bytes of weights and NT x 4 bytes of codes for 4 NT
 * instructions, about a third of the bytes per instruction of a 4 x 4 tile on row-major
 * weights (the kernel this one replaced), so it stays fed from L1 and L2 at two
 * instructions per cycle; the weights of a block are one sequential stream per panel
 * while the memory delivers them. */
enum { PANEL_PREFETCH = 4096 }; /* bytes ahead in each panel's stream, a few hundred cycles */

/* acc + the dot products of a (unsigned) and b (signed) per int32 lane: _mm512_dpbusd_epi32
 * written as the instruction itself. With the intrinsic, GCC 12 copies every accumulator
 * into a scratch register and back around each instruction once the tile holds more than a
 * few (65 register moves per 24 instructions in the 6-token tile, seen in objdump); tied
 * as an in-out operand here, each accumulator stays in its register. */
__attribute__((target(VNNI_TARGET))) static inline __attribute__((always_inline)) __m512i
dpbusd(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

__attribute__((target(VNNI_TARGET))) static inline __attribute__((always_inline)) void
vnni_panels(const uint8_t *a_u8, const int8_t *wp, const int32_t *wsum, int64_t Kp, int32_t *out, int64_t ld,
            const int NT, const int NP) {
    const int64_t panel = INT8_PANEL_N * Kp;
    __m512i acc[16][INT8_PANELS];
    for (int t = 0; t < NT; t++)
        for (int p = 0; p < NP; p++) acc[t][p] = _mm512_setzero_si512();
    for (int64_t k = 0; k < Kp; k += 4) {
        const int8_t *wk = wp + 16 * k; /* 4 bytes of k x 16 rows = 64 bytes per k step of 4 */
        __m512i b[INT8_PANELS];
        for (int p = 0; p < NP; p++) b[p] = LOAD512(wk + p * panel);
        for (int p = 0; p < NP; p++) PREFETCH_T1(wk + p * panel + PANEL_PREFETCH); /* a line per step */
        for (int t = 0; t < NT; t++) {
            int32_t a4;
            memcpy(&a4, a_u8 + t * Kp + k, sizeof a4);
            const __m512i au = _mm512_set1_epi32(a4);
            for (int p = 0; p < NP; p++) acc[t][p] = dpbusd(acc[t][p], au, b[p]);
        }
    }
    for (int p = 0; p < NP; p++) {
        const __m512i corr = _mm512_slli_epi32(LOAD512(wsum + 16 * p), 7); /* 128 wsum[r], modulo 2^32 */
        for (int t = 0; t < NT; t++)
            _mm512_storeu_si512((void *)(out + t * ld + 16 * p), _mm512_sub_epi32(acc[t][p], corr));
    }
}

typedef void PanelTileFn(const uint8_t *a_u8, const int8_t *wp, const int32_t *wsum, int64_t Kp, int32_t *out,
                         int64_t ld);

/* The tiles as functions: NT tokens x NP panels. */
#define PANEL_TILE(NT, NP)                                                                                     \
    __attribute__((target(VNNI_TARGET))) static void vnni_tile_##NT##x##NP(                                   \
        const uint8_t *a_u8, const int8_t *wp, const int32_t *wsum, int64_t Kp, int32_t *out, int64_t ld) {   \
        vnni_panels(a_u8, wp, wsum, Kp, out, ld, NT, NP);                                                      \
    }
PANEL_TILE(1, 4) PANEL_TILE(2, 4) PANEL_TILE(3, 4) PANEL_TILE(4, 4) PANEL_TILE(5, 4) PANEL_TILE(6, 4)
PANEL_TILE(4, 1) PANEL_TILE(5, 1) PANEL_TILE(6, 1) PANEL_TILE(7, 1) PANEL_TILE(8, 1) PANEL_TILE(9, 1)
PANEL_TILE(10, 1) PANEL_TILE(11, 1) PANEL_TILE(12, 1) PANEL_TILE(13, 1) PANEL_TILE(14, 1) PANEL_TILE(15, 1)
PANEL_TILE(16, 1)
#undef PANEL_TILE

/* nt tokens (any count; rows a_u8 + t Kp) x the 64 rows of one block, by the tile that
 * measured fastest (`bench --gemm-only`):
 *   - up to 3 tokens: all 4 panels at once (4 to 12 independent accumulators while the
 *     weights stream in from memory);
 *   - 4 to 16 (decoding a batch): one panel at a time against all the tokens, so each weight
 *     is read once, as the memory streams the block in; 16 tokens: 470 GOP/s per core
 *     against 404 for 6 x 4 tiles, whose three passes leave the memory idle in two;
 *   - more (a prompt's chunk: the arithmetic, not the memory, is the bound): 4 panels x 6
 *     tokens, the fewest loads per instruction, split evenly (16 + 1 tokens: 6 + 6 + 5). */
__attribute__((target(VNNI_TARGET))) static void vnni_block(const uint8_t *a_u8, int64_t nt, const int8_t *wp,
                                                            const int32_t *wsum, int64_t Kp, int32_t *out,
                                                            int64_t ld) {
    static PanelTileFn *const wide[7] = {NULL,          vnni_tile_1x4, vnni_tile_2x4, vnni_tile_3x4,
                                         vnni_tile_4x4, vnni_tile_5x4, vnni_tile_6x4};
    static PanelTileFn *const tall[17] = {
        NULL,          NULL,          NULL,          NULL,          vnni_tile_4x1,  vnni_tile_5x1,
        vnni_tile_6x1, vnni_tile_7x1, vnni_tile_8x1, vnni_tile_9x1, vnni_tile_10x1, vnni_tile_11x1,
        vnni_tile_12x1, vnni_tile_13x1, vnni_tile_14x1, vnni_tile_15x1, vnni_tile_16x1};
    if (nt <= 3) {
        wide[nt](a_u8, wp, wsum, Kp, out, ld);
        return;
    }
    if (nt <= 16) {
        for (int p = 0; p < INT8_PANELS; p++)
            tall[nt](a_u8, wp + p * INT8_PANEL_N * Kp, wsum + p * INT8_PANEL_N, Kp, out + p * INT8_PANEL_N, ld);
        return;
    }
    while (nt > 0) {
        const int64_t tiles = (nt + 5) / 6, n = (nt + tiles - 1) / tiles; /* 3 < n <= 6 */
        wide[n](a_u8, wp, wsum, Kp, out, ld);
        a_u8 += n * Kp, out += n * ld, nt -= n;
    }
}

/* ---- AMX (Sapphire Rapids and later) ----
 * TDPBSSD multiplies a tile of signed bytes A [16 rows x 64 bytes] by a tile B of signed
 * bytes laid out 4 k-values per int32 column [16 rows (k / 4) x 16 columns x 4] and adds
 * the exact int32 dot products into C [16 x 16 int32]: 16384 multiply-adds per
 * instruction. Here A is 16 weight rows straight from memory (stride Kp) and B is 16 tokens
 * of the packed activation copy (Int8A2), so C[r][t] = sum_k w[r][k] a[t][k]: signed x
 * signed, no offset, exact for K <= QUANT_MAX_EXACT_K like every kernel here. Up to four
 * C tiles (64 tokens) share each A load. The tile configuration is loaded and released
 * around every call, so no state outlives it. */
#define AMX_TARGET "amx-tile,amx-int8,avx512vnni,avx512vl,avx512bw,avx512f,avx2"

typedef struct AmxConfig {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} AmxConfig;

__attribute__((target(AMX_TARGET))) static void amx_rows16(const uint8_t *apack, int64_t nt, const int8_t *w,
                                                           int64_t Kp, int32_t *out, int64_t ld) {
    const int tiles = (int)((nt + INT8_AMX_T - 1) / INT8_AMX_T); /* 1 .. 4 */
    const int64_t tile_bytes = INT8_AMX_T * Kp;
    AmxConfig cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 6; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64; /* C0-C3, A (tmm4), B (tmm5) */
    _tile_loadconfig(&cfg);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t k = 0; k < Kp; k += 64) {
        const uint8_t *b = apack + k * INT8_AMX_T; /* slab k / 64 of the first token tile */
        _tile_loadd(4, w + k, Kp);
        _tile_loadd(5, b, 64);
        _tile_dpbssd(0, 4, 5);
        if (tiles > 1) {
            _tile_loadd(5, b + tile_bytes, 64);
            _tile_dpbssd(1, 4, 5);
        }
        if (tiles > 2) {
            _tile_loadd(5, b + 2 * tile_bytes, 64);
            _tile_dpbssd(2, 4, 5);
        }
        if (tiles > 3) {
            _tile_loadd(5, b + 3 * tile_bytes, 64);
            _tile_dpbssd(3, 4, 5);
        }
    }
    int32_t c[INT8_AMX_N * INT8_AMX_T];
    for (int j = 0; j < tiles; j++) {
        switch (j) {
        case 0: _tile_stored(0, c, 64); break;
        case 1: _tile_stored(1, c, 64); break;
        case 2: _tile_stored(2, c, 64); break;
        default: _tile_stored(3, c, 64); break;
        }
        for (int tt = 0; tt < INT8_AMX_T && j * INT8_AMX_T + tt < nt; tt++)
            for (int r = 0; r < INT8_AMX_N; r++) out[(j * INT8_AMX_T + tt) * ld + r] = c[r * INT8_AMX_T + tt];
    }
    _tile_release();
}

/* Decoding with the AMX kernel (one token: AMX would waste 15 of its 16 columns): the VNNI
 * GEMV, on the signed codes (the AMX kernel keeps no a + 128 copy). */
__attribute__((target(VNNI_TARGET))) static void amx_tile1(const int8_t *a, const uint8_t *a2, const int8_t *w,
                                                           const int32_t *wsum, int64_t Kp, int32_t *out,
                                                           int64_t ld) {
    (void)a2, (void)ld;
    vnni_gemv4(a, w, wsum, Kp, out);
}

/* ---- the choice ---- */

static const Int8Kernel KERNELS[] = {
    {"portable", INT8_ROWS, portable_tile4, portable_tile1, NULL, NULL, INT8_A2_NONE, false, false},
    {"avx2", 2, avx2_tile4, avx2_tile1, NULL, NULL, INT8_A2_ABS, true, false},
    {"avx512vnni", INT8_ROWS, NULL, NULL, NULL, vnni_block, INT8_A2_OFFSET, true, true},
    {"amx", INT8_ROWS, NULL, amx_tile1, amx_rows16, NULL, INT8_A2_AMX_PACK, true, true},
};
enum { KERNEL_PORTABLE, KERNEL_AVX2, KERNEL_VNNI, KERNEL_AMX, KERNEL_COUNT };

/* AMX needs the CPU's AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and 25) and the
 * kernel's permission to use the tile registers (Linux 5.16+: arch_prctl
 * ARCH_REQ_XCOMP_PERM for XTILEDATA, once per process). */
static bool amx_usable(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d >> 24 & 1) || !(d >> 25 & 1)) return false;
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return false;
#endif
}

static bool kernel_supported(int k) {
    __builtin_cpu_init();
    switch (k) {
    case KERNEL_PORTABLE: return true;
    case KERNEL_AVX2: return __builtin_cpu_supports("avx2");
    case KERNEL_VNNI:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512vnni");
    case KERNEL_AMX: {
        static int amx = -1; /* asked once: the answer does not change */
        if (__atomic_load_n(&amx, __ATOMIC_ACQUIRE) < 0) __atomic_store_n(&amx, amx_usable(), __ATOMIC_RELEASE);
        return kernel_supported(KERNEL_VNNI) && __atomic_load_n(&amx, __ATOMIC_ACQUIRE) == 1;
    }
    default: return false;
    }
}

static const Int8Kernel *active_kernel;
static pthread_once_t kernel_once = PTHREAD_ONCE_INIT;

/* Chosen once: the best the CPU runs, unless LLMINT8_NO_SIMD is set (to anything but
 * "" or "0"), the switch shared with cpu_gemm.c. */
static void kernel_pick(void) {
    const char *no_simd = getenv("LLMINT8_NO_SIMD");
    int k = KERNEL_PORTABLE;
    if (!(no_simd && *no_simd && strcmp(no_simd, "0") != 0)) {
        if (kernel_supported(KERNEL_AMX)) k = KERNEL_AMX;
        else if (kernel_supported(KERNEL_VNNI)) k = KERNEL_VNNI;
        else if (kernel_supported(KERNEL_AVX2)) k = KERNEL_AVX2;
    }
    __atomic_store_n(&active_kernel, &KERNELS[k], __ATOMIC_RELEASE);
}

const Int8Kernel *cpu_int8_active_kernel(void) {
    pthread_once(&kernel_once, kernel_pick);
    return __atomic_load_n(&active_kernel, __ATOMIC_ACQUIRE);
}

const char *cpu_int8_kernel(void) { return cpu_int8_active_kernel()->name; }

int cpu_int8_use_kernel(const char *name) {
    cpu_int8_active_kernel(); /* the first choice must not overwrite this one later */
    for (int k = 0; k < KERNEL_COUNT; k++) {
        if (strcmp(name, KERNELS[k].name) != 0) continue;
        if (!kernel_supported(k)) return -1;
        __atomic_store_n(&active_kernel, &KERNELS[k], __ATOMIC_RELEASE);
        return 0;
    }
    return -1;
}
