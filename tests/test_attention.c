/* test_attention.c - the attention kernels (kernels.h's attention field) of every table this CPU
 * runs, against generic's (run.c's loop): within 2e-5 of the values' scale, with head sizes that
 * are and are not multiples of 16, blocks of queries that do and do not fill a tile, and at
 * positions from 0 on. And a query's output must be the same bit for bit whether it is computed
 * alone (decode) or in any block (prefill). Row strides are wider than a head, as in the cache. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch/kernels.h"
#include "test_util.h"

static const size_t head_dims[] = {8, 16, 24, 64, 128};
static const size_t starts[] = {0, 5, 37};
static const size_t block_sizes[] = {1, 3, 4, 7, 16};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_Q 16
#define MAX_POS (37 + MAX_Q)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float uniform(float lo, float hi) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((double)(rng >> 40) / 16777216.0);
}

static void run(const lmoe_kernels *k, const float *q, size_t q_stride, const float *keys,
                const float *values, size_t kv_stride, float *out, size_t out_stride,
                size_t head_dim, size_t pos0, size_t n_q, float *scores) {
    if (k->attention)
        k->attention(q, q_stride, keys, values, kv_stride, out, out_stride, head_dim, pos0, n_q,
                     scores);
    else
        lmoe_attention_composed(k, q, q_stride, keys, values, kv_stride, out, out_stride, head_dim,
                                pos0, n_q, scores);
}

static void test_table(const lmoe_kernels *k) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    for (size_t hi = 0; hi < COUNT(head_dims); hi++) {
        size_t hd = head_dims[hi], stride = hd * 3 + 5; /* a head inside a wider row */
        float *q = malloc(MAX_Q * stride * sizeof *q), *kv_k = malloc(MAX_POS * stride * sizeof *q);
        float *kv_v = malloc(MAX_POS * stride * sizeof *q);
        float *out = malloc(MAX_Q * stride * sizeof *q), *want = malloc(MAX_Q * stride * sizeof *q);
        float *alone = malloc(stride * sizeof *q);
        float *scores = malloc(LMOE_ATTENTION_BLOCK * MAX_POS * sizeof *q);
        CHECK(q && kv_k && kv_v && out && want && alone && scores);
        /* scores of a few units: a softmax neither flat nor one-hot */
        for (size_t i = 0; i < MAX_Q * stride; i++) q[i] = uniform(-1, 1) * 3.0f / sqrtf((float)hd);
        for (size_t i = 0; i < MAX_POS * stride; i++) kv_k[i] = uniform(-1, 1) * 3.0f;
        for (size_t i = 0; i < MAX_POS * stride; i++) kv_v[i] = uniform(-2, 2);
        size_t bad = 0, bad_alone = 0, bad_outside = 0;
        double worst = 0.0;
        for (size_t si = 0; si < COUNT(starts); si++)
            for (size_t bi = 0; bi < COUNT(block_sizes); bi++) {
                size_t pos0 = starts[si], n_q = block_sizes[bi];
                for (size_t i = 0; i < MAX_Q * stride; i++) out[i] = want[i] = 777.0f;
                run(k, q, stride, kv_k, kv_v, stride, out, stride, hd, pos0, n_q, scores);
                g->attention(q, stride, kv_k, kv_v, stride, want, stride, hd, pos0, n_q, scores);
                for (size_t i = 0; i < n_q; i++) {
                    run(k, q + i * stride, stride, kv_k, kv_v, stride, alone, stride, hd, pos0 + i,
                        1, scores);
                    for (size_t d = 0; d < stride; d++) {
                        float got = out[i * stride + d];
                        if (d >= hd) {
                            bad_outside += got != 777.0f;
                            continue;
                        }
                        double diff = fabs((double)got - want[i * stride + d]);
                        if (diff > worst) worst = diff;
                        if (!(diff <= 2e-5 * 2.0) && bad++ < 3)
                            fprintf(stderr, "  %s head_dim %zu pos0 %zu n_q %zu: query %zu dim "
                                    "%zu: %.9g, generic %.9g\n", k->name, hd, pos0, n_q, i, d,
                                    got, want[i * stride + d]);
                        bad_alone += memcmp(&got, &alone[d], sizeof got) != 0;
                    }
                }
            }
        CHECK_MSG(bad == 0, "%s attention head_dim %zu: %zu outputs off generic (worst %g)",
                  k->name, hd, bad, worst);
        CHECK_MSG(bad_alone == 0, "%s attention head_dim %zu: %zu outputs differ computed alone",
                  k->name, hd, bad_alone);
        CHECK_MSG(bad_outside == 0, "%s attention head_dim %zu: %zu writes outside the head",
                  k->name, hd, bad_outside);
        printf("%-12s head_dim %3zu: worst |diff| vs generic %.3g\n", k->name, hd, worst);
        free(q), free(kv_k), free(kv_v), free(out), free(want), free(alone), free(scores);
    }
}

int main(void) {
    CHECK(lmoe_kernels_generic()->attention != NULL);
    for (const char *const *name = lmoe_kernels_compiled(); *name; name++) {
        const lmoe_kernels *k = lmoe_kernels_by_name(*name);
        if (k) test_table(k);
    }
    return test_finish("test_attention");
}
