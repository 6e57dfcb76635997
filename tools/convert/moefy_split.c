/* moefy_split.c - the expert construction methods of moefy_split.h: which neurons of a dense
 * SwiGLU FFN form each expert.
 *
 * Everything runs on the calling thread from the seeded generators of moefy_rng.h, sums have a
 * fixed order, and every sort is by a total order (ties broken by ids), so a seed gives the same
 * bytes with any qsort. The balanced methods (random, clustering, co-activation) end in one
 * canonical form: each expert's neurons ascending, experts ordered by their smallest neuron. The
 * sharing methods keep expert g tied to token group g. */
#include "moefy_split.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "moefy_rng.h"

/* clang fuses a*b+c into one fma where the target has it (aarch64), which would change sums from
 * one machine to another; gcc does not in ISO C mode, and warns about the pragma. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* The generator streams, so that the methods draw independent numbers from one seed. */
enum { STREAM_RANDOM = 101, STREAM_CLUSTERING, STREAM_COACTIVATION, STREAM_IMPORTANCE };

#define CLUSTERING_MAX_ITERATIONS 50
#define IMPORTANCE_ITERATIONS 30
#define POWER_MAX_ITERATIONS 1000
#define POWER_TOLERANCE 1e-8 /* largest change of an entry of the unit vector */
#define POWER_CHECK_EVERY 10
#define POWER_STABLE_CHECKS 3 /* checks in a row with the same split */
#define SWAP_MAX_PASSES 10
#define SWAP_MIN_GAIN 1e-9 /* below this a swap may be rounding noise, and could cycle */
#define TOKEN_BLOCK 64     /* tokens per transposed block of the co-activation sums */

/* ------------------------------------------------------------------------------------------------
 * shared helpers
 * ---------------------------------------------------------------------------------------------- */

/* malloc of a * b elements of size bytes; NULL on overflow as on failure, never for 0 bytes. */
static void *alloc_array(size_t a, size_t b, size_t size) {
    if (b != 0 && a > SIZE_MAX / b / size) return NULL;
    size_t bytes = a * b * size;
    return malloc(bytes ? bytes : 1);
}

/* A sort entry: a value with the ids that break its ties. */
typedef struct ranked {
    double value;
    uint32_t group, id;
} ranked;

/* NaN has no place in an order; it ranks below everything. */
static double sortable(double v) { return v == v ? v : -INFINITY; }

static int compare_ids(uint32_t a, uint32_t b) { return (a > b) - (a < b); }

/* value descending, then group, then id ascending */
static int compare_value_desc(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->value != b->value) return a->value > b->value ? -1 : 1;
    if (a->group != b->group) return compare_ids(a->group, b->group);
    return compare_ids(a->id, b->id);
}

/* value ascending, then id */
static int compare_value_asc(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->value != b->value) return a->value < b->value ? -1 : 1;
    return compare_ids(a->id, b->id);
}

static int compare_u32(const void *pa, const void *pb) {
    return compare_ids(*(const uint32_t *)pa, *(const uint32_t *)pb);
}

/* keys = neurons 0..n-1 by values[i] descending, ties by lower id. */
static void rank_descending(const float *values, uint32_t n, ranked *keys) {
    for (uint32_t i = 0; i < n; i++) keys[i] = (ranked){sortable(values[i]), 0, i};
    qsort(keys, n, sizeof *keys, compare_value_desc);
}

