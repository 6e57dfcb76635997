/* moefy_gate.c - the linear gate of an MoE layer built from a dense FFN (see moefy_gate.h): random,
 * centroid of each expert's gate-projection rows, or a ridge least squares fit on calibration data
 * (normal equations accumulated in double in packed token blocks, Cholesky, one solve for all
 * experts at once). Everything runs on the calling thread in a fixed order, so the result does not
 * depend on the thread count. */
#include "moefy_gate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "moefy_rng.h"

/* The rng stream of the random gate, so it is independent of the split's streams for one seed. */
#define GATE_STREAM 0x67617465ull /* "gate" */

/* Tokens per block of the normal equations: a packed panel (TOK_BLOCK x PANEL doubles, 4 KB) of
 * each side of a tile stays in L1 while the tile accumulates over the block. */
#define TOK_BLOCK 64
#define PANEL 8
/* Column panels of X^T X per pass over the row panels (32 x 4 KB, within L2). */
#define CHUNK_PANELS 32

/* Rows of L per block of the factorisation (64 rows of 4096 doubles: 2 MB, within L2). */
#define CHOL_ROWS 64

/* The largest dim and n_experts of the calibrated fit. */
#define MAX_SIZE (1u << 24)

/* Ridge, relative to the mean diagonal of X^T X (the header's lambda). */
#define RIDGE 1e-3

lmoe_status moefy_gate_random(uint32_t n_experts, uint32_t dim, uint64_t seed, float *gate) {
    RETURN_ERROR_IF(n_experts == 0, LMOE_ERR_INVALID_ARGUMENT, "moefy_gate_random: n_experts is 0");
    RETURN_ERROR_IF(dim == 0, LMOE_ERR_INVALID_ARGUMENT, "moefy_gate_random: dim is 0");
    RETURN_ERROR_IF(!gate, LMOE_ERR_INVALID_ARGUMENT, "moefy_gate_random: gate is NULL");
    moefy_rng r = moefy_rng_make(seed, 0, GATE_STREAM);
    double scale = 1.0 / sqrt((double)dim);
    size_t n = (size_t)n_experts * dim;
    for (size_t i = 0; i < n; i++) gate[i] = (float)(moefy_rng_normal(&r) * scale);
    return LMOE_OK;
}

lmoe_status moefy_gate_centroid(const float *w_gate, uint32_t dim, const uint32_t *experts,
                                uint32_t n_experts, uint32_t expert_size, float *gate) {
    RETURN_ERROR_IF(n_experts == 0, LMOE_ERR_INVALID_ARGUMENT,
                    "moefy_gate_centroid: n_experts is 0");
    RETURN_ERROR_IF(expert_size == 0, LMOE_ERR_INVALID_ARGUMENT,
                    "moefy_gate_centroid: expert_size is 0");
    RETURN_ERROR_IF(dim == 0, LMOE_ERR_INVALID_ARGUMENT, "moefy_gate_centroid: dim is 0");
    RETURN_ERROR_IF(!w_gate || !experts || !gate, LMOE_ERR_INVALID_ARGUMENT,
                    "moefy_gate_centroid: w_gate, experts or gate is NULL");
    double *sum = malloc((size_t)dim * sizeof *sum);
    RETURN_ERROR_IF(!sum, LMOE_ERR_OUT_OF_MEMORY, "moefy_gate_centroid: out of memory (dim %u)",
                    dim);
    for (uint32_t j = 0; j < n_experts; j++) {
        memset(sum, 0, (size_t)dim * sizeof *sum);
        const uint32_t *ids = experts + (size_t)j * expert_size;
        for (uint32_t k = 0; k < expert_size; k++) {
            const float *row = w_gate + (size_t)ids[k] * dim;
            for (uint32_t c = 0; c < dim; c++) sum[c] += row[c];
        }
        float *out = gate + (size_t)j * dim;
        for (uint32_t c = 0; c < dim; c++) out[c] = (float)(sum[c] / expert_size);
    }
    free(sum);
    return LMOE_OK;
}

/* ---- calibrated ---- */

/* Where column c of a block's row t goes in its packed copy: panels of PANEL columns, token-major
 * inside a panel, so a tile kernel reads both of its operands sequentially. */
static size_t packed_at(size_t tb, size_t t, uint32_t c) {
    return ((size_t)(c / PANEL) * tb + t) * PANEL + c % PANEL;
}

/* Packs rows [t0, t0 + tb) of x (dim wide) into dst, zero past dim. Returns 0, or -1 with the
 * token and column of the first value that is not finite. */
