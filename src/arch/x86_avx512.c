/* x86_avx512.c - the kernel table for x86-64 CPUs with AVX-512 F, BW and VL ("avx512"), and,
 * compiled a second time by x86_avx512vnni.c with LMOE_AVX512_VNNI defined, the one for CPUs that
 * also have AVX512_VNNI ("avx512vnni": the same kernels, but the Q8_0 / Q4_0 block dot products
 * use vpdpbusd). The code lives in one place.
 *
 * CMakeLists.txt compiles this file, and only this file, with -mavx512f -mavx512bw -mavx512vl
 * -mavx2 -mfma -mf16c (x86_avx512vnni.c: the same and -mavx512vnni); dispatch.c hands a table out
 * only after CPUID and XGETBV say the CPU and the OS (ZMM and opmask state) support it. Elsewhere
 * the file compiles to nothing.
 *
 * The layout is x86_avx2.c's with 16 lanes, and ragged ends use AVX-512's masked loads and
 * stores (BW + VL give the 16-bit ones), which never touch disabled lanes. The AVX-512 BF16 dot
 * product instructions are not used: they would round x to bfloat16, and the contract is f32
 * products of exactly widened weights.
 *
 * Numerics against generic.c: as in x86_avx2.c. matvec_* / dot_f32 / rmsnorm's sum of squares
 * are split over 16 lanes and two accumulators (FMA), so they differ in the last bits; a row's
 * result does not depend on the rows computed with it; f16 / bf16 equal f32 on widened weights
 * bit for bit; axpy, softmax and swiglu give generic's results exactly; the quantised products
 * equal generic's bit for bit (see their section). */
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__) && defined(__FMA__) && defined(__F16C__) && \
    (!defined(LMOE_AVX512_VNNI) || defined(__AVX512VNNI__))

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "x86_r16.h"
#include "quant.h"

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

/* ------------------------------------------------------------------------------------------------
 * Quantised weights (Q8_0, Q4_0) against Q8_0 activations, and the activations' quantisation.
 *
 * Without VNNI ("avx512") the products are x86_avx2.c's kernels: a 512-bit version of them (the
 * vpmaddubsw sign trick needs vpmovb2m and a masked subtract in place of vpsignb, which AVX-512
 * lacks) measured up to 30% slower than the 256-bit one. dispatch.c offers this table only where
 * the avx2 one runs, and CMakeLists.txt builds it only together with the avx2 one.
 *
 * With VNNI ("avx512vnni", x86_avx512vnni.c compiles this file again with LMOE_AVX512_VNNI), the
 * kernels below. Exactness, as in x86_avx2.c: every block's integer dot product is exact, and the
 * float part is generic's, lane by lane and in generic's order (per row,
 * sum = fma(dot, d_w * d_x, sum) block after block), so matvec_q8_0 / matvec_q4_0 equal
 * generic's results bit for bit; test_kernels.c checks it.
 *   - vpdpbusd adds 4 products of unsigned and signed bytes straight into an int32 lane, without
 *     saturation. Q8_0 biases the weights to unsigned, w + 128 = w ^ 0x80 (0..255), and starts the
 *     lane at -128 * (its 4 x's), computed once per x block for all rows: the lane ends at
 *     sum (w + 128) x - 128 sum x = sum w x, exact for every w and x, -128 included (the lane
 *     stays within 4 * 255 * 128 of it). Q4_0: the nibbles q (0..15) times x, the lane started at
 *     -8 * (its 4 x's): sum (q - 8) x.
 *   - A 512-bit register holds two consecutive blocks of one row; eight rows share each load of x.
 *     Three rounds of unpack-and-add turn the eight rows' 16 int32 lanes into one vector of the 16
 *     exact block dot products (8 rows x 2 blocks), scaled by the 16 weight scales (broadcast from
 *     memory and blended, not gathered: see x86_avx2.c; widened with F16C) times x's, then added
 *     to the rows' sums block b first, then block b + 1. An odd last block is loaded into the low
 *     half only (masked loads: nothing past it is read).
 *   - Fewer than 8 rows repeat the last row in the unused lanes, which are not stored.
 * quantize_q8_0 (both tables) gives generic's bytes, as x86_avx2.c's does (same limits). */

#if defined(LMOE_AVX512_VNNI)

#define QGROUP 8 /* rows computed together by the quantised kernels */

/* The 64 bytes of blocks b and b + 1 of a row (32 quants each, starting at q0 and q1); with
 * two == 0 only block b, the upper half zero (its memory is not read). */
