/* arm_neon.c - the kernel tables for AArch64 CPUs: "neon" (Advanced SIMD, present on every
 * AArch64 CPU) and, compiled from this same file by arm_neon_dotprod.c with the dot product
 * instructions enabled, "neon_dotprod" (SDOT; Arm's FEAT_DotProd, Linux HWCAP_ASIMDDP).
 *
 * CMakeLists.txt builds this file (no ISA flag: NEON is part of the AArch64 base) and
 * arm_neon_dotprod.c (-march=armv8.2-a+dotprod) only for AArch64 targets; dispatch.c hands a table
 * out only after AT_HWCAP says the CPU has ASIMD (and ASIMDDP for neon_dotprod). Elsewhere the
 * files compile to nothing. The two tables differ only in the integer dot product of the
 * quantised blocks, which is exact either way, so they give the same results bit for bit.
 *
 * Numerics against generic.c (the oracle):
 *   - matvec_f32/f16/bf16 and dot_f32 split each sum over 4 lanes and 4 accumulators and use
 *     FMA, so they differ from the sequential sum in the last bits; test_kernels.c bounds the
 *     difference. A row's result does not depend on which rows are computed with it (the 4-row
 *     and the 1-row paths do the same operations in the same order), and the f16 / bf16 kernels
 *     equal the f32 kernel on exactly widened weights, bit for bit.
 *   - matvec_q8_0 / matvec_q4_0 compute each block's integer dot exactly and then do generic's
 *     float operations in generic's order (sum = fma(dot, d_w * d_x, sum), block by block), one
 *     row per lane: the results equal generic's bit for bit. matvec_q8_0_r16 / matvec_q4_0_r16
 *     do the same, a group's 16 rows in 4 registers: their layouts put 4 quants of 4 rows in every
 *     16 bytes, a row per 32-bit lane, so SDOT by lane (or widening multiplies) leaves each row's
 *     exact block dot in its own lane with no reduction across lanes; they too equal generic's
 *     (and so the Q8_0 / Q4_0 kernels' results for the same rows) bit for bit. quantize_q8_0 does
 *     generic's rounding steps (max |x|, d = max / 127, id = 1 / d, round half away from zero)
 *     and gives generic's blocks byte for byte.
 *   - rmsnorm differs only in its sum of squares; axpy, softmax and swiglu do generic's float
 *     operations element by element (expf stays libm's, one lane at a time) and so give
 *     generic's results exactly. */
#if defined(__aarch64__) && defined(__ARM_NEON) &&                                                 \
    (!defined(LMOE_NEON_DOTPROD) || defined(__ARM_FEATURE_DOTPROD))

#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"

/* Products and sums are fused only where an FMA intrinsic says so (as in generic.c for clang;
 * GCC in ISO C mode does not contract). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define LANES 4
#define ALWAYS_INLINE inline __attribute__((always_inline))

typedef enum weight_kind { WEIGHTS_F32, WEIGHTS_F16, WEIGHTS_BF16 } weight_kind;

static ALWAYS_INLINE size_t weight_bytes(weight_kind kind) {
    return kind == WEIGHTS_F32 ? sizeof(float) : sizeof(uint16_t);
}

/* 4 consecutive weights starting at element j of row, widened exactly to f32. */
static ALWAYS_INLINE float32x4_t load_weights(const void *row, size_t j, weight_kind kind) {
    if (kind == WEIGHTS_F32) return vld1q_f32((const float *)row + j);
    uint16x4_t half = vld1_u16((const uint16_t *)row + j);
    if (kind == WEIGHTS_F16) return vcvt_f32_f16(vreinterpret_f16_u16(half));
    /* bfloat16 is the top half of an f32 */
    return vreinterpretq_f32_u32(vshll_n_u16(half, 16));
}

/* The n (1 to 3) floats at p, zero-padded to 4: nothing past them is read (it may be the end of
 * the mapping). Lane loads, not a memcpy: a call would make the accumulators live in memory. */
