/* test_kernels.c - the kernel tables:
 *   - every table this CPU can run against straightforward double-precision references on
 *     random data with ragged sizes;
 *   - every table: no NULL function pointer;
 *   - every SIMD table against the generic oracle: ragged widths (0..70, 100, 257, 1000, 4099),
 *     row ranges not starting at 0, unaligned pointers, buffers that end right before an
 *     unreadable page (a load past the end crashes) or right before NaN bytes (a load past the
 *     end that is not masked poisons the result), zeros, large magnitudes, NaN and infinities;
 *     Q8_0 / Q4_0 weights and the Q8_0 quantisation of x;
 *   - the generic table against run.c's float order bit for bit;
 *   - the dispatcher: LLAMAMOE_KERNELS, lmoe_kernels_by_name, one choice for all threads, and the
 *     tables it offers against the compiler's own CPU feature checks.
 * Tables that are not built or that this CPU cannot run are named on stdout as skipped. */
#include <float.h>
#include <stddef.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include "arch/kernels.h"
#include "quant.h"
#include "test_util.h"

static const size_t sizes[] = {1, 3, 7, 17, 31, 33, 100, 1000};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float uniform(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng_state >> 40) / 16777216.0);
}

/* Random values, allocated one float past an aligned start so no kernel can rely on alignment. */
static float *random_vector(size_t n, float lo, float hi, float **to_free) {
    float *base = malloc((n + 1) * sizeof *base);
    *to_free = base;
    for (size_t i = 0; i <= n; i++) base[i] = uniform(lo, hi);
    return base + 1;
}

/* Bound for a float sum of n terms whose absolute values add up to abs_sum, with slack. */
static double sum_tolerance(size_t n, double abs_sum) {
    return 2.0 * (double)(n + 2) * FLT_EPSILON * abs_sum + 1e-30;
}

static void test_matvec(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n_cols = sizes[s], n_rows = 6;
        float *fw, *fx, *fy;
        float *w = random_vector(n_rows * n_cols, -1, 1, &fw);
        float *x = random_vector(n_cols, -1, 1, &fx);
        float *y = random_vector(n_rows, 0, 0, &fy);
        for (size_t r = 0; r < n_rows; r++) y[r] = 12345.0f; /* sentinel */
        k->matvec_f32(w, x, y, n_cols, 1, 5);
        CHECK(y[0] == 12345.0f && y[5] == 12345.0f); /* rows outside the range untouched */
        for (size_t r = 1; r < 5; r++) {
            double ref = 0.0, abs_sum = 0.0;
            for (size_t j = 0; j < n_cols; j++) {
                ref += (double)w[r * n_cols + j] * x[j];
                abs_sum += fabs((double)w[r * n_cols + j] * x[j]);
            }
            CHECK_MSG(fabs(y[r] - ref) <= sum_tolerance(n_cols, abs_sum),
                      "%s matvec n=%zu row %zu: %g vs %g", k->name, n_cols, r, y[r], ref);
        }
        free(fw), free(fx), free(fy);
    }
}

static void test_dot_axpy(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        float *fa, *fb, *fy;
        float *a = random_vector(n, -2, 2, &fa);
        float *b = random_vector(n, -2, 2, &fb);
        float *y = random_vector(n, -2, 2, &fy);
        double ref = 0.0, abs_sum = 0.0;
        for (size_t i = 0; i < n; i++) {
            ref += (double)a[i] * b[i];
            abs_sum += fabs((double)a[i] * b[i]);
        }
        float got = k->dot_f32(a, b, n);
        CHECK_MSG(fabs(got - ref) <= sum_tolerance(n, abs_sum), "%s dot n=%zu: %g vs %g",
                  k->name, n, got, ref);

        double *want = malloc(n * sizeof *want);
        for (size_t i = 0; i < n; i++) want[i] = y[i] + 0.75 * a[i];
        k->axpy(y, 0.75f, a, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += fabs(y[i] - want[i]) > 4 * FLT_EPSILON * (fabs(want[i]) + fabs(0.75 * a[i]));
        CHECK_MSG(bad == 0, "%s axpy n=%zu: %zu elements off", k->name, n, bad);
        free(want);
        free(fa), free(fb), free(fy);
    }
}

static void test_rmsnorm(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        float *fx, *fw, *fo;
        float *x = random_vector(n, -3, 3, &fx);
        float *weight = random_vector(n, 0.5f, 1.5f, &fw);
        float *out = random_vector(n, 0, 0, &fo);
        double ss = 0.0;
        for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
        double scale = 1.0 / sqrt(ss / (double)n + 1e-5);
        k->rmsnorm(out, x, weight, n, 1e-5f);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            double ref = weight[i] * scale * x[i];
            bad += fabs(out[i] - ref) > (double)(n + 8) * FLT_EPSILON * fabs(ref) + 1e-30;
        }
        CHECK_MSG(bad == 0, "%s rmsnorm n=%zu: %zu elements off", k->name, n, bad);
        k->rmsnorm(x, x, weight, n, 1e-5f); /* in place gives the same result */
        CHECK_MSG(memcmp(x, out, n * sizeof *x) == 0, "%s rmsnorm in place n=%zu", k->name, n);
        free(fx), free(fw), free(fo);
    }
}

static void test_softmax(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        float *fx;
        float *x = random_vector(n, -20, 20, &fx);
        x[n / 2] = 80.0f; /* expf(80) overflows unless the max is subtracted */
        double mx = x[0], sum = 0.0;
        for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        double *ref = malloc(n * sizeof *ref), *tol = malloc(n * sizeof *tol);
        for (size_t i = 0; i < n; i++) sum += ref[i] = exp((double)x[i] - mx);
        for (size_t i = 0; i < n; i++) {
            ref[i] /= sum;
            /* The float subtraction x - max is off by up to |x - max| * eps / 2, which exp turns
             * into a relative error of the same size; the sum adds about n * eps. */
            tol[i] = ((double)(n + 8) + fabs(x[i] - mx)) * FLT_EPSILON * ref[i] + 1e-37;
        }
        k->softmax(x, n);
        size_t bad = 0;
        double total = 0.0;
        for (size_t i = 0; i < n; i++) {
            bad += !(fabs(x[i] - ref[i]) <= tol[i]);
            total += x[i];
        }
        CHECK_MSG(bad == 0, "%s softmax n=%zu: %zu elements off", k->name, n, bad);
        CHECK(fabs(total - 1.0) < 1e-4);
        free(ref);
        free(tol);
        free(fx);
    }
}

static void test_swiglu(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        float *fg, *fu, *fo;
        float *gate = random_vector(n, -10, 10, &fg);
        float *up = random_vector(n, -3, 3, &fu);
        float *out = random_vector(n, 0, 0, &fo);
        k->swiglu(out, gate, up, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            double g = gate[i], ref = g / (1.0 + exp(-g)) * up[i];
            bad += fabs(out[i] - ref) > 8 * FLT_EPSILON * fabs(ref) + 1e-30;
        }
        CHECK_MSG(bad == 0, "%s swiglu n=%zu: %zu elements off", k->name, n, bad);
        k->swiglu(gate, gate, up, n); /* out aliasing gate */
        CHECK_MSG(memcmp(gate, out, n * sizeof *out) == 0, "%s swiglu in place n=%zu", k->name, n);
        free(fg), free(fu), free(fo);
    }
}

