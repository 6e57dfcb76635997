/* bench_kernels - matrix-vector speed of every kernel table this CPU runs, one thread.
 *
 *   bench_kernels [N_ROWS] [N_COLS] [REPEATS]        (default 4096 4096 5)
 *
 * For f32, f16 and bf16 weights: W (N_ROWS, N_COLS) @ x, all rows, timed over repeated passes
 * (each repeat at least 0.2 s; the median repeat is reported). GB/s counts weight bytes only,
 * the figure decode is limited by (x and y are small and stay in cache). A 4096 x 4096 matrix
 * (64 MiB in f32) does not fit in any cache, so it measures memory bandwidth per core; a second,
 * cache-resident size (256 x 1024) shows how fast the kernel itself is. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arch/kernels.h"
#include "quant.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef enum weight_type { W_F32, W_F16, W_BF16 } weight_type;
static const char *const type_names[] = {"f32", "f16", "bf16"};

typedef struct matrix {
    size_t n_rows, n_cols;
    float *f32;     /* (n_rows, n_cols) */
    uint16_t *f16;  /* the same values as IEEE half */
    uint16_t *bf16; /* and as bfloat16 */
} matrix;

static void run(const lmoe_kernels *k, weight_type type, const matrix *m, const float *x,
                float *y) {
    if (type == W_F16)
        k->matvec_f16(m->f16, x, y, m->n_cols, 0, m->n_rows);
    else if (type == W_BF16)
        k->matvec_bf16(m->bf16, x, y, m->n_cols, 0, m->n_rows);
    else
        k->matvec_f32(m->f32, x, y, m->n_cols, 0, m->n_rows);
}

/* Median seconds per matvec over `repeats` repeats of at least 0.2 s each. */
static double time_matvec(const lmoe_kernels *k, weight_type type, const matrix *m,
                          const float *x, float *y, int repeats) {
    double per_call[100];
    run(k, type, m, x, y); /* warm-up: page faults, caches */
    for (int r = 0; r < repeats; r++) {
        size_t calls = 0;
        double t0 = now_s(), elapsed;
        do {
            run(k, type, m, x, y);
            calls++;
            elapsed = now_s() - t0;
        } while (elapsed < 0.2);
        per_call[r] = elapsed / (double)calls;
    }
    qsort(per_call, (size_t)repeats, sizeof *per_call, cmp_double);
    return per_call[repeats / 2];
}

static int matrix_init(matrix *m, size_t n_rows, size_t n_cols) {
    size_t n = n_rows * n_cols;
    m->n_rows = n_rows, m->n_cols = n_cols;
    m->f32 = malloc(n * sizeof *m->f32);
    m->f16 = malloc(n * sizeof *m->f16);
    m->bf16 = malloc(n * sizeof *m->bf16);
    if (!m->f32 || !m->f16 || !m->bf16) return -1;
    uint64_t state = 0x243F6A8885A308D3ull;
    for (size_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        float v = (float)((double)(state >> 40) / 16777216.0 * 2.0 - 1.0);
        m->f32[i] = v;
        m->f16[i] = lmoe_f32_to_f16(v);
        m->bf16[i] = lmoe_f32_to_bf16(v);
    }
    return 0;
}

static void matrix_free(matrix *m) {
    free(m->f32);
    free(m->f16);
    free(m->bf16);
}

/* One table of results: every table this CPU runs x every weight type. */
static void bench_size(size_t n_rows, size_t n_cols, int repeats) {
    matrix m;
    float *x = malloc(n_cols * sizeof *x), *y = malloc(n_rows * sizeof *y);
    if (matrix_init(&m, n_rows, n_cols) != 0 || !x || !y) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    for (size_t j = 0; j < n_cols; j++) x[j] = (float)(j % 17) * 0.0625f - 0.5f;
    printf("matvec %zu x %zu, 1 thread (median of %d)\n", n_rows, n_cols, repeats);
    printf("  %-8s %-5s %10s %9s %9s %8s\n", "table", "type", "MiB", "ms/call", "GB/s", "GFLOP/s");
    for (const char *const *name = lmoe_kernels_compiled(); *name; name++) {
        const lmoe_kernels *k = lmoe_kernels_by_name(*name);
        if (k == NULL) {
            printf("  %-8s (this CPU cannot run it: skipped)\n", *name);
            continue;
        }
        for (int type = W_F32; type <= W_BF16; type++) {
            double s = time_matvec(k, (weight_type)type, &m, x, y, repeats);
            double bytes = (double)(n_rows * n_cols) * (type == W_F32 ? 4.0 : 2.0);
            printf("  %-8s %-5s %10.1f %9.3f %9.2f %8.2f\n", k->name, type_names[type],
                   bytes / 1048576.0, s * 1e3, bytes / s * 1e-9,
                   2.0 * (double)(n_rows * n_cols) / s * 1e-9);
        }
    }
    matrix_free(&m);
    free(x);
    free(y);
}

int main(int argc, char **argv) {
    size_t n_rows = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 4096;
    size_t n_cols = argc > 2 ? (size_t)strtoull(argv[2], NULL, 10) : 4096;
    int repeats = argc > 3 ? atoi(argv[3]) : 5;
    if (n_rows == 0 || n_cols == 0 || repeats < 1 || repeats > 100) {
        fprintf(stderr, "usage: bench_kernels [N_ROWS] [N_COLS] [REPEATS 1..100]\n");
        return 2;
    }
    bench_size(n_rows, n_cols, repeats);
    if (argc <= 2) bench_size(256, 1024, repeats); /* 1 MiB in f32: cache-resident */
    return 0;
}
