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
 *     generic's results exactly.
 *   - matvec_q8_0 / matvec_q4_0 / matvec_q8_0_r16 / matvec_q4_0_r16 equal generic's results bit
 *     for bit (exact integer block dots, then generic's float operations in generic's order), and
 *     quantize_q8_0 gives generic's bytes; see the section on the quantised kernels.
 *
 * matvec_q4_0_r16 / matvec_q8_0_r16 have their own kernels because the _R16 types (quant.h) suit
 * 8-lane vectors: a 32-byte load is 4 quants of each of 8 rows of a group, one row per 32-bit
 * lane, so vpmaddubsw against x's 4 quants broadcast, then vpmaddwd, leaves each lane its own
 * row's dot product. There is no horizontal reduction and no blending of scales per block
 * (matvec_q4_0 / matvec_q8_0 need both; here 8 scales are one 16-byte load). Q8_0_R16 takes its
 * weights as w + 128 (the unsigned side, as x86_r16.h's walk wants), which against x in
 * -128..127 would saturate vpmaddubsw's pairs, so x is split in two parts that cannot (see its
 * kernel): exact for every x, -128 included, with no fallback to generic. That costs a second
 * vpmaddubsw per load, so matvec_q8_0_r16 computes about as fast as matvec_q8_0 (both reach the
 * memory bandwidth of one core), where matvec_q4_0_r16 is much faster than matvec_q4_0. */
#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "x86_r16.h"
#include "quant.h"

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

/* ------------------------------------------------------------------------------------------------
 * Quantised weights (Q8_0, Q4_0) against Q8_0 activations, and the activations' quantisation.
 *
 * Exactness. Every block's integer dot product is computed exactly, and the float part repeats
 * generic's operations in generic's order, lane by lane: per row, sum = fma(dot, d_w * d_x, sum)
 * over the blocks in order. So matvec_q8_0 / matvec_q4_0 equal generic's results bit
 * for bit (and a row's result cannot depend on the rows computed with it); test_kernels.c checks
 * both the documented tolerance and the bit equality.
 *   - Q8_0 uses the sign trick of vpmaddubsw (unsigned x signed bytes): |w| (0..128, as unsigned)
 *     times x with w's sign moved onto it. Pairs of products sum to at most 2 * 128 * 127 = 32512,
 *     so the 16-bit sums never saturate. The one value the trick cannot carry is x = -128 (negating
 *     it wraps); quantize_q8_0 never produces it (|x * id| <= 127.00002 for finite input whose
 *     block maximum is 0 or a normal number), but a caller's x blocks might hold it, so each call
 *     checks x once and hands such an x to the generic kernel. Any weight byte, -128 included, is
 *     exact.
 *   - Q4_0 multiplies the unsigned nibbles q (0..15) by x (pairs: at most 2 * 15 * 128 = 3840)
 *     and subtracts 8 * x in the same 16-bit pairs: (q - 8) * x exactly, for every x.
 *   - Eight rows share each load of x. Each row's 32 products end in 8 int32 lanes; three rounds of
 *     horizontal adds turn the 8 rows' lanes into one vector holding the 8 exact dot products,
 *     which is then scaled and added lane by lane (one lane per row). The 8 weight scales are
 *     broadcast from memory and blended into one vector, then widened with F16C, as is x's
 *     scale. (Not a gather: on some CPUs gathers are slow, e.g. under the Gather Data Sampling
 *     microcode mitigation; here the blends cost no more than the gather did.)
 *   - Fewer than 8 rows (a range's end) repeat the last row in the unused lanes, which are not
 *     stored.
 * quantize_q8_0 gives generic's bytes: the same f32 max |x|, d = amax / 127, id = 1 / d, x * id,
 * roundf's rounding (half away from zero, built from a truncation and the exact fractional part),
 * and F16C's round-to-nearest-even for d. For a block whose max |x| is a nonzero value below
 * 127 * 2^-126 (1.5e-36), or for NaN / infinite x, generic's float-to-int8 conversion is undefined
 * behaviour; there this kernel saturates to -128..127 and generic may differ.
 * ---------------------------------------------------------------------------------------------- */

#define QGROUP 8 /* rows computed together by the quantised kernels */

/* 8 int32 lanes summing to the exact dot product of 32 weight bytes w with 32 bytes x (x holds no
 * -128: see above). */