/* The generic table is the oracle for llama2.c run.c's numbers: its results must equal run.c's
 * float operations in run.c's order exactly, not just within a tolerance. */
static void test_generic_is_runc_order(void) {
    const lmoe_kernels *k = lmoe_kernels_generic();
    size_t n = 1000, rows = 3;
    float *fw, *fx, *fg, *fo;
    float *w = random_vector(rows * n, -1, 1, &fw);
    float *x = random_vector(n, -1, 1, &fx);
    float *weight = random_vector(n, 0.5f, 1.5f, &fg);
    float *out = random_vector(n, 0, 0, &fo);
    float y[3];
    k->matvec_f32(w, x, y, n, 0, rows);
    int exact = 1;
    for (size_t r = 0; r < rows; r++) {
        float val = 0.0f;
        for (size_t j = 0; j < n; j++) val += w[r * n + j] * x[j];
        exact &= val == y[r];
    }
    CHECK_MSG(exact, "generic matvec differs from run.c's matmul");

    k->rmsnorm(out, x, weight, n, 1e-5f);
    float ss = 0.0f;
    for (size_t j = 0; j < n; j++) ss += x[j] * x[j];
    ss /= (float)n;
    ss += 1e-5f;
    ss = 1.0f / sqrtf(ss);
    exact = 1;
    for (size_t j = 0; j < n; j++) exact &= out[j] == weight[j] * (ss * x[j]);
    CHECK_MSG(exact, "generic rmsnorm differs from run.c's rmsnorm");

    memcpy(out, x, n * sizeof *x);
    k->softmax(out, n);
    float mx = x[0], sum = 0.0f;
    for (size_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (size_t i = 0; i < n; i++) sum += expf(x[i] - mx);
    exact = 1;
    for (size_t i = 0; i < n; i++) exact &= out[i] == expf(x[i] - mx) / sum;
    CHECK_MSG(exact, "generic softmax differs from run.c's softmax");

    k->swiglu(out, x, weight, n);
    exact = 1;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        v *= (1.0f / (1.0f + expf(-v)));
        v *= weight[i];
        exact &= out[i] == v;
    }
    CHECK_MSG(exact, "generic swiglu differs from run.c's SwiGLU");
    free(fw), free(fx), free(fg), free(fo);
}

/* Every field after the name is a function pointer; none may be NULL (a field added to the
 * struct but not to a table would otherwise crash only when a model needs it), except the
 * optional batched kernels at the end (test_gemm.c). */
static void check_no_null_fields(const lmoe_kernels *k) {
    size_t first = offsetof(lmoe_kernels, matvec_f32);
    size_t n_fields = (offsetof(lmoe_kernels, gemm_q8_0) - first) / sizeof(void (*)(void));
    for (size_t i = 0; i < n_fields; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)k + first + i * sizeof fn, sizeof fn);
        CHECK_MSG(fn != NULL, "table '%s': function pointer %zu of %zu is NULL", k->name, i,
                  n_fields);
    }
}

static void test_table(const lmoe_kernels *k) {
    CHECK(k->name != NULL);
    check_no_null_fields(k);
    test_matvec(k);
    test_dot_axpy(k);
    test_rmsnorm(k);
    test_softmax(k);
    test_swiglu(k);
}

/* ------------------------------------------------------------------------------------------------
 * SIMD tables against the generic oracle
 * ---------------------------------------------------------------------------------------------- */

/* Where a test buffer sits in memory. */
typedef enum placement {
    PLACE_BEFORE_GUARD, /* its last byte is followed by a PROT_NONE page: reading past it crashes */
    PLACE_UNALIGNED     /* starts one element past a 64-byte boundary; NaN bytes follow its end */
} placement;

typedef struct test_buffer {
    void *data;      /* the elements */
    void *block;     /* what was mapped or allocated */
    size_t block_bytes;
    placement where;
} test_buffer;

/* n elements of elem_size bytes (n may be 0), placed as where says; contents unspecified. */
static void *buffer_alloc(test_buffer *b, size_t n, size_t elem_size, placement where) {
    size_t bytes = n * elem_size;
    b->where = where;
    if (where == PLACE_BEFORE_GUARD) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        size_t data_pages = (bytes + page - 1) / page;
        b->block_bytes = (data_pages + 1) * page;
        int fd = open("/dev/zero", O_RDWR);
        b->block = fd < 0 ? MAP_FAILED
                          : mmap(NULL, b->block_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        if (fd >= 0) close(fd);
        if (b->block == MAP_FAILED ||
            mprotect((char *)b->block + data_pages * page, page, PROT_NONE) != 0) {
            fprintf(stderr, "cannot map a guarded buffer\n");
            exit(1);
        }
        b->data = (char *)b->block + data_pages * page - bytes;
    } else {
        /* 64 bytes of slack on both sides; the bytes after the end are NaN */
        b->block_bytes = bytes + 3 * 64;
        if (posix_memalign(&b->block, 64, b->block_bytes) != 0) exit(1);
        memset(b->block, 0xff, b->block_bytes); /* 0xffff / 0xffffffff: NaN in every format */
        b->data = (char *)b->block + 64 + elem_size;
    }
    return b->data;
}

static void buffer_free(test_buffer *b) {
    if (b->where == PLACE_BEFORE_GUARD)
        munmap(b->block, b->block_bytes);
    else
        free(b->block);
}

/* The agreement the SIMD tables promise for sums: within 1e-5 of the scale of the terms. */
static int sum_close(double got, double want, double abs_sum) {
    if (isnan(want)) return isnan(got);
    return fabs(got - want) <= 1e-5 * abs_sum + 1e-6;
}

/* Element by element: relative 1e-5 (and NaN where generic has NaN, the same infinity where
 * generic has one). */
static int elem_close(float got, float want) {
    if (isnan(want)) return isnan(got);
    if (isinf(want)) return got == want;
    return fabs((double)got - want) <= 1e-5 * fabs((double)want) + 1e-37;
}

typedef enum weight_type { W_F32, W_F16, W_BF16 } weight_type;
static const char *const weight_type_names[] = {"f32", "f16", "bf16"};

static void run_matvec(const lmoe_kernels *k, weight_type type, const void *w, const float *x,
                       float *y, size_t n_cols, size_t r0, size_t r1) {
    if (type == W_F16)
        k->matvec_f16(w, x, y, n_cols, r0, r1);
    else if (type == W_BF16)
        k->matvec_bf16(w, x, y, n_cols, r0, r1);
    else
        k->matvec_f32(w, x, y, n_cols, r0, r1);
}

static const size_t matvec_widths_extra[] = {100, 257, 1000, 4096 + 3};
#define N_ROWS_TESTED 11
/* Row ranges: all rows, a range not starting at 0 (two groups of 4 and a leftover), a single
 * row, an empty range. */
static const size_t row_ranges[][2] = {{0, N_ROWS_TESTED}, {1, 10}, {5, 6}, {7, 7}};

