/* x86_avx512.c - the kernel table for x86-64 CPUs with AVX-512 F, BW and VL ("avx512").
 *
 * CMakeLists.txt compiles this file, and only this file, with -mavx512f -mavx512bw -mavx512vl
 * -mavx2 -mfma -mf16c; dispatch.c hands the table out only after CPUID and XGETBV say the CPU
 * and the OS (ZMM and opmask state) support it. Elsewhere the file compiles to nothing.
 *
 * The layout is x86_avx2.c's with 16 lanes, and ragged ends use AVX-512's masked loads and
 * stores (BW + VL give the 16-bit ones), which never touch disabled lanes. The AVX-512 BF16 dot
 * product instructions are not used: they would round x to bfloat16, and the contract is f32
 * products of exactly widened weights.
 *
 * Numerics against generic.c: as in x86_avx2.c. matvec_* / dot_f32 / rmsnorm's sum of squares
 * are split over 16 lanes and two accumulators (FMA), so they differ in the last bits; a row's
 * result does not depend on the rows computed with it; f16 / bf16 equal f32 on widened weights
 * bit for bit; axpy, softmax and swiglu give generic's results exactly. */
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#include <math.h>

#include "kernels.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define LANES 16
#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef enum weight_kind { WEIGHTS_F32, WEIGHTS_F16, WEIGHTS_BF16 } weight_kind;

static ALWAYS_INLINE size_t weight_bytes(weight_kind kind) {
    return kind == WEIGHTS_F32 ? sizeof(float) : sizeof(uint16_t);
}

/* Lanes 0 .. n-1 enabled (n <= 16). */
static ALWAYS_INLINE __mmask16 mask_for_tail(size_t n) {
    return (__mmask16)((1u << n) - 1u);
}

/* 16 weights starting at element j of row, widened exactly to f32; lanes outside mask are zero
 * and their memory is not read. */
static ALWAYS_INLINE __m512 load_weights_masked(const void *row, size_t j, __mmask16 mask,
                                                weight_kind kind) {
    if (kind == WEIGHTS_F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + j);
    __m256i half = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + j);
    if (kind == WEIGHTS_F16) return _mm512_cvtph_ps(half);
    /* bfloat16 is the top half of an f32 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

static ALWAYS_INLINE __m512 load_weights(const void *row, size_t j, weight_kind kind) {
    if (kind == WEIGHTS_F32) return _mm512_loadu_ps((const float *)row + j);
    __m256i half = _mm256_loadu_si256((const __m256i *)((const uint16_t *)row + j));
    if (kind == WEIGHTS_F16) return _mm512_cvtph_ps(half);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

/* Sum of the 32 lanes of a + b, always in the same order. */
static ALWAYS_INLINE float reduce_sum(__m512 a, __m512 b) {
    __m512 s = _mm512_add_ps(a, b);
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
}

/* y[i] = rows[i] . x for N_ROWS (1 or 4) rows sharing each load of x. Per row: even 16-blocks
 * go to accumulator a, odd ones and the ragged tail to b. The loops over i have a constant trip
 * count and are unrolled, so the 8 accumulators of the 4-row case stay in registers. */
static ALWAYS_INLINE void dot_rows(const void *const *rows, int n_rows, const float *x,
                                   size_t n_cols, weight_kind kind, float *y) {
    __m512 a[4], b[4];
    for (int i = 0; i < n_rows; i++) a[i] = b[i] = _mm512_setzero_ps();
    size_t j = 0;
    for (; j + 2 * LANES <= n_cols; j += 2 * LANES) {
        __m512 x0 = _mm512_loadu_ps(x + j), x1 = _mm512_loadu_ps(x + j + LANES);
        for (int i = 0; i < n_rows; i++) {
            a[i] = _mm512_fmadd_ps(load_weights(rows[i], j, kind), x0, a[i]);
            b[i] = _mm512_fmadd_ps(load_weights(rows[i], j + LANES, kind), x1, b[i]);
        }
    }
    if (j + LANES <= n_cols) {
        __m512 x0 = _mm512_loadu_ps(x + j);
        for (int i = 0; i < n_rows; i++)
            a[i] = _mm512_fmadd_ps(load_weights(rows[i], j, kind), x0, a[i]);
        j += LANES;
    }
    if (j < n_cols) {
        __mmask16 mask = mask_for_tail(n_cols - j);
        __m512 xt = _mm512_maskz_loadu_ps(mask, x + j);
        for (int i = 0; i < n_rows; i++)
            b[i] = _mm512_fmadd_ps(load_weights_masked(rows[i], j, mask, kind), xt, b[i]);
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

static void avx512_matvec_f32(const float *w, const float *x, float *y, size_t n_cols,
                              size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_F32);
}

static void avx512_matvec_f16(const uint16_t *w, const float *x, float *y, size_t n_cols,
                              size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_F16);
}

static void avx512_matvec_bf16(const uint16_t *w, const float *x, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_BF16);
}

/* a (n,) . b (n,): the one-row matvec, so dot_f32(w_row, x) == matvec_f32's y[r]. */
static float avx512_dot_f32(const float *a, const float *b, size_t n) {
    const void *rows[1] = {a};
    float sum;
    dot_rows(rows, 1, b, n, WEIGHTS_F32, &sum);
    return sum;
}

