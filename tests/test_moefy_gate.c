/* test_moefy_gate.c - the gate of an MoE layer built from a dense FFN: the random gate's
 * determinism and scale, centroids against hand-computed means (double accumulation), and the
 * calibrated least squares fit: recovery of a planted gate, the ridge against a reference solve of
 * the normal equations, top-1 routing on planted expert directions, bad arguments. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "llamamoe.h"
#include "moefy_gate.h"
#include "test_util.h"

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

/* A test-local generator, unrelated to moefy_rng.h. */
static uint64_t test_rng = 0x243F6A8885A308D3ull;
static double uniform01(void) {
    test_rng = test_rng * 6364136223846793005ull + 1442695040888963407ull;
    return ((test_rng >> 11) + 0.5) / 9007199254740992.0;
}
static double gaussian(void) {
    return sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01());
}
static void fill_gaussian(float *v, size_t n, double scale) {
    for (size_t i = 0; i < n; i++) v[i] = (float)(gaussian() * scale);
}

/* Clears the last error, so a check of the message sees only what the next call wrote. */
static void clear_error(void) { lmoe_error(LMOE_OK, "%s", ""); }

/* A call failed with LMOE_ERR_INVALID_ARGUMENT and a message containing word. */
static void check_invalid(lmoe_status status, const char *word, const char *what) {
    CHECK_MSG(status == LMOE_ERR_INVALID_ARGUMENT, "%s -> %d", what, (int)status);
    CHECK_MSG(lmoe_last_error()[0] && strstr(lmoe_last_error(), word), "%s: message '%s'", what,
              lmoe_last_error());
}

/* ---------------------------------------------------------------------------------------------
 * random
 * ------------------------------------------------------------------------------------------- */

static void test_random(void) {
    enum { E = 64, D = 1024 };
    float *a = malloc(sizeof(float) * E * D), *b = malloc(sizeof(float) * E * D);
    CHECK_OK(moefy_gate_random(E, D, 42, a));
    CHECK_OK(moefy_gate_random(E, D, 42, b));
    CHECK(memcmp(a, b, sizeof(float) * E * D) == 0);

    CHECK_OK(moefy_gate_random(E, D, 43, b));
    size_t same = 0;
    for (size_t i = 0; i < (size_t)E * D; i++) same += a[i] == b[i];
    CHECK_MSG(same < 16, "seeds 42 and 43 share %zu of %d entries", same, E * D);

    /* N(0, 1/dim): mean and standard deviation over 65536 entries (standard errors ~0.4%). */
    double sum = 0, sum2 = 0;
    for (size_t i = 0; i < (size_t)E * D; i++) {
        sum += a[i];
        sum2 += (double)a[i] * a[i];
    }
    double n = (double)E * D, mean = sum / n, sd = sqrt(sum2 / n - mean * mean);
    double want = 1.0 / sqrt((double)D);
    CHECK_MSG(fabs(sd / want - 1.0) < 0.1, "std %g, want %g", sd, want);
    CHECK_MSG(fabs(mean) < 0.05 * want, "mean %g", mean);
    test_summary("random gate %dx%d: std %.5f (1/sqrt(dim) %.5f), mean %.2e", E, D, sd, want, mean);

    /* Rows are not copies of one another (one stream through the whole gate). */
    CHECK(memcmp(a, a + D, sizeof(float) * D) != 0);

    /* A small gate is the start of the same stream as a large one with the same dim. */
    float small[2 * D];
    CHECK_OK(moefy_gate_random(2, D, 42, small));
    CHECK(memcmp(small, a, sizeof small) == 0);

    clear_error();
    check_invalid(moefy_gate_random(0, D, 1, a), "n_experts", "random, 0 experts");
    clear_error();
    check_invalid(moefy_gate_random(E, 0, 1, a), "dim", "random, dim 0");
    clear_error();
    check_invalid(moefy_gate_random(E, D, 1, NULL), "NULL", "random, NULL gate");
    free(a);
    free(b);
}