static ALWAYS_INLINE float32x4_t load_f32_tail(const float *p, size_t n) {
    float32x4_t v = vld1q_lane_f32(p, vdupq_n_f32(0.0f), 0);
    if (n > 1) v = vld1q_lane_f32(p + 1, v, 1);
    if (n > 2) v = vld1q_lane_f32(p + 2, v, 2);
    return v;
}

/* The last n (1 to 3) weights of a row from element j, widened, zero-padded to 4. */
static ALWAYS_INLINE float32x4_t load_weights_tail(const void *row, size_t j, size_t n,
                                                   weight_kind kind) {
    if (kind == WEIGHTS_F32) return load_f32_tail((const float *)row + j, n);
    const uint16_t *p = (const uint16_t *)row + j;
    uint16x4_t half = vld1_lane_u16(p, vdup_n_u16(0), 0);
    if (n > 1) half = vld1_lane_u16(p + 1, half, 1);
    if (n > 2) half = vld1_lane_u16(p + 2, half, 2);
    if (kind == WEIGHTS_F16) return vcvt_f32_f16(vreinterpret_f16_u16(half));
    return vreinterpretq_f32_u32(vshll_n_u16(half, 16));
}

/* Sum of the 16 lanes of a + b + c + d, always in the same order. */
static ALWAYS_INLINE float reduce_sum(float32x4_t a, float32x4_t b, float32x4_t c,
                                      float32x4_t d) {
    return vaddvq_f32(vaddq_f32(vaddq_f32(a, b), vaddq_f32(c, d)));
}

/* acc[i] += rows[i][j .. j+3] * x[j .. j+3] for N_ROWS rows. */
static ALWAYS_INLINE void fma_group(float32x4_t *acc, const void *const *rows, int n_rows,
                                    const float *x, size_t j, weight_kind kind) {
    float32x4_t xj = vld1q_f32(x + j);
    for (int i = 0; i < n_rows; i++) acc[i] = vfmaq_f32(acc[i], load_weights(rows[i], j, kind), xj);
}

/* y[i] = rows[i] . x for N_ROWS (1 or 4) rows sharing each load of x. Per row, four
 * accumulators a, b, c, d: 16-column steps feed all four (columns j .. j+3 to a, j+4 .. j+7 to b,
 * and so on); then whole groups of 4 go to a, b, c in turn and the zero-padded ragged tail to d.
 * Every accumulator is indexed by a constant once the loops over i (constant trip count) are
 * unrolled, so all of them stay in registers (4 rows: 16, enough independent FMA chains to hide
 * the FMA latency). */
static ALWAYS_INLINE void dot_rows(const void *const *rows, int n_rows, const float *x,
                                   size_t n_cols, weight_kind kind, float *y) {
    float32x4_t a[4], b[4], c[4], d[4];
    for (int i = 0; i < n_rows; i++) a[i] = b[i] = c[i] = d[i] = vdupq_n_f32(0.0f);
    size_t j = 0;
    for (; j + 4 * LANES <= n_cols; j += 4 * LANES) {
        fma_group(a, rows, n_rows, x, j, kind);
        fma_group(b, rows, n_rows, x, j + LANES, kind);
        fma_group(c, rows, n_rows, x, j + 2 * LANES, kind);
        fma_group(d, rows, n_rows, x, j + 3 * LANES, kind);
    }
    if (j + LANES <= n_cols) {
        fma_group(a, rows, n_rows, x, j, kind);
        j += LANES;
        if (j + LANES <= n_cols) {
            fma_group(b, rows, n_rows, x, j, kind);
            j += LANES;
            if (j + LANES <= n_cols) {
                fma_group(c, rows, n_rows, x, j, kind);
                j += LANES;
            }
        }
    }
    if (j < n_cols) {
        size_t n = n_cols - j;
        float32x4_t xt = load_f32_tail(x + j, n);
        for (int i = 0; i < n_rows; i++)
            d[i] = vfmaq_f32(d[i], load_weights_tail(rows[i], j, n, kind), xt);
    }
    for (int i = 0; i < n_rows; i++) y[i] = reduce_sum(a[i], b[i], c[i], d[i]);
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

static void neon_matvec_f32(const float *w, const float *x, float *y, size_t n_cols,
                            size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_F32);
}