/* out (n,) = weight * (scale * x), scale = 1 / sqrt(mean(x^2) + eps). The scale is computed
 * before out is written, so out may alias x. */
static void avx512_rmsnorm(float *out, const float *x, const float *weight, size_t n, float eps) {
    const void *rows[1] = {x};
    float ss;
    dot_rows(rows, 1, x, n, WEIGHTS_F32, &ss);
    ss /= (float)n;
    ss += eps;
    float scale = 1.0f / sqrtf(ss);
    __m512 vscale = _mm512_set1_ps(scale);
    for (size_t i = 0; i < n; i += LANES) {
        __mmask16 mask = mask_for_tail(n - i < LANES ? n - i : LANES);
        __m512 v = _mm512_mul_ps(vscale, _mm512_maskz_loadu_ps(mask, x + i));
        __m512 w = _mm512_maskz_loadu_ps(mask, weight + i);
        _mm512_mask_storeu_ps(out + i, mask, _mm512_mul_ps(w, v));
    }
}

/* x (n,) <- exp(x - max) / sum. Only the max and the final division are vector operations;
 * expf and the sum run in generic's order, so the result equals generic's. */
static void avx512_softmax(float *x, size_t n) {
    if (n == 0) return;
    /* maxps(v, m) keeps m unless v > m, like generic's `if (x[i] > max_val)`: a NaN element is
     * skipped, and a NaN x[0] stays the max, exactly as there. Masked-off lanes keep m. */
    float max_val = x[0];
    __m512 vmax = _mm512_set1_ps(max_val);
    for (size_t i = 0; i < n; i += LANES) {
        __mmask16 mask = mask_for_tail(n - i < LANES ? n - i : LANES);
        vmax = _mm512_mask_max_ps(vmax, mask, _mm512_maskz_loadu_ps(mask, x + i), vmax);
    }
    float lanes[LANES];
    _mm512_storeu_ps(lanes, vmax);
    for (int l = 0; l < LANES; l++)
        if (lanes[l] > max_val) max_val = lanes[l];
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    __m512 vsum = _mm512_set1_ps(sum);
    for (size_t i = 0; i < n; i += LANES) {
        __mmask16 mask = mask_for_tail(n - i < LANES ? n - i : LANES);
        _mm512_mask_storeu_ps(x + i, mask, _mm512_div_ps(_mm512_maskz_loadu_ps(mask, x + i), vsum));
    }
}

/* out (n,) = silu(gate) * up = (gate * (1 / (1 + exp(-gate)))) * up, generic's operations; the
 * exponentials of a block are taken first, so out may alias gate (or up). */
static void avx512_swiglu(float *out, const float *gate, const float *up, size_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (size_t i = 0; i < n; i += LANES) {
        size_t m = n - i < LANES ? n - i : LANES;
        __mmask16 mask = mask_for_tail(m);
        float e[LANES] = {0};
        for (size_t l = 0; l < m; l++) e[l] = expf(-gate[i + l]);
        __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
        __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, _mm512_loadu_ps(e)));
        __m512 v = _mm512_mul_ps(_mm512_mul_ps(g, sig), _mm512_maskz_loadu_ps(mask, up + i));
        _mm512_mask_storeu_ps(out + i, mask, v);
    }
}

/* y (n,) += a * x (n,): product rounded, then added, as in generic. */
static void avx512_axpy(float *y, float a, const float *x, size_t n) {
    __m512 va = _mm512_set1_ps(a);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i),
                                              _mm512_mul_ps(va, _mm512_loadu_ps(x + i))));
    if (i < n) {
        __mmask16 mask = mask_for_tail(n - i);
        __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y + i),
                                 _mm512_mul_ps(va, _mm512_maskz_loadu_ps(mask, x + i)));
        _mm512_mask_storeu_ps(y + i, mask, v);
    }
}

/* Q8_0 / Q4_0 weights and the activations' Q8_0 quantisation: generic's kernels for now (so
 * the results are the oracle's); SIMD versions belong here once the block formats settle. */
static void avx512_matvec_q8_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    lmoe_kernels_generic()->matvec_q8_0(w, x_q8, y, n_cols, row_begin, row_end);
}

static void avx512_matvec_q4_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    lmoe_kernels_generic()->matvec_q4_0(w, x_q8, y, n_cols, row_begin, row_end);
}

static void avx512_quantize_q8_0(const float *x, void *x_q8, size_t n) {
    lmoe_kernels_generic()->quantize_q8_0(x, x_q8, n);
}

static const lmoe_kernels avx512_table = {
    .name = "avx512",
    .matvec_f32 = avx512_matvec_f32,
    .matvec_f16 = avx512_matvec_f16,
    .matvec_bf16 = avx512_matvec_bf16,
    .dot_f32 = avx512_dot_f32,
    .rmsnorm = avx512_rmsnorm,
    .softmax = avx512_softmax,
    .swiglu = avx512_swiglu,
    .axpy = avx512_axpy,
    .matvec_q8_0 = avx512_matvec_q8_0,
    .matvec_q4_0 = avx512_matvec_q4_0,
    .quantize_q8_0 = avx512_quantize_q8_0,
};

const lmoe_kernels *lmoe_kernels_avx512(void) { return &avx512_table; }

#else
/* Not an x86-64 target with AVX-512 flags: nothing to compile (ISO C wants a declaration). */
typedef int lmoe_x86_avx512_unavailable;
#endif
