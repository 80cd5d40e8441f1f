/* rng.h — the product's reproducible pseudo-random numbers: the same stream from the same
 * seed on every machine and compiler, so a seeded run (bench's synthetic weights, outliers'
 * control dimensions, generate --seed) repeats exactly. Not for anything secret.
 *
 * The state is one uint64_t the caller owns and seeds; every call advances it.
 *
 *  - splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
 *    OOPSLA 2014; the constants of Vigna's public-domain splitmix64.c): the state steps by
 *    the golden-ratio constant 0x9e3779b97f4a7c15 and the output is that sum mixed by two
 *    xor-shift-multiply rounds. Any seed, 0 included, is fine.
 *  - xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators,
 *    scrambled", ACM TOMS 2016): xorshift by 12, 25, 27, output multiplied by
 *    0x2545f4914f6cdd1d. The state must never be 0 (it would stay 0). The sampler uses it;
 *    its seeded outputs are part of the tests, so it stays as it was. */
#ifndef LLMINT8_RNG_H
#define LLMINT8_RNG_H

#include <math.h>
#include <stdint.h>

static inline uint64_t splitmix64_next(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1): the top 53 bits as a double's mantissa. */
static inline double splitmix64_unit(uint64_t *state) {
    return (double)(splitmix64_next(state) >> 11) * 0x1.0p-53;
}

/* Standard normal N(0, 1) by Box-Muller: sqrt(-2 ln u) cos(2 pi v) with u in (0, 1]. */
static inline double splitmix64_normal(uint64_t *state) {
    double u = 1.0 - splitmix64_unit(state), v = splitmix64_unit(state);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static inline uint64_t xorshift64star_next(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545f4914f6cdd1dull;
}

#endif