static void neon_matvec_f16(const uint16_t *w, const float *x, float *y, size_t n_cols,
                            size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_F16);
}

static void neon_matvec_bf16(const uint16_t *w, const float *x, float *y, size_t n_cols,
                             size_t row_begin, size_t row_end) {
    matvec(w, x, y, n_cols, row_begin, row_end, WEIGHTS_BF16);
}

/* a (n,) . b (n,): the one-row matvec, so dot_f32(w_row, x) == matvec_f32's y[r]. */
static float neon_dot_f32(const float *a, const float *b, size_t n) {
    const void *rows[1] = {a};
    float sum;
    dot_rows(rows, 1, b, n, WEIGHTS_F32, &sum);
    return sum;
}

/* ------------------------------------------------------------------------------------------------
 * Q8_0 / Q4_0 weights @ Q8_0 activations
 * ---------------------------------------------------------------------------------------------- */

/* The exact integer dot of 32 weight quants (w0: elements 0-15, w1: 16-31) with 32 activation
 * quants, as 4 partial sums (which lane holds which part does not matter: integers). */
static ALWAYS_INLINE int32x4_t block_dot(int8x16_t w0, int8x16_t w1, int8x16_t x0,
                                         int8x16_t x1) {
#if defined(LMOE_NEON_DOTPROD)
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
    /* int8 * int8 fits int16 (even -128 * -128); each int16 product is widened before it is
     * added to another, so nothing overflows. */
    int32x4_t acc = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
    acc = vpadalq_s16(acc, vmull_high_s8(w0, x0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
    return vpadalq_s16(acc, vmull_high_s8(w1, x1));
#endif
}

/* The 32 quants of a block of weights as int8: Q8_0 as stored, Q4_0 unpacked to q - 8 (low
 * nibbles are elements 0-15, high nibbles 16-31). */
static ALWAYS_INLINE void load_q8_0(const block_q8_0 *b, int8x16_t *w0, int8x16_t *w1) {
    *w0 = vld1q_s8(b->qs);
    *w1 = vld1q_s8(b->qs + 16);
}

static ALWAYS_INLINE void load_q4_0(const block_q4_0 *b, int8x16_t *w0, int8x16_t *w1) {
    uint8x16_t packed = vld1q_u8(b->qs);
    const int8x16_t eight = vdupq_n_s8(8);
    *w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))), eight);
    *w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), eight);
}

/* An IEEE half scale widened exactly (FCVT, like lmoe_f16_to_f32 for every non-NaN value). */
static ALWAYS_INLINE float half_to_f32(uint16_t h) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

/* y[r] for r in [row_begin, row_end): four rows at a time, one per lane, each lane doing
 * generic's float operations on its row in generic's order. A group of fewer than 4 rows at the
 * end repeats its last row in the unused lanes and stores only the lanes it needs, so every row
 * is computed by the same operations whichever rows share its group. */
