/* test_moefy_split.c - the expert construction methods of tools/convert/moefy_split.h: random,
 * clustering and co-activation give exact balanced partitions in canonical form, the same bytes
 * for the same seed, that no swap of two neurons improves (checked against objectives recomputed
 * here); clustering and co-activation recover planted groups of neurons, co-activation also where
 * only its spectral step can; importance and sharing-inner find planted important neurons;
 * sharing-inter's shared expert and routed partition; overlap counts on hand-made experts; bad
 * sizes are refused with a message that names the problem. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"
#include "moefy_split.h"
#include "test_util.h"

#define N 172 /* the test model's FFN width */

/* Checks status and that the error text contains word. */
#define CHECK_STATUS(expr, status, word)                                                            \
    do {                                                                                            \
        lmoe_status check_status_st_ = (expr);                                                      \
        CHECK_MSG(check_status_st_ == (status), "%s -> %d (%s), expected %d", #expr,                \
                  (int)check_status_st_, lmoe_last_error(), (int)(status));                         \
        CHECK_MSG(strstr(lmoe_last_error(), (word)) != NULL, "%s: error '%s' lacks '%s'", #expr,    \
                  lmoe_last_error(), (word));                                                       \
    } while (0)

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

/* A test-local generator, unrelated to moefy_rng.h. */
static uint64_t test_rng = 0x9E3779B97F4A7C15ull;
static double uniform(double lo, double hi) {
    test_rng = test_rng * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (double)(test_rng >> 11) / 9007199254740992.0;
}
static double random_sign(void) { return uniform(0, 1) < 0.5 ? -1.0 : 1.0; }

/* labels[i] in 0..n_labels-1, n / n_labels of each, shuffled. */
static void shuffled_labels(uint32_t *labels, uint32_t n, uint32_t n_labels) {
    for (uint32_t i = 0; i < n; i++) labels[i] = i % n_labels;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)uniform(0, i + 1);
        if (j > i) j = i;
        uint32_t t = labels[i];
        labels[i] = labels[j];
        labels[j] = t;
    }
}

/* Every neuron exactly once, n / n_parts per expert, each ascending, experts by first neuron. */
static bool is_canonical_partition(const uint32_t *experts, uint32_t n, uint32_t n_parts) {
    uint32_t size = n / n_parts;
    uint8_t *seen = calloc(n, 1);
    bool ok = seen != NULL;
    for (uint32_t p = 0; ok && p < n_parts; p++) {
        const uint32_t *e = experts + (size_t)p * size;
        if (p > 0 && e[0] <= experts[(size_t)(p - 1) * size]) ok = false;
        for (uint32_t k = 0; ok && k < size; k++) {
            if (e[k] >= n || seen[e[k]] || (k > 0 && e[k] <= e[k - 1])) ok = false;
            else seen[e[k]] = 1;
        }
    }
    free(seen);
    return ok;
}

/* Each expert's neurons all carry one label, and no two experts share a label (n_parts labels), or
 * with n_parts < n_labels: no label is split between experts. */
static bool experts_follow_labels(const uint32_t *experts, uint32_t n, uint32_t n_parts,
                                  const uint32_t *labels, uint32_t n_labels) {
    uint32_t size = n / n_parts, expert_of_label[64];
    for (uint32_t l = 0; l < n_labels; l++) expert_of_label[l] = UINT32_MAX;
    for (uint32_t p = 0; p < n_parts; p++)
        for (uint32_t k = 0; k < size; k++) {
            uint32_t l = labels[experts[(size_t)p * size + k]];
            if (expert_of_label[l] != UINT32_MAX && expert_of_label[l] != p) return false;
            expert_of_label[l] = p;
            if (n_parts == n_labels && labels[experts[(size_t)p * size]] != l) return false;
        }
    return true;
}

/* part_of[i] = the expert that lists neuron i. */
static void parts_of(const uint32_t *experts, uint32_t n, uint32_t n_parts, uint32_t *part_of) {
    for (uint32_t k = 0; k < n; k++) part_of[experts[k]] = k / (n / n_parts);
}

/* The largest gain from swapping two neurons of different parts, when neuron i's score in part c is
 * score[i * n_parts + c], less 2 w_ij for a pair that are neighbours (w given). The refinement
 * passes stop only when this is no longer positive. */
