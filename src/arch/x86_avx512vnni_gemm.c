/* x86_avx512vnni_gemm.c - the avx512vnni table's batched Q8_0 / Q4_0 (and _R16) products
 * (prefill): a weight matrix times many tokens, as an int8 GEMM on vpdpbusd.
 *
 * Built with the avx512vnni table's flags (CMakeLists.txt) and reached only through that table.
 *
 * The matvec kernels (x86_avx512.c) hold two blocks of one row per register and must add the 16
 * lanes of each row together after every block pair; with many tokens that reduction would be paid
 * for every (row, token). Here the weights are unpacked once per block of 32 rows into a panel
 * where one 512-bit register holds 4 consecutive quants of 16 rows (lane i = row i), and each
 * token's 4 quants are broadcast from memory, so vpdpbusd leaves every lane holding its own row's
 * running dot product: after the 8 groups of a block, 16 exact block dot products with no
 * reduction. Every weight register then serves GEMM_TOKENS tokens and every broadcast
 * GEMM_GROUPS x 16 rows. (The _R16 types are stored almost as the panel is: unpacking is an XOR
 * or two ANDs and a shift per register.)
 *
 * The activations come packed (gemm_pack_token, while the forward pass quantises them): per tile
 * of GEMM_TOKENS tokens and block, their quants, the lanes' start values and their scales side by
 * side, so the tile walks one pointer. Read from each token's own blocks, the tile's 18 pointers
 * and index registers spilled and every start value took scalar work and a broadcast from a
 * general register: packed, the 4096 x 4096 GEMM at 128 tokens went from 386 / 414 / 451 to
 * 446 / 460 / 487 GOP/s (Q8_0 / Q4_0 / Q4_0_R16, one thread, bench_kernels).
 *
 * Exactness: vpdpbusd multiplies unsigned by signed bytes. The panel stores Q8_0 weights biased
 * to unsigned (w + 128) and Q4_0's nibbles q as they are (0..15); each lane starts at -128 (or -8)
 * times the block's sum of x quants, so it ends at the exact integer dot product, as in the matvec
 * kernels. The float part is generic's, per row and token: sum = fma(dot, d_w * d_x, sum), block
 * after block. So every output equals matvec_q8_0 / matvec_q4_0 (and their _r16 forms) of
 * x86_avx512.c (and generic.c) bit for bit, whatever the number of tokens or rows; test_gemm.c
 * checks it. */
#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    defined(__AVX512VNNI__) && defined(__F16C__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"
#include "x86_r16.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define ALWAYS_INLINE inline __attribute__((always_inline))

#define GROUP_ROWS 16   /* rows per register: one per int32 lane */
#define GEMM_GROUPS 2   /* row groups unpacked together: 32 rows */
#define GEMM_TOKENS 6   /* tokens per register tile: 2 x 6 accumulators and 2 x 6 sums */

/* Panel layout, per block of 32 quants: for each row group, 8 registers (quants 4j..4j+3 of its
 * 16 rows, j = 0..7), then each group's 16 row scales as f32. */
#define GROUP_QUANT_BYTES (8 * 64)
#define BLOCK_PANEL_BYTES (GEMM_GROUPS * GROUP_QUANT_BYTES + GEMM_GROUPS * 64)
_Static_assert(BLOCK_PANEL_BYTES == 1152, "kernels.h's LMOE_GEMM_SCRATCH_BYTES assumes 1152");

/* 8 x 8 transposes of 32-bit elements in each 256-bit half: a[i] holds row i's 8 quad-bytes in
 * its low half and row i + 8's in its high half; out[j] gets quad j of rows 0..15, lane i = row i. */
static ALWAYS_INLINE void transpose_halves(const __m512i a[8], __m512i out[8]) {
    __m512i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm512_unpacklo_epi32(a[i], a[i + 1]);     /* per 128: a0 b0 a1 b1 */
        t[i + 1] = _mm512_unpackhi_epi32(a[i], a[i + 1]); /* a2 b2 a3 b3 */
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);         /* quad 0 (and 4) of 4 rows */
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);     /* quad 1 (5) */
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]); /* quad 2 (6) */
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]); /* quad 3 (7) */
    }
    /* rows 0-3 are in u[0..3], rows 4-7 in u[4..7]; 128-bit chunk 0 holds quads 0-3, chunk 1
     * quads 4-7, chunks 2-3 the same for rows 8-15 */
    const __m512i lo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13);
    const __m512i hi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    for (int j = 0; j < 4; j++) {
        out[j] = _mm512_permutex2var_epi64(u[j], lo, u[j + 4]);
        out[j + 4] = _mm512_permutex2var_epi64(u[j], hi, u[j + 4]);
    }
}