/* ---------------------------------------------------------------------------------------------
 * centroid
 * ------------------------------------------------------------------------------------------- */

static void test_centroid(void) {
    /* 5 neurons of dim 3; expert 0 = {4, 1}, expert 1 = {0, 2} (ids in any order). */
    const float w[5 * 3] = {1, 2, 3, 4, 5, 6, -1, 0, 7, 10, 20, 30, 0.5f, -0.5f, 2};
    const uint32_t experts[4] = {4, 1, 0, 2};
    const float want[2 * 3] = {(0.5f + 4) / 2, (-0.5f + 5) / 2, (2 + 6) / 2.0f,
                               (1 - 1) / 2.0f, (2 + 0) / 2.0f, (3 + 7) / 2.0f};
    float gate[2 * 3];
    CHECK_OK(moefy_gate_centroid(w, 3, experts, 2, 2, gate));
    for (int i = 0; i < 6; i++)
        CHECK_MSG(gate[i] == want[i], "gate[%d] %g, want %g", i, gate[i], want[i]);

    /* Overlapping experts (a neuron in two) and an expert of one neuron is that neuron's row. */
    const uint32_t overlap[3] = {3, 1, 3};
    float g1[3 * 3];
    CHECK_OK(moefy_gate_centroid(w, 3, overlap, 3, 1, g1));
    CHECK(memcmp(g1, w + 9, 3 * sizeof(float)) == 0);
    CHECK(memcmp(g1 + 3, w + 3, 3 * sizeof(float)) == 0);
    CHECK(memcmp(g1 + 6, w + 9, 3 * sizeof(float)) == 0);

    /* Accumulated in double: 1e8 + 1 - 1e8 is 0 in float, 1 in double; the mean is 1/3. */
    const float big[3] = {1e8f, 1.0f, -1e8f};
    const uint32_t all[3] = {0, 1, 2};
    float g2;
    CHECK_OK(moefy_gate_centroid(big, 1, all, 1, 3, &g2));
    CHECK_MSG(g2 == (float)(1.0 / 3.0), "mean of {1e8, 1, -1e8} is %g, want 1/3", g2);

    clear_error();
    check_invalid(moefy_gate_centroid(w, 3, experts, 0, 2, gate), "n_experts",
                  "centroid, 0 experts");
    clear_error();
    check_invalid(moefy_gate_centroid(w, 3, experts, 2, 0, gate), "expert_size",
                  "centroid, expert_size 0");
    clear_error();
    check_invalid(moefy_gate_centroid(w, 0, experts, 2, 2, gate), "dim", "centroid, dim 0");
    clear_error();
    check_invalid(moefy_gate_centroid(NULL, 3, experts, 2, 2, gate), "NULL", "centroid, NULL w");
}

/* ---------------------------------------------------------------------------------------------
 * calibrated
 * ------------------------------------------------------------------------------------------- */

/* y = G* x + a per-token offset + tiny noise on random x, with more tokens than dim: the fit is G*
 * with the mean over experts taken out of each column (the per-token centring removes exactly
 * that), to within the ridge's shrinkage of 1e-3. Sizes not multiples of the internal blocks. */