static ALWAYS_INLINE void matvec_quantized(const void *w, const void *x_q8, float *y,
                                           size_t n_cols, size_t row_begin, size_t row_end,
                                           int q4) {
    size_t n_blocks = n_cols / LMOE_QK;
    size_t block_bytes = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    size_t row_bytes = n_blocks * block_bytes;
    const block_q8_0 *x = x_q8;
    for (size_t r = row_begin; r < row_end; r += 4) {
        size_t n_rows = row_end - r < 4 ? row_end - r : 4;
        const char *rows[4];
        for (size_t i = 0; i < 4; i++)
            rows[i] = (const char *)w + (r + (i < n_rows ? i : n_rows - 1)) * row_bytes;
        float32x4_t sum = vdupq_n_f32(0.0f);
        for (size_t b = 0; b < n_blocks; b++) {
            int8x16_t x0 = vld1q_s8(x[b].qs), x1 = vld1q_s8(x[b].qs + 16);
            int32x4_t part[4];
            uint16_t d_w[4];
            for (int i = 0; i < 4; i++) {
                const char *blk = rows[i] + b * block_bytes;
                int8x16_t w0, w1;
                if (q4)
                    load_q4_0((const block_q4_0 *)blk, &w0, &w1);
                else
                    load_q8_0((const block_q8_0 *)blk, &w0, &w1);
                memcpy(&d_w[i], blk, sizeof d_w[i]); /* d is the first field of both blocks */
                part[i] = block_dot(w0, w1, x0, x1);
            }
            /* lane i: the whole integer dot of row i */
            int32x4_t dot = vpaddq_s32(vpaddq_s32(part[0], part[1]), vpaddq_s32(part[2], part[3]));
            float32x4_t scale = vmulq_f32(vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d_w))),
                                          vdupq_n_f32(half_to_f32(x[b].d)));
            sum = vfmaq_f32(sum, vcvtq_f32_s32(dot), scale);
        }
        if (n_rows == 4) {
            vst1q_f32(y + r, sum);
        } else {
            float lanes[4];
            vst1q_f32(lanes, sum);
            memcpy(y + r, lanes, n_rows * sizeof(float));
        }
    }
}

static void neon_matvec_q8_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                             size_t row_begin, size_t row_end) {
    matvec_quantized(w, x_q8, y, n_cols, row_begin, row_end, 0);
}

static void neon_matvec_q4_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                             size_t row_begin, size_t row_end) {
    matvec_quantized(w, x_q8, y, n_cols, row_begin, row_end, 1);
}

/* ------------------------------------------------------------------------------------------------
 * Q8_0_R16 / Q4_0_R16 weights @ Q8_0 activations
 * ---------------------------------------------------------------------------------------------- */

/* Q8_0_R16 and Q4_0_R16 (quant.h): each 16-byte piece of qs[k] is 4 quants (Q4_0_R16: 4 bytes of
 * nibble pairs) of each of 4 rows (a row per 32-bit lane), so a lane accumulates its own row's dot
 * product: no reduction across lanes. Q8_0's quants are used as they are, and its lanes start at
 * 0. Q4_0's nibbles are used as they are (0 to 15), and each lane starts at -8 times the sum of
 * x's 32 quants (the nibbles' offset): the same exact integer as generic's sum of (q - 8) * x. */
static ALWAYS_INLINE int32x4_t r16_x_start(int8x16_t x0, int8x16_t x1) {
    return vdupq_n_s32(-8 * ((int32_t)vaddlvq_s8(x0) + (int32_t)vaddlvq_s8(x1)));
}

#if defined(LMOE_NEON_DOTPROD)
/* x's quants for one block: x0 elements 0-15, x1 16-31 (32-bit lane k of each: 4k .. 4k+3). */
typedef struct r16_x {
    int8x16_t x0, x1;
} r16_x;

static ALWAYS_INLINE r16_x r16_load_x(int8x16_t x0, int8x16_t x1) {
    r16_x x = {x0, x1};
    return x;
}

/* Rows 4j .. 4j+3 of a Q8_0_R16 block (one per lane): the exact integer dot of their quants with
 * x's, SDOT by lane against x's 4 quants of the same positions. Two chains (elements 0-15 and
 * 16-31) to halve the latency. */
