/* bench_kernels - matrix-vector speed of every kernel table this CPU runs, one thread.
 *
 *   bench_kernels [N_ROWS] [N_COLS] [REPEATS]        (default 4096 4096 5)
 *
 * For f32, f16, bf16, Q8_0, Q4_0, Q8_0_R16 and Q4_0_R16 (Q8_0 / Q4_0 with 16 rows interleaved;
 * N_ROWS a multiple of 16) weights: W (N_ROWS, N_COLS) @ x, all rows, timed over
 * repeated passes (each repeat at least 0.2 s; the median repeat is reported). GB/s counts weight
 * bytes only (for Q8_0 / Q4_0 the blocks, scales included: 34 / 18 bytes per 32 weights), the
 * figure decode is limited by (x and y are small and stay in cache); "of f32" is that figure over
 * the same table's f32 GB/s, the memory bandwidth one core reaches. The quantised products take x
 * as Q8_0 blocks (quantised once, outside the timing; the quantize_q8_0 line times that step). A
 * 4096 x 4096 matrix (64 MiB in f32) does not fit in any cache, so it measures memory bandwidth
 * per core; a second, cache-resident size (256 x 1024) shows how fast the kernel itself is.
 * N_COLS must be a multiple of 32 for the quantised types (otherwise they are skipped).
 *
 * Then the batched (prefill) products: W (N_ROWS, N_COLS) in each quantised type times 8, 32 and 128
 * tokens, with each table's gemm kernel where it has one and, for comparison, its matvec token by
 * token over blocks of 16 rows (what the forward pass does without a gemm kernel); GOP/s counts
 * 2 ops per multiply-add, to set against llamamoe-bench's measured int8 peak.
 *
 * Last, attention (kernels.h's attention field): one head of 128 dimensions over a 512-token
 * prompt, queries in blocks of 16 at positions 0..511 as prefill calls it, keys and values in the
 * cache's head-major layout; GFLOP/s counts the scores and the weighted sums (2 x 2 x 131,328 x
 * 128 flops), against the f32 FMA peak. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arch/kernels.h"
#include "bench_util.h"
#include "quant.h"



typedef enum weight_type {
    W_F32, W_F16, W_BF16, W_Q8_0, W_Q4_0, W_Q8_0_R16, W_Q4_0_R16, N_WEIGHT_TYPES
} weight_type;
static const char *const type_names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q8_0_r16",
                                         "q4_0_r16"};

typedef struct matrix {
    size_t n_rows, n_cols;
    float *f32;     /* (n_rows, n_cols) */
    uint16_t *f16;  /* the same values as IEEE half */
    uint16_t *bf16; /* and as bfloat16 */
    block_q8_0 *q8; /* and as Q8_0 / Q4_0 blocks (NULL when n_cols is not a multiple of 32) */
    block_q4_0 *q4;
    block_q8_0_r16 *q8r; /* and as Q8_0_R16 / Q4_0_R16 (NULL unless n_rows is also a multiple */
    block_q4_0_r16 *q4r; /* of 16) */
    block_q8_0 *x_q8; /* x quantised, for the Q8_0 / Q4_0 products */
} matrix;

/* Bytes of weights one matvec reads. */
static double weight_bytes(const matrix *m, weight_type type) {
    double n = (double)(m->n_rows * m->n_cols);
    switch (type) {
    case W_F32: return 4.0 * n;
    case W_F16:
    case W_BF16: return 2.0 * n;
    case W_Q8_0:
    case W_Q8_0_R16: return n / LMOE_QK * (double)sizeof(block_q8_0);
    default: return n / LMOE_QK * (double)sizeof(block_q4_0);
    }
}

typedef void (*quant_matvec_fn)(const void *, const void *, float *, size_t, size_t, size_t);

/* The weights, matvec and batched kernel of a quantised type. */
static const void *quant_weights(const matrix *m, weight_type type) {
    const void *w[] = {m->q8, m->q4, m->q8r, m->q4r};
    return w[type - W_Q8_0];
}
static quant_matvec_fn quant_matvec(const lmoe_kernels *k, weight_type type) {
    quant_matvec_fn f[] = {k->matvec_q8_0, k->matvec_q4_0, k->matvec_q8_0_r16, k->matvec_q4_0_r16};
    return f[type - W_Q8_0];
}
static lmoe_gemm_fn quant_gemm(const lmoe_kernels *k, weight_type type) {
    lmoe_gemm_fn f[] = {k->gemm_q8_0, k->gemm_q4_0, k->gemm_q8_0_r16, k->gemm_q4_0_r16};
    return f[type - W_Q8_0];
}

/* One timed call: a matvec of every row of m. */
typedef struct matvec_call {
    const lmoe_kernels *k;
    weight_type type;
    const matrix *m;
    const float *x;
    float *y;
} matvec_call;