/* The sizes every balanced split needs: n_parts experts of n / n_parts neurons each. */
static lmoe_status check_balanced(const char *what, uint32_t n, uint32_t n_parts,
                                  const uint32_t *experts) {
    RETURN_ERROR_IF(!experts, LMOE_ERR_INVALID_ARGUMENT, "%s: experts is NULL", what);
    RETURN_ERROR_IF(n == 0, LMOE_ERR_INVALID_ARGUMENT, "%s: no neurons to split", what);
    RETURN_ERROR_IF(n_parts == 0, LMOE_ERR_INVALID_ARGUMENT, "%s: 0 experts", what);
    RETURN_ERROR_IF(n_parts > n, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: %u experts for %u neurons (more experts than neurons)", what, n_parts, n);
    RETURN_ERROR_IF(n % n_parts != 0, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: %u experts do not divide %u neurons", what, n_parts, n);
    return LMOE_OK;
}

/* Writes the partition part_of (each of the n_parts parts holding exactly n / n_parts neurons) in
 * the canonical form: each expert ascending, experts ordered by their smallest neuron. */
static lmoe_status write_canonical(const char *what, const uint32_t *part_of, uint32_t n,
                                   uint32_t n_parts, uint32_t *experts) {
    uint32_t size = n / n_parts;
    uint32_t *rank = alloc_array(n_parts, 2, sizeof *rank);
    RETURN_ERROR_IF(!rank, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
    uint32_t *fill = rank + n_parts;
    for (uint32_t p = 0; p < n_parts; p++) rank[p] = UINT32_MAX, fill[p] = 0;
    uint32_t next = 0;
    for (uint32_t i = 0; i < n; i++) { /* ascending i: lists come out sorted */
        uint32_t p = part_of[i];
        if (rank[p] == UINT32_MAX) rank[p] = next++;
        experts[(size_t)rank[p] * size + fill[p]++] = i;
    }
    free(rank);
    return LMOE_OK;
}

/* sum of a[k] b[k] in double, in four running sums: a fixed order (the same bytes everywhere), and
 * not one chain of dependent adds. */
static double dot(const float *a, const float *b, size_t len) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t k = 0;
    for (; k + 4 <= len; k += 4) {
        s0 += (double)a[k] * b[k];
        s1 += (double)a[k + 1] * b[k + 1];
        s2 += (double)a[k + 2] * b[k + 2];
        s3 += (double)a[k + 3] * b[k + 3];
    }
    for (; k < len; k++) s0 += (double)a[k] * b[k];
    return (s0 + s1) + (s2 + s3);
}

static double dot_double(const double *a, const double *b, size_t len) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t k = 0;
    for (; k + 4 <= len; k += 4) {
        s0 += a[k] * b[k];
        s1 += a[k + 1] * b[k + 1];
        s2 += a[k + 2] * b[k + 2];
        s3 += a[k + 3] * b[k + 3];
    }
    for (; k < len; k++) s0 += a[k] * b[k];
    return (s0 + s1) + (s2 + s3);
}

/* 1 / |row| for each row, 0 for a zero (or non-finite) row: the rows are normalised on the fly
 * rather than copied (the calibration inputs can be gigabytes). */
static void inverse_norms(const float *rows, size_t count, uint32_t dim, double *inv) {
    for (size_t t = 0; t < count; t++) {
        const float *r = rows + t * dim;
        double norm2 = dot(r, r, dim);
        inv[t] = norm2 > 0 && norm2 < INFINITY ? 1.0 / sqrt(norm2) : 0.0;
    }
}

/* k-means++ on the normalised rows: the first centre uniform, each next one drawn with probability
 * proportional to its squared distance from the nearest centre so far. nearest: (count) scratch. */
static void seed_centroids(const float *rows, const double *inv, size_t count, uint32_t dim,
                           uint32_t k, moefy_rng *rng, float *centroids, double *nearest) {
    size_t pick = (size_t)moefy_rng_below(rng, count);
    for (uint32_t c = 0; c < k; c++) {
        if (c > 0) {
            double total = 0;
            for (size_t t = 0; t < count; t++) total += nearest[t];
            if (total > 0 && total < INFINITY) {
                double target = moefy_rng_uniform(rng) * total, run = 0;
                size_t last = count;
                for (size_t t = 0; t < count; t++) {
                    if (nearest[t] <= 0) continue;
                    last = t;
                    run += nearest[t];
                    if (run > target) break;
                }
                pick = last; /* the last positive one when rounding leaves run <= target */
            } else {
                pick = (size_t)moefy_rng_below(rng, count); /* every row is already a centre */
            }
        }
        float *centre = centroids + (size_t)c * dim;
        for (uint32_t j = 0; j < dim; j++) centre[j] = (float)(rows[pick * dim + j] * inv[pick]);
        if (c + 1 == k) break;
        double centre2 = dot(centre, centre, dim);
        for (size_t t = 0; t < count; t++) {
            double self2 = inv[t] > 0 ? 1.0 : 0.0;
            double d = self2 + centre2 - 2.0 * inv[t] * dot(rows + t * dim, centre, dim);
            if (!(d > 0)) d = 0; /* rounding below 0, or NaN */
            if (c == 0 || d < nearest[t]) nearest[t] = d;
        }
    }
}

/* centroids[c] = the mean of cluster c's normalised rows (sums: (k, dim) scratch): divided by
 * counts[c], or, with counts NULL, scaled to unit length (spherical k-means). A centroid with no
 * rows or a zero sum is left as it was. */
static void update_centroids(const float *rows, const double *inv, size_t count, uint32_t dim,
                             uint32_t k, const uint32_t *cluster_of, const size_t *counts,
                             float *centroids, double *sums) {
    memset(sums, 0, (size_t)k * dim * sizeof *sums);
    for (size_t t = 0; t < count; t++) {
        double *s = sums + (size_t)cluster_of[t] * dim;
        const float *r = rows + t * dim;
        for (uint32_t j = 0; j < dim; j++) s[j] += r[j] * inv[t];
    }
    for (uint32_t c = 0; c < k; c++) {
        const double *s = sums + (size_t)c * dim;
        double len2 = 0;
        for (uint32_t j = 0; j < dim; j++) len2 += s[j] * s[j];
        if (!(len2 > 0 && len2 < INFINITY) || (counts && counts[c] == 0)) continue;
        double scale = counts ? 1.0 / (double)counts[c] : 1.0 / sqrt(len2);
        for (uint32_t j = 0; j < dim; j++) centroids[(size_t)c * dim + j] = (float)(s[j] * scale);
    }
}

/* Swaps pairs of neurons between parts while a swap raises the objective: Kernighan-Lin style
 * passes, each neuron in turn swapped with its best partner. score (k, n): score[c * n + i] is
 * neuron i's gain from part c, the similarity to c's centroid (clustering, w NULL), or its edge
 * weight to c's members (co-activation, w the (n, n) weights; score kept up to date after each
 * swap). Part-major, so the scan over partners reads contiguous rows. Scratch: own (n), the score
 * of each neuron in its own part, and mine (k). */
static void improve_by_swaps(double *score, const double *w, uint32_t n, uint32_t k,
                             uint32_t *part_of, double *own, double *mine) {
    for (uint32_t l = 0; l < n; l++) own[l] = score[(size_t)part_of[l] * n + l];
    for (int pass = 0; pass < SWAP_MAX_PASSES; pass++) {
        uint32_t swaps = 0;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t a = part_of[i], best_j = UINT32_MAX;
            for (uint32_t c = 0; c < k; c++) mine[c] = score[(size_t)c * n + i];
            double *to_a = score + (size_t)a * n;
            const double *wi = w ? w + (size_t)i * n : NULL;
            double best = SWAP_MIN_GAIN;
            for (uint32_t j = 0; j < n; j++) {
                uint32_t b = part_of[j];
                if (b == a) continue;
                double gain = (mine[b] - mine[a]) + (to_a[j] - own[j]);
                if (wi) gain -= 2.0 * wi[j]; /* i and j leave each other's part */
                if (gain > best) best = gain, best_j = j;
            }
            if (best_j == UINT32_MAX) continue;
            uint32_t b = part_of[best_j];
            part_of[i] = b;
            part_of[best_j] = a;
            swaps++;
            double *to_b = score + (size_t)b * n;
            if (wi) {
                const double *wj = w + (size_t)best_j * n;
                for (uint32_t l = 0; l < n; l++) { /* a loses i and gains j; b the reverse */
                    double delta = wi[l] - wj[l];
                    to_a[l] -= delta;
                    to_b[l] += delta;
                    if (part_of[l] == a) own[l] = to_a[l];
                    else if (part_of[l] == b) own[l] = to_b[l];
                }
            } else {
                own[i] = to_b[i];
                own[best_j] = to_a[best_j];
            }
        }
        if (swaps == 0) break;
    }
}