static ALWAYS_INLINE int32x4_t r16_q8_dot4(const block_q8_0_r16 *g, int j, r16_x x) {
    int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
    /* the lane is an immediate: written out, not a loop (so -O0 builds compile too) */
    lo = vdotq_laneq_s32(lo, vld1q_s8(g->qs[0] + 16 * j), x.x0, 0);
    hi = vdotq_laneq_s32(hi, vld1q_s8(g->qs[4] + 16 * j), x.x1, 0);
    lo = vdotq_laneq_s32(lo, vld1q_s8(g->qs[1] + 16 * j), x.x0, 1);
    hi = vdotq_laneq_s32(hi, vld1q_s8(g->qs[5] + 16 * j), x.x1, 1);
    lo = vdotq_laneq_s32(lo, vld1q_s8(g->qs[2] + 16 * j), x.x0, 2);
    hi = vdotq_laneq_s32(hi, vld1q_s8(g->qs[6] + 16 * j), x.x1, 2);
    lo = vdotq_laneq_s32(lo, vld1q_s8(g->qs[3] + 16 * j), x.x0, 3);
    hi = vdotq_laneq_s32(hi, vld1q_s8(g->qs[7] + 16 * j), x.x1, 3);
    return vaddq_s32(lo, hi);
}

/* The same for a Q4_0_R16 block, from start: low nibbles (elements 0-15) against x0, high ones
 * (16-31) against x1. */
static ALWAYS_INLINE int32x4_t r16_q4_dot4(const block_q4_0_r16 *g, int j, r16_x x,
                                           int32x4_t start) {
    const uint8x16_t low = vdupq_n_u8(0x0f);
    uint8x16_t q0 = vld1q_u8(g->qs[0] + 16 * j), q1 = vld1q_u8(g->qs[1] + 16 * j);
    uint8x16_t q2 = vld1q_u8(g->qs[2] + 16 * j), q3 = vld1q_u8(g->qs[3] + 16 * j);
    int32x4_t lo = start, hi = vdupq_n_s32(0);
    lo = vdotq_laneq_s32(lo, vreinterpretq_s8_u8(vandq_u8(q0, low)), x.x0, 0);
    hi = vdotq_laneq_s32(hi, vreinterpretq_s8_u8(vshrq_n_u8(q0, 4)), x.x1, 0);
    lo = vdotq_laneq_s32(lo, vreinterpretq_s8_u8(vandq_u8(q1, low)), x.x0, 1);
    hi = vdotq_laneq_s32(hi, vreinterpretq_s8_u8(vshrq_n_u8(q1, 4)), x.x1, 1);
    lo = vdotq_laneq_s32(lo, vreinterpretq_s8_u8(vandq_u8(q2, low)), x.x0, 2);
    hi = vdotq_laneq_s32(hi, vreinterpretq_s8_u8(vshrq_n_u8(q2, 4)), x.x1, 2);
    lo = vdotq_laneq_s32(lo, vreinterpretq_s8_u8(vandq_u8(q3, low)), x.x0, 3);
    hi = vdotq_laneq_s32(hi, vreinterpretq_s8_u8(vshrq_n_u8(q3, 4)), x.x1, 3);
    return vaddq_s32(lo, hi);
}
#else
/* x's quants for one block, each group of 4 repeated across the register: lo[k] is elements
 * 4k .. 4k+3 four times, hi[k] elements 16+4k .. 16+4k+3. */
typedef struct r16_x {
    int8x16_t lo[4], hi[4];
} r16_x;

static ALWAYS_INLINE r16_x r16_load_x(int8x16_t x0, int8x16_t x1) {
    int32x4_t a = vreinterpretq_s32_s8(x0), b = vreinterpretq_s32_s8(x1);
    r16_x x;
    x.lo[0] = vreinterpretq_s8_s32(vdupq_laneq_s32(a, 0));
    x.lo[1] = vreinterpretq_s8_s32(vdupq_laneq_s32(a, 1));
    x.lo[2] = vreinterpretq_s8_s32(vdupq_laneq_s32(a, 2));
    x.lo[3] = vreinterpretq_s8_s32(vdupq_laneq_s32(a, 3));
    x.hi[0] = vreinterpretq_s8_s32(vdupq_laneq_s32(b, 0));
    x.hi[1] = vreinterpretq_s8_s32(vdupq_laneq_s32(b, 1));
    x.hi[2] = vreinterpretq_s8_s32(vdupq_laneq_s32(b, 2));
    x.hi[3] = vreinterpretq_s8_s32(vdupq_laneq_s32(b, 3));
    return x;
}