static int pack_x(const float *x, size_t t0, size_t tb, uint32_t dim, double *dst, size_t *bad_t,
                  uint32_t *bad_c) {
    uint32_t padded = (dim + PANEL - 1) / PANEL * PANEL;
    for (size_t t = 0; t < tb; t++) {
        const float *row = x + (t0 + t) * dim;
        for (uint32_t c = 0; c < dim; c++) {
            if (!isfinite(row[c])) {
                *bad_t = t0 + t;
                *bad_c = c;
                return -1;
            }
            dst[packed_at(tb, t, c)] = row[c];
        }
        for (uint32_t c = dim; c < padded; c++) dst[packed_at(tb, t, c)] = 0.0;
    }
    return 0;
}

/* Packs rows [t0, t0 + tb) of target (n wide) like pack_x, each centred on its mean: top-k and
 * softmax ignore a per-token shift, so the fit should too. Same failure report. */
static int pack_y(const float *target, size_t t0, size_t tb, uint32_t n, double *dst, size_t *bad_t,
                  uint32_t *bad_c) {
    uint32_t padded = (n + PANEL - 1) / PANEL * PANEL;
    for (size_t t = 0; t < tb; t++) {
        const float *row = target + (t0 + t) * n;
        double mean = 0;
        for (uint32_t e = 0; e < n; e++) {
            if (!isfinite(row[e])) {
                *bad_t = t0 + t;
                *bad_c = e;
                return -1;
            }
            mean += row[e];
        }
        mean /= n;
        for (uint32_t e = 0; e < n; e++) dst[packed_at(tb, t, e)] = row[e] - mean;
        for (uint32_t e = n; e < padded; e++) dst[packed_at(tb, t, e)] = 0.0;
    }
    return 0;
}

/* out[r][c] += sum_t a[t][r] * b[t][c] for a PANEL x PANEL tile of packed panels a and b (only
 * n_rows x n_cols of it are stored; ld is out's row stride). Two rows at a time: their 2 x 8 sums
 * stay in registers (with four rows, clang spills them on x86-64). */
static void tile_add(const double *a, const double *b, size_t tb, double *out, size_t ld,
                     uint32_t n_rows, uint32_t n_cols) {
    for (uint32_t r0 = 0; r0 < n_rows; r0 += 2) {
        double acc[2][PANEL] = {{0}};
        for (size_t t = 0; t < tb; t++) {
            const double *at = a + t * PANEL + r0, *bt = b + t * PANEL;
            for (int r = 0; r < 2; r++)
                for (int c = 0; c < PANEL; c++) acc[r][c] += at[r] * bt[c];
        }
        for (uint32_t r = r0; r < r0 + 2 && r < n_rows; r++)
            for (uint32_t c = 0; c < n_cols; c++) out[r * ld + c] += acc[r - r0][c];
    }
}

/* Sum of a[k] * b[k]: even and odd k summed apart (a fixed order, so still deterministic), which
 * halves the dependency chain of one running sum. */
static double dot(const double *a, const double *b, uint32_t n) {
    double s0 = 0, s1 = 0;
    uint32_t k = 0;
    for (; k + 2 <= n; k += 2) {
        s0 += a[k] * b[k];
        s1 += a[k + 1] * b[k + 1];
    }
    if (k < n) s0 += a[k] * b[k];
    return s0 + s1;
}

/* dot() of four rows a0..a3 with one b, in the same order, so the result is dot()'s. */
static void dot4(const double *a0, const double *a1, const double *a2, const double *a3,
                 const double *b, uint32_t n, double out[4]) {
    double s00 = 0, s01 = 0, s10 = 0, s11 = 0, s20 = 0, s21 = 0, s30 = 0, s31 = 0;
    uint32_t k = 0;
    for (; k + 2 <= n; k += 2) {
        double b0 = b[k], b1 = b[k + 1];
        s00 += a0[k] * b0;
        s01 += a0[k + 1] * b1;
        s10 += a1[k] * b0;
        s11 += a1[k + 1] * b1;
        s20 += a2[k] * b0;
        s21 += a2[k + 1] * b1;
        s30 += a3[k] * b0;
        s31 += a3[k + 1] * b1;
    }
    if (k < n) {
        s00 += a0[k] * b[k];
        s10 += a1[k] * b[k];
        s20 += a2[k] * b[k];
        s30 += a3[k] * b[k];
    }
    out[0] = s00 + s01;
    out[1] = s10 + s11;
    out[2] = s20 + s21;
    out[3] = s30 + s31;
}

/* In place: the lower triangle of a (n x n, row-major) becomes L with L L^T = a (row by row,
 * Cholesky-Banachiewicz, by blocks of CHOL_ROWS rows). Fails (with a message) when a pivot is not
 * positive and finite: not positive definite, or NaN. */