/* One width, one weight type, one placement: table k against generic on every row range, the
 * same rows computed alone (a row's value must not depend on the rows computed with it), and the
 * 16-bit kernels against k's f32 kernel on the widened weights (bit for bit). scale multiplies
 * weights and x (large magnitudes). */
static void compare_matvec_case(const lmoe_kernels *k, weight_type type, size_t n_cols,
                                placement where, float scale) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    size_t n = N_ROWS_TESTED * n_cols;
    size_t elem = type == W_F32 ? sizeof(float) : sizeof(uint16_t);
    test_buffer bw, bwide, bx, by, byg, byw;
    void *w = buffer_alloc(&bw, n, elem, where);
    float *wide = buffer_alloc(&bwide, n, sizeof(float), where); /* w widened to f32 */
    float *x = buffer_alloc(&bx, n_cols, sizeof(float), where);
    float *y = buffer_alloc(&by, N_ROWS_TESTED, sizeof(float), where);
    float *y_gen = buffer_alloc(&byg, N_ROWS_TESTED, sizeof(float), where);
    float *y_wide = buffer_alloc(&byw, N_ROWS_TESTED, sizeof(float), where);
    for (size_t i = 0; i < n; i++) {
        float v = uniform(-1, 1) * scale;
        if (type == W_F16) {
            ((uint16_t *)w)[i] = lmoe_f32_to_f16(v);
            wide[i] = lmoe_f16_to_f32(((uint16_t *)w)[i]);
        } else if (type == W_BF16) {
            ((uint16_t *)w)[i] = lmoe_f32_to_bf16(v);
            wide[i] = lmoe_bf16_to_f32(((uint16_t *)w)[i]);
        } else {
            ((float *)w)[i] = wide[i] = v;
        }
    }
    for (size_t j = 0; j < n_cols; j++) x[j] = uniform(-1, 1) * scale;

    size_t bad = 0, bad_alone = 0, bad_sentinel = 0, bad_wide = 0;
    for (size_t c = 0; c < sizeof row_ranges / sizeof row_ranges[0]; c++) {
        size_t r0 = row_ranges[c][0], r1 = row_ranges[c][1];
        for (size_t r = 0; r < N_ROWS_TESTED; r++) y[r] = y_gen[r] = y_wide[r] = 12345.0f;
        run_matvec(k, type, w, x, y, n_cols, r0, r1);
        run_matvec(g, type, w, x, y_gen, n_cols, r0, r1);
        k->matvec_f32(wide, x, y_wide, n_cols, r0, r1);
        for (size_t r = 0; r < N_ROWS_TESTED; r++) {
            if (r < r0 || r >= r1) {
                bad_sentinel += y[r] != 12345.0f;
                continue;
            }
            double abs_sum = 0.0;
            for (size_t j = 0; j < n_cols; j++)
                abs_sum += fabs((double)wide[r * n_cols + j] * x[j]);
            if (!sum_close(y[r], y_gen[r], abs_sum)) {
                if (bad++ == 0)
                    fprintf(stderr, "  %s matvec_%s n_cols=%zu rows [%zu,%zu) row %zu: %.9g, "
                            "generic %.9g (sum|wx| %g)\n", k->name, weight_type_names[type],
                            n_cols, r0, r1, r, y[r], y_gen[r], abs_sum);
            }
            bad_wide += memcmp(&y[r], &y_wide[r], sizeof(float)) != 0;
            float alone = 0.0f;
            run_matvec(k, type, w, x, &alone - r, n_cols, r, r + 1);
            bad_alone += memcmp(&alone, &y[r], sizeof(float)) != 0;
        }
    }
    CHECK_MSG(bad == 0, "%s matvec_%s n_cols=%zu placement %d scale %g: %zu rows off generic",
              k->name, weight_type_names[type], n_cols, (int)where, scale, bad);
    CHECK_MSG(bad_sentinel == 0, "%s matvec_%s n_cols=%zu: %zu rows outside the range written",
              k->name, weight_type_names[type], n_cols, bad_sentinel);
    CHECK_MSG(bad_alone == 0, "%s matvec_%s n_cols=%zu: %zu rows differ when computed alone",
              k->name, weight_type_names[type], n_cols, bad_alone);
    CHECK_MSG(bad_wide == 0, "%s matvec_%s n_cols=%zu: %zu rows differ from matvec_f32 on the "
              "widened weights", k->name, weight_type_names[type], n_cols, bad_wide);
    buffer_free(&bw), buffer_free(&bwide), buffer_free(&bx);
    buffer_free(&by), buffer_free(&byg), buffer_free(&byw);
}

/* Zero x gives exactly 0; a NaN weight makes its row NaN and leaves the others alone; an
 * infinite x element makes every row with a nonzero weight there infinite or NaN as generic. */
static void compare_matvec_special(const lmoe_kernels *k, weight_type type) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    static const size_t widths[] = {5, 37, 64, 1000};
    for (size_t s = 0; s < sizeof widths / sizeof widths[0]; s++) {
        size_t n_cols = widths[s], n = 8 * n_cols;
        uint16_t *w16 = malloc(n * sizeof *w16);
        float *w32 = malloc(n * sizeof *w32), *x = malloc(n_cols * sizeof *x);
        float y[8], y_gen[8];
        for (size_t i = 0; i < n; i++) {
            w32[i] = uniform(-1, 1);
            w16[i] = type == W_F16 ? lmoe_f32_to_f16(w32[i]) : lmoe_f32_to_bf16(w32[i]);
        }
        const void *w = type == W_F32 ? (const void *)w32 : (const void *)w16;
        memset(x, 0, n_cols * sizeof *x);
        run_matvec(k, type, w, x, y, n_cols, 0, 8);
        int zeros = 1;
        for (int r = 0; r < 8; r++) zeros &= y[r] == 0.0f;
        CHECK_MSG(zeros, "%s matvec_%s n_cols=%zu: zero x does not give 0", k->name,
                  weight_type_names[type], n_cols);

        for (size_t j = 0; j < n_cols; j++) x[j] = uniform(-1, 1);
        size_t nan_row = 6, nan_col = n_cols - 1; /* in the ragged tail where there is one */
        w32[nan_row * n_cols + nan_col] = NAN;
        w16[nan_row * n_cols + nan_col] = 0x7fc0; /* NaN as bf16; as f16 0x7fc0 is NaN too */
        x[n_cols / 2] = INFINITY;
        run_matvec(k, type, w, x, y, n_cols, 0, 8);
        run_matvec(g, type, w, x, y_gen, n_cols, 0, 8);
        int same = 1;
        for (int r = 0; r < 8; r++) same &= isnan(y_gen[r]) ? isnan(y[r]) : y[r] == y_gen[r];
        CHECK_MSG(same && isnan(y[nan_row]), "%s matvec_%s n_cols=%zu: NaN / infinity differ "
                  "from generic", k->name, weight_type_names[type], n_cols);
        free(w16), free(w32), free(x);
    }
}