/* Rows 4j .. 4j+3 of a Q8_0_R16 block, with widening products: bytes 0-7 of a piece (rows 4j and
 * 4j+1) go to p01, bytes 8-15 to p23. One int8 * int8 product fits int16 (at most 128 * 128 =
 * 2^14 in magnitude) but two may not (2^15), so each int16 product is widened (pairwise, into
 * int32) before it is added to anything: an int32 lane then sums at most 16 products, 2^18 in
 * magnitude. The last pairwise sums leave row 4j+i's exact dot in lane i. */
static ALWAYS_INLINE int32x4_t r16_q8_dot4(const block_q8_0_r16 *g, int j, r16_x x) {
    int32x4_t p01 = vdupq_n_s32(0), p23 = vdupq_n_s32(0);
    for (int k = 0; k < 4; k++) {
        int8x16_t lo = vld1q_s8(g->qs[k] + 16 * j), hi = vld1q_s8(g->qs[4 + k] + 16 * j);
        p01 = vpadalq_s16(p01, vmull_s8(vget_low_s8(lo), vget_low_s8(x.lo[k])));
        p23 = vpadalq_s16(p23, vmull_high_s8(lo, x.lo[k]));
        p01 = vpadalq_s16(p01, vmull_s8(vget_low_s8(hi), vget_low_s8(x.hi[k])));
        p23 = vpadalq_s16(p23, vmull_high_s8(hi, x.hi[k]));
    }
    return vpaddq_s32(p01, p23);
}

/* The same for a Q4_0_R16 block, from start, the low nibbles against lo[k], the high ones against
 * hi[k]. Here an int16 lane sums 8 products of a nibble (0 to 15) and an int8, at most
 * 8 * 15 * 128 = 15360 in magnitude: no overflow, so the products accumulate in int16. */
static ALWAYS_INLINE int32x4_t r16_q4_dot4(const block_q4_0_r16 *g, int j, r16_x x,
                                           int32x4_t start) {
    const uint8x16_t low = vdupq_n_u8(0x0f);
    int16x8_t p01 = vdupq_n_s16(0), p23 = vdupq_n_s16(0);
    for (int k = 0; k < 4; k++) {
        uint8x16_t q = vld1q_u8(g->qs[k] + 16 * j);
        int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(q, low));
        int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
        p01 = vmlal_s8(p01, vget_low_s8(lo), vget_low_s8(x.lo[k]));
        p23 = vmlal_high_s8(p23, lo, x.lo[k]);
        p01 = vmlal_s8(p01, vget_low_s8(hi), vget_low_s8(x.hi[k]));
        p23 = vmlal_high_s8(p23, hi, x.hi[k]);
    }
    return vaddq_s32(start, vpaddq_s32(vpaddlq_s16(p01), vpaddlq_s16(p23)));
}
#endif

/* y[r] for r in [row_begin, row_end), a group of 16 rows at a time: 4 registers of 4 rows, each
 * lane doing generic's float operations on its row in generic's order. Nothing is read but the
 * group's blocks and x's, and nothing needs more than 2-byte alignment. */