static ALWAYS_INLINE __m256i q8_lanes(const int8_t *wq, __m256i x) {
    __m256i w = _mm256_loadu_si256((const __m256i *)wq);
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/* The same for a Q4_0 block's 16 bytes of nibbles; x8 is maddubs(8, x), the 16-bit pair sums of
 * 8 * x, subtracted so that every nibble counts as q - 8. */
static ALWAYS_INLINE __m256i q4_lanes(const uint8_t *wq, __m256i x, __m256i x8) {
    /* the 16 bytes in both halves; the high half shifted right by 4: bytes 0..15 hold the low
     * nibbles (elements 0..15), bytes 16..31 the high ones (elements 16..31) */
    __m256i packed = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)wq));
    const __m256i shifts = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
    __m256i q = _mm256_and_si256(_mm256_srlv_epi32(packed, shifts), _mm256_set1_epi8(0x0f));
    __m256i pairs = _mm256_sub_epi16(_mm256_maddubs_epi16(q, x), x8);
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/* p[i] (8 int32 lanes each) -> lane i = the sum of p[i]'s lanes, exactly. */
static ALWAYS_INLINE __m256i sum_lanes_8(const __m256i p[QGROUP]) {
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
    /* a: rows 0-3 summed over the low 4 lanes | the same over the high 4 lanes; b: rows 4-7 */
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                            _mm256_permute2x128_si256(a, b, 0x31));
}

/* The 4 bytes at p, in all lanes (row_scales: a block's scale and its first two quants, inside
 * the block). */
static ALWAYS_INLINE __m256i broadcast_4_bytes(const char *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* The f16 scales of the blocks at rows[i] + at (lane i), widened exactly. */
static ALWAYS_INLINE __m256 row_scales(const char *const rows[QGROUP], size_t at) {
    __m256i g = broadcast_4_bytes(rows[0] + at);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(rows[1] + at), 0x02);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(rows[2] + at), 0x04);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(rows[3] + at), 0x08);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(rows[4] + at), 0x10);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(rows[5] + at), 0x20);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(rows[6] + at), 0x40);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(rows[7] + at), 0x80);
    /* the low 16 bits of each lane, packed into the low 8 bytes of each 128-bit half */
    const __m256i pick = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
    g = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(g, pick), 0x08);
    return _mm256_cvtph_ps(_mm256_castsi256_si128(g));
}

static ALWAYS_INLINE float half_to_float(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* y[0 .. n_valid) = rows . x for the rows starting at w0, row_bytes apart (n_valid <= 8; the
 * other lanes repeat the last row). */
static ALWAYS_INLINE void q_group(const char *w0, size_t row_bytes, size_t n_valid,
                                  const block_q8_0 *x, size_t n_blocks, int q4, float *y) {
    const size_t block_bytes = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    const char *rows[QGROUP];
    for (int i = 0; i < QGROUP; i++)
        rows[i] = w0 + ((size_t)i < n_valid ? (size_t)i : n_valid - 1) * row_bytes;
    __m256 acc = _mm256_setzero_ps();
    for (size_t b = 0; b < n_blocks; b++) {
        __m256i xq = _mm256_loadu_si256((const __m256i *)x[b].qs);
        size_t at = b * block_bytes;
        __m256i p[QGROUP];
        if (q4) {
            __m256i x8 = _mm256_maddubs_epi16(_mm256_set1_epi8(8), xq);
            for (int i = 0; i < QGROUP; i++)
                p[i] = q4_lanes(((const block_q4_0 *)(rows[i] + at))->qs, xq, x8);
        } else {
            for (int i = 0; i < QGROUP; i++)
                p[i] = q8_lanes(((const block_q8_0 *)(rows[i] + at))->qs, xq);
        }
        __m256 dot = _mm256_cvtepi32_ps(sum_lanes_8(p)); /* exact: |dot| <= 2^19 */
        __m256 scale = _mm256_mul_ps(row_scales(rows, at),
                                     _mm256_set1_ps(half_to_float(x[b].d)));
        acc = _mm256_fmadd_ps(dot, scale, acc);
    }
    float out[QGROUP];
    _mm256_storeu_ps(out, acc);
    for (size_t i = 0; i < n_valid; i++) y[i] = out[i];
}

/* Nonzero if one of the n_blocks blocks of x holds the quant -128. */
static int q8_has_min(const block_q8_0 *x, size_t n_blocks) {
    __m256i any = _mm256_setzero_si256();
    const __m256i min = _mm256_set1_epi8(-128);
    for (size_t b = 0; b < n_blocks; b++)
        any = _mm256_or_si256(any, _mm256_cmpeq_epi8(
                                       _mm256_loadu_si256((const __m256i *)x[b].qs), min));
    return !_mm256_testz_si256(any, any);
}

static ALWAYS_INLINE void q_matvec(const void *w, const void *x_q8, float *y, size_t n_cols,
                                   size_t row_begin, size_t row_end, int q4) {
    size_t n_blocks = n_cols / LMOE_QK;
    size_t row_bytes = n_blocks * (q4 ? sizeof(block_q4_0) : sizeof(block_q8_0));
    if (!q4 && q8_has_min(x_q8, n_blocks)) { /* x = -128: see above */
        const lmoe_kernels *g = lmoe_kernels_generic();
        (q4 ? g->matvec_q4_0 : g->matvec_q8_0)(w, x_q8, y, n_cols, row_begin, row_end);
        return;
    }
    for (size_t r = row_begin; r < row_end; r += QGROUP) {
        size_t n_valid = row_end - r < QGROUP ? row_end - r : QGROUP;
        q_group((const char *)w + r * row_bytes, row_bytes, n_valid, x_q8, n_blocks, q4, y + r);
    }
}

static void avx2_matvec_q8_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                             size_t row_begin, size_t row_end) {
    q_matvec(w, x_q8, y, n_cols, row_begin, row_end, 0);
}