static void compare_matvec(const lmoe_kernels *k) {
    for (int type = W_F32; type <= W_BF16; type++) {
        for (size_t n_cols = 0; n_cols <= 70; n_cols++) {
            compare_matvec_case(k, (weight_type)type, n_cols, PLACE_BEFORE_GUARD, 1.0f);
            compare_matvec_case(k, (weight_type)type, n_cols, PLACE_UNALIGNED, 1.0f);
        }
        for (size_t s = 0; s < sizeof matvec_widths_extra / sizeof matvec_widths_extra[0]; s++) {
            size_t n_cols = matvec_widths_extra[s];
            compare_matvec_case(k, (weight_type)type, n_cols, PLACE_BEFORE_GUARD, 1.0f);
            compare_matvec_case(k, (weight_type)type, n_cols, PLACE_UNALIGNED, 1.0f);
        }
        /* products near 1e30 (sums near 1e33): no overflow where generic has none; f16 tops out
         * at 65504, so only the 8-bit-exponent formats are scaled */
        if (type != W_F16) compare_matvec_case(k, (weight_type)type, 1000, PLACE_UNALIGNED, 1e15f);
        compare_matvec_special(k, (weight_type)type);
    }
}

/* Widths for the vector kernels: every ragged end for 8 and 16 lanes, and long vectors. */
static size_t vector_width(size_t i) {
    return i <= 70 ? i : matvec_widths_extra[i - 71];
}
#define N_VECTOR_WIDTHS (71 + sizeof matvec_widths_extra / sizeof matvec_widths_extra[0])

static void compare_dot_axpy(const lmoe_kernels *k) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    for (size_t s = 0; s < N_VECTOR_WIDTHS; s++) {
        size_t n = vector_width(s);
        for (int where = PLACE_BEFORE_GUARD; where <= PLACE_UNALIGNED; where++) {
            test_buffer ba, bb, by, byg;
            float *a = buffer_alloc(&ba, n, sizeof(float), (placement)where);
            float *b = buffer_alloc(&bb, n, sizeof(float), (placement)where);
            float *y = buffer_alloc(&by, n, sizeof(float), (placement)where);
            float *y_gen = buffer_alloc(&byg, n, sizeof(float), (placement)where);
            double abs_sum = 0.0;
            for (size_t i = 0; i < n; i++) {
                a[i] = uniform(-2, 2), b[i] = uniform(-2, 2);
                y[i] = y_gen[i] = uniform(-2, 2);
                abs_sum += fabs((double)a[i] * b[i]);
            }
            float got = k->dot_f32(a, b, n), want = g->dot_f32(a, b, n);
            CHECK_MSG(sum_close(got, want, abs_sum), "%s dot n=%zu: %.9g, generic %.9g", k->name,
                      n, got, want);
            k->axpy(y, -0.375f, a, n);
            g->axpy(y_gen, -0.375f, a, n);
            size_t bad = 0;
            for (size_t i = 0; i < n; i++)
                bad += !(fabs((double)y[i] - y_gen[i]) <=
                         1e-5 * (fabs((double)y_gen[i]) + fabs(0.375 * a[i])) + 1e-37);
            CHECK_MSG(bad == 0, "%s axpy n=%zu: %zu elements off generic", k->name, n, bad);
            buffer_free(&ba), buffer_free(&bb), buffer_free(&by), buffer_free(&byg);
        }
    }
}

/* rmsnorm of x into out, and in place, against generic. */
static void compare_rmsnorm_on(const lmoe_kernels *k, const float *x, size_t n, const char *what) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    float *weight = malloc((n + 1) * sizeof *weight), *out = malloc((n + 1) * sizeof *out);
    float *out_gen = malloc((n + 1) * sizeof *out_gen);
    float *inplace = malloc((n + 1) * sizeof *inplace);
    for (size_t i = 0; i < n; i++) weight[i] = uniform(0.5f, 1.5f);
    memcpy(inplace, x, n * sizeof *x);
    k->rmsnorm(out, x, weight, n, 1e-5f);
    g->rmsnorm(out_gen, x, weight, n, 1e-5f);
    k->rmsnorm(inplace, inplace, weight, n, 1e-5f);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !elem_close(out[i], out_gen[i]);
    CHECK_MSG(bad == 0, "%s rmsnorm %s n=%zu: %zu elements off generic", k->name, what, n, bad);
    CHECK_MSG(memcmp(inplace, out, n * sizeof *out) == 0, "%s rmsnorm in place %s n=%zu", k->name,
              what, n);
    free(weight), free(out), free(out_gen), free(inplace);
}

static void compare_rmsnorm(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_VECTOR_WIDTHS; s++) {
        size_t n = vector_width(s);
        if (n == 0) continue; /* mean of nothing */
        test_buffer bx;
        placement where = s % 2 ? PLACE_UNALIGNED : PLACE_BEFORE_GUARD;
        float *x = buffer_alloc(&bx, n, sizeof(float), where);
        for (size_t i = 0; i < n; i++) x[i] = uniform(-3, 3);
        compare_rmsnorm_on(k, x, n, "random");
        for (size_t i = 0; i < n; i++) x[i] *= 1e15f; /* squares near 1e31 */
        compare_rmsnorm_on(k, x, n, "large");
        for (size_t i = 0; i < n; i++) x[i] *= 1e-30f; /* squares far below eps */
        compare_rmsnorm_on(k, x, n, "tiny");
        memset(x, 0, n * sizeof *x);
        compare_rmsnorm_on(k, x, n, "zeros");
        buffer_free(&bx);
    }
}

/* softmax of a copy of x against generic's. */
static void compare_softmax_on(const lmoe_kernels *k, const float *x, size_t n, const char *what) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    test_buffer b1, b2;
    float *got = buffer_alloc(&b1, n, sizeof(float), PLACE_BEFORE_GUARD);
    float *want = buffer_alloc(&b2, n, sizeof(float), PLACE_UNALIGNED);
    memcpy(got, x, n * sizeof *x);
    memcpy(want, x, n * sizeof *x);
    k->softmax(got, n);
    g->softmax(want, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !elem_close(got[i], want[i]);
    CHECK_MSG(bad == 0, "%s softmax %s n=%zu: %zu elements off generic", k->name, what, n, bad);
    buffer_free(&b1), buffer_free(&b2);
}

static void compare_softmax(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_VECTOR_WIDTHS; s++) {
        size_t n = vector_width(s);
        float *x = malloc((n + 1) * sizeof *x);
        for (size_t i = 0; i < n; i++) x[i] = uniform(-20, 20);
        compare_softmax_on(k, x, n, "random");
        if (n == 0) {
            free(x);
            continue;
        }
        x[n - 1] = 1e30f; /* the max in the ragged tail: everything else underflows to 0 */
        compare_softmax_on(k, x, n, "one huge");
        for (size_t i = 0; i < n; i++) x[i] = uniform(-1, 1) * 1e30f;
        compare_softmax_on(k, x, n, "large magnitudes");
        for (size_t i = 0; i < n; i++) x[i] = -3.5f;
        compare_softmax_on(k, x, n, "all equal");
        for (size_t i = 0; i < n; i++) x[i] = i % 3 ? -INFINITY : uniform(-5, 5); /* masked */
        compare_softmax_on(k, x, n, "with -inf");
        memset(x, 0, n * sizeof *x);
        compare_softmax_on(k, x, n, "zeros");
        free(x);
    }
}