static ALWAYS_INLINE void matvec_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                     size_t row_begin, size_t row_end, int q4) {
    size_t n_blocks = n_cols / LMOE_QK;
    size_t block_bytes = q4 ? sizeof(block_q4_0_r16) : sizeof(block_q8_0_r16);
    const block_q8_0 *x = x_q8;
    for (size_t r = row_begin; r < row_end; r += LMOE_R16_ROWS) {
        const char *g = (const char *)w + r / LMOE_R16_ROWS * n_blocks * block_bytes;
        float32x4_t sum[4];
        for (int j = 0; j < 4; j++) sum[j] = vdupq_n_f32(0.0f);
        for (size_t b = 0; b < n_blocks; b++) {
            const char *blk = g + b * block_bytes;
            const uint16_t *d = (const uint16_t *)blk; /* d[16] is the first field of both */
            int8x16_t x0 = vld1q_s8(x[b].qs), x1 = vld1q_s8(x[b].qs + 16);
            int32x4_t start = q4 ? r16_x_start(x0, x1) : vdupq_n_s32(0);
            r16_x xq = r16_load_x(x0, x1);
            float32x4_t d_x = vdupq_n_f32(half_to_f32(x[b].d));
            for (int j = 0; j < 4; j++) {
                /* |dot| <= 32 * 128 * 128 = 2^19 (Q4_0: 2^15): exact in f32 */
                int32x4_t dot = q4 ? r16_q4_dot4((const block_q4_0_r16 *)blk, j, xq, start)
                                   : r16_q8_dot4((const block_q8_0_r16 *)blk, j, xq);
                float32x4_t d_w = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d + 4 * j)));
                sum[j] = vfmaq_f32(sum[j], vcvtq_f32_s32(dot), vmulq_f32(d_w, d_x));
            }
        }
        for (int j = 0; j < 4; j++) vst1q_f32(y + r + 4 * j, sum[j]);
    }
}

static void neon_matvec_q8_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                 size_t row_begin, size_t row_end) {
    matvec_r16(w, x_q8, y, n_cols, row_begin, row_end, 0);
}

static void neon_matvec_q4_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                 size_t row_begin, size_t row_end) {
    matvec_r16(w, x_q8, y, n_cols, row_begin, row_end, 1);
}

/* x (n,) -> n / 32 Q8_0 blocks with quant.c's rounding: amax = max |x| (FMAXNM, like fmaxf),
 * d = amax / 127, id = 1 / d (0 for an all-zero block), q = round(x * id) with ties away from
 * zero (FCVTAS, like roundf); the scale through lmoe_f32_to_f16 itself. The narrowing to int8
 * keeps the low byte (XTN, not the saturating SQXTN), which is what quant.c's (int8_t) cast does
 * here when x * id is out of range: a block whose max |x| is below about 4e-37 has an infinite
 * id, and both give the same bytes for it too. */
static void neon_quantize_q8_0(const float *x, void *x_q8, size_t n) {
    block_q8_0 *out = x_q8;
    for (size_t b = 0; b < n / LMOE_QK; b++, x += LMOE_QK) {
        float32x4_t v[8];
        for (int k = 0; k < 8; k++) v[k] = vld1q_f32(x + 4 * k);
        float32x4_t m = vabsq_f32(v[0]);
        for (int k = 1; k < 8; k++) m = vmaxnmq_f32(m, vabsq_f32(v[k]));
        float amax = vmaxnmvq_f32(vmaxnmq_f32(m, vdupq_n_f32(0.0f)));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = lmoe_f32_to_f16(d);
        float32x4_t vid = vdupq_n_f32(id);
        for (int k = 0; k < 8; k += 2) {
            int32x4_t q0 = vcvtaq_s32_f32(vmulq_f32(v[k], vid));
            int32x4_t q1 = vcvtaq_s32_f32(vmulq_f32(v[k + 1], vid));
            int16x8_t q01 = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1));
            vst1_s8(out[b].qs + 4 * k, vmovn_s16(q01));
        }
    }
}

/* ------------------------------------------------------------------------------------------------
 * element-wise kernels
 * ---------------------------------------------------------------------------------------------- */

/* out (n,) = weight * (scale * x), scale = 1 / sqrt(mean(x^2) + eps). The scale is computed
 * before out is written, so out may alias x. */
static void neon_rmsnorm(float *out, const float *x, const float *weight, size_t n, float eps) {
    const void *rows[1] = {x};
    float ss;
    dot_rows(rows, 1, x, n, WEIGHTS_F32, &ss);
    ss /= (float)n;
    ss += eps;
    float scale = 1.0f / sqrtf(ss);
    float32x4_t vscale = vdupq_n_f32(scale);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        float32x4_t v = vmulq_f32(vscale, vld1q_f32(x + i));
        vst1q_f32(out + i, vmulq_f32(vld1q_f32(weight + i), v));
    }
    for (; i < n; i++) out[i] = weight[i] * (scale * x[i]);
}