static void avx2_matvec_q4_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                             size_t row_begin, size_t row_end) {
    q_matvec(w, x_q8, y, n_cols, row_begin, row_end, 1);
}

/* roundf for every lane: half away from zero. t = trunc(v) and v - t (exact: the fraction bits
 * of v) decide whether to step one away from zero. */
static ALWAYS_INLINE __m256 round_half_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    __m256 away = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 step = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(sign, v)); /* +-1 as v */
    return _mm256_add_ps(t, _mm256_and_ps(away, step));
}

static void avx2_quantize_q8_0(const float *x, void *x_q8, size_t n) {
    block_q8_0 *out = x_q8;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t b = 0; b < n / LMOE_QK; b++, x += LMOE_QK) {
        __m256 v[4];
        __m256 vmax = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            /* maxps(a, m) is m when a is NaN: NaN is skipped, as by fmaxf */
            vmax = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), vmax);
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float amax = _mm_cvtss_f32(m);
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = (uint16_t)_mm_extract_epi16(
            _mm_cvtps_ph(_mm_set_ss(d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0);
        __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[k], vid)));
        /* int32 -> int8 (saturating), then undo the packs' per-128-bit interleaving */
        __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                           _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)out[b].qs, _mm256_permutevar8x32_epi32(bytes, order));
    }
}

/* Q4_0_R16 (see the file's header): a group's 16 rows per block, as two 8-lane halves, lane r =
 * row r. The nibbles (0..15) times x: vpmaddubsw pairs are at most 2 * 15 * 128 = 3840, and the 8
 * pairs per lane of a block (4 loads, low and high nibbles) sum to at most 30720 in 16 bits; one
 * vpmaddwd makes them int32, and x_start (-8 times the block's sum of x quants) turns every q into
 * q - 8. The walk over the groups: x86_r16.h. */
static ALWAYS_INLINE void r16_group_q4(const void *gv, const block_q8_0 *x,
                                       const int32_t *x_start, const float *x_scale,
                                       size_t n_blocks, int first, float *y) {
    const block_q4_0_r16 *g = gv;
    const __m256i low = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 acc[2];
    for (int h = 0; h < 2; h++) acc[h] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + 8 * h);
    for (size_t b = 0; b < n_blocks; b++) {
        r16_prefetch(&g[b], sizeof g[b]);
        __m256i pairs[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        for (int k = 0; k < 4; k++) {
            __m256i x_lo = broadcast_4_bytes((const char *)x[b].qs + 4 * k);
            __m256i x_hi = broadcast_4_bytes((const char *)x[b].qs + 16 + 4 * k);
            for (int h = 0; h < 2; h++) {
                __m256i q = _mm256_loadu_si256((const __m256i *)(g[b].qs[k] + 32 * h));
                __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(q, low), x_lo);
                __m256i hi = _mm256_maddubs_epi16(
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), low), x_hi);
                pairs[h] = _mm256_add_epi16(pairs[h], _mm256_add_epi16(lo, hi));
            }
        }
        __m256 dx = _mm256_set1_ps(x_scale[b]);
        for (int h = 0; h < 2; h++) {
            __m256i dot = _mm256_add_epi32(_mm256_madd_epi16(pairs[h], ones),
                                           _mm256_set1_epi32(x_start[b]));
            __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g[b].d + 8 * h)));
            /* exact: |dot| <= 2^15 */
            acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, dx), acc[h]);
        }
    }
    for (int h = 0; h < 2; h++) _mm256_storeu_ps(y + 8 * h, acc[h]);
}

static void avx2_matvec_q4_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                 size_t row_begin, size_t row_end) {
    r16_matvec(w, x_q8, y, n_cols, row_begin, row_end, 0, r16_group_q4);
}