/* The 32 quants of a block as unsigned bytes (Q8_0: w + 128; Q4_0: the nibbles, low ones first,
 * as element order has it), row r in the low 256 bits and row r + 8 in the high. */
static ALWAYS_INLINE __m512i load_row_pair(const char *block_r, const char *block_r8, int q4) {
    if (q4) {
        __m512i packed = _mm512_broadcast_i32x4(
            _mm_loadu_si128((const __m128i *)((const block_q4_0 *)block_r)->qs));
        packed = _mm512_mask_broadcast_i32x4(
            packed, 0xff00, _mm_loadu_si128((const __m128i *)((const block_q4_0 *)block_r8)->qs));
        const __m512i shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
        return _mm512_and_si512(_mm512_srlv_epi64(packed, shifts), _mm512_set1_epi8(0x0f));
    }
    __m512i v = _mm512_castsi256_si512(
        _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)block_r)->qs));
    v = _mm512_inserti64x4(
        v, _mm256_loadu_si256((const __m256i *)((const block_q8_0 *)block_r8)->qs), 1);
    return _mm512_xor_si512(v, _mm512_set1_epi8(-128));
}

/* Unpacks rows [0, n_rows) (n_rows <= 32; the missing rows repeat row 0, and their results are
 * never stored) of the weight matrix at w into the panel. */
static ALWAYS_INLINE void pack_panel(const char *w, size_t row_bytes, size_t n_rows,
                                     size_t n_blocks, int q4, uint8_t *panel) {
    const size_t block_bytes = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    const char *rows[GEMM_GROUPS * GROUP_ROWS];
    for (size_t i = 0; i < GEMM_GROUPS * GROUP_ROWS; i++)
        rows[i] = w + (i < n_rows ? i : 0) * row_bytes;
    size_t n_groups = (n_rows + GROUP_ROWS - 1) / GROUP_ROWS;
    for (size_t b = 0; b < n_blocks; b++) {
        uint8_t *out = panel + b * BLOCK_PANEL_BYTES;
        size_t at = b * block_bytes;
        for (size_t g = 0; g < n_groups; g++) {
            const char *const *gr = rows + g * GROUP_ROWS;
            __m512i a[8], q[8];
            for (int i = 0; i < 8; i++) a[i] = load_row_pair(gr[i] + at, gr[i + 8] + at, q4);
            transpose_halves(a, q);
            for (int j = 0; j < 8; j++)
                _mm512_store_si512((void *)(out + g * GROUP_QUANT_BYTES + j * 64), q[j]);
            uint16_t d[GROUP_ROWS];
            for (int i = 0; i < GROUP_ROWS; i++) memcpy(&d[i], gr[i] + at, sizeof d[i]);
            __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)d));
            _mm512_store_ps((float *)(out + GEMM_GROUPS * GROUP_QUANT_BYTES + g * 64), dw);
        }
    }
}

/* The same from the _R16 types (quant.h), where the panel's layout is already there: Q8_0_R16's
 * qs[j] is register j, to be biased to w + 128; Q4_0_R16's qs[k] holds register k in its low
 * nibbles and register 4 + k in its high ones. n_groups of 16 rows, consecutive in w (the
 * matrix's first group of these rows). */
static ALWAYS_INLINE void pack_panel_r16(const void *w, size_t n_groups, size_t n_blocks, int q8,
                                         uint8_t *panel) {
    const __m512i low = _mm512_set1_epi8(0x0f), bias = _mm512_set1_epi8(-128);
    for (size_t b = 0; b < n_blocks; b++) {
        uint8_t *out = panel + b * BLOCK_PANEL_BYTES;
        for (size_t g = 0; g < n_groups; g++) {
            uint8_t *q_out = out + g * GROUP_QUANT_BYTES;
            const uint16_t *d;
            if (q8) {
                const block_q8_0_r16 *blk = (const block_q8_0_r16 *)w + g * n_blocks + b;
                for (int j = 0; j < 8; j++)
                    _mm512_store_si512((void *)(q_out + j * 64),
                                       _mm512_xor_si512(_mm512_loadu_si512(blk->qs[j]), bias));
                d = blk->d;
            } else {
                const block_q4_0_r16 *blk = (const block_q4_0_r16 *)w + g * n_blocks + b;
                for (int k = 0; k < 4; k++) {
                    __m512i q = _mm512_loadu_si512((const void *)blk->qs[k]);
                    _mm512_store_si512((void *)(q_out + k * 64), _mm512_and_si512(q, low));
                    _mm512_store_si512((void *)(q_out + (4 + k) * 64),
                                       _mm512_and_si512(_mm512_srli_epi16(q, 4), low));
                }
                d = blk->d;
            }
            __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)d));
            _mm512_store_ps((float *)(out + GEMM_GROUPS * GROUP_QUANT_BYTES + g * 64), dw);
        }
    }
}