static ALWAYS_INLINE __m512i load_q8_pair(const int8_t *q0, const int8_t *q1, int two) {
    if (!two) return _mm512_maskz_loadu_epi8(0xffffffffull, q0);
    __m512i lo = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)q0));
    return _mm512_inserti64x4(lo, _mm256_loadu_si256((const __m256i *)q1), 1);
}

/* The nibbles of Q4_0 blocks b and b + 1 (16 bytes each at q0, q1) as 64 bytes laid out like x
 * (block b's elements 0..31, then block b + 1's): bytes 0..15 of each 32 the low nibbles, bytes
 * 16..31 the high ones. With two == 0 the upper half is zero. */
static ALWAYS_INLINE __m512i load_q4_pair(const uint8_t *q0, const uint8_t *q1, int two) {
    __m512i packed = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)q0));
    if (two)
        packed = _mm512_mask_broadcast_i32x4(packed, 0xff00,
                                             _mm_loadu_si128((const __m128i *)q1));
    else
        packed = _mm512_maskz_mov_epi32(0x00ff, packed);
    const __m512i shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
    return _mm512_and_si512(_mm512_srlv_epi64(packed, shifts), _mm512_set1_epi8(0x0f));
}

/* One round of the reduction, within each 128-bit chunk: lanes (a0 + a2, b0 + b2, a1 + a3,
 * b1 + b3) for fold32; (a0 + a2, a1 + a3, b0 + b2, b1 + b3) with 64-bit pairs for fold64. */
static ALWAYS_INLINE __m512i fold32(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}
static ALWAYS_INLINE __m512i fold64(__m512i a, __m512i b) {
    return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}

/* p[i]: row i's 16 lanes, chunks (128 bits) 0-1 block b, 2-3 block b + 1. Returns the 16 exact
 * dot products: chunk 0 = block b of rows 0-3, chunk 1 = block b + 1 of rows 0-3, chunk 2 =
 * block b of rows 4-7, chunk 3 = block b + 1 of rows 4-7. */
static ALWAYS_INLINE __m512i sum_lanes(const __m512i p[QGROUP]) {
    /* after two folds each chunk holds its own sum for 4 rows, in row order */
    __m512i lo = fold64(fold32(p[0], p[1]), fold32(p[2], p[3]));
    __m512i hi = fold64(fold32(p[4], p[5]), fold32(p[6], p[7]));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(lo, hi, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* The 4 bytes at p (a block's scale and its first two quants: inside the block), in all lanes. */
static ALWAYS_INLINE __m256i broadcast_4_bytes(const char *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* Lanes 0-3: the 4 bytes at p[0..3] + at; lanes 4-7: at p[0..3] + at + next (two), else 0. */
static ALWAYS_INLINE __m256i scales_of_4_rows(const char *const p[4], size_t at, size_t next,
                                              int two) {
    __m256i g = broadcast_4_bytes(p[0] + at);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(p[1] + at), 0x02);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(p[2] + at), 0x04);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(p[3] + at), 0x08);
    if (!two) return _mm256_blend_epi32(g, _mm256_setzero_si256(), 0xf0);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(p[0] + at + next), 0x10);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(p[1] + at + next), 0x20);
    g = _mm256_blend_epi32(g, broadcast_4_bytes(p[2] + at + next), 0x40);
    return _mm256_blend_epi32(g, broadcast_4_bytes(p[3] + at + next), 0x80);
}

/* The f16 scales of blocks b (at) and b + 1 of the 8 rows in sum_lanes' layout, widened exactly
 * (block b + 1's lanes 0 unless two). */
static ALWAYS_INLINE __m512 row_scales(const char *const rows[QGROUP], size_t at,
                                       size_t block_bytes, int two) {
    __m256i lo = scales_of_4_rows(rows, at, block_bytes, two);
    __m256i hi = scales_of_4_rows(rows + 4, at, block_bytes, two);
    __m512i d = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d)); /* the low 16 bits of each lane */
}