static void run_matvec(void *arg) {
    const matvec_call *c = arg;
    const matrix *m = c->m;
    if (c->type >= W_Q8_0)
        quant_matvec(c->k, c->type)(quant_weights(m, c->type), m->x_q8, c->y, m->n_cols, 0,
                                    m->n_rows);
    else if (c->type == W_F16)
        c->k->matvec_f16(m->f16, c->x, c->y, m->n_cols, 0, m->n_rows);
    else if (c->type == W_BF16)
        c->k->matvec_bf16(m->bf16, c->x, c->y, m->n_cols, 0, m->n_rows);
    else
        c->k->matvec_f32(m->f32, c->x, c->y, m->n_cols, 0, m->n_rows);
}

/* Median seconds per matvec over `repeats` repeats of at least 0.2 s each. */
static double time_matvec(const lmoe_kernels *k, weight_type type, const matrix *m,
                          const float *x, float *y, int repeats) {
    matvec_call c = {k, type, m, x, y};
    run_matvec(&c); /* warm-up: page faults, caches */
    return bench_seconds_per_call(run_matvec, &c, repeats, 0.2);
}

static int matrix_init(matrix *m, size_t n_rows, size_t n_cols) {
    size_t n = n_rows * n_cols;
    m->n_rows = n_rows, m->n_cols = n_cols;
    m->f32 = malloc(n * sizeof *m->f32);
    m->f16 = malloc(n * sizeof *m->f16);
    m->bf16 = malloc(n * sizeof *m->bf16);
    m->q8 = NULL, m->q4 = NULL, m->q8r = NULL, m->q4r = NULL, m->x_q8 = NULL;
    if (!m->f32 || !m->f16 || !m->bf16) return -1;
    uint64_t state = 0x243F6A8885A308D3ull;
    for (size_t i = 0; i < n; i++) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        float v = (float)((double)(state >> 40) / 16777216.0 * 2.0 - 1.0);
        m->f32[i] = v;
        m->f16[i] = lmoe_f32_to_f16(v);
        m->bf16[i] = lmoe_f32_to_bf16(v);
    }
    if (n_cols % LMOE_QK == 0) {
        m->q8 = malloc(n / LMOE_QK * sizeof *m->q8);
        m->q4 = malloc(n / LMOE_QK * sizeof *m->q4);
        m->x_q8 = malloc(n_cols / LMOE_QK * sizeof *m->x_q8);
        if (!m->q8 || !m->q4 || !m->x_q8) return -1;
        lmoe_quantize_row_q8_0(m->f32, m->q8, n);
        lmoe_quantize_row_q4_0(m->f32, m->q4, n);
    }
    if (m->q4 && n_rows % LMOE_R16_ROWS == 0) {
        size_t n_blocks = n_cols / LMOE_QK;
        m->q8r = malloc(n / LMOE_QK * sizeof(block_q8_0));
        m->q4r = malloc(n / LMOE_QK * sizeof(block_q4_0));
        if (!m->q8r || !m->q4r) return -1;
        for (size_t g = 0; g < n_rows / LMOE_R16_ROWS; g++) {
            lmoe_q8_0_to_r16(m->q8 + g * LMOE_R16_ROWS * n_blocks, n_blocks, n_blocks,
                             m->q8r + g * n_blocks);
            lmoe_q4_0_to_r16(m->q4 + g * LMOE_R16_ROWS * n_blocks, n_blocks, n_blocks,
                             m->q4r + g * n_blocks);
        }
    }
    return 0;
}

static void matrix_free(matrix *m) {
    free(m->f32);
    free(m->f16);
    free(m->bf16);
    free(m->q8);
    free(m->q4);
    free(m->q8r);
    free(m->q4r);
    free(m->x_q8);
}

typedef struct quantize_call {
    const lmoe_kernels *k;
    const float *x;
    block_q8_0 *out;
    size_t n;
} quantize_call;

static void run_quantize(void *arg) {
    const quantize_call *c = arg;
    c->k->quantize_q8_0(c->x, c->out, c->n);
}