/* The activations of a tile of GEMM_TOKENS tokens for one block, interleaved so that the tile
 * walks one pointer: the tokens' 32 quants, each lane's start value for either bias (-128 or -8
 * times the block's sum of quants) and the tokens' scales. A batch is its tiles (the last one
 * partly used) of n_blocks of these each. */
typedef struct tile_x {
    int8_t qs[GEMM_TOKENS][LMOE_QK];
    int32_t start[2][GEMM_TOKENS]; /* [0]: Q8_0's -128 * sum, [1]: Q4_0's -8 * sum */
    float scale[GEMM_TOKENS];
} tile_x;

size_t lmoe_avx512vnni_gemm_x_bytes(size_t n_tokens, size_t n_blocks) {
    return (n_tokens + GEMM_TOKENS - 1) / GEMM_TOKENS * n_blocks * sizeof(tile_x);
}

void lmoe_avx512vnni_gemm_pack_token(const block_q8_0 *x, size_t token, size_t n_blocks,
                                     void *packed) {
    tile_x *tiles = (tile_x *)packed + token / GEMM_TOKENS * n_blocks;
    size_t slot = token % GEMM_TOKENS;
    for (size_t b = 0; b < n_blocks; b++) {
        memcpy(tiles[b].qs[slot], x[b].qs, LMOE_QK);
        int32_t sum = x86_quant_sum(x[b].qs, 1);
        tiles[b].start[0][slot] = -128 * sum;
        tiles[b].start[1][slot] = -8 * sum;
        tiles[b].scale[slot] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x[b].d)));
    }
}

/* The 4 quants at p as one int32, in every lane. */
static ALWAYS_INLINE __m512i broadcast_quad(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* y rows for tokens t0 .. t0 + NT - 1 (their tile xt) and NG groups of 16 rows from the panel;
 * mask: the valid rows of the last group. */
static ALWAYS_INLINE void tile(const uint8_t *panel, const tile_x *xt, size_t n_blocks, size_t t0,
                               int NT, int NG, __mmask16 last_mask, int q4, float *y, size_t ldy) {
    __m512 sum[GEMM_GROUPS][GEMM_TOKENS];
    for (int g = 0; g < NG; g++)
        for (int t = 0; t < NT; t++) sum[g][t] = _mm512_setzero_ps();
    for (size_t b = 0; b < n_blocks; b++) {
        const uint8_t *pb = panel + b * BLOCK_PANEL_BYTES;
        const tile_x *xb = xt + b;
        __m512i acc[GEMM_GROUPS][GEMM_TOKENS];
        for (int t = 0; t < NT; t++) {
            __m512i start = _mm512_set1_epi32(xb->start[q4][t]);
            for (int g = 0; g < NG; g++) acc[g][t] = start;
        }
        for (int j = 0; j < 8; j++) {
            __m512i wq[GEMM_GROUPS];
            for (int g = 0; g < NG; g++)
                wq[g] = _mm512_load_si512((const void *)(pb + g * GROUP_QUANT_BYTES + j * 64));
            for (int t = 0; t < NT; t++) {
                __m512i xq = broadcast_quad(xb->qs[t] + 4 * j);
                for (int g = 0; g < NG; g++) acc[g][t] = _mm512_dpbusd_epi32(acc[g][t], wq[g], xq);
            }
        }
        for (int g = 0; g < NG; g++) {
            __m512 dw = _mm512_load_ps((const float *)(pb + GEMM_GROUPS * GROUP_QUANT_BYTES + g * 64));
            for (int t = 0; t < NT; t++) {
                __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(xb->scale[t]));
                __m512 dot = _mm512_cvtepi32_ps(acc[g][t]); /* exact: |dot| <= 2^19 */
                sum[g][t] = _mm512_fmadd_ps(dot, scale, sum[g][t]);
            }
        }
    }
    for (int t = 0; t < NT; t++)
        for (int g = 0; g < NG; g++) {
            float *out = y + (t0 + t) * ldy + g * GROUP_ROWS;
            if (g == NG - 1)
                _mm512_mask_storeu_ps(out, last_mask, sum[g][t]);
            else
                _mm512_storeu_ps(out, sum[g][t]);
        }
}