static ALWAYS_INLINE float half_to_float(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

/* y[0 .. n_valid) = rows . x for the rows starting at w0, row_bytes apart (n_valid <= 8; the
 * other lanes repeat the last row). The group reads its 8 rows as 8 short streams (a Q4_0 row of
 * 4096 is 2304 bytes), too short for the hardware prefetcher to get ahead of: while it works, it
 * prefetches the bytes of the next group (Q4_0) or of the one after it (Q8_0, whose groups take
 * twice as long to read: 6.57 -> 6.77 tokens/s at 4/16 with 2 threads), a share per block pair,
 * into L2 (into L1 the prefetches stalled on the fill buffers). */
static ALWAYS_INLINE void q_group(const char *w0, size_t row_bytes, size_t n_valid,
                                  const block_q8_0 *x, size_t n_blocks, int q4, float *y) {
    const char *next = w0 + (q4 ? 1 : 2) * QGROUP * row_bytes;
    const size_t prefetch_per_pair = 2 * QGROUP * (q4 ? sizeof(block_q4_0) : sizeof(block_q8_0));
    const size_t block_bytes = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    const char *rows[QGROUP];
    for (int i = 0; i < QGROUP; i++)
        rows[i] = w0 + ((size_t)i < n_valid ? (size_t)i : n_valid - 1) * row_bytes;
    /* x's scale per lane: blocks b, b + 1 in sum_lanes' layout */
    const __m512i x_scale_lanes = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
    __m512 acc = _mm512_setzero_ps(); /* chunk 0: rows 0-3, chunk 2: rows 4-7 */
    for (size_t b = 0; b < n_blocks; b += 2) {
        int two = b + 1 < n_blocks;
        size_t at = b * block_bytes;
        for (size_t off = b / 2 * prefetch_per_pair; off < (b / 2 + 1) * prefetch_per_pair; off += 64)
            _mm_prefetch(next + off, _MM_HINT_T1);
        __m512i xq = load_q8_pair(x[b].qs, two ? x[b + 1].qs : x[b].qs, two);
        /* what every row's lanes start from: -c * (the lane's 4 x's), c = 128 for Q8_0's bias of
         * the weights, 8 for Q4_0's offset */
        __m512i c = _mm512_set1_epi8(q4 ? 8 : -128);
        __m512i start = _mm512_sub_epi32(_mm512_setzero_si512(),
                                         _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, xq));
        __m512i p[QGROUP];
        for (int i = 0; i < QGROUP; i++) {
            __m512i w;
            if (q4) {
                const block_q4_0 *blk = (const block_q4_0 *)(rows[i] + at);
                w = load_q4_pair(blk[0].qs, two ? blk[1].qs : blk[0].qs, two);
            } else {
                const block_q8_0 *blk = (const block_q8_0 *)(rows[i] + at);
                w = load_q8_pair(blk[0].qs, two ? blk[1].qs : blk[0].qs, two);
                w = _mm512_xor_si512(w, _mm512_set1_epi8(-128)); /* w + 128, as unsigned */
            }
            p[i] = _mm512_dpbusd_epi32(start, w, xq);
        }
        __m512 dot = _mm512_cvtepi32_ps(sum_lanes(p)); /* exact: |dot| <= 2^19 */
        __m512 dw = row_scales(rows, at, block_bytes, two);
        __m128 dx2 = _mm_setr_ps(half_to_float(x[b].d), two ? half_to_float(x[b + 1].d) : 0.0f,
                                 0.0f, 0.0f);
        __m512 dx = _mm512_permutexvar_ps(x_scale_lanes, _mm512_castps128_ps512(dx2));
        __m512 scale = _mm512_mul_ps(dw, dx);
        acc = _mm512_fmadd_ps(dot, scale, acc); /* block b (chunks 0 and 2 are the ones kept) */
        if (two) /* block b + 1, moved to chunks 0 and 2 */
            acc = _mm512_fmadd_ps(_mm512_shuffle_f32x4(dot, dot, _MM_SHUFFLE(3, 3, 1, 1)),
                                  _mm512_shuffle_f32x4(scale, scale, _MM_SHUFFLE(3, 3, 1, 1)), acc);
    }
    float out[2 * QGROUP];
    _mm512_storeu_ps(out, acc);
    for (size_t i = 0; i < n_valid; i++) y[i] = out[(i / 4) * 8 + i % 4];
}

static ALWAYS_INLINE void q_matvec(const void *w, const void *x_q8, float *y, size_t n_cols,
                                   size_t row_begin, size_t row_end, int q4) {
    size_t n_blocks = n_cols / LMOE_QK;
    size_t row_bytes = n_blocks * (q4 ? sizeof(block_q4_0) : sizeof(block_q8_0));
    for (size_t r = row_begin; r < row_end; r += QGROUP) {
        size_t n_valid = row_end - r < QGROUP ? row_end - r : QGROUP;
        q_group((const char *)w + r * row_bytes, row_bytes, n_valid, x_q8, n_blocks, q4, y + r);
    }
}

static void avx512_matvec_q8_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    q_matvec(w, x_q8, y, n_cols, row_begin, row_end, 0);
}