/* Q8_0_R16, the same walk: u = w + 128 (w XOR 0x80, 0..255) is the unsigned side, and x_start
 * (-128 times the block's sum of x quants) makes the lanes end at the sum of w * x. u times x
 * itself could saturate vpmaddubsw's pairs (2 * 255 * 128 > 32767), so x is split into
 * x = 8 * xh + xl, xh = x >> 3 (arithmetic: -16..15) and xl = x & 7 (0..7), and the 16-bit sums
 * stay within range:
 *   - u * xh: pairs at most 2 * 255 * 16 = 8160 in magnitude, summed over 4 loads per lane (at
 *     most 32640), then vpmaddwd by 8 to int32, twice per block;
 *   - u * xl: pairs 0..3570, summed over the block's 8 loads per lane (at most 28560), then one
 *     vpmaddwd.
 * Every value of w and x, -128 included, is exact; the block's dot product is at most 32 * 128 *
 * 128 = 2^19 in magnitude, so its conversion to float is exact. x is split for R16_Q8_SPLIT
 * blocks at a time into a stack array, so that the loop broadcasts its quants from memory (kept
 * in registers, the compiler spent a shuffle per broadcast). */
#define R16_Q8_SPLIT 64

static ALWAYS_INLINE void r16_group_q8(const void *gv, const block_q8_0 *x,
                                       const int32_t *x_start, const float *x_scale,
                                       size_t n_blocks, int first, float *y) {
    const block_q8_0_r16 *g = gv;
    const __m256i bias = _mm256_set1_epi8(-128);
    const __m256i ones = _mm256_set1_epi16(1), eights = _mm256_set1_epi16(8);
    int8_t split[R16_Q8_SPLIT][2][LMOE_QK]; /* a block's xh, then its xl */
    __m256 acc[2];
    for (int h = 0; h < 2; h++) acc[h] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + 8 * h);
    for (size_t b0 = 0; b0 < n_blocks; b0 += R16_Q8_SPLIT) {
        size_t nb = n_blocks - b0 < R16_Q8_SPLIT ? n_blocks - b0 : R16_Q8_SPLIT;
        for (size_t b = 0; b < nb; b++) {
            /* (x + 128) >> 3 per byte (0..31: a 16-bit shift, the next byte's bits masked off) is
             * xh + 16 */
            __m256i xq = _mm256_loadu_si256((const __m256i *)x[b0 + b].qs);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(_mm256_xor_si256(xq, bias), 3),
                                          _mm256_set1_epi8(0x1f));
            _mm256_storeu_si256((__m256i *)split[b][0], _mm256_sub_epi8(hi, _mm256_set1_epi8(16)));
            _mm256_storeu_si256((__m256i *)split[b][1], _mm256_and_si256(xq, _mm256_set1_epi8(7)));
        }
        for (size_t b = 0; b < nb; b++) {
            const block_q8_0_r16 *blk = &g[b0 + b];
            r16_prefetch(blk, sizeof *blk);
            __m256i dot[2], low[2];
            for (int h = 0; h < 2; h++) {
                dot[h] = _mm256_set1_epi32(x_start[b0 + b]);
                low[h] = _mm256_setzero_si256();
            }
            for (int k0 = 0; k0 < 8; k0 += 4) {
                __m256i high[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
                for (int k = k0; k < k0 + 4; k++) {
                    __m256i x_h = broadcast_4_bytes((const char *)split[b][0] + 4 * k);
                    __m256i x_l = broadcast_4_bytes((const char *)split[b][1] + 4 * k);
                    for (int h = 0; h < 2; h++) {
                        __m256i u = _mm256_xor_si256(
                            _mm256_loadu_si256((const __m256i *)(blk->qs[k] + 32 * h)), bias);
                        high[h] = _mm256_add_epi16(high[h], _mm256_maddubs_epi16(u, x_h));
                        low[h] = _mm256_add_epi16(low[h], _mm256_maddubs_epi16(u, x_l));
                    }
                }
                for (int h = 0; h < 2; h++)
                    dot[h] = _mm256_add_epi32(dot[h], _mm256_madd_epi16(high[h], eights));
            }
            __m256 dx = _mm256_set1_ps(x_scale[b0 + b]);
            for (int h = 0; h < 2; h++) {
                __m256i d = _mm256_add_epi32(dot[h], _mm256_madd_epi16(low[h], ones));
                __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk->d + 8 * h)));
                /* exact: |d| <= 2^19 */
                acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(dw, dx), acc[h]);
            }
        }
    }
    for (int h = 0; h < 2; h++) _mm256_storeu_ps(y + 8 * h, acc[h]);
}

static void avx2_matvec_q8_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                 size_t row_begin, size_t row_end) {
    r16_matvec(w, x_q8, y, n_cols, row_begin, row_end, 1, r16_group_q8);
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
    .matvec_q8_0_r16 = avx2_matvec_q8_0_r16,
    .matvec_q4_0_r16 = avx2_matvec_q4_0_r16,
    .quantize_q8_0 = avx2_quantize_q8_0,
};

const lmoe_kernels *lmoe_kernels_avx2(void) { return &avx2_table; }

#else
/* Not an x86-64 target with AVX2 flags: nothing to compile (ISO C wants a declaration). */
typedef int lmoe_x86_avx2_unavailable;
#endif