static void compare_swiglu_on(const lmoe_kernels *k, const float *gate, const float *up,
                              size_t n, const char *what) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    test_buffer b1, b2, b3;
    float *out = buffer_alloc(&b1, n, sizeof(float), PLACE_BEFORE_GUARD);
    float *want = buffer_alloc(&b2, n, sizeof(float), PLACE_UNALIGNED);
    float *inplace = buffer_alloc(&b3, n, sizeof(float), PLACE_UNALIGNED);
    k->swiglu(out, gate, up, n);
    g->swiglu(want, gate, up, n);
    memcpy(inplace, gate, n * sizeof *gate);
    k->swiglu(inplace, inplace, up, n); /* out aliasing gate, as forward.c calls it */
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += !elem_close(out[i], want[i]);
    CHECK_MSG(bad == 0, "%s swiglu %s n=%zu: %zu elements off generic", k->name, what, n, bad);
    CHECK_MSG(memcmp(inplace, out, n * sizeof *out) == 0, "%s swiglu in place %s n=%zu", k->name,
              what, n);
    buffer_free(&b1), buffer_free(&b2), buffer_free(&b3);
}

static void compare_swiglu(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_VECTOR_WIDTHS; s++) {
        size_t n = vector_width(s);
        test_buffer bg, bu;
        placement where = s % 2 ? PLACE_UNALIGNED : PLACE_BEFORE_GUARD;
        float *gate = buffer_alloc(&bg, n, sizeof(float), where);
        float *up = buffer_alloc(&bu, n, sizeof(float), where);
        for (size_t i = 0; i < n; i++) gate[i] = uniform(-10, 10), up[i] = uniform(-3, 3);
        compare_swiglu_on(k, gate, up, n, "random");
        for (size_t i = 0; i < n; i++) gate[i] = uniform(-1, 1) * 1e30f; /* exp overflows to inf */
        compare_swiglu_on(k, gate, up, n, "large gate");
        memset(gate, 0, n * sizeof *gate);
        compare_swiglu_on(k, gate, up, n, "zero gate");
        buffer_free(&bg), buffer_free(&bu);
    }
}

/* ---- Q8_0 / Q4_0 ----
 * quantize_q8_0 must give generic's blocks byte for byte (quant.h's reference rounding); the
 * quantised matvecs must agree with generic within 1e-5 of the scale of their terms,
 * sum_b |d_w d_x dot_b| (the integer dot of each block is exact, only the float accumulation may
 * differ), and the x86 and NEON tables, which repeat generic's float operations lane by lane, must
 * equal it bit for bit. */

#define Q_ROWS 19
/* All rows (two groups of 8 and a leftover of 3), ranges not starting at 0, a single row, an
 * empty range, a range within one group. */
static const size_t q_row_ranges[][2] = {{0, Q_ROWS}, {1, 18}, {3, 11}, {5, 6}, {7, 7}, {16, 19}};
static const size_t q_widths[] = {32, 64, 96, 160, 256, 4096, 11008};
#define N_Q_WIDTHS (sizeof q_widths / sizeof q_widths[0])

/* Tables whose quantised products are generic's bit for bit (documented in their files). */
static int quantised_bit_exact(const lmoe_kernels *k) {
    return strcmp(k->name, "avx2") == 0 || strcmp(k->name, "avx512") == 0 ||
           strcmp(k->name, "avx512vnni") == 0 || strcmp(k->name, "neon") == 0 ||
           strcmp(k->name, "neon_dotprod") == 0;
}

static uint32_t rng_u32(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 32);
}

/* quantize_q8_0 of n floats against generic's, byte for byte, the input right before a guard
 * page and the output both before a guard page and unaligned. */
static void compare_quantize_on(const lmoe_kernels *k, const float *src, size_t n,
                                const char *what) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    size_t n_blocks = n / LMOE_QK;
    test_buffer bx, bq, bqu, bqg;
    float *x = buffer_alloc(&bx, n, sizeof(float), PLACE_BEFORE_GUARD);
    memcpy(x, src, n * sizeof *x);
    block_q8_0 *q = buffer_alloc(&bq, n_blocks, sizeof(block_q8_0), PLACE_BEFORE_GUARD);
    block_q8_0 *qu = buffer_alloc(&bqu, n_blocks, sizeof(block_q8_0), PLACE_UNALIGNED);
    block_q8_0 *q_gen = buffer_alloc(&bqg, n_blocks, sizeof(block_q8_0), PLACE_UNALIGNED);
    k->quantize_q8_0(x, q, n);
    k->quantize_q8_0(x, qu, n);
    g->quantize_q8_0(x, q_gen, n);
    size_t bad = 0;
    for (size_t b = 0; b < n_blocks; b++) {
        if (memcmp(&q[b], &q_gen[b], sizeof *q) == 0 && memcmp(&qu[b], &q_gen[b], sizeof *q) == 0)
            continue;
        if (bad++ == 0) {
            int j = 0;
            while (j < LMOE_QK && q[b].qs[j] == q_gen[b].qs[j]) j++;
            fprintf(stderr, "  %s quantize_q8_0 %s n=%zu block %zu: d %#x vs %#x; first differing "
                    "quant %d: %d vs %d (x %.9g)\n", k->name, what, n, b, q[b].d, q_gen[b].d, j,
                    j < LMOE_QK ? q[b].qs[j] : 0, j < LMOE_QK ? q_gen[b].qs[j] : 0,
                    j < LMOE_QK ? x[b * LMOE_QK + j] : 0.0);
        }
    }
    CHECK_MSG(bad == 0, "%s quantize_q8_0 %s n=%zu: %zu blocks differ from generic", k->name,
              what, n, bad);
    buffer_free(&bx), buffer_free(&bq), buffer_free(&bqu), buffer_free(&bqg);
}

static void compare_quantize(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_Q_WIDTHS; s++) {
        size_t n = q_widths[s];
        float *x = malloc(n * sizeof *x);
        for (size_t i = 0; i < n; i++) x[i] = uniform(-4, 4);
        compare_quantize_on(k, x, n, "random");
        for (size_t i = 0; i < n; i++) x[i] = uniform(-1, 1) * (i % 7 == 0 ? 1e30f : 1.0f);
        compare_quantize_on(k, x, n, "outliers");
        /* per block a different magnitude: large (d overflows f16 to infinity: 3e38 / 127), small
         * (d an f16 subnormal or 0), tiny (1e-30, still normal enough for generic's conversion) */
        static const float block_scale[] = {1.0f, 3e38f, 1e30f, 6e4f, 1e-3f, 1e-5f, 3e-7f, 1e-30f};
        for (size_t i = 0; i < n; i++)
            x[i] = uniform(-1, 1) * block_scale[(i / LMOE_QK) % 8];
        compare_quantize_on(k, x, n, "magnitudes");
        /* ties: a block whose max |x| is 127 * 2^e has d = 2^e and id = 2^-e exactly, so
         * (k + 0.5) * 2^e lands exactly on a half; also the floats next to the halves */
        for (size_t i = 0; i < n; i++) {
            size_t b = i / LMOE_QK, j = i % LMOE_QK;
            float scale = ldexpf(1.0f, (int)(b % 9) - 4);
            float v = ((float)(int)(rng_u32() % 255) - 127.0f) + 0.5f; /* -126.5 .. 127.5 */
            if (v > 127.0f) v = 127.0f;
            if (j % 4 == 1) v = nextafterf(v, 0.0f);
            if (j % 4 == 2) v = nextafterf(v, v > 0 ? 1000.0f : -1000.0f);
            x[i] = (j == 5 ? (b % 2 ? -127.0f : 127.0f) : v) * scale; /* the block's max */
        }
        compare_quantize_on(k, x, n, "ties");
        memset(x, 0, n * sizeof *x);
        for (size_t i = 0; i < n; i += 2) x[i] = -0.0f;
        compare_quantize_on(k, x, n, "zeros");
        for (size_t i = 0; i < n; i++) x[i] = (i / LMOE_QK) % 2 ? uniform(-2, 2) : 0.0f;
        compare_quantize_on(k, x, n, "zero blocks");
        free(x);
    }
}