/* One tile shape per (tokens, groups), so every loop above has constant bounds: a case for each
 * tile width 1 .. GEMM_TOKENS. */
_Static_assert(GEMM_TOKENS == 6, "gemm's switch has a TILE_CASE for widths 1 to 6");
#define TILE_CASE(nt)                                                                      \
    case nt:                                                                               \
        if (n_groups == 2)                                                                 \
            tile(panel, xt + t0 / GEMM_TOKENS * n_blocks, n_blocks, t0, nt, 2, mask, q4, yr, ldy); \
        else                                                                               \
            tile(panel, xt + t0 / GEMM_TOKENS * n_blocks, n_blocks, t0, nt, 1, mask, q4, yr, ldy); \
        break;

/* layout: 0 Q8_0, 1 Q4_0, 2 Q4_0_R16, 3 Q8_0_R16 (for the _R16 ones row_begin and row_end are
 * multiples of 16). */
static ALWAYS_INLINE void gemm(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                               size_t n_cols, size_t row_begin, size_t row_end, void *scratch,
                               int layout) {
    const int q4 = layout == 1 || layout == 2;
    const size_t n_blocks = n_cols / LMOE_QK;
    const size_t row_bytes = n_blocks * (q4 ? sizeof(block_q4_0) : sizeof(block_q8_0));
    uint8_t *panel = scratch;
    const tile_x *xt = x->packed;
    for (size_t r0 = row_begin; r0 < row_end; r0 += GEMM_GROUPS * GROUP_ROWS) {
        size_t n_rows = row_end - r0 < GEMM_GROUPS * GROUP_ROWS ? row_end - r0
                                                                 : GEMM_GROUPS * GROUP_ROWS;
        size_t n_groups = (n_rows + GROUP_ROWS - 1) / GROUP_ROWS;
        size_t last_rows = n_rows - (n_groups - 1) * GROUP_ROWS;
        __mmask16 mask = (__mmask16)((1u << last_rows) - 1);
        if (layout >= 2) /* a group's bytes are 16 rows' worth of Q4_0's / Q8_0's */
            pack_panel_r16((const char *)w + r0 * row_bytes, n_groups, n_blocks, layout == 3,
                           panel);
        else
            pack_panel((const char *)w + r0 * row_bytes, row_bytes, n_rows, n_blocks, q4, panel);
        float *yr = y + r0;
        for (size_t t0 = 0; t0 < x->n_tokens; t0 += GEMM_TOKENS) {
            size_t nt = x->n_tokens - t0 < GEMM_TOKENS ? x->n_tokens - t0 : GEMM_TOKENS;
            switch (nt) {
                TILE_CASE(1)
                TILE_CASE(2)
                TILE_CASE(3)
                TILE_CASE(4)
                TILE_CASE(5)
                TILE_CASE(GEMM_TOKENS)
            }
        }
    }
}

void lmoe_avx512vnni_gemm_q8_0(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                               size_t n_cols, size_t row_begin, size_t row_end, void *scratch) {
    gemm(w, x, y, ldy, n_cols, row_begin, row_end, scratch, 0);
}

void lmoe_avx512vnni_gemm_q4_0(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                               size_t n_cols, size_t row_begin, size_t row_end, void *scratch) {
    gemm(w, x, y, ldy, n_cols, row_begin, row_end, scratch, 1);
}

void lmoe_avx512vnni_gemm_q8_0_r16(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                                   size_t n_cols, size_t row_begin, size_t row_end,
                                   void *scratch) {
    gemm(w, x, y, ldy, n_cols, row_begin, row_end, scratch, 3);
}

void lmoe_avx512vnni_gemm_q4_0_r16(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                                   size_t n_cols, size_t row_begin, size_t row_end,
                                   void *scratch) {
    gemm(w, x, y, ldy, n_cols, row_begin, row_end, scratch, 2);
}

#else
/* Not built with the VNNI flags: nothing to compile (ISO C wants a declaration). */
typedef int lmoe_x86_avx512vnni_gemm_unavailable;
#endif