static void avx512_matvec_q4_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    q_matvec(w, x_q8, y, n_cols, row_begin, row_end, 1);
}

/* The _R16 types (quant.h): a 64-byte load is 4 quants of each of a group's 16 rows, lane r =
 * row r, so vpdpbusd with x's 4 quants broadcast leaves every lane holding its own row's dot
 * product: no unpacking across lanes, no reduction, the 16 scales one load. Q4_0_R16's nibbles
 * and Q8_0_R16's quants biased to w + 128 are the unsigned side; the lanes start at x_start. The
 * float part is generic's, so these equal matvec_q4_0 / matvec_q8_0 bit for bit. The walk over
 * the groups: x86_r16.h. */
/* 64 bytes as two 32-byte loads: an _R16 block is 288 or 544 bytes, so every other one sits 32
 * bytes off a cache line, where one 64-byte load would be split over two lines, and none of
 * the 32-byte halves is. */
static ALWAYS_INLINE __m512i load_64_halves(const void *p) {
    __m256i lo = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo),
                              _mm256_loadu_si256((const __m256i *)((const char *)p + 32)), 1);
}

static ALWAYS_INLINE void r16_group_q4(const void *gv, const block_q8_0 *x, const int32_t *x_start,
                                       const float *x_scale, size_t n_blocks, int first, float *y) {
    const block_q4_0_r16 *g = gv;
    const __m512i low = _mm512_set1_epi8(0x0f);
    __m512 acc = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y);
    for (size_t b = 0; b < n_blocks; b++) {
        r16_prefetch(&g[b], sizeof g[b]);
        /* two chains of dot products (low and high nibbles), to halve the latency per block */
        __m512i dot_lo = _mm512_set1_epi32(x_start[b]), dot_hi = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            __m512i q = load_64_halves(g[b].qs[k]);
            int32_t x_lo, x_hi;
            memcpy(&x_lo, x[b].qs + 4 * k, 4);
            memcpy(&x_hi, x[b].qs + 16 + 4 * k, 4);
            dot_lo = _mm512_dpbusd_epi32(dot_lo, _mm512_and_si512(q, low), _mm512_set1_epi32(x_lo));
            dot_hi = _mm512_dpbusd_epi32(dot_hi, _mm512_and_si512(_mm512_srli_epi16(q, 4), low),
                                         _mm512_set1_epi32(x_hi));
        }
        __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(dot_lo, dot_hi)); /* exact: < 2^19 */
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g[b].d));
        acc = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, _mm512_set1_ps(x_scale[b])), acc);
    }
    _mm512_storeu_ps(y, acc);
}

static ALWAYS_INLINE void r16_group_q8(const void *gv, const block_q8_0 *x, const int32_t *x_start,
                                       const float *x_scale, size_t n_blocks, int first, float *y) {
    const block_q8_0_r16 *g = gv;
    const __m512i bias = _mm512_set1_epi8(-128);
    __m512 acc = first ? _mm512_setzero_ps() : _mm512_loadu_ps(y);
    for (size_t b = 0; b < n_blocks; b++) {
        r16_prefetch(&g[b], sizeof g[b]);
        __m512i dot_a = _mm512_set1_epi32(x_start[b]), dot_b = _mm512_setzero_si512();
        for (int k = 0; k < 8; k += 2) {
            int32_t xa, xb;
            memcpy(&xa, x[b].qs + 4 * k, 4);
            memcpy(&xb, x[b].qs + 4 * k + 4, 4);
            __m512i qa = _mm512_xor_si512(load_64_halves(g[b].qs[k]), bias);
            __m512i qb = _mm512_xor_si512(load_64_halves(g[b].qs[k + 1]), bias);
            dot_a = _mm512_dpbusd_epi32(dot_a, qa, _mm512_set1_epi32(xa));
            dot_b = _mm512_dpbusd_epi32(dot_b, qb, _mm512_set1_epi32(xb));
        }
        __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(dot_a, dot_b)); /* exact: < 2^19 */
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)g[b].d));
        acc = _mm512_fmadd_ps(dot, _mm512_mul_ps(dw, _mm512_set1_ps(x_scale[b])), acc);
    }
    _mm512_storeu_ps(y, acc);
}

static void avx512_matvec_q8_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                   size_t row_begin, size_t row_end) {
    r16_matvec(w, x_q8, y, n_cols, row_begin, row_end, 1, r16_group_q8);
}

static void avx512_matvec_q4_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                   size_t row_begin, size_t row_end) {
    r16_matvec(w, x_q8, y, n_cols, row_begin, row_end, 0, r16_group_q4);
}