/* ------------------------------------------------------------------------------------------------
 * random
 * ---------------------------------------------------------------------------------------------- */

lmoe_status moefy_split_random(uint32_t n, uint32_t n_parts, uint64_t seed, uint32_t *experts) {
    FORWARD_IF_ERROR(check_balanced("random", n, n_parts, experts));
    uint32_t *order = alloc_array(n, 2, sizeof *order);
    RETURN_ERROR_IF(!order, LMOE_ERR_OUT_OF_MEMORY, "random: out of memory for %u neurons", n);
    uint32_t *part_of = order + n;
    moefy_rng rng = moefy_rng_make(seed, 0, STREAM_RANDOM);
    for (uint32_t i = 0; i < n; i++) order[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) { /* Fisher-Yates */
        uint32_t j = (uint32_t)moefy_rng_below(&rng, (uint64_t)i + 1);
        uint32_t tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    uint32_t size = n / n_parts;
    for (uint32_t k = 0; k < n; k++) part_of[order[k]] = k / size;
    lmoe_status status = write_canonical("random", part_of, n, n_parts, experts);
    free(order);
    return status;
}

/* ------------------------------------------------------------------------------------------------
 * clustering
 * ---------------------------------------------------------------------------------------------- */

/* The capacity-constrained assignment on similarities sim (k, n): all (neuron, cluster) pairs by
 * similarity descending (ties by cluster, then neuron), each taken while the neuron is free and
 * the cluster has room; then swaps mend what the greedy order left (the last neurons get whatever
 * room is left). Scratch: pairs (n * k), fill and mine (k), own (n). */
static void assign_balanced(double *sim, uint32_t n, uint32_t k, ranked *pairs, uint32_t *fill,
                            double *own, double *mine, uint32_t *part_of) {
    size_t n_pairs = 0;
    for (uint32_t c = 0; c < k; c++)
        for (uint32_t i = 0; i < n; i++)
            pairs[n_pairs++] = (ranked){sortable(sim[(size_t)c * n + i]), c, i};
    qsort(pairs, n_pairs, sizeof *pairs, compare_value_desc);
    uint32_t capacity = n / k;
    for (uint32_t c = 0; c < k; c++) fill[c] = 0;
    for (uint32_t i = 0; i < n; i++) part_of[i] = UINT32_MAX;
    for (size_t p = 0; p < n_pairs; p++) {
        uint32_t i = pairs[p].id, c = pairs[p].group;
        if (part_of[i] != UINT32_MAX || fill[c] == capacity) continue;
        part_of[i] = c;
        fill[c]++;
    }
    improve_by_swaps(sim, NULL, n, k, part_of, own, mine);
}

lmoe_status moefy_split_clustering(const float *rows, uint32_t n, uint32_t dim, uint32_t n_parts,
                                   uint64_t seed, uint32_t *experts) {
    const char *what = "clustering";
    FORWARD_IF_ERROR(check_balanced(what, n, n_parts, experts));
    RETURN_ERROR_IF(!rows, LMOE_ERR_INVALID_ARGUMENT, "%s: rows is NULL", what);
    RETURN_ERROR_IF(dim == 0, LMOE_ERR_INVALID_ARGUMENT, "%s: rows of 0 values", what);

    double *per_neuron = alloc_array(n, 3, sizeof *per_neuron); /* inv, nearest, own */
    double *mine = alloc_array(n_parts, 1, sizeof *mine);
    float *centroids = alloc_array(n_parts, dim, sizeof *centroids);
    double *sums = alloc_array(n_parts, dim, sizeof *sums);
    double *sim = alloc_array(n, n_parts, sizeof *sim);
    ranked *pairs = alloc_array(n, n_parts, sizeof *pairs);
    uint32_t *part_of = alloc_array(n, 2, sizeof *part_of);
    uint32_t *previous = part_of ? part_of + n : NULL;
    uint32_t *fill = alloc_array(n_parts, 1, sizeof *fill);
    lmoe_status status = LMOE_OK;
    if (!per_neuron || !mine || !centroids || !sums || !sim || !pairs || !part_of || !fill) {
        status = lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory for %u neurons of %u values "
                            "in %u clusters", what, n, dim, n_parts);
    } else {
        moefy_rng rng = moefy_rng_make(seed, 0, STREAM_CLUSTERING);
        double *inv = per_neuron, *nearest = per_neuron + n, *own = per_neuron + 2 * (size_t)n;
        inverse_norms(rows, n, dim, inv);
        seed_centroids(rows, inv, n, dim, n_parts, &rng, centroids, nearest);
        for (uint32_t i = 0; i < n; i++) previous[i] = UINT32_MAX;
        for (int iteration = 0; iteration < CLUSTERING_MAX_ITERATIONS; iteration++) {
            for (uint32_t i = 0; i < n; i++) /* cosine: the centroids have unit length */
                for (uint32_t c = 0; c < n_parts; c++) /* (each row read once) */
                    sim[(size_t)c * n + i] =
                        inv[i] * dot(rows + (size_t)i * dim, centroids + (size_t)c * dim, dim);
            assign_balanced(sim, n, n_parts, pairs, fill, own, mine, part_of);
            if (memcmp(part_of, previous, n * sizeof *part_of) == 0) break;
            memcpy(previous, part_of, n * sizeof *part_of);
            update_centroids(rows, inv, n, dim, n_parts, part_of, NULL, centroids, sums);
        }
        status = write_canonical(what, part_of, n, n_parts, experts);
    }
    free(per_neuron);
    free(mine);
    free(centroids);
    free(sums);
    free(sim);
    free(pairs);
    free(part_of);
    free(fill);
    return status;
}