static double best_swap_gain(const double *score, const double *w, const uint32_t *part_of,
                             uint32_t n, uint32_t n_parts) {
    double best = 0;
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = i + 1; j < n; j++) {
            uint32_t a = part_of[i], b = part_of[j];
            if (a == b) continue;
            double gain = score[i * n_parts + b] - score[i * n_parts + a] +
                          score[j * n_parts + a] - score[j * n_parts + b];
            if (w) gain -= 2 * w[(size_t)i * n + j];
            if (gain > best) best = gain;
        }
    return best;
}

/* Clustering's result can gain nothing from a swap: each neuron's score is the cosine to its
 * parts' centroids (normalised means of the normalised rows), which the last iteration used. */
static double clustering_swap_gain(const float *rows, uint32_t dim, const uint32_t *experts,
                                   uint32_t n_parts) {
    double *unit = calloc((size_t)N * dim, sizeof *unit);
    double *centre = calloc((size_t)n_parts * dim, sizeof *centre);
    double *score = calloc((size_t)N * n_parts, sizeof *score);
    uint32_t part_of[N];
    parts_of(experts, N, n_parts, part_of);
    for (uint32_t i = 0; i < N; i++) {
        double len2 = 0;
        for (uint32_t j = 0; j < dim; j++) len2 += (double)rows[i * dim + j] * rows[i * dim + j];
        for (uint32_t j = 0; j < dim; j++) {
            unit[i * dim + j] = rows[i * dim + j] / sqrt(len2);
            centre[part_of[i] * dim + j] += unit[i * dim + j];
        }
    }
    for (uint32_t c = 0; c < n_parts; c++) {
        double len2 = 0;
        for (uint32_t j = 0; j < dim; j++) len2 += centre[c * dim + j] * centre[c * dim + j];
        for (uint32_t i = 0; i < N; i++) {
            double d = 0;
            for (uint32_t j = 0; j < dim; j++) d += unit[i * dim + j] * centre[c * dim + j];
            score[i * n_parts + c] = d / sqrt(len2);
        }
    }
    double gain = best_swap_gain(score, NULL, part_of, N, n_parts);
    free(unit);
    free(centre);
    free(score);
    return gain;
}

/* Co-activation's result can gain no within-part weight from a swap: the cosine weights of the
 * |h| profiles recomputed here, each neuron's score in a part its weight to the part's members. */
static double coactivation_swap_gain(const float *h, uint32_t n_tokens, const uint32_t *experts,
                                     uint32_t n_parts) {
    double *w = calloc((size_t)N * N, sizeof *w);
    double *score = calloc((size_t)N * n_parts, sizeof *score);
    uint32_t part_of[N];
    parts_of(experts, N, n_parts, part_of);
    for (uint32_t t = 0; t < n_tokens; t++)
        for (uint32_t i = 0; i < N; i++)
            for (uint32_t j = 0; j < N; j++)
                w[i * N + j] += fabs(h[t * N + i]) * fabs(h[t * N + j]);
    for (uint32_t i = 0; i < N; i++)
        for (uint32_t j = 0; j < N; j++)
            if (i != j) {
                double d = w[i * N + i] * w[j * N + j];
                w[i * N + j] = d > 0 ? w[i * N + j] / sqrt(d) : 0;
            }
    for (uint32_t i = 0; i < N; i++) w[i * N + i] = 0;
    for (uint32_t i = 0; i < N; i++)
        for (uint32_t j = 0; j < N; j++) score[i * n_parts + part_of[j]] += w[i * N + j];
    double gain = best_swap_gain(score, w, part_of, N, n_parts);
    free(w);
    free(score);
    return gain;
}

/* ---------------------------------------------------------------------------------------------
 * Balanced splits
 * ------------------------------------------------------------------------------------------- */

