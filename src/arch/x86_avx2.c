/* x86_avx2.c - the kernel table for x86-64 CPUs with AVX2, FMA and F16C ("avx2").
 *
 * CMakeLists.txt compiles this file, and only this file, with -mavx2 -mfma -mf16c; dispatch.c
 * hands the table out only after CPUID and XGETBV say the CPU and the OS support it. Elsewhere
 * (another architecture, or a compiler without those flags) the file compiles to nothing.
 *
 * Numerics against generic.c (the oracle):
 *   - matvec_* and dot_f32 split each sum over 8 lanes and two accumulators and use FMA, so they
 *     differ from the sequential sum in the last bits; test_kernels.c bounds the difference. A
 *     row's result does not depend on which rows are computed with it (the 4-row and 1-row paths
 *     do the same operations in the same order), and the f16 / bf16 kernels equal the f32 kernel
 *     on exactly widened weights, bit for bit.
 *   - rmsnorm differs only in its sum of squares; axpy, softmax and swiglu do generic's float
 *     operations element by element (expf stays libm's, one lane at a time) and so give
 *     generic's results exactly. */
#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"

/* Products and sums are fused only where an FMA intrinsic says so (as in generic.c for clang;
 * GCC in ISO C mode does not contract). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define LANES 8
#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef enum weight_kind { WEIGHTS_F32, WEIGHTS_F16, WEIGHTS_BF16 } weight_kind;

static ALWAYS_INLINE size_t weight_bytes(weight_kind kind) {
    return kind == WEIGHTS_F32 ? sizeof(float) : sizeof(uint16_t);
}

/* 8 consecutive weights starting at element j of row, widened exactly to f32. */
static ALWAYS_INLINE __m256 load_weights(const void *row, size_t j, weight_kind kind) {
    if (kind == WEIGHTS_F32) return _mm256_loadu_ps((const float *)row + j);
    __m128i half = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + j));
    if (kind == WEIGHTS_F16) return _mm256_cvtph_ps(half);
    /* bfloat16 is the top half of an f32 */
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16));
}

/* Lane masks for the ragged end of a vector: mask_for_tail(n) enables lanes 0 .. n-1 (n < 8). */
static const int32_t tail_mask_table[2 * LANES] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                   0,  0,  0,  0,  0,  0,  0,  0};
static ALWAYS_INLINE __m256i mask_for_tail(size_t n) {
    return _mm256_loadu_si256((const __m256i *)(tail_mask_table + LANES - n));
}

/* The last n (< 8) weights of a row from element j, zero-padded to 8. Masked loads never touch
 * the disabled lanes, so nothing past the row is read (it may be the end of the mapping). */
static ALWAYS_INLINE __m256 load_weights_tail(const void *row, size_t j, size_t n,
                                              weight_kind kind) {
    if (kind == WEIGHTS_F32) return _mm256_maskload_ps((const float *)row + j, mask_for_tail(n));
    uint16_t padded[LANES] = {0};
    memcpy(padded, (const uint16_t *)row + j, n * sizeof(uint16_t));
    return load_weights(padded, 0, kind);
}

/* Sum of the 16 lanes of a + b, always in the same order. */
static ALWAYS_INLINE float reduce_sum(__m256 a, __m256 b) {
    __m256 s = _mm256_add_ps(a, b);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/* y[i] = rows[i] . x for N_ROWS (1 or 4) rows sharing each load of x. Per row: even 8-blocks go
 * to accumulator a, odd ones and the ragged tail to b. The loops over i have a constant trip
 * count and are unrolled, so the accumulators stay in registers (4 rows: 8 of them, enough
 * independent FMA chains to hide the FMA latency). */
static ALWAYS_INLINE void dot_rows(const void *const *rows, int n_rows, const float *x,
                                   size_t n_cols, weight_kind kind, float *y) {
    __m256 a[4], b[4];
    for (int i = 0; i < n_rows; i++) a[i] = b[i] = _mm256_setzero_ps();
    size_t j = 0;
    for (; j + 2 * LANES <= n_cols; j += 2 * LANES) {
        __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + LANES);
        for (int i = 0; i < n_rows; i++) {
            a[i] = _mm256_fmadd_ps(load_weights(rows[i], j, kind), x0, a[i]);
            b[i] = _mm256_fmadd_ps(load_weights(rows[i], j + LANES, kind), x1, b[i]);
        }
    }
    if (j + LANES <= n_cols) {
        __m256 x0 = _mm256_loadu_ps(x + j);
        for (int i = 0; i < n_rows; i++)
            a[i] = _mm256_fmadd_ps(load_weights(rows[i], j, kind), x0, a[i]);
        j += LANES;
    }
    if (j < n_cols) {
        size_t n = n_cols - j;
        __m256 xt = _mm256_maskload_ps(x + j, mask_for_tail(n));
        for (int i = 0; i < n_rows; i++)
            b[i] = _mm256_fmadd_ps(load_weights_tail(rows[i], j, n, kind), xt, b[i]);
    }
    for (int i = 0; i < n_rows; i++) y[i] = reduce_sum(a[i], b[i]);
}

/* W (n_rows, n_cols) @ x (n_cols,) -> y[r] for r in [row_begin, row_end): four rows at a time,
 * then one at a time. */
static ALWAYS_INLINE void matvec(const void *w, const float *x, float *y, size_t n_cols,
                                 size_t row_begin, size_t row_end, weight_kind kind) {
    const char *base = w;
    size_t row_bytes = n_cols * weight_bytes(kind);
    size_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) {
        const void *rows[4] = {base + r * row_bytes, base + (r + 1) * row_bytes,
                               base + (r + 2) * row_bytes, base + (r + 3) * row_bytes};
        dot_rows(rows, 4, x, n_cols, kind, y + r);
    }
    for (; r < row_end; r++) {
        const void *rows[1] = {base + r * row_bytes};
        dot_rows(rows, 1, x, n_cols, kind, y + r);
    }
}