static void test_calibrated_recovers(void) {
    enum { T = 2003, D = 37, E = 7 };
    float *x = malloc(sizeof(float) * T * D), *y = malloc(sizeof(float) * T * E);
    float gstar[E * D], gate[E * D], gate2[E * D];
    fill_gaussian(x, (size_t)T * D, 1.0);
    fill_gaussian(gstar, E * D, 1.0);
    for (int t = 0; t < T; t++) {
        double offset = 20.0 * (uniform01() - 0.5);
        for (int j = 0; j < E; j++) {
            double s = offset + 1e-4 * gaussian();
            for (int c = 0; c < D; c++) s += (double)gstar[j * D + c] * x[(size_t)t * D + c];
            y[t * E + j] = (float)s;
        }
    }
    CHECK_OK(moefy_gate_calibrated(x, y, T, D, E, gate));
    double max_err = 0, max_col_sum = 0;
    for (int c = 0; c < D; c++) {
        double mean = 0, col_sum = 0;
        for (int j = 0; j < E; j++) mean += gstar[j * D + c];
        mean /= E;
        for (int j = 0; j < E; j++) {
            max_err = fmax(max_err, fabs(gate[j * D + c] - (gstar[j * D + c] - mean)));
            col_sum += gate[j * D + c];
        }
        max_col_sum = fmax(max_col_sum, fabs(col_sum));
    }
    CHECK_MSG(max_err < 1e-2, "max |G - centred G*| = %g", max_err);
    CHECK_MSG(max_col_sum < 1e-4, "a column of G sums to %g over experts", max_col_sum);
    test_summary("calibrated %dx%d from %d tokens: max |G - G*| %.2e, max column sum %.1e", E, D, T,
                 max_err, max_col_sum);

    /* Deterministic. */
    CHECK_OK(moefy_gate_calibrated(x, y, T, D, E, gate2));
    CHECK(memcmp(gate, gate2, sizeof gate) == 0);

    /* Non-finite inputs and all-zero inputs. */
    float keep = x[1000 * D + 5];
    x[1000 * D + 5] = NAN;
    clear_error();
    check_invalid(moefy_gate_calibrated(x, y, T, D, E, gate), "finite", "calibrated, NaN in x");
    x[1000 * D + 5] = keep;
    y[77 * E + 3] = INFINITY;
    clear_error();
    check_invalid(moefy_gate_calibrated(x, y, T, D, E, gate), "finite",
                  "calibrated, Inf in target");
    memset(x, 0, sizeof(float) * T * D);
    clear_error();
    check_invalid(moefy_gate_calibrated(x, y, 10, D, E, gate), "zero", "calibrated, x all zero");

    clear_error();
    check_invalid(moefy_gate_calibrated(x, y, 0, D, E, gate), "n_tokens", "calibrated, 0 tokens");
    clear_error();
    check_invalid(moefy_gate_calibrated(x, y, T, 0, E, gate), "dim", "calibrated, dim 0");
    clear_error();
    check_invalid(moefy_gate_calibrated(x, y, T, D, 0, gate), "n_experts", "calibrated, 0 experts");
    clear_error();
    check_invalid(moefy_gate_calibrated(x, NULL, T, D, E, gate), "NULL", "calibrated, NULL target");
    clear_error(); /* sizes no model has: refused before any allocation */
    check_invalid(moefy_gate_calibrated(x, y, T, UINT32_MAX, E, gate), "dim",
                  "calibrated, dim 2^32 - 1");
    clear_error();
    check_invalid(moefy_gate_calibrated(x, y, T, D, UINT32_MAX, gate), "n_experts",
                  "calibrated, 2^32 - 1 experts");
    free(x);
    free(y);
}

/* Against Gauss-Jordan elimination of (X^T X + lambda I) G^T = X^T Y, with Y centred per token and
 * lambda = 1e-3 x mean diagonal of X^T X, written out plainly. With fewer tokens than dim the ridge
 * decides the answer; dim 301 crosses the blocks of the accumulation and of the factorisation. */