static void test_balanced_partitions(void) {
    static const uint32_t parts[] = {2, 4, 43, 86};
    enum { DIM = 24, TOKENS = 96 };
    float *rows = malloc(sizeof(float) * N * DIM), *h = malloc(sizeof(float) * TOKENS * N);
    uint32_t *a = malloc(sizeof(uint32_t) * N), *b = malloc(sizeof(uint32_t) * N);
    for (size_t k = 0; k < (size_t)N * DIM; k++) rows[k] = (float)uniform(-1, 1);
    for (size_t k = 0; k < (size_t)TOKENS * N; k++)
        h[k] = (float)(uniform(0, 1) < 0.3 ? uniform(-2, 2) : uniform(-0.05, 0.05));
    for (size_t q = 0; q < sizeof parts / sizeof parts[0]; q++) {
        uint32_t p = parts[q];
        CHECK_OK(moefy_split_random(N, p, 7, a));
        CHECK_MSG(is_canonical_partition(a, N, p), "random, %u parts", p);
        CHECK_OK(moefy_split_random(N, p, 7, b));
        CHECK_MSG(memcmp(a, b, sizeof(uint32_t) * N) == 0, "random, %u parts: not repeatable", p);
        CHECK_OK(moefy_split_random(N, p, 8, b));
        CHECK_MSG(memcmp(a, b, sizeof(uint32_t) * N) != 0, "random, %u parts: seed ignored", p);

        CHECK_OK(moefy_split_clustering(rows, N, DIM, p, 7, a));
        CHECK_MSG(is_canonical_partition(a, N, p), "clustering, %u parts", p);
        CHECK_OK(moefy_split_clustering(rows, N, DIM, p, 7, b));
        CHECK_MSG(memcmp(a, b, sizeof(uint32_t) * N) == 0, "clustering, %u parts: not repeatable",
                  p);
        double gain = clustering_swap_gain(rows, DIM, a, p);
        CHECK_MSG(gain < 1e-5, "clustering, %u parts: a swap would gain %g", p, gain);

        CHECK_OK(moefy_split_coactivation(h, TOKENS, N, p, 7, a));
        CHECK_MSG(is_canonical_partition(a, N, p), "co-activation, %u parts", p);
        CHECK_OK(moefy_split_coactivation(h, TOKENS, N, p, 7, b));
        CHECK_MSG(memcmp(a, b, sizeof(uint32_t) * N) == 0,
                  "co-activation, %u parts: not repeatable", p);
        gain = coactivation_swap_gain(h, TOKENS, a, p);
        CHECK_MSG(gain < 1e-6, "co-activation, %u parts: a swap would gain %g", p, gain);
    }
    /* one expert per neuron, and one expert of all */
    CHECK_OK(moefy_split_clustering(rows, N, DIM, N, 3, a));
    CHECK(is_canonical_partition(a, N, N));
    CHECK_OK(moefy_split_coactivation(h, TOKENS, N, 1, 3, a));
    CHECK(is_canonical_partition(a, N, 1));
    /* zero rows stay zero (no direction), and all-zero activations (no edges): still partitions */
    memset(rows, 0, sizeof(float) * 10 * DIM);
    CHECK_OK(moefy_split_clustering(rows, N, DIM, 4, 3, a));
    CHECK(is_canonical_partition(a, N, 4));
    memset(h, 0, sizeof(float) * TOKENS * N);
    CHECK_OK(moefy_split_coactivation(h, TOKENS, N, 4, 3, a));
    CHECK(is_canonical_partition(a, N, 4));
    free(rows);
    free(h);
    free(a);
    free(b);
}

/* Rows along 4 orthogonal directions (random lengths, small noise), neurons shuffled. */
static void test_clustering_planted(void) {
    enum { DIM = 32, GROUPS = 4 };
    float rows[N * DIM];
    uint32_t labels[N], experts[N];
    shuffled_labels(labels, N, GROUPS);
    for (uint32_t i = 0; i < N; i++) {
        double length = uniform(0.2, 5);
        for (uint32_t j = 0; j < DIM; j++)
            rows[i * DIM + j] = (float)(length * ((j == labels[i]) + uniform(-0.15, 0.15)));
    }
    for (uint64_t seed = 1; seed <= 5; seed++) {
        CHECK_OK(moefy_split_clustering(rows, N, DIM, GROUPS, seed, experts));
        CHECK_MSG(experts_follow_labels(experts, N, GROUPS, labels, GROUPS),
                  "clustering seed %llu did not recover the 4 planted clusters",
                  (unsigned long long)seed);
        CHECK_OK(moefy_split_clustering(rows, N, DIM, 2, seed, experts));
        CHECK_MSG(experts_follow_labels(experts, N, 2, labels, GROUPS),
                  "clustering seed %llu split a planted cluster in 2 parts",
                  (unsigned long long)seed);
    }
}