/* One width, one placement: random Q8_0 / Q4_0 weights (every byte value, -128 included; scales
 * from 0 and f16 subnormals to large) against generic, with x from quantize_q8_0 (or random bytes
 * with -128 when x_min is set). */
static void compare_quantized_matvec_case(const lmoe_kernels *k, size_t n_cols, placement where,
                                          int x_min) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    size_t n_blocks = n_cols / LMOE_QK;
    test_buffer b8, b4, bx, by, byg;
    block_q8_0 *w8 = buffer_alloc(&b8, Q_ROWS * n_blocks, sizeof(block_q8_0), where);
    block_q4_0 *w4 = buffer_alloc(&b4, Q_ROWS * n_blocks, sizeof(block_q4_0), where);
    block_q8_0 *xq = buffer_alloc(&bx, n_blocks, sizeof(block_q8_0), where);
    float *y = buffer_alloc(&by, Q_ROWS, sizeof(float), where);
    float *y_gen = buffer_alloc(&byg, Q_ROWS, sizeof(float), where);
    static const float scales[] = {0.01f, 0.5f, 1e-3f, 3.0f, 0.0f, 2e-7f /* f16 subnormal */,
                                   0.02f, 1000.0f};
    for (size_t i = 0; i < Q_ROWS * n_blocks; i++) {
        float d = scales[rng_u32() % 8] * uniform(0.5f, 1.5f);
        w8[i].d = lmoe_f32_to_f16(d);
        w4[i].d = lmoe_f32_to_f16(d);
        for (int j = 0; j < LMOE_QK; j++) w8[i].qs[j] = (int8_t)(rng_u32() >> 24);
        for (int j = 0; j < LMOE_QK / 2; j++) w4[i].qs[j] = (uint8_t)(rng_u32() >> 24);
    }
    for (size_t j = 0; j < 2 * LMOE_QK; j++) w8[n_blocks - 1].qs[j % LMOE_QK] = -128;
    if (x_min) {
        for (size_t b = 0; b < n_blocks; b++) {
            xq[b].d = lmoe_f32_to_f16(uniform(0.001f, 0.1f));
            for (int j = 0; j < LMOE_QK; j++) xq[b].qs[j] = (int8_t)(rng_u32() >> 24);
        }
        xq[n_blocks / 2].qs[3] = -128;
    } else {
        float *x = malloc(n_cols * sizeof *x);
        for (size_t j = 0; j < n_cols; j++) x[j] = uniform(-4, 4) * (j % 61 == 0 ? 20.0f : 1.0f);
        memset(x + n_cols - LMOE_QK, 0, LMOE_QK * sizeof *x); /* an all-zero block: d = 0 */
        k->quantize_q8_0(x, xq, n_cols);
        free(x);
    }
    for (int q4 = 0; q4 <= 1; q4++) {
        const void *w = q4 ? (const void *)w4 : (const void *)w8;
        size_t bad = 0, bad_exact = 0, bad_sentinel = 0, bad_alone = 0;
        for (size_t c = 0; c < sizeof q_row_ranges / sizeof q_row_ranges[0]; c++) {
            size_t r0 = q_row_ranges[c][0], r1 = q_row_ranges[c][1];
            for (size_t r = 0; r < Q_ROWS; r++) y[r] = y_gen[r] = 12345.0f;
            (q4 ? k->matvec_q4_0 : k->matvec_q8_0)(w, xq, y, n_cols, r0, r1);
            (q4 ? g->matvec_q4_0 : g->matvec_q8_0)(w, xq, y_gen, n_cols, r0, r1);
            for (size_t r = 0; r < Q_ROWS; r++) {
                if (r < r0 || r >= r1) {
                    bad_sentinel += y[r] != 12345.0f;
                    continue;
                }
                /* the scale of the terms: sum over blocks of |d_w d_x dot_b| */
                double abs_sum = 0.0;
                for (size_t b = 0; b < n_blocks; b++) {
                    long dot = 0;
                    for (int j = 0; j < LMOE_QK; j++) {
                        const block_q4_0 *b4 = &w4[r * n_blocks + b];
                        int qw = q4 ? (j < 16 ? (b4->qs[j] & 15) : (b4->qs[j - 16] >> 4)) - 8
                                    : w8[r * n_blocks + b].qs[j];
                        dot += (long)qw * xq[b].qs[j];
                    }
                    uint16_t dw = q4 ? w4[r * n_blocks + b].d : w8[r * n_blocks + b].d;
                    abs_sum += fabs((double)lmoe_f16_to_f32(dw) * lmoe_f16_to_f32(xq[b].d) *
                                    (double)dot);
                }
                if (!sum_close(y[r], y_gen[r], abs_sum) && bad++ == 0)
                    fprintf(stderr, "  %s matvec_%s n_cols=%zu rows [%zu,%zu) row %zu: %.9g, "
                            "generic %.9g (sum|d_w d_x dot| %g)\n", k->name, q4 ? "q4_0" : "q8_0",
                            n_cols, r0, r1, r, y[r], y_gen[r], abs_sum);
                bad_exact += memcmp(&y[r], &y_gen[r], sizeof(float)) != 0;
                float alone = 0.0f;
                (q4 ? k->matvec_q4_0 : k->matvec_q8_0)(w, xq, &alone - r, n_cols, r, r + 1);
                bad_alone += memcmp(&alone, &y[r], sizeof(float)) != 0;
            }
        }
        const char *type = q4 ? "q4_0" : "q8_0";
        CHECK_MSG(bad == 0, "%s matvec_%s n_cols=%zu placement %d%s: %zu rows off generic",
                  k->name, type, n_cols, (int)where, x_min ? " x with -128" : "", bad);
        CHECK_MSG(!quantised_bit_exact(k) || bad_exact == 0, "%s matvec_%s n_cols=%zu placement "
                  "%d%s: %zu rows not bit-identical to generic", k->name, type, n_cols,
                  (int)where, x_min ? " x with -128" : "", bad_exact);
        CHECK_MSG(bad_sentinel == 0, "%s matvec_%s n_cols=%zu: %zu rows outside the range "
                  "written", k->name, type, n_cols, bad_sentinel);
        CHECK_MSG(bad_alone == 0, "%s matvec_%s n_cols=%zu: %zu rows differ when computed alone",
                  k->name, type, n_cols, bad_alone);
    }
    buffer_free(&b8), buffer_free(&b4), buffer_free(&bx), buffer_free(&by), buffer_free(&byg);
}