/* ------------------------------------------------------------------------------------------------
 * co-activation
 * ---------------------------------------------------------------------------------------------- */

/* a (n, n) = sum over tokens of |h_ti| |h_tj|. Tokens go in blocks, transposed into block (n,
 * TOKEN_BLOCK), so each (i, j) of a block is one contiguous dot product; the upper triangle is
 * summed, then mirrored. */
static void sum_coactivation(const float *h, size_t n_tokens, uint32_t n, float *block,
                             double *a) {
    memset(a, 0, (size_t)n * n * sizeof *a);
    for (size_t t0 = 0; t0 < n_tokens; t0 += TOKEN_BLOCK) {
        size_t len = n_tokens - t0 < TOKEN_BLOCK ? n_tokens - t0 : TOKEN_BLOCK;
        for (size_t t = 0; t < len; t++) {
            const float *row = h + (t0 + t) * n;
            for (uint32_t i = 0; i < n; i++) block[(size_t)i * TOKEN_BLOCK + t] = fabsf(row[i]);
        }
        for (uint32_t i = 0; i < n; i++) {
            const float *bi = block + (size_t)i * TOKEN_BLOCK;
            double *ai = a + (size_t)i * n;
            for (uint32_t j = i; j < n; j++) ai[j] += dot(bi, block + (size_t)j * TOKEN_BLOCK, len);
        }
    }
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < i; j++) a[(size_t)i * n + j] = a[(size_t)j * n + i];
}

/* a_ij / sqrt(a_ii a_jj) (0 when either is 0), diagonal 0; scale: (n) scratch. The product of the
 * two scales is formed first so that w stays exactly symmetric. */
static void normalise_coactivation(double *a, uint32_t n, double *scale) {
    for (uint32_t i = 0; i < n; i++) {
        double d = a[(size_t)i * n + i];
        scale[i] = d > 0 && d < INFINITY ? 1.0 / sqrt(d) : 0.0;
    }
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t j = 0; j < n; j++)
            a[(size_t)i * n + j] = i == j ? 0.0 : a[(size_t)i * n + j] * (scale[i] * scale[j]);
}

/* The recursive bisection's state: the weights and scratch reused at every level. */
typedef struct bisection {
    const double *w;
    uint32_t n, part_size;
    moefy_rng rng;
    double *dinv, *u, *x, *y, *z; /* (n) each */
    ranked *keys;                 /* (n) */
    uint8_t *side;                /* (n): which side of the split each neuron is on */
    double *sub;                  /* the weights among a subgraph's neurons, for contiguous rows */
    uint32_t *part_of;            /* (n) the result */
} bisection;

/* v -= (u.v) u, then v /= |v|; returns |v| (0 leaves v as it is). */
static double deflate_and_normalise(double *v, const double *u, uint32_t count) {
    double along = 0, len2 = 0;
    for (uint32_t k = 0; k < count; k++) along += u[k] * v[k];
    for (uint32_t k = 0; k < count; k++) v[k] -= along * u[k], len2 += v[k] * v[k];
    if (!(len2 > 0 && len2 < INFINITY)) return 0;
    double scale = 1.0 / sqrt(len2);
    for (uint32_t k = 0; k < count; k++) v[k] *= scale;
    return sqrt(len2);
}

/* Sorts the subgraph's neurons by D^-1/2 x into s->keys (ties by id; group = position in ids),
 * notes on which side of the first left each lands, and returns how many changed side. */
static uint32_t sort_and_mark_sides(bisection *s, const uint32_t *ids, uint32_t count,
                                    uint32_t left, const double *x) {
    for (uint32_t k = 0; k < count; k++)
        s->keys[k] = (ranked){sortable(s->dinv[k] * x[k]), k, ids[k]};
    qsort(s->keys, count, sizeof *s->keys, compare_value_asc);
    uint32_t moved = 0;
    for (uint32_t r = 0; r < count; r++) {
        uint8_t side = r < left;
        moved += s->side[s->keys[r].group] != side;
        s->side[s->keys[r].group] = side;
    }
    return moved;
}