/* 4 groups of neurons active on disjoint token sets (token t wakes group t % 4), small noise. */
static void test_coactivation_planted(void) {
    enum { TOKENS = 256, GROUPS = 4 };
    float *h = malloc(sizeof(float) * TOKENS * N);
    uint32_t labels[N], experts[N];
    shuffled_labels(labels, N, GROUPS);
    for (uint32_t t = 0; t < TOKENS; t++)
        for (uint32_t i = 0; i < N; i++)
            h[t * N + i] = (float)(random_sign() * (labels[i] == t % GROUPS ? uniform(0.5, 1.5)
                                                                           : uniform(0, 0.02)));
    for (uint64_t seed = 1; seed <= 3; seed++) {
        CHECK_OK(moefy_split_coactivation(h, TOKENS, N, GROUPS, seed, experts));
        CHECK_MSG(experts_follow_labels(experts, N, GROUPS, labels, GROUPS),
                  "co-activation seed %llu did not recover the 4 planted blocks",
                  (unsigned long long)seed);
        CHECK_OK(moefy_split_coactivation(h, TOKENS, N, 2, seed, experts));
        CHECK_MSG(experts_follow_labels(experts, N, 2, labels, GROUPS),
                  "co-activation seed %llu split a planted block in 2 parts",
                  (unsigned long long)seed);
    }
    free(h);
}

/* Two pairs of sibling blocks: a token wakes its block strongly and the sibling block (A-B, C-D)
 * moderately. The blocks lie by id as A C B D, so the split by id, A+C | B+D, is a local optimum
 * that no single swap improves: only the spectral bisection finds A+B | C+D. */
static void test_coactivation_siblings(void) {
    enum { TOKENS = 128, BLOCK = N / 4 };
    static const uint32_t block_by_position[4] = {0, 2, 1, 3}; /* A C B D */
    float *h = malloc(sizeof(float) * TOKENS * N);
    uint32_t labels[N], pairs[N], experts[N];
    for (uint32_t i = 0; i < N; i++) {
        labels[i] = block_by_position[i / BLOCK];
        pairs[i] = labels[i] / 2;
    }
    for (uint32_t t = 0; t < TOKENS; t++)
        for (uint32_t i = 0; i < N; i++) {
            uint32_t woken = t % 4;
            double v = labels[i] == woken         ? uniform(0.5, 1.5)
                       : (labels[i] ^ 1) == woken ? uniform(0.1, 0.3)
                                                  : uniform(0, 0.02);
            h[t * N + i] = (float)v;
        }
    for (uint64_t seed = 1; seed <= 3; seed++) {
        CHECK_OK(moefy_split_coactivation(h, TOKENS, N, 2, seed, experts));
        CHECK_MSG(experts_follow_labels(experts, N, 2, pairs, 2),
                  "co-activation seed %llu: 2 parts are not the sibling pairs",
                  (unsigned long long)seed);
        CHECK_OK(moefy_split_coactivation(h, TOKENS, N, 4, seed, experts));
        CHECK_MSG(experts_follow_labels(experts, N, 4, labels, 4),
                  "co-activation seed %llu: 4 parts are not the blocks", (unsigned long long)seed);
    }
    free(h);
}

/* ---------------------------------------------------------------------------------------------
 * Importance and sharing
 * ------------------------------------------------------------------------------------------- */

/* 3 token clusters (directions e0, e1, e2); cluster c's tokens fire 6 planted neurons strongly.
 * Neuron DECOY fires hardest everywhere but barely moves the output (down_norm 0.01); neuron LOUD
 * fires weakly everywhere but moves it a lot (down_norm 10), so it matters to every group. */