/* The _R16 types: random Q8_0 / Q4_0 rows (every byte value, -128 included) interleaved by
 * quant.c; matvec_q8_0_r16 / matvec_q4_0_r16 must give what generic's matvec_q8_0 / matvec_q4_0
 * gives for the same rows (generic's own _r16 kernels and the x86 tables bit for bit, the others
 * within sum_close), write only the groups asked for, and read nothing past the matrix. */
#define R16_TEST_ROWS 48
static const size_t r16_row_ranges[][2] = {{0, 48}, {16, 32}, {32, 48}, {0, 16}, {16, 16}};

static void compare_r16_matvec_case(const lmoe_kernels *k, size_t n_cols, placement where, int q8) {
    const lmoe_kernels *g = lmoe_kernels_generic();
    size_t n_blocks = n_cols / LMOE_QK, n_groups = R16_TEST_ROWS / LMOE_R16_ROWS;
    size_t block_bytes = q8 ? sizeof(block_q8_0) : sizeof(block_q4_0);
    block_q8_0 *w8 = malloc(R16_TEST_ROWS * n_blocks * sizeof *w8);
    block_q4_0 *w4 = malloc(R16_TEST_ROWS * n_blocks * sizeof *w4);
    block_q8_0 *xq = malloc(n_blocks * sizeof *xq);
    test_buffer bw, by;
    /* bytes, two at a time: the scales stay 2-aligned, nothing else is */
    char *w = buffer_alloc(&bw, R16_TEST_ROWS * n_blocks * block_bytes / 2, 2, where);
    float *y = buffer_alloc(&by, R16_TEST_ROWS, sizeof(float), where);
    float y_gen[R16_TEST_ROWS], y_r16_gen[R16_TEST_ROWS];
    for (size_t i = 0; i < R16_TEST_ROWS * n_blocks; i++) {
        w8[i].d = w4[i].d = lmoe_f32_to_f16(uniform(-0.1f, 0.1f) * (i % 7 == 0 ? 1000.0f : 1.0f));
        for (int j = 0; j < LMOE_QK; j++) w8[i].qs[j] = (int8_t)(rng_u32() >> 24);
        for (int j = 0; j < LMOE_QK / 2; j++) w4[i].qs[j] = (uint8_t)(rng_u32() >> 24);
    }
    /* a row of -128 everywhere: with an x of -128 everywhere (the second round below), the
     * largest products there are, which a kernel summing them in 16 bits would overflow */
    for (size_t b = 0; b < n_blocks; b++)
        for (int j = 0; j < LMOE_QK; j++) w8[5 * n_blocks + b].qs[j] = -128;
    for (size_t b = 0; b < n_blocks; b++) {
        xq[b].d = lmoe_f32_to_f16(uniform(0.001f, 0.1f));
        for (int j = 0; j < LMOE_QK; j++) xq[b].qs[j] = (int8_t)(rng_u32() >> 24);
    }
    xq[0].qs[0] = -128;
    for (size_t grp = 0; grp < n_groups; grp++) {
        if (q8)
            lmoe_q8_0_to_r16(w8 + grp * LMOE_R16_ROWS * n_blocks, n_blocks, n_blocks,
                             (block_q8_0_r16 *)w + grp * n_blocks);
        else
            lmoe_q4_0_to_r16(w4 + grp * LMOE_R16_ROWS * n_blocks, n_blocks, n_blocks,
                             (block_q4_0_r16 *)w + grp * n_blocks);
    }
    const char *type = q8 ? "q8_0_r16" : "q4_0_r16";
    size_t bad = 0, bad_exact = 0, bad_sentinel = 0, bad_generic = 0;
    size_t n_ranges = sizeof r16_row_ranges / sizeof r16_row_ranges[0];
    for (size_t c = 0; c < 2 * n_ranges; c++) {
        size_t r0 = r16_row_ranges[c % n_ranges][0], r1 = r16_row_ranges[c % n_ranges][1];
        if (c == n_ranges) /* second round: x all -128 */
            for (size_t b = 0; b < n_blocks; b++) memset(xq[b].qs, 0x80, LMOE_QK);
        for (size_t r = 0; r < R16_TEST_ROWS; r++) y[r] = y_gen[r] = y_r16_gen[r] = 12345.0f;
        (q8 ? k->matvec_q8_0_r16 : k->matvec_q4_0_r16)(w, xq, y, n_cols, r0, r1);
        (q8 ? g->matvec_q8_0_r16 : g->matvec_q4_0_r16)(w, xq, y_r16_gen, n_cols, r0, r1);
        if (q8)
            g->matvec_q8_0(w8, xq, y_gen, n_cols, r0, r1);
        else
            g->matvec_q4_0(w4, xq, y_gen, n_cols, r0, r1);
        for (size_t r = 0; r < R16_TEST_ROWS; r++) {
            if (r < r0 || r >= r1) {
                bad_sentinel += y[r] != 12345.0f;
                continue;
            }
            double abs_sum = 0.0; /* a bound on sum_b |d_w d_x dot_b| */
            for (size_t b = 0; b < n_blocks; b++)
                abs_sum += fabs((double)lmoe_f16_to_f32(w8[r * n_blocks + b].d) *
                                lmoe_f16_to_f32(xq[b].d)) * 32 * 128 * 128;
            if (!sum_close(y[r], y_gen[r], abs_sum) && bad++ == 0)
                fprintf(stderr, "  %s matvec_%s n_cols=%zu rows [%zu,%zu) row %zu: %.9g, "
                        "generic %.9g\n", k->name, type, n_cols, r0, r1, r, y[r], y_gen[r]);
            bad_exact += memcmp(&y[r], &y_gen[r], sizeof(float)) != 0;
            bad_generic += memcmp(&y_r16_gen[r], &y_gen[r], sizeof(float)) != 0;
        }
    }
    CHECK_MSG(bad == 0, "%s matvec_%s n_cols=%zu placement %d: %zu rows off generic", k->name,
              type, n_cols, (int)where, bad);
    CHECK_MSG(!quantised_bit_exact(k) || bad_exact == 0, "%s matvec_%s n_cols=%zu: %zu rows not "
              "bit-identical to generic's", k->name, type, n_cols, bad_exact);
    CHECK_MSG(bad_generic == 0, "generic matvec_%s n_cols=%zu: %zu rows not bit-identical to its "
              "plain type's", type, n_cols, bad_generic);
    CHECK_MSG(bad_sentinel == 0, "%s matvec_%s n_cols=%zu: %zu rows outside the range written",
              k->name, type, n_cols, bad_sentinel);
    buffer_free(&bw), buffer_free(&by);
    free(w8), free(w4), free(xq);
}

