/* moefy_rng.h - the seeded random numbers of MoE construction: splitmix64, so a seed gives the
 * same partition and gate on every machine and for any thread count (nothing here is shared
 * between threads). Header only. */
#ifndef LMOE_MOEFY_RNG_H
#define LMOE_MOEFY_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct moefy_rng {
    uint64_t state;
} moefy_rng;

/* A generator for one purpose (stream) of one layer: independent streams from one user seed. */
static inline moefy_rng moefy_rng_make(uint64_t seed, uint64_t layer, uint64_t stream) {
    moefy_rng r = {seed ^ (layer * 0x9E3779B97F4A7C15ull) ^ (stream * 0xD1B54A32D192ED03ull)};
    return r;
}

static inline uint64_t moefy_rng_next(moefy_rng *r) {
    uint64_t z = (r->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) without modulo bias (n > 0). */
static inline uint64_t moefy_rng_below(moefy_rng *r, uint64_t n) {
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t v;
    do v = moefy_rng_next(r);
    while (v >= limit);
    return v % n;
}

/* Uniform in [0, 1) with 53 bits. */
static inline double moefy_rng_uniform(moefy_rng *r) {
    return (double)(moefy_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Standard normal (Box-Muller; one value per call, the second is dropped for simplicity). */
static inline double moefy_rng_normal(moefy_rng *r) {
    double u1 = moefy_rng_uniform(r), u2 = moefy_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