static void check_calibrated_against_reference(int T, int D, int E) {
    float *x = malloc(sizeof(float) * T * D), *y = malloc(sizeof(float) * T * E);
    float *gate = malloc(sizeof(float) * E * D);
    double *m = malloc(sizeof(double) * D * (D + E)); /* [X^T X + lambda I | X^T Y], D rows */
    fill_gaussian(x, (size_t)T * D, 1.0);
    fill_gaussian(y, (size_t)T * E, 3.0);
    CHECK_OK(moefy_gate_calibrated(x, y, T, D, E, gate));

    int w = D + E;
    double trace = 0;
    for (int i = 0; i < D; i++) {
        for (int j = 0; j < w; j++) m[i * w + j] = 0;
        for (int t = 0; t < T; t++) {
            const float *xt = x + (size_t)t * D, *yt = y + (size_t)t * E;
            double mean = 0;
            for (int e = 0; e < E; e++) mean += yt[e];
            mean /= E;
            for (int j = 0; j < D; j++) m[i * w + j] += (double)xt[i] * xt[j];
            for (int e = 0; e < E; e++) m[i * w + D + e] += (double)xt[i] * (yt[e] - mean);
        }
        trace += m[i * w + i];
    }
    for (int i = 0; i < D; i++) m[i * w + i] += 1e-3 * trace / D;
    for (int p = 0; p < D; p++) /* symmetric positive definite: no pivoting needed */
        for (int i = 0; i < D; i++) {
            if (i == p) continue;
            double f = m[i * w + p] / m[p * w + p];
            for (int j = p; j < w; j++) m[i * w + j] -= f * m[p * w + j];
        }
    double max_ref = 0, max_diff = 0;
    for (int e = 0; e < E; e++)
        for (int c = 0; c < D; c++) {
            double ref = m[c * w + D + e] / m[c * w + c];
            max_ref = fmax(max_ref, fabs(ref));
            max_diff = fmax(max_diff, fabs(gate[e * D + c] - ref));
        }
    CHECK_MSG(max_diff < 1e-5 * max_ref, "%d tokens, dim %d, %d experts: off by %g (largest %g)", T,
              D, E, max_diff, max_ref);
    test_summary("calibrated vs reference, %d tokens, dim %d, %d experts: off by %.1e of %.2f", T,
                 D, E, max_diff, max_ref);
    free(x);
    free(y);
    free(gate);
    free(m);
}

static void test_calibrated_reference(void) {
    check_calibrated_against_reference(9, 20, 3);
    check_calibrated_against_reference(200, 301, 5);
    check_calibrated_against_reference(700, 301, 11);
}

/* Expert j's output size is softplus(3 u_j . x) for unit directions u_j, so expert j is the largest
 * exactly for the tokens nearest direction u_j. The fitted linear gate must route held-out tokens
 * (top-1) to the expert with the largest target on more than 95% of them. */
static void test_calibrated_top1(void) {
    enum { T = 20000, HELD = 2000, D = 16, E = 8 };
    float *x = malloc(sizeof(float) * (T + HELD) * D), *y = malloc(sizeof(float) * (T + HELD) * E);
    float u[E * D], gate[E * D];
    fill_gaussian(u, E * D, 1.0);
    for (int j = 0; j < E; j++) {
        double n2 = 0;
        for (int c = 0; c < D; c++) n2 += (double)u[j * D + c] * u[j * D + c];
        for (int c = 0; c < D; c++) u[j * D + c] = (float)(u[j * D + c] / sqrt(n2));
    }
    fill_gaussian(x, (size_t)(T + HELD) * D, 1.0);
    for (int t = 0; t < T + HELD; t++)
        for (int j = 0; j < E; j++) {
            double s = 0;
            for (int c = 0; c < D; c++) s += (double)u[j * D + c] * x[(size_t)t * D + c];
            y[t * E + j] = (float)log1p(exp(3.0 * s));
        }
    CHECK_OK(moefy_gate_calibrated(x, y, T, D, E, gate));

    int agree = 0;
    for (int t = T; t < T + HELD; t++) {
        float logits[E];
        for (int j = 0; j < E; j++) {
            double s = 0;
            for (int c = 0; c < D; c++) s += (double)gate[j * D + c] * x[(size_t)t * D + c];
            logits[j] = (float)s;
        }
        agree += test_argmax(logits, E) == test_argmax(y + (size_t)t * E, E);
    }
    double rate = (double)agree / HELD;
    CHECK_MSG(rate > 0.95, "top-1 agrees on %.1f%% of held-out tokens", 100 * rate);
    test_summary("calibrated top-1 on planted directions: %.1f%% of %d held-out tokens", 100 * rate,
                 HELD);
    free(x);
    free(y);
}

int main(void) {
    test_random();
    test_centroid();
    test_calibrated_recovers();
    test_calibrated_reference();
    test_calibrated_top1();
    test_summary_print();
    return test_finish("test_moefy_gate");
}