/* Reorders ids (count of them) by their entry in the Fiedler-like vector of the subgraph they span:
 * the second eigenvector x of M = D^-1/2 W D^-1/2, by power iteration on (M + I) / 2 (eigenvalues
 * in [0, 1], so the top one after deflating sqrt(d), M's top eigenvector, is M's second largest)
 * from a seeded start, sorted by D^-1/2 x, the normalised-cut relaxation (ties by id). A neuron
 * with no weight in the subgraph gets 0: it goes wherever room is left in the middle. The iteration
 * stops when x has converged or when the split at left has not changed for a while: with several
 * nearly equal eigenvalues x turns slowly inside their span long after the split is settled. */
static void order_by_fiedler(bisection *s, uint32_t *ids, uint32_t count, uint32_t left) {
    /* all n neurons are the root, in id order: w as it is; a smaller subgraph is copied out, as
     * gathering from whole rows of w would cost the bandwidth of all of w at every iteration */
    const double *block = s->w;
    size_t stride = s->n;
    if (count < s->n) {
        for (uint32_t k = 0; k < count; k++) {
            const double *row = s->w + (size_t)ids[k] * s->n;
            for (uint32_t l = 0; l < count; l++) s->sub[(size_t)k * count + l] = row[ids[l]];
        }
        block = s->sub;
        stride = count;
    }
    double *dinv = s->dinv, *u = s->u, *x = s->x, *y = s->y, *z = s->z;
    double u_len2 = 0;
    for (uint32_t k = 0; k < count; k++) {
        const double *row = block + k * stride;
        double degree = 0;
        for (uint32_t l = 0; l < count; l++) degree += row[l];
        int has_degree = degree > 0 && degree < INFINITY;
        dinv[k] = has_degree ? 1.0 / sqrt(degree) : 0.0;
        u[k] = has_degree ? sqrt(degree) : 0.0;
        u_len2 += u[k] * u[k];
        s->side[k] = 2; /* on no side yet */
    }
    for (uint32_t k = 0; k < count; k++) u[k] = u_len2 > 0 ? u[k] / sqrt(u_len2) : 0.0;
    for (uint32_t k = 0; k < count; k++) x[k] = 2.0 * moefy_rng_uniform(&s->rng) - 1.0;
    double len = deflate_and_normalise(x, u, count);
    uint32_t stable_checks = 0;
    for (int it = 1; it <= POWER_MAX_ITERATIONS && len > 0; it++) {
        for (uint32_t l = 0; l < count; l++) z[l] = dinv[l] * x[l];
        for (uint32_t k = 0; k < count; k++) /* y = (M + I) / 2 x */
            y[k] = 0.5 * (x[k] + dinv[k] * dot_double(block + k * stride, z, count));
        len = deflate_and_normalise(y, u, count);
        double change = 0; /* the matrix is positive semidefinite: no sign flips between steps */
        for (uint32_t k = 0; k < count; k++) change = fmax(change, fabs(y[k] - x[k]));
        double *old = x;
        x = y;
        y = old;
        if (change < POWER_TOLERANCE) break;
        if (it % POWER_CHECK_EVERY == 0) {
            uint32_t moved = sort_and_mark_sides(s, ids, count, left, x);
            stable_checks = moved == 0 ? stable_checks + 1 : 0;
            if (stable_checks == POWER_STABLE_CHECKS) break;
        }
    }
    sort_and_mark_sides(s, ids, count, left, x);
    for (uint32_t k = 0; k < count; k++) ids[k] = s->keys[k].id;
}

/* Splits ids (count = p parts of part_size) into parts first .. first + p - 1: p / 2 parts on one
 * side of the Fiedler order, the rest on the other, recursively. */
static void bisect(bisection *s, uint32_t *ids, uint32_t count, uint32_t p, uint32_t first) {
    if (p == 1) {
        for (uint32_t k = 0; k < count; k++) s->part_of[ids[k]] = first;
        return;
    }
    uint32_t p_left = p / 2, left = p_left * s->part_size;
    order_by_fiedler(s, ids, count, left);
    bisect(s, ids, left, p_left, first);
    bisect(s, ids + left, count - left, p - p_left, first + p_left);
}

/* Memory: the weights, 8 n^2 bytes (970 MB at n = 11008), and a copy of the largest subgraph below
 * the root, about a quarter of that. */