#else /* no VNNI: the avx2 table's kernels (see above) */

static void avx512_matvec_q8_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    lmoe_kernels_avx2()->matvec_q8_0(w, x_q8, y, n_cols, row_begin, row_end);
}

static void avx512_matvec_q4_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    lmoe_kernels_avx2()->matvec_q4_0(w, x_q8, y, n_cols, row_begin, row_end);
}

static void avx512_matvec_q8_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                   size_t row_begin, size_t row_end) {
    lmoe_kernels_avx2()->matvec_q8_0_r16(w, x_q8, y, n_cols, row_begin, row_end);
}

static void avx512_matvec_q4_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                   size_t row_begin, size_t row_end) {
    lmoe_kernels_avx2()->matvec_q4_0_r16(w, x_q8, y, n_cols, row_begin, row_end);
}

#endif

/* roundf for every lane: half away from zero. t = trunc(v) and v - t (exact: the fraction bits
 * of v) decide whether to step one away from zero. */
static ALWAYS_INLINE __m512 round_half_away(__m512 v) {
    __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m512 frac = _mm512_abs_ps(_mm512_sub_ps(v, t));
    __mmask16 away = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    /* +-1 with v's sign (AVX512F has the bitwise operations on integers only) */
    __m512i sign = _mm512_and_epi32(_mm512_castps_si512(v), _mm512_set1_epi32(INT32_MIN));
    __m512i one = _mm512_castps_si512(_mm512_set1_ps(1.0f));
    __m512 step = _mm512_castsi512_ps(_mm512_or_epi32(one, sign));
    return _mm512_mask_add_ps(t, away, t, step);
}

static void avx512_quantize_q8_0(const float *x, void *x_q8, size_t n) {
    block_q8_0 *out = x_q8;
    for (size_t b = 0; b < n / LMOE_QK; b++, x += LMOE_QK) {
        __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        /* maxps(a, m) is m when a is NaN: NaN is skipped, as by fmaxf */
        __m512 vmax = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_setzero_ps());
        vmax = _mm512_max_ps(_mm512_abs_ps(v1), vmax);
        __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(vmax), 1));
        __m256 h = _mm256_max_ps(_mm512_castps512_ps256(vmax), high);
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float amax = _mm_cvtss_f32(m);
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = (uint16_t)_mm_extract_epi16(
            _mm_cvtps_ph(_mm_set_ss(d), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), 0);
        __m512 vid = _mm512_set1_ps(id);
        /* int32 -> int8, saturating */
        __m128i q0 = _mm512_cvtsepi32_epi8(
            _mm512_cvttps_epi32(round_half_away(_mm512_mul_ps(v0, vid))));
        __m128i q1 = _mm512_cvtsepi32_epi8(
            _mm512_cvttps_epi32(round_half_away(_mm512_mul_ps(v1, vid))));
        _mm256_storeu_si256((__m256i *)out[b].qs, _mm256_set_m128i(q1, q0));
    }
}

static const lmoe_kernels avx512_table = {
#if defined(LMOE_AVX512_VNNI)
    .name = "avx512vnni",
#else
    .name = "avx512",
#endif
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
    .matvec_q8_0_r16 = avx512_matvec_q8_0_r16,
    .matvec_q4_0_r16 = avx512_matvec_q4_0_r16,
    .quantize_q8_0 = avx512_quantize_q8_0,
    .attention = lmoe_avx512_attention,
#if defined(LMOE_AVX512_VNNI)
    .gemm_q8_0 = lmoe_avx512vnni_gemm_q8_0,
    .gemm_q4_0 = lmoe_avx512vnni_gemm_q4_0,
    .gemm_q8_0_r16 = lmoe_avx512vnni_gemm_q8_0_r16,
    .gemm_q4_0_r16 = lmoe_avx512vnni_gemm_q4_0_r16,
    .gemm_x_bytes = lmoe_avx512vnni_gemm_x_bytes,
    .gemm_pack_token = lmoe_avx512vnni_gemm_pack_token,
#endif
};

#if defined(LMOE_AVX512_VNNI)
/* Declared here and in dispatch.c, its one caller. */
const lmoe_kernels *lmoe_kernels_avx512vnni(void);
const lmoe_kernels *lmoe_kernels_avx512vnni(void) { return &avx512_table; }
#else
const lmoe_kernels *lmoe_kernels_avx512(void) { return &avx512_table; }
#endif

#else
/* Not an x86-64 target with AVX-512 flags: nothing to compile (ISO C wants a declaration). */
typedef int lmoe_x86_avx512_unavailable;
#endif