static void test_importance_and_inner(void) {
    enum { TOKENS = 300, DIM = 16, NN = 60, GROUPS = 3, PLANTED = 6, DECOY = 50, LOUD = 51 };
    float *x = malloc(sizeof(float) * TOKENS * DIM), *h = malloc(sizeof(float) * TOKENS * NN);
    float down_norm[NN], importance[GROUPS * NN], again[GROUPS * NN];
    uint32_t cluster[TOKENS], group[TOKENS], group_again[TOKENS], planted[GROUPS][PLANTED];
    uint32_t owner[NN];
    for (uint32_t i = 0; i < NN; i++) owner[i] = UINT32_MAX, down_norm[i] = 1;
    down_norm[DECOY] = 0.01f;
    down_norm[LOUD] = 10;
    for (uint32_t c = 0; c < GROUPS; c++) /* planted neurons spread over 0..49 */
        for (uint32_t k = 0; k < PLANTED; k++) {
            planted[c][k] = c + GROUPS * k * 2;
            owner[planted[c][k]] = c;
        }
    for (uint32_t t = 0; t < TOKENS; t++) {
        cluster[t] = (t * 7) % GROUPS;
        for (uint32_t j = 0; j < DIM; j++)
            x[t * DIM + j] = (float)(uniform(1, 3) * ((j == cluster[t]) + uniform(-0.1, 0.1)));
        for (uint32_t i = 0; i < NN; i++) {
            double v = owner[i] == cluster[t] ? uniform(2, 3) : uniform(0, 0.5);
            if (i == DECOY) v = 20;
            if (i == LOUD) v = 0.5;
            h[t * NN + i] = (float)(random_sign() * v);
        }
    }
    CHECK_OK(moefy_importance(x, h, TOKENS, DIM, NN, down_norm, GROUPS, 11, importance, group));
    CHECK_OK(moefy_importance(x, h, TOKENS, DIM, NN, down_norm, GROUPS, 11, again, group_again));
    CHECK(memcmp(importance, again, sizeof importance) == 0);
    CHECK(memcmp(group, group_again, sizeof group) == 0);
    CHECK_OK(moefy_importance(x, h, TOKENS, DIM, NN, down_norm, GROUPS, 11, again, NULL));

    /* the groups are the planted clusters, under some relabelling */
    uint32_t group_of_cluster[GROUPS] = {UINT32_MAX, UINT32_MAX, UINT32_MAX};
    bool same_clusters = true;
    for (uint32_t t = 0; t < TOKENS; t++) {
        if (group[t] >= GROUPS) same_clusters = false;
        else if (group_of_cluster[cluster[t]] == UINT32_MAX)
            group_of_cluster[cluster[t]] = group[t];
        else if (group_of_cluster[cluster[t]] != group[t])
            same_clusters = false;
    }
    for (uint32_t c = 0; c < GROUPS; c++)
        for (uint32_t d = 0; d < c; d++)
            if (group_of_cluster[c] == group_of_cluster[d]) same_clusters = false;
    CHECK_MSG(same_clusters, "the token groups are not the 3 planted clusters");
    if (!same_clusters) goto out;

    /* importance is the mean |h| of the group's tokens times down_norm */
    double worst = 0;
    for (uint32_t g = 0; g < GROUPS; g++)
        for (uint32_t i = 0; i < NN; i++) {
            double sum = 0;
            uint32_t count = 0;
            for (uint32_t t = 0; t < TOKENS; t++)
                if (group[t] == g) sum += fabs(h[t * NN + i]), count++;
            double want = sum / count * down_norm[i];
            double err = fabs(importance[g * NN + i] - want) / want;
            if (err > worst) worst = err;
        }
    CHECK_MSG(worst < 1e-5, "importance off by a relative %g", worst);

    /* sharing-inner: each group's 7 most important = its planted 6 + LOUD, ascending */
    uint32_t experts[GROUPS * (PLANTED + 1)];
    CHECK_OK(moefy_split_sharing_inner(importance, NN, GROUPS, PLANTED + 1, experts));
    for (uint32_t c = 0; c < GROUPS; c++) {
        const uint32_t *e = experts + group_of_cluster[c] * (PLANTED + 1);
        bool ok = true;
        for (uint32_t k = 0; k < PLANTED; k++) ok = ok && e[k] == planted[c][k];
        ok = ok && e[PLANTED] == LOUD;
        CHECK_MSG(ok, "sharing-inner expert of planted cluster %u is not its neurons + LOUD", c);
    }
    moefy_overlap ov;
    moefy_overlap_count(experts, GROUPS, PLANTED + 1, NULL, 0, NN, &ov);
    CHECK(ov.n_shared_by_experts == 1); /* LOUD */
    CHECK(ov.n_unused == NN - GROUPS * PLANTED - 1);
    CHECK(ov.n_slots == GROUPS * (PLANTED + 1));
out:
    free(x);
    free(h);
}

/* Hand-made importance for 4 groups: neurons 0..7 (or 0..8) matter most to everyone; of the rest,
 * group g prefers the neurons with i % 4 == g. */