lmoe_status moefy_split_coactivation(const float *h, size_t n_tokens, uint32_t n, uint32_t n_parts,
                                     uint64_t seed, uint32_t *experts) {
    const char *what = "co-activation";
    FORWARD_IF_ERROR(check_balanced(what, n, n_parts, experts));
    RETURN_ERROR_IF(!h, LMOE_ERR_INVALID_ARGUMENT, "%s: h is NULL", what);
    RETURN_ERROR_IF(n_tokens == 0, LMOE_ERR_INVALID_ARGUMENT, "%s: no calibration tokens", what);

    double *w = alloc_array(n, n, sizeof *w);
    float *block = alloc_array(n, TOKEN_BLOCK, sizeof *block);
    double *vectors = alloc_array(n, 5, sizeof *vectors);
    double *conn = alloc_array(n_parts, n, sizeof *conn);
    double *mine = alloc_array(n_parts, 1, sizeof *mine);
    size_t largest_child = n_parts > 1 ? (size_t)(n_parts - n_parts / 2) * (n / n_parts) : 0;
    double *sub = alloc_array(largest_child, largest_child, sizeof *sub);
    ranked *keys = alloc_array(n, 1, sizeof *keys);
    uint32_t *ids = alloc_array(n, 2, sizeof *ids);
    uint8_t *side = alloc_array(n, 1, sizeof *side);
    lmoe_status status = LMOE_OK;
    if (!w || !block || !vectors || !conn || !mine || !sub || !keys || !ids || !side) {
        status = lmoe_error(LMOE_ERR_OUT_OF_MEMORY,
                            "%s: out of memory for the %u x %u co-activation matrix", what, n, n);
    } else {
        sum_coactivation(h, n_tokens, n, block, w);
        normalise_coactivation(w, n, vectors);
        bisection s = {.w = w, .n = n, .part_size = n / n_parts,
                       .rng = moefy_rng_make(seed, 0, STREAM_COACTIVATION),
                       .dinv = vectors, .u = vectors + n, .x = vectors + 2 * (size_t)n,
                       .y = vectors + 3 * (size_t)n, .z = vectors + 4 * (size_t)n,
                       .keys = keys, .side = side, .sub = sub, .part_of = ids + n};
        for (uint32_t i = 0; i < n; i++) ids[i] = i;
        bisect(&s, ids, n, n_parts, 0);
        /* conn (n_parts, n): each neuron's weight into each part, what the swaps trade */
        for (uint32_t i = 0; i < n; i++) {
            for (uint32_t c = 0; c < n_parts; c++) mine[c] = 0;
            for (uint32_t j = 0; j < n; j++) mine[s.part_of[j]] += w[(size_t)i * n + j];
            for (uint32_t c = 0; c < n_parts; c++) conn[(size_t)c * n + i] = mine[c];
        }
        improve_by_swaps(conn, w, n, n_parts, s.part_of, vectors, mine);
        status = write_canonical(what, s.part_of, n, n_parts, experts);
    }
    free(w);
    free(block);
    free(vectors);
    free(conn);
    free(mine);
    free(sub);
    free(keys);
    free(ids);
    free(side);
    return status;
}

/* ------------------------------------------------------------------------------------------------
 * importance
 * ---------------------------------------------------------------------------------------------- */

/* Gives each empty cluster the token farthest from its own centroid, taken from a cluster that
 * keeps at least one token (there is one while a cluster is empty, as count >= k). */
static void reseed_empty_clusters(size_t count, uint32_t k, uint32_t *cluster_of, double *distance,
                                  size_t *counts) {
    for (uint32_t c = 0; c < k; c++) {
        if (counts[c] != 0) continue;
        size_t far = count;
        for (size_t t = 0; t < count; t++)
            if (counts[cluster_of[t]] >= 2 && (far == count || distance[t] > distance[far]))
                far = t;
        counts[cluster_of[far]]--;
        counts[c] = 1;
        cluster_of[far] = c;
        distance[far] = 0;
    }
}

/* Plain k-means of the normalised rows of x into k groups: k-means++ start, then nearest centroid
 * (ties to the lower group) and means, until nothing moves or IMPORTANCE_ITERATIONS. */
static void cluster_tokens(const float *x, const double *inv, size_t count, uint32_t dim,
                           uint32_t k, moefy_rng *rng, float *centroids, double *sums,
                           double *centre2, double *distance, uint32_t *cluster_of,
                           uint32_t *previous, size_t *counts) {
    seed_centroids(x, inv, count, dim, k, rng, centroids, distance);
    for (size_t t = 0; t < count; t++) previous[t] = UINT32_MAX;
    for (int iteration = 0; iteration < IMPORTANCE_ITERATIONS; iteration++) {
        for (uint32_t c = 0; c < k; c++) {
            const float *centre = centroids + (size_t)c * dim;
            centre2[c] = dot(centre, centre, dim);
            counts[c] = 0;
        }
        for (size_t t = 0; t < count; t++) {
            const float *row = x + t * dim;
            double self2 = inv[t] > 0 ? 1.0 : 0.0, best = INFINITY;
            uint32_t best_c = 0;
            for (uint32_t c = 0; c < k; c++) {
                double along = inv[t] * dot(row, centroids + (size_t)c * dim, dim);
                double d = self2 + centre2[c] - 2.0 * along;
                if (d < best) best = d, best_c = c;
            }
            cluster_of[t] = best_c;
            distance[t] = best < INFINITY ? best : 0.0;
            counts[best_c]++;
        }
        reseed_empty_clusters(count, k, cluster_of, distance, counts);
        if (memcmp(cluster_of, previous, count * sizeof *cluster_of) == 0) break;
        memcpy(previous, cluster_of, count * sizeof *cluster_of);
        update_centroids(x, inv, count, dim, k, cluster_of, counts, centroids, sums);
    }
}

