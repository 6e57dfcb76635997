/* bench_util.h - the clock and the medians the benchmarks share. */
#ifndef LMOE_BENCH_UTIL_H
#define LMOE_BENCH_UTIL_H

#include <stdlib.h>
#include <time.h>

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v (n > 0 values; v is sorted in place). */
static inline double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Seconds one fn(arg) takes: the median of `repeats` (1..100) repeats, each calling it again and
 * again for at least min_seconds and dividing by the number of calls. */
static inline double bench_seconds_per_call(void (*fn)(void *), void *arg, int repeats,
                                            double min_seconds) {
    double per_call[100];
    if (repeats > 100) repeats = 100;
    for (int r = 0; r < repeats; r++) {
        size_t calls = 0;
        double t0 = bench_now(), elapsed;
        do {
            fn(arg);
            calls++;
            elapsed = bench_now() - t0;
        } while (elapsed < min_seconds);
        per_call[r] = elapsed / (double)calls;
    }
    return bench_median(per_call, repeats);
}

#endif