static lmoe_status cholesky(double *a, uint32_t n) {
    for (uint32_t i0 = 0; i0 < n; i0 += CHOL_ROWS) {
        uint32_t i1 = n - i0 < CHOL_ROWS ? n : i0 + CHOL_ROWS;
        /* Left of the block its rows are independent: each finished row j of L is read from memory
         * once for the whole block (row by row, the factorisation is bound by reading L). */
        for (uint32_t j = 0; j < i0; j++) {
            const double *lj = a + (size_t)j * n;
            uint32_t i = i0;
            for (; i + 4 <= i1; i += 4) {
                double *li = a + (size_t)i * n, d[4];
                dot4(li, li + n, li + 2 * (size_t)n, li + 3 * (size_t)n, lj, j, d);
                for (int r = 0; r < 4; r++) {
                    double *lr = li + r * (size_t)n;
                    lr[j] = (lr[j] - d[r]) / lj[j];
                }
            }
            for (; i < i1; i++) {
                double *li = a + (size_t)i * n;
                li[j] = (li[j] - dot(li, lj, j)) / lj[j];
            }
        }
        for (uint32_t i = i0; i < i1; i++) {
            double *li = a + (size_t)i * n;
            for (uint32_t j = i0; j < i; j++) {
                const double *lj = a + (size_t)j * n;
                li[j] = (li[j] - dot(li, lj, j)) / lj[j];
            }
            double d = li[i] - dot(li, li, i);
            RETURN_ERROR_IF(!(d > 0) || !isfinite(d), LMOE_ERR_INVALID_ARGUMENT,
                            "moefy_gate_calibrated: the normal equations are not positive "
                            "definite (pivot %u is %g)",
                            i, d);
            li[i] = sqrt(d);
        }
    }
    return LMOE_OK;
}

/* Solves L L^T z = b in place for the m columns of b (n x m, row-major): both substitutions walk
 * rows of L and update whole rows of b, so every inner loop is contiguous. */
static void cholesky_solve(const double *l, uint32_t n, double *b, uint32_t m) {
    for (uint32_t i = 0; i < n; i++) { /* L w = b */
        const double *li = l + (size_t)i * n;
        double *bi = b + (size_t)i * m;
        for (uint32_t k = 0; k < i; k++) {
            const double *bk = b + (size_t)k * m;
            for (uint32_t e = 0; e < m; e++) bi[e] -= li[k] * bk[e];
        }
        for (uint32_t e = 0; e < m; e++) bi[e] /= li[i];
    }
    for (uint32_t k = n; k-- > 0;) { /* L^T z = w, finishing row k then removing it from the rest */
        const double *lk = l + (size_t)k * n;
        double *bk = b + (size_t)k * m;
        for (uint32_t e = 0; e < m; e++) bk[e] /= lk[k];
        for (uint32_t i = 0; i < k; i++) {
            double *bi = b + (size_t)i * m;
            for (uint32_t e = 0; e < m; e++) bi[e] -= lk[i] * bk[e];
        }
    }
}