static void compare_quantized(const lmoe_kernels *k) {
    compare_quantize(k);
    for (size_t s = 0; s < N_Q_WIDTHS; s++) {
        compare_quantized_matvec_case(k, q_widths[s], PLACE_BEFORE_GUARD, 0);
        compare_quantized_matvec_case(k, q_widths[s], PLACE_UNALIGNED, 0);
        compare_quantized_matvec_case(k, q_widths[s], s % 2 ? PLACE_UNALIGNED : PLACE_BEFORE_GUARD,
                                      1);
        for (int q8 = 0; q8 <= 1; q8++) {
            compare_r16_matvec_case(k, q_widths[s], PLACE_BEFORE_GUARD, q8);
            compare_r16_matvec_case(k, q_widths[s], PLACE_UNALIGNED, q8);
        }
    }
}

static void compare_with_generic(const lmoe_kernels *k) {
    int failures_before = test_failures;
    compare_matvec(k);
    compare_dot_axpy(k);
    compare_rmsnorm(k);
    compare_softmax(k);
    compare_swiglu(k);
    compare_quantized(k);
    printf("table '%s' against generic: %s\n", k->name,
           test_failures == failures_before ? "ok" : "FAILED");
}

/* ------------------------------------------------------------------------------------------------
 * the dispatcher
 * ---------------------------------------------------------------------------------------------- */

/* What the compiler's runtime (libgcc / compiler-rt, which also check the OS's XGETBV state) says
 * this CPU can run: an independent check of dispatch.c's CPUID code. -1: no opinion. */
static int cpu_should_run(const char *name) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (strcmp(name, "avx2") == 0) return avx2;
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
    if (strcmp(name, "avx512") == 0) return avx512;
    if (strcmp(name, "avx512vnni") == 0) return avx512 && __builtin_cpu_supports("avx512vnni");
#endif
    if (strcmp(name, "generic") == 0) return 1;
    return -1;
}

/* lmoe_kernels_by_name for every compiled table, against the compiler's CPU checks. */
static void test_by_name(void) {
    CHECK(lmoe_kernels_by_name("generic") == lmoe_kernels_generic());
    CHECK(lmoe_kernels_by_name("no-such-kernels") == NULL);
    CHECK(lmoe_kernels_by_name("") == NULL);
    CHECK(lmoe_kernels_by_name(NULL) == NULL);
    const char *const *names = lmoe_kernels_compiled();
    size_t n = 0;
    while (names[n] != NULL) n++;
    CHECK(n >= 1 && strcmp(names[n - 1], "generic") == 0);
    for (size_t i = 0; i < n; i++) {
        const lmoe_kernels *k = lmoe_kernels_by_name(names[i]);
        int expected = cpu_should_run(names[i]);
        CHECK_MSG(k == NULL || strcmp(k->name, names[i]) == 0, "by_name(%s) gives '%s'",
                  names[i], k->name);
        CHECK_MSG(expected < 0 || expected == (k != NULL),
                  "dispatch says this CPU %s run '%s', the compiler's CPU check disagrees",
                  k ? "can" : "cannot", names[i]);
    }
}

/* Each table this CPU can run is the one LLAMAMOE_KERNELS=name selects (in a child process:
 * the choice is made once per process). */
static void test_forced_choice(const char *name) {
    pid_t pid = fork();
    if (pid == 0) {
        setenv("LLAMAMOE_KERNELS", name, 1);
        const lmoe_kernels *k = lmoe_kernels_select();
        _exit(k == lmoe_kernels_by_name(name) && strcmp(k->name, name) == 0 ? 0 : 1);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "LLAMAMOE_KERNELS=%s", name);
}

/* In a child process (the choice is made once per process): an unknown LLAMAMOE_KERNELS name
 * falls back to generic rather than failing. */
static void test_unknown_name_falls_back(void) {
    pid_t pid = fork();
    if (pid == 0) {
        setenv("LLAMAMOE_KERNELS", "no-such-kernels", 1);
        const lmoe_kernels *k = lmoe_kernels_select();
        _exit(k == lmoe_kernels_generic() && strcmp(k->name, "generic") == 0 ? 0 : 1);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* In a child process with LLAMAMOE_KERNELS unset: dispatch picks the first table of the compiled
 * list (best first) that this CPU runs, and it passes the checks against the double references. */
static void test_default_choice(void) {
    pid_t pid = fork();
    if (pid == 0) {
        unsetenv("LLAMAMOE_KERNELS");
        const lmoe_kernels *k = lmoe_kernels_select();
        printf("dispatch picks '%s' on this CPU\n", k->name);
        const lmoe_kernels *best = NULL;
        for (const char *const *name = lmoe_kernels_compiled(); best == NULL && *name; name++)
            best = lmoe_kernels_by_name(*name);
        CHECK_MSG(k == best, "dispatch picks '%s', the best table this CPU runs is '%s'",
                  k->name, best ? best->name : "(none)");
        test_table(k);
        fflush(stdout); /* _exit does not flush */
        _exit(test_failures == 0 ? 0 : 1);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void *select_from_thread(void *out) {
    *(const lmoe_kernels **)out = lmoe_kernels_select();
    return NULL;
}

/* Threads racing for the first choice all get the same table. */
static void test_select_threads(void) {
    pthread_t threads[4];
    const lmoe_kernels *got[4] = {0};
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, select_from_thread, &got[i]);
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 4; i++) CHECK(got[i] == got[0] && got[i] != NULL);
    CHECK(lmoe_kernels_select() == got[0]);
    CHECK(strcmp(got[0]->name, "generic") == 0);
}

int main(void) {
    fflush(stdout);
    test_unknown_name_falls_back();
    test_default_choice();
    test_by_name();

    /* every table: against double references; SIMD ones also against generic */
    static const char *const known[] = {"avx512vnni", "avx512", "avx2", "neon_dotprod",
                                        "neon", "generic"};
    char tested[64] = "", skipped[256] = "";
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        int built = 0;
        for (const char *const *name = lmoe_kernels_compiled(); *name; name++)
            built |= strcmp(*name, known[i]) == 0;
        const lmoe_kernels *k = lmoe_kernels_by_name(known[i]);
        if (!built || k == NULL) {
            size_t len = strlen(skipped);
            snprintf(skipped + len, sizeof skipped - len, "%s'%s' (%s)", len ? ", " : "",
                     known[i], !built ? "not built for this target or compiler"
                                      : "this CPU or OS cannot run it");
            continue;
        }
        test_forced_choice(known[i]);
        test_table(k);
        if (k != lmoe_kernels_generic()) compare_with_generic(k);
        size_t len = strlen(tested);
        snprintf(tested + len, sizeof tested - len, "%s%s", len ? " " : "", k->name);
    }
    printf("kernel tables tested: %s\n", tested);
    if (skipped[0]) printf("kernel tables SKIPPED: %s\n", skipped);

    setenv("LLAMAMOE_KERNELS", "generic", 1); /* before the first choice in this process */
    test_select_threads();
    CHECK(lmoe_kernels_select() == lmoe_kernels_generic());
    test_generic_is_runc_order();
    return test_finish("test_kernels");
}