static void test_sharing_inter(void) {
    enum { GROUPS = 4 };
    float importance[GROUPS * N];
    uint32_t shared[N], experts[N], size;
    for (int n_common = 8; n_common <= 9; n_common++) {
        for (uint32_t g = 0; g < GROUPS; g++)
            for (uint32_t i = 0; i < N; i++)
                importance[g * N + i] = (int)i < n_common ? 100.0f - (float)i
                                        : i % GROUPS == g ? 10.0f + (float)uniform(0, 1)
                                                          : (float)uniform(0, 1);
        size = MOEFY_SHARED_AUTO;
        CHECK_OK(moefy_split_sharing_inter(importance, N, GROUPS, &size, shared, experts));
        /* 8 leave 164 = 4 x 41; 9 leave 163, so the shared expert grows to 12 */
        CHECK_MSG(size == (n_common == 8 ? 8u : 12u), "%d common: shared size %u", n_common, size);
        if (size > N) continue;
        bool ok = true;
        for (int k = 0; k < n_common; k++) ok = ok && shared[k] == (uint32_t)k;
        for (uint32_t k = 1; k < size; k++) ok = ok && shared[k] > shared[k - 1];
        CHECK_MSG(ok, "%d common: the shared expert does not start with them, ascending",
                  n_common);
        uint32_t cap = (N - size) / GROUPS;
        uint8_t seen[N] = {0};
        for (uint32_t k = 0; k < size; k++) seen[shared[k]]++;
        for (uint32_t g = 0; g < GROUPS; g++)
            for (uint32_t k = 0; k < cap; k++) {
                uint32_t i = experts[g * cap + k];
                if (i < N) seen[i]++;
                if (k > 0 && i <= experts[g * cap + k - 1]) ok = false;
                if (n_common == 8 && i % GROUPS != g) ok = false; /* exactly its favourites */
            }
        for (uint32_t i = 0; i < N; i++) ok = ok && seen[i] == 1;
        CHECK_MSG(ok, "%d common: shared + routed experts are not a partition by preference",
                  n_common);
        moefy_overlap ov;
        moefy_overlap_count(experts, GROUPS, cap, shared, size, N, &ov);
        CHECK(ov.n_shared_by_experts == 0 && ov.n_unused == 0 && ov.n_slots == GROUPS * cap);
    }
    /* an explicit size: the 4 with the highest totals (0..3, same counts) */
    size = 4;
    CHECK_OK(moefy_split_sharing_inter(importance, N, GROUPS, &size, shared, experts));
    CHECK(size == 4 && shared[0] == 0 && shared[1] == 1 && shared[2] == 2 && shared[3] == 3);
    /* no shared expert: the routed experts cover every neuron once, each ascending */
    size = 0;
    CHECK_OK(moefy_split_sharing_inter(importance, N, GROUPS, &size, shared, experts));
    uint8_t seen[N] = {0};
    bool ok = size == 0;
    for (uint32_t k = 0; k < N; k++) {
        if (experts[k] < N) seen[experts[k]]++;
        if (k % (N / GROUPS) != 0 && experts[k] <= experts[k - 1]) ok = false;
    }
    for (uint32_t i = 0; i < N; i++) ok = ok && seen[i] == 1;
    CHECK_MSG(ok, "no shared expert: the routed experts are not a partition");
}

/* ---------------------------------------------------------------------------------------------
 * Overlap counts and bad sizes
 * ------------------------------------------------------------------------------------------- */

static void test_overlap(void) {
    /* 2 in three experts, 4 in two, 6 7 8 in none, 9 shared */
    const uint32_t experts[] = {0, 1, 2, 2, 3, 4, 2, 4, 5}, shared[] = {9};
    moefy_overlap ov;
    moefy_overlap_count(experts, 3, 3, shared, 1, 10, &ov);
    CHECK(ov.n_shared_by_experts == 2 && ov.n_unused == 3 && ov.n_slots == 9);
    moefy_overlap_count(experts, 3, 3, NULL, 0, 10, &ov);
    CHECK(ov.n_shared_by_experts == 2 && ov.n_unused == 4);
    /* a neuron listed twice in one expert is still in one expert */
    const uint32_t twice[] = {1, 1, 2, 3, 4, 5};
    moefy_overlap_count(twice, 2, 3, NULL, 0, 6, &ov);
    CHECK(ov.n_shared_by_experts == 0 && ov.n_unused == 1 && ov.n_slots == 6);

    /* ids across the counting windows: {0..2999} and {2000..4999} overlap in 1000 */
    enum { BIG = 5000, SIZE = 3000 };
    uint32_t *two = malloc(sizeof(uint32_t) * 2 * SIZE);
    for (uint32_t k = 0; k < SIZE; k++) two[k] = k, two[SIZE + k] = SIZE - 1 - k + 2000;
    moefy_overlap_count(two, 2, SIZE, NULL, 0, BIG, &ov);
    CHECK(ov.n_shared_by_experts == 1000 && ov.n_unused == 0 && ov.n_slots == 2 * SIZE);
    moefy_overlap_count(two, 2, SIZE, NULL, 0, BIG + 100, &ov);
    CHECK(ov.n_unused == 100);
    free(two);
}