lmoe_status moefy_gate_calibrated(const float *x, const float *target, size_t n_tokens, uint32_t dim,
                                  uint32_t n_experts, float *gate) {
    RETURN_ERROR_IF(n_tokens == 0, LMOE_ERR_INVALID_ARGUMENT,
                    "moefy_gate_calibrated: n_tokens is 0");
    RETURN_ERROR_IF(dim == 0, LMOE_ERR_INVALID_ARGUMENT, "moefy_gate_calibrated: dim is 0");
    RETURN_ERROR_IF(n_experts == 0, LMOE_ERR_INVALID_ARGUMENT,
                    "moefy_gate_calibrated: n_experts is 0");
    RETURN_ERROR_IF(!x || !target || !gate, LMOE_ERR_INVALID_ARGUMENT,
                    "moefy_gate_calibrated: x, target or gate is NULL");

    /* Far beyond any model; keeps the index arithmetic below in range. */
    RETURN_ERROR_IF(dim > MAX_SIZE || n_experts > MAX_SIZE, LMOE_ERR_INVALID_ARGUMENT,
                    "moefy_gate_calibrated: dim %u or n_experts %u is above %u", dim, n_experts,
                    MAX_SIZE);
    /* On 32-bit hosts the buffers' sizes may not fit a size_t. */
    size_t max_doubles = SIZE_MAX / sizeof(double);
    RETURN_ERROR_IF((size_t)dim > max_doubles / dim ||
                        (size_t)n_experts + PANEL > max_doubles / ((size_t)dim + TOK_BLOCK),
                    LMOE_ERR_OUT_OF_MEMORY,
                    "moefy_gate_calibrated: dim %u and %u experts are too large for this host", dim,
                    n_experts);
    uint32_t xp = (dim + PANEL - 1) / PANEL, yp = (n_experts + PANEL - 1) / PANEL;
    double *xtx = calloc((size_t)dim * dim, sizeof *xtx);
    double *xty = calloc((size_t)dim * n_experts, sizeof *xty);
    double *xb = malloc((size_t)TOK_BLOCK * xp * PANEL * sizeof *xb);
    double *yb = malloc((size_t)TOK_BLOCK * yp * PANEL * sizeof *yb);
    lmoe_status status = LMOE_OK;
    if (!xtx || !xty || !xb || !yb) {
        status = lmoe_error(LMOE_ERR_OUT_OF_MEMORY,
                            "moefy_gate_calibrated: out of memory (dim %u, %u experts)", dim,
                            n_experts);
        goto done;
    }

    for (size_t t0 = 0; t0 < n_tokens; t0 += TOK_BLOCK) {
        size_t tb = n_tokens - t0 < TOK_BLOCK ? n_tokens - t0 : TOK_BLOCK;
        size_t bad_t = 0;
        uint32_t bad_c = 0;
        if (pack_x(x, t0, tb, dim, xb, &bad_t, &bad_c) != 0) {
            status = lmoe_error(LMOE_ERR_INVALID_ARGUMENT,
                                "moefy_gate_calibrated: x[%zu][%u] is not finite", bad_t, bad_c);
            goto done;
        }
        if (pack_y(target, t0, tb, n_experts, yb, &bad_t, &bad_c) != 0) {
            status = lmoe_error(LMOE_ERR_INVALID_ARGUMENT,
                                "moefy_gate_calibrated: target[%zu][%u] is not finite", bad_t,
                                bad_c);
            goto done;
        }

        /* X^T X: the tiles on and above the diagonal (mirrored at the end), a chunk of column
         * panels at a time so that the chunk stays in L2 while every row panel passes by. */
        for (uint32_t pc = 0; pc < xp; pc += CHUNK_PANELS) {
            uint32_t pc_end = xp - pc < CHUNK_PANELS ? xp : pc + CHUNK_PANELS;
            for (uint32_t pi = 0; pi < pc_end; pi++) {
                uint32_t i0 = pi * PANEL, ni = dim - i0 < PANEL ? dim - i0 : PANEL;
                const double *a = xb + (size_t)pi * tb * PANEL;
                for (uint32_t pj = pi > pc ? pi : pc; pj < pc_end; pj++) {
                    uint32_t j0 = pj * PANEL, nj = dim - j0 < PANEL ? dim - j0 : PANEL;
                    tile_add(a, xb + (size_t)pj * tb * PANEL, tb, xtx + (size_t)i0 * dim + j0,
                             dim, ni, nj);
                }
            }
        }
        for (uint32_t pi = 0; pi < xp; pi++) { /* X^T Y */
            uint32_t i0 = pi * PANEL, ni = dim - i0 < PANEL ? dim - i0 : PANEL;
            const double *a = xb + (size_t)pi * tb * PANEL;
            for (uint32_t pj = 0; pj < yp; pj++) {
                uint32_t j0 = pj * PANEL, nj = n_experts - j0 < PANEL ? n_experts - j0 : PANEL;
                tile_add(a, yb + (size_t)pj * tb * PANEL, tb, xty + (size_t)i0 * n_experts + j0,
                         n_experts, ni, nj);
            }
        }
    }
    for (uint32_t i = 0; i < dim; i++)
        for (uint32_t j = 0; j < i; j++) xtx[(size_t)i * dim + j] = xtx[(size_t)j * dim + i];

    double trace = 0;
    for (uint32_t i = 0; i < dim; i++) trace += xtx[(size_t)i * dim + i];
    if (!(trace > 0)) {
        status = lmoe_error(LMOE_ERR_INVALID_ARGUMENT, "moefy_gate_calibrated: x is all zeros");
        goto done;
    }
    double lambda = RIDGE * trace / dim;
    for (uint32_t i = 0; i < dim; i++) xtx[(size_t)i * dim + i] += lambda;

    status = cholesky(xtx, dim);
    if (status != LMOE_OK) goto done;
    cholesky_solve(xtx, dim, xty, n_experts); /* xty becomes G^T (dim, n_experts) */
    for (uint32_t e = 0; e < n_experts; e++)
        for (uint32_t c = 0; c < dim; c++)
            gate[(size_t)e * dim + c] = (float)xty[(size_t)c * n_experts + e];

done:
    free(xtx);
    free(xty);
    free(xb);
    free(yb);
    return status;
}