static void avx2_matvec_f32(const float *w, const float *x, float *y, size_t n_cols,
                            size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_F32);
}

static void avx2_matvec_f16(const uint16_t *w, const float *x, float *y, size_t n_cols,
                            size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_F16);
}

static void avx2_matvec_bf16(const uint16_t *w, const float *x, float *y, size_t n_cols,
                             size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_BF16);
}

/* a (n,) . b (n,): the one-row matvec, so dot_f32(w_row, x) == matvec_f32's y[r]. */
static float avx2_dot_f32(const float *a, const float *b, size_t n) {
    const void *rows[1] = {a};
    float sum;
    dot_rows(rows, 1, b, n, WEIGHTS_F32, &sum);
    return sum;
}

/* out (n,) = weight * (scale * x), scale = 1 / sqrt(mean(x^2) + eps). The scale is computed
 * before out is written, so out may alias x. */
static void avx2_rmsnorm(float *out, const float *x, const float *weight, size_t n, float eps) {
    const void *rows[1] = {x};
    float ss;
    dot_rows(rows, 1, x, n, WEIGHTS_F32, &ss);
    ss /= (float)n;
    ss += eps;
    float scale = 1.0f / sqrtf(ss);
    __m256 vscale = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        __m256 v = _mm256_mul_ps(vscale, _mm256_loadu_ps(x + i));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(weight + i), v));
    }
    for (; i < n; i++) out[i] = weight[i] * (scale * x[i]);
}

/* x (n,) <- exp(x - max) / sum. Only the max and the final division are vector operations;
 * expf and the sum run in generic's order, so the result equals generic's. */
static void avx2_softmax(float *x, size_t n) {
    if (n == 0) return;
    /* maxps(v, m) keeps m unless v > m, like generic's `if (x[i] > max_val)`: a NaN element is
     * skipped, and a NaN x[0] stays the max, exactly as there. */
    float max_val = x[0];
    size_t i = 0;
    if (n >= LANES) {
        __m256 vmax = _mm256_set1_ps(max_val);
        for (; i + LANES <= n; i += LANES) vmax = _mm256_max_ps(_mm256_loadu_ps(x + i), vmax);
        float lanes[LANES];
        _mm256_storeu_ps(lanes, vmax);
        for (int l = 0; l < LANES; l++)
            if (lanes[l] > max_val) max_val = lanes[l];
    }
    for (; i < n; i++)
        if (x[i] > max_val) max_val = x[i];
    float sum = 0.0f;
    for (i = 0; i < n; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    __m256 vsum = _mm256_set1_ps(sum);
    for (i = 0; i + LANES <= n; i += LANES)
        _mm256_storeu_ps(x + i, _mm256_div_ps(_mm256_loadu_ps(x + i), vsum));
    for (; i < n; i++) x[i] /= sum;
}

/* out (n,) = silu(gate) * up = (gate * (1 / (1 + exp(-gate)))) * up, generic's operations; the
 * exponentials of a block are taken first, so out may alias gate (or up). */
static void avx2_swiglu(float *out, const float *gate, const float *up, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        float e[LANES];
        for (int l = 0; l < LANES; l++) e[l] = expf(-gate[i + l]);
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 sig = _mm256_div_ps(one, _mm256_add_ps(one, _mm256_loadu_ps(e)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        float v = gate[i];
        v *= (1.0f / (1.0f + expf(-v)));
        v *= up[i];
        out[i] = v;
    }
}

/* y (n,) += a * x (n,): product rounded, then added, as in generic. */
static void avx2_axpy(float *y, float a, const float *x, size_t n) {
    __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i),
                                              _mm256_mul_ps(va, _mm256_loadu_ps(x + i))));
    for (; i < n; i++) y[i] += a * x[i];
}

/* Q8_0 / Q4_0 weights and the activations' Q8_0 quantisation: generic's kernels for now (so
 * the results are the oracle's); SIMD versions belong here once the block formats settle. */
static void avx2_matvec_q8_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                             size_t row_begin, size_t row_end) {
    lmoe_kernels_generic()->matvec_q8_0(w, x_q8, y, n_cols, row_begin, row_end);
}

static void avx2_matvec_q4_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                             size_t row_begin, size_t row_end) {
    lmoe_kernels_generic()->matvec_q4_0(w, x_q8, y, n_cols, row_begin, row_end);
}

static void avx2_quantize_q8_0(const float *x, void *x_q8, size_t n) {
    lmoe_kernels_generic()->quantize_q8_0(x, x_q8, n);
}

static const lmoe_kernels avx2_table = {
    .name = "avx2",
    .matvec_f32 = avx2_matvec_f32,
    .matvec_f16 = avx2_matvec_f16,
    .matvec_bf16 = avx2_matvec_bf16,
    .dot_f32 = avx2_dot_f32,
    .rmsnorm = avx2_rmsnorm,
    .softmax = avx2_softmax,
    .swiglu = avx2_swiglu,
    .axpy = avx2_axpy,
    .matvec_q8_0 = avx2_matvec_q8_0,
    .matvec_q4_0 = avx2_matvec_q4_0,
    .quantize_q8_0 = avx2_quantize_q8_0,
};

const lmoe_kernels *lmoe_kernels_avx2(void) { return &avx2_table; }

#else
/* Not an x86-64 target with AVX2 flags: nothing to compile (ISO C wants a declaration). */
typedef int lmoe_x86_avx2_unavailable;
#endif