static void test_bad_sizes(void) {
    enum { DIM = 8 };
    float rows[N * DIM] = {0}, h[4 * N] = {0}, importance[4 * N] = {0}, down[N] = {0};
    uint32_t experts[N], shared[N], size;
    const lmoe_status bad = LMOE_ERR_INVALID_ARGUMENT;
    CHECK_STATUS(moefy_split_random(N, 0, 1, experts), bad, "0 experts");
    CHECK_STATUS(moefy_split_random(N, 5, 1, experts), bad, "5 experts do not divide 172");
    CHECK_STATUS(moefy_split_random(4, 8, 1, experts), bad, "more experts than neurons");
    CHECK_STATUS(moefy_split_random(0, 1, 1, experts), bad, "no neurons");
    CHECK_STATUS(moefy_split_clustering(rows, N, DIM, 5, 1, experts), bad, "do not divide");
    CHECK_STATUS(moefy_split_clustering(rows, N, 0, 4, 1, experts), bad, "clustering");
    CHECK_STATUS(moefy_split_clustering(NULL, N, DIM, 4, 1, experts), bad, "NULL");
    CHECK_STATUS(moefy_split_coactivation(h, 4, N, 5, 1, experts), bad,
                 "co-activation: 5 experts do not divide 172 neurons");
    CHECK_STATUS(moefy_split_coactivation(h, 4, N, 200, 1, experts), bad, "200 experts");
    CHECK_STATUS(moefy_split_coactivation(h, 0, N, 4, 1, experts), bad, "no calibration tokens");
    CHECK_STATUS(moefy_importance(rows, h, 3, DIM, N, down, 4, 1, importance, NULL), bad,
                 "3 tokens for 4 groups");
    CHECK_STATUS(moefy_importance(rows, h, 4, DIM, N, down, 0, 1, importance, NULL), bad,
                 "0 token groups");
    CHECK_STATUS(moefy_split_sharing_inner(importance, N, 4, N + 1, experts), bad, "173");
    CHECK_STATUS(moefy_split_sharing_inner(importance, N, 4, 0, experts), bad, "experts of 0");
    CHECK_STATUS(moefy_split_sharing_inner(importance, N, 0, 4, experts), bad, "0 experts");
    size = MOEFY_SHARED_AUTO;
    CHECK_STATUS(moefy_split_sharing_inter(importance, N, 0, &size, shared, experts), bad,
                 "0 experts");
    CHECK_STATUS(moefy_split_sharing_inter(importance, 3, 4, &size, shared, experts), bad,
                 "more experts than neurons");
    size = 5;
    CHECK_STATUS(moefy_split_sharing_inter(importance, N, 4, &size, shared, experts), bad,
                 "do not divide the 167 neurons");
    CHECK(size == 5);
    size = N;
    CHECK_STATUS(moefy_split_sharing_inter(importance, N, 4, &size, shared, experts), bad,
                 "leaves none");
    /* one group wants every neuron (top n / 1 = all): nothing would be left to route */
    size = MOEFY_SHARED_AUTO;
    CHECK_STATUS(moefy_split_sharing_inter(importance, N, 1, &size, shared, experts), bad,
                 "leaves none");
}

int main(void) {
    test_balanced_partitions();
    test_clustering_planted();
    test_coactivation_planted();
    test_coactivation_siblings();
    test_importance_and_inner();
    test_sharing_inter();
    test_overlap();
    test_bad_sizes();
    return test_finish("test_moefy_split");
}