/* x (n,) <- exp(x - max) / sum. Only the max and the final division are vector operations;
 * expf and the sum run in generic's order, so the result equals generic's. */
static void neon_softmax(float *x, size_t n) {
    if (n == 0) return;
    /* Lane by lane `if (v > m) m = v`, generic's comparison (FMAX would turn a NaN element into
     * the max): a NaN element is skipped, and a NaN x[0] stays the max, exactly as there. */
    float max_val = x[0];
    size_t i = 0;
    if (n >= LANES) {
        float32x4_t vmax = vdupq_n_f32(max_val);
        for (; i + LANES <= n; i += LANES) {
            float32x4_t v = vld1q_f32(x + i);
            vmax = vbslq_f32(vcgtq_f32(v, vmax), v, vmax);
        }
        float lanes[LANES];
        vst1q_f32(lanes, vmax);
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
    float32x4_t vsum = vdupq_n_f32(sum);
    for (i = 0; i + LANES <= n; i += LANES) vst1q_f32(x + i, vdivq_f32(vld1q_f32(x + i), vsum));
    for (; i < n; i++) x[i] /= sum;
}

/* out (n,) = silu(gate) * up = (gate * (1 / (1 + exp(-gate)))) * up, generic's operations; the
 * exponentials of a group are taken first, so out may alias gate (or up). */
static void neon_swiglu(float *out, const float *gate, const float *up, size_t n) {
    const float32x4_t one = vdupq_n_f32(1.0f);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        float e[LANES];
        for (int l = 0; l < LANES; l++) e[l] = expf(-gate[i + l]);
        float32x4_t g = vld1q_f32(gate + i);
        float32x4_t sig = vdivq_f32(one, vaddq_f32(one, vld1q_f32(e)));
        vst1q_f32(out + i, vmulq_f32(vmulq_f32(g, sig), vld1q_f32(up + i)));
    }
    for (; i < n; i++) {
        float v = gate[i];
        v *= (1.0f / (1.0f + expf(-v)));
        v *= up[i];
        out[i] = v;
    }
}

/* y (n,) += a * x (n,): product rounded, then added, as in generic. */
static void neon_axpy(float *y, float a, const float *x, size_t n) {
    float32x4_t va = vdupq_n_f32(a);
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        vst1q_f32(y + i, vaddq_f32(vld1q_f32(y + i), vmulq_f32(va, vld1q_f32(x + i))));
    for (; i < n; i++) y[i] += a * x[i];
}

#if defined(LMOE_NEON_DOTPROD)
#define NEON_TABLE_NAME "neon_dotprod"
#define NEON_TABLE_FUNCTION lmoe_kernels_neon_dotprod
#else
#define NEON_TABLE_NAME "neon"
#define NEON_TABLE_FUNCTION lmoe_kernels_neon
#endif

static const lmoe_kernels neon_table = {
    .name = NEON_TABLE_NAME,
    .matvec_f32 = neon_matvec_f32,
    .matvec_f16 = neon_matvec_f16,
    .matvec_bf16 = neon_matvec_bf16,
    .dot_f32 = neon_dot_f32,
    .rmsnorm = neon_rmsnorm,
    .softmax = neon_softmax,
    .swiglu = neon_swiglu,
    .axpy = neon_axpy,
    .matvec_q8_0 = neon_matvec_q8_0,
    .matvec_q4_0 = neon_matvec_q4_0,
    .matvec_q8_0_r16 = neon_matvec_q8_0_r16,
    .matvec_q4_0_r16 = neon_matvec_q4_0_r16,
    .quantize_q8_0 = neon_quantize_q8_0,
};

const lmoe_kernels *NEON_TABLE_FUNCTION(void) { return &neon_table; }

#else
/* Not an AArch64 target (or, for neon_dotprod, a compiler without the dot product flag):
 * nothing to compile (ISO C wants a declaration). */
typedef int lmoe_arm_neon_unavailable;
#endif