/* Median seconds per quantize_q8_0 of x (n_cols floats). */
static double time_quantize(const lmoe_kernels *k, const float *x, block_q8_0 *out, size_t n,
                            int repeats) {
    quantize_call c = {k, x, out, n};
    return bench_seconds_per_call(run_quantize, &c, repeats, 0.05);
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
    if (m.x_q8) lmoe_kernels_generic()->quantize_q8_0(x, m.x_q8, n_cols);
    printf("  %-10s %-8s %9s %9s %8s %8s %7s\n", "table", "type", "MiB", "ms/call", "GB/s",
           "GFLOP/s", "of f32");
    for (const char *const *name = lmoe_kernels_compiled(); *name; name++) {
        const lmoe_kernels *k = lmoe_kernels_by_name(*name);
        if (k == NULL) {
            printf("  %-10s (this CPU cannot run it: skipped)\n", *name);
            continue;
        }
        double f32_gbs = 0.0;
        for (int type = W_F32; type < N_WEIGHT_TYPES; type++) {
            if (type >= W_Q8_0 && m.q8 == NULL) continue;
            if (type >= W_Q8_0_R16 && m.q4r == NULL) continue;
            double s = time_matvec(k, (weight_type)type, &m, x, y, repeats);
            double bytes = weight_bytes(&m, (weight_type)type), gbs = bytes / s * 1e-9;
            if (type == W_F32) f32_gbs = gbs;
            printf("  %-10s %-8s %9.1f %9.3f %8.2f %8.2f %6.0f%%\n", k->name, type_names[type],
                   bytes / 1048576.0, s * 1e3, gbs, 2.0 * (double)(n_rows * n_cols) / s * 1e-9,
                   100.0 * gbs / f32_gbs);
        }
        if (m.x_q8) {
            double s = time_quantize(k, x, m.x_q8, n_cols, repeats);
            printf("  %-10s quantize_q8_0 of x: %.2f us (%.2f GB/s of f32 read)\n", k->name,
                   s * 1e6, 4.0 * (double)n_cols / s * 1e-9);
        }
    }
    matrix_free(&m);
    free(x);
    free(y);
}

/* One batched product over all rows: gemm, or matvec per token in 16-row blocks. */
typedef struct batched_call {
    const lmoe_kernels *k;
    weight_type type; /* a quantised one */
    int use_gemm;
    const matrix *m;
    const lmoe_q8_batch *xb; /* x packed for gemm */
    const block_q8_0 *xq;    /* the same tokens' blocks, for matvec */
    float *y;
    void *scratch;
} batched_call;

static void run_batched(void *arg) {
    const batched_call *c = arg;
    const lmoe_kernels *k = c->k;
    const matrix *m = c->m;
    const void *w = quant_weights(m, c->type);
    size_t n_blocks = m->n_cols / LMOE_QK;
    if (c->use_gemm) {
        quant_gemm(k, c->type)(w, c->xb, c->y, m->n_rows, m->n_cols, 0, m->n_rows, c->scratch);
        return;
    }
    quant_matvec_fn matvec = quant_matvec(k, c->type);
    for (size_t r0 = 0; r0 < m->n_rows; r0 += 16) {
        size_t r1 = r0 + 16 < m->n_rows ? r0 + 16 : m->n_rows;
        for (size_t t = 0; t < c->xb->n_tokens; t++)
            matvec(w, c->xq + t * n_blocks, c->y + t * m->n_rows, m->n_cols, r0, r1);
    }
}

static double time_batched(const lmoe_kernels *k, weight_type type, const matrix *m, int use_gemm,
                           const lmoe_q8_batch *xb, const block_q8_0 *xq, float *y, void *scratch,
                           int repeats) {
    batched_call c = {k, type, use_gemm, m, xb, xq, y, scratch};
    return bench_seconds_per_call(run_batched, &c, repeats, 0.2);
}