lmoe_status moefy_importance(const float *x, const float *h, size_t n_tokens, uint32_t dim,
                             uint32_t n, const float *down_norm, uint32_t n_groups, uint64_t seed,
                             float *importance, uint32_t *group_of_token) {
    const char *what = "importance";
    RETURN_ERROR_IF(!x || !h || !down_norm || !importance, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: x, h, down_norm or importance is NULL", what);
    RETURN_ERROR_IF(n == 0 || dim == 0, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: %u neurons of inputs of %u values (both must be > 0)", what, n, dim);
    RETURN_ERROR_IF(n_groups == 0, LMOE_ERR_INVALID_ARGUMENT, "%s: 0 token groups", what);
    RETURN_ERROR_IF(n_tokens < n_groups, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: %zu tokens for %u groups (need at least one token per group)", what,
                    n_tokens, n_groups);

    double *per_token = alloc_array(n_tokens, 2, sizeof *per_token); /* inv, then distance */
    uint32_t *cluster_of = alloc_array(n_tokens, 2, sizeof *cluster_of);
    float *centroids = alloc_array(n_groups, dim, sizeof *centroids);
    double *sums = alloc_array(n_groups, dim, sizeof *sums);
    double *centre2 = alloc_array(n_groups, 1, sizeof *centre2);
    size_t *counts = alloc_array(n_groups, 1, sizeof *counts);
    double *acc = alloc_array(n_groups, n, sizeof *acc);
    lmoe_status status = LMOE_OK;
    if (!per_token || !cluster_of || !centroids || !sums || !centre2 || !counts || !acc) {
        status = lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory for %zu tokens in %u groups",
                            what, n_tokens, n_groups);
    } else {
        moefy_rng rng = moefy_rng_make(seed, 0, STREAM_IMPORTANCE);
        double *inv = per_token, *distance = per_token + n_tokens;
        inverse_norms(x, n_tokens, dim, inv);
        cluster_tokens(x, inv, n_tokens, dim, n_groups, &rng, centroids, sums, centre2, distance,
                       cluster_of, cluster_of + n_tokens, counts);
        memset(acc, 0, (size_t)n_groups * n * sizeof *acc);
        for (size_t t = 0; t < n_tokens; t++) {
            const float *row = h + t * n;
            double *a = acc + (size_t)cluster_of[t] * n;
            for (uint32_t i = 0; i < n; i++) a[i] += fabsf(row[i]);
        }
        for (uint32_t g = 0; g < n_groups; g++)
            for (uint32_t i = 0; i < n; i++) {
                size_t gi = (size_t)g * n + i;
                double mean = counts[g] ? acc[gi] / (double)counts[g] : 0.0;
                importance[gi] = (float)(mean * down_norm[i]);
            }
        if (group_of_token) memcpy(group_of_token, cluster_of, n_tokens * sizeof *cluster_of);
    }
    free(per_token);
    free(cluster_of);
    free(centroids);
    free(sums);
    free(centre2);
    free(counts);
    free(acc);
    return status;
}

/* ------------------------------------------------------------------------------------------------
 * sharing
 * ---------------------------------------------------------------------------------------------- */

lmoe_status moefy_split_sharing_inner(const float *importance, uint32_t n, uint32_t n_parts,
                                      uint32_t expert_size, uint32_t *experts) {
    const char *what = "sharing-inner";
    RETURN_ERROR_IF(!importance || !experts, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: importance or experts is NULL", what);
    RETURN_ERROR_IF(n == 0 || n_parts == 0, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: %u neurons, %u experts (both must be > 0)", what, n, n_parts);
    RETURN_ERROR_IF(expert_size == 0 || expert_size > n, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: experts of %u neurons out of %u (must be 1 to %u)", what, expert_size, n,
                    n);
    ranked *keys = alloc_array(n, 1, sizeof *keys);
    RETURN_ERROR_IF(!keys, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory for %u neurons", what, n);
    for (uint32_t g = 0; g < n_parts; g++) {
        uint32_t *expert = experts + (size_t)g * expert_size;
        rank_descending(importance + (size_t)g * n, n, keys);
        for (uint32_t r = 0; r < expert_size; r++) expert[r] = keys[r].id;
        qsort(expert, expert_size, sizeof *expert, compare_u32);
    }
    free(keys);
    return LMOE_OK;
}

/* Most wanted first: by the number of groups that want the neuron (in group), then its total
 * importance (value), then id. */
static int compare_wanted(const void *pa, const void *pb) {
    const ranked *a = pa, *b = pb;
    if (a->group != b->group) return a->group > b->group ? -1 : 1;
    if (a->value != b->value) return a->value > b->value ? -1 : 1;
    return compare_ids(a->id, b->id);
}

/* The shared expert's size: the explicit one checked, or the neurons wanted by more than half of
 * the groups (in order, the first ones), rounded up to leave a multiple of n_parts. */
static lmoe_status choose_shared_size(const ranked *wanted, uint32_t n, uint32_t n_parts,
                                      uint32_t *shared_size) {
    const char *what = "sharing-inter";
    uint32_t size = *shared_size;
    if (size != MOEFY_SHARED_AUTO) {
        RETURN_ERROR_IF(size >= n, LMOE_ERR_INVALID_ARGUMENT,
                        "%s: a shared expert of %u neurons leaves none of %u for the routed "
                        "experts", what, size, n);
        RETURN_ERROR_IF((n - size) % n_parts != 0, LMOE_ERR_INVALID_ARGUMENT,
                        "%s: %u experts do not divide the %u neurons left by a shared expert of %u",
                        what, n_parts, n - size, size);
        return LMOE_OK;
    }
    size = 0;
    while (size < n && 2 * (uint64_t)wanted[size].group > n_parts) size++;
    uint32_t majority = size;
    while ((n - size) % n_parts != 0) size++;
    RETURN_ERROR_IF(size >= n, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: %u of %u neurons are wanted by more than half of the %u groups, which "
                    "leaves none for the routed experts", what, majority, n, n_parts);
    *shared_size = size;
    return LMOE_OK;
}

/* Neuron i's owner while the routed experts are filled: a group, or one of these. */
#define OWNER_FREE UINT32_MAX
#define OWNER_SHARED (UINT32_MAX - 1)

/* sharing-inter on allocated scratch: keys and wanted (n), pairs (n, n_parts), owner (n), fill
 * (n_parts). */
static lmoe_status share_inter(const float *importance, uint32_t n, uint32_t n_parts,
                               uint32_t *shared_size, uint32_t *shared, uint32_t *experts,
                               ranked *keys, ranked *wanted, ranked *pairs, uint32_t *owner,
                               uint32_t *fill) {
    /* how many groups have each neuron among their top n / n_parts, and its total importance */
    for (uint32_t i = 0; i < n; i++) wanted[i] = (ranked){0, 0, i};
    for (uint32_t g = 0; g < n_parts; g++) {
        const float *row = importance + (size_t)g * n;
        rank_descending(row, n, keys);
        for (uint32_t r = 0; r < n / n_parts; r++) wanted[keys[r].id].group++;
        for (uint32_t i = 0; i < n; i++) wanted[i].value += row[i];
    }
    for (uint32_t i = 0; i < n; i++) wanted[i].value = sortable(wanted[i].value);
    qsort(wanted, n, sizeof *wanted, compare_wanted);
    uint32_t size = *shared_size;
    FORWARD_IF_ERROR(choose_shared_size(wanted, n, n_parts, &size));

    for (uint32_t i = 0; i < n; i++) owner[i] = OWNER_FREE;
    for (uint32_t r = 0; r < size; r++) {
        shared[r] = wanted[r].id;
        owner[wanted[r].id] = OWNER_SHARED;
    }
    qsort(shared, size, sizeof *shared, compare_u32);

    /* the rest: (group, neuron) pairs by importance, each neuron to the first group with room */
    size_t n_pairs = 0;
    for (uint32_t g = 0; g < n_parts; g++)
        for (uint32_t i = 0; i < n; i++)
            if (owner[i] == OWNER_FREE)
                pairs[n_pairs++] = (ranked){sortable(importance[(size_t)g * n + i]), g, i};
    qsort(pairs, n_pairs, sizeof *pairs, compare_value_desc);
    uint32_t capacity = (n - size) / n_parts;
    for (uint32_t g = 0; g < n_parts; g++) fill[g] = 0;
    for (size_t p = 0; p < n_pairs; p++) {
        uint32_t g = pairs[p].group, i = pairs[p].id;
        if (owner[i] != OWNER_FREE || fill[g] == capacity) continue;
        owner[i] = g;
        fill[g]++;
    }
    /* every neuron has an owner now (the room is exactly the neurons left); ascending i */
    for (uint32_t g = 0; g < n_parts; g++) fill[g] = 0;
    for (uint32_t i = 0; i < n; i++)
        if (owner[i] != OWNER_SHARED) experts[(size_t)owner[i] * capacity + fill[owner[i]]++] = i;
    *shared_size = size;
    return LMOE_OK;
}

lmoe_status moefy_split_sharing_inter(const float *importance, uint32_t n, uint32_t n_parts,
                                      uint32_t *shared_size, uint32_t *shared, uint32_t *experts) {
    const char *what = "sharing-inter";
    RETURN_ERROR_IF(!importance || !shared_size || !shared || !experts, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: importance, shared_size, shared or experts is NULL", what);
    RETURN_ERROR_IF(n == 0 || n_parts == 0, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: %u neurons, %u experts (both must be > 0)", what, n, n_parts);
    RETURN_ERROR_IF(n_parts > n, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: %u experts for %u neurons (more experts than neurons)", what, n_parts, n);
    ranked *keys = alloc_array(n, 2, sizeof *keys);
    ranked *pairs = alloc_array(n, n_parts, sizeof *pairs);
    uint32_t *owner = alloc_array(n, 1, sizeof *owner);
    uint32_t *fill = alloc_array(n_parts, 1, sizeof *fill);
    lmoe_status status;
    if (!keys || !pairs || !owner || !fill)
        status = lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory for %u neurons", what, n);
    else
        status = share_inter(importance, n, n_parts, shared_size, shared, experts, keys, keys + n,
                             pairs, owner, fill);
    free(keys);
    free(pairs);
    free(owner);
    free(fill);
    return status;
}

/* ------------------------------------------------------------------------------------------------
 * overlap
 * ---------------------------------------------------------------------------------------------- */

void moefy_overlap_count(const uint32_t *experts, uint32_t n_parts, uint32_t expert_size,
                         const uint32_t *shared, uint32_t shared_size, uint32_t n,
                         moefy_overlap *out) {
    if (!out) return;
    memset(out, 0, sizeof *out);
    out->n_slots = (uint64_t)n_parts * expert_size;
    if (!experts) n_parts = 0;
    if (!shared) shared_size = 0;
    /* neurons in windows of ids counted on the stack: no allocation that could fail, any order */
    enum { WINDOW = 2048 };
    uint32_t last_expert[WINDOW];
    uint8_t uses[WINDOW], in_shared[WINDOW];
    for (uint32_t base = 0; base < n; base += WINDOW) {
        uint32_t len = n - base < WINDOW ? n - base : WINDOW;
        memset(uses, 0, len);
        memset(in_shared, 0, len);
        for (uint32_t s = 0; s < shared_size; s++)
            if (shared[s] >= base && shared[s] - base < len) in_shared[shared[s] - base] = 1;
        for (uint32_t e = 0; e < n_parts; e++)
            for (uint32_t k = 0; k < expert_size; k++) {
                uint32_t id = experts[(size_t)e * expert_size + k];
                if (id < base || id - base >= len) continue;
                uint32_t slot = id - base;
                if (uses[slot] != 0 && last_expert[slot] == e) continue; /* listed twice */
                last_expert[slot] = e;
                if (uses[slot] < 2) uses[slot]++;
            }
        for (uint32_t slot = 0; slot < len; slot++) {
            if (uses[slot] >= 2) out->n_shared_by_experts++;
            if (uses[slot] == 0 && !in_shared[slot]) out->n_unused++;
        }
    }
}