static void bench_batched(size_t n_rows, size_t n_cols, int repeats) {
    enum { MAX_TOKENS = 128 };
    static const size_t token_counts[] = {8, 32, MAX_TOKENS};
    matrix m;
    size_t n_blocks = n_cols / LMOE_QK;
    float *x = malloc(n_cols * MAX_TOKENS * sizeof *x), *y = malloc(n_rows * MAX_TOKENS * sizeof *y);
    block_q8_0 *xq = malloc(n_blocks * MAX_TOKENS * sizeof *xq);
    void *scratch = aligned_alloc(64, LMOE_GEMM_SCRATCH_BYTES(n_cols));
    if (matrix_init(&m, n_rows, n_cols) != 0 || !x || !y || !xq || !scratch) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    for (size_t j = 0; j < n_cols * MAX_TOKENS; j++) x[j] = (float)(j % 23) * 0.0625f - 0.7f;
    lmoe_quantize_row_q8_0(x, xq, n_cols * MAX_TOKENS);
    printf("batched %zu x %zu, 1 thread (median of %d): GOP/s (2 per multiply-add)\n", n_rows,
           n_cols, repeats);
    printf("  %-10s %-8s %7s %12s %16s %8s\n", "table", "type", "tokens", "gemm GOP/s",
           "matvec/tok GOP/s", "ratio");
    for (const char *const *name = lmoe_kernels_compiled(); *name; name++) {
        const lmoe_kernels *k = lmoe_kernels_by_name(*name);
        if (k == NULL) continue;
        /* x in the table's packed layout, for its batched kernels (packing not timed: the
         * forward pass does it while quantising) */
        void *packed = NULL;
        if (k->gemm_pack_token) {
            packed = aligned_alloc(64, (k->gemm_x_bytes(MAX_TOKENS, n_blocks) + 63) / 64 * 64);
            if (!packed) exit(1);
            for (size_t t = 0; t < MAX_TOKENS; t++)
                k->gemm_pack_token(xq + t * n_blocks, t, n_blocks, packed);
        }
        for (int type = W_Q8_0; type < N_WEIGHT_TYPES; type++) {
            if (type >= W_Q8_0_R16 && m.q4r == NULL) continue;
            for (size_t i = 0; i < sizeof token_counts / sizeof *token_counts; i++) {
                lmoe_q8_batch xb = {packed, token_counts[i], n_blocks};
                double ops = 2.0 * (double)(n_rows * n_cols * token_counts[i]);
                double s_mv = time_batched(k, (weight_type)type, &m, 0, &xb, xq, y, scratch, repeats);
                if (k->gemm_q8_0) {
                    double s_g = time_batched(k, (weight_type)type, &m, 1, &xb, xq, y, scratch, repeats);
                    printf("  %-10s %-8s %7zu %12.1f %16.1f %7.2fx\n", k->name, type_names[type],
                           token_counts[i], ops / s_g * 1e-9, ops / s_mv * 1e-9, s_mv / s_g);
                } else {
                    printf("  %-10s %-8s %7zu %12s %16.1f\n", k->name, type_names[type],
                           token_counts[i], "-", ops / s_mv * 1e-9);
                }
            }
        }
        free(packed);
    }
    matrix_free(&m);
    free(x), free(y), free(xq), free(scratch);
}

enum { ATT_N = 512, ATT_HD = 128, ATT_BLOCK = 16 };

/* One timed call: causal attention of one 128-wide head over 512 positions, queries in blocks of
 * 16 as prefill hands them to the kernel. */
typedef struct attention_call {
    const lmoe_kernels *k;
    const float *q, *keys, *values;
    float *out, *scores;
} attention_call;

static void run_attention(void *arg) {
    const attention_call *c = arg;
    for (size_t t = 0; t < ATT_N; t += ATT_BLOCK) {
        const float *q = c->q + t * ATT_HD;
        float *o = c->out + t * ATT_HD;
        if (c->k->attention)
            c->k->attention(q, ATT_HD, c->keys, c->values, ATT_HD, o, ATT_HD, ATT_HD, t, ATT_BLOCK,
                            c->scores);
        else
            lmoe_attention_composed(c->k, q, ATT_HD, c->keys, c->values, ATT_HD, o, ATT_HD, ATT_HD,
                                    t, ATT_BLOCK, c->scores);
    }
}

static void bench_attention(int repeats) {
    float *q = malloc((size_t)ATT_N * ATT_HD * sizeof *q), *k = malloc((size_t)ATT_N * ATT_HD * sizeof *k);
    float *v = malloc((size_t)ATT_N * ATT_HD * sizeof *v), *o = malloc((size_t)ATT_N * ATT_HD * sizeof *o);
    float *scores = malloc((size_t)LMOE_ATTENTION_BLOCK * ATT_N * sizeof *scores);
    if (!q || !k || !v || !o || !scores) {
        fprintf(stderr, "bench_kernels: out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)ATT_N * ATT_HD; i++) {
        q[i] = (float)(i % 13) * 0.01f, k[i] = (float)(i % 7) * 0.02f, v[i] = (float)(i % 5) * 0.1f;
    }
    double flops = 2.0 * 2.0 * (ATT_N * (ATT_N + 1) / 2.0) * ATT_HD;
    printf("attention, one head of %d over %d positions, queries in blocks of %d, 1 thread "
           "(median of %d)\n", ATT_HD, ATT_N, ATT_BLOCK, repeats);
    for (const char *const *name = lmoe_kernels_compiled(); *name; name++) {
        const lmoe_kernels *kt = lmoe_kernels_by_name(*name);
        if (kt == NULL) continue;
        attention_call c = {kt, q, k, v, o, scores};
        double sec = bench_seconds_per_call(run_attention, &c, repeats, 0.2);
        printf("  %-10s %8.3f ms %8.1f GFLOP/s%s\n", kt->name, sec * 1e3, flops / sec * 1e-9,
               kt->attention ? "" : " (composed from dot_f32, softmax, axpy)");
    }
    free(q), free(k), free(v), free(o), free(scores);
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
    if (n_cols % LMOE_QK == 0) bench_batched(n_rows, n_cols, repeats);
    bench_attention(repeats);
    return 0;
}
