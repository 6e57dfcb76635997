/* x86_r16.h - what the x86 Q8_0_R16 / Q4_0_R16 matvec kernels share (x86_avx2.c and
 * x86_avx512.c include it; both are compiled with at least AVX2 and F16C): the walk over a
 * matrix's groups of 16 rows, with x's per-block values prepared once per call for all groups.
 *
 * Each lane of a group kernel holds one row and adds unsigned weight times x products: Q4_0's
 * nibbles (0..15), or Q8_0's quants biased to w + 128 (0..255) where the instructions want an
 * unsigned side. It starts at x_start[b] = -bias (8 or 128) times the sum of block b's 32 x
 * quants, so it ends at the exact integer dot product of the block, and x_scale[b] is x's scale
 * widened. They are prepared for R16_X_BLOCKS blocks at a time (stack arrays); wider rows run
 * piece after piece, a row's sum carried through y. */
#ifndef LMOE_X86_R16_H
#define LMOE_X86_R16_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "quant.h"

#define R16_X_BLOCKS 256

/* How far ahead of the block being read its bytes are prefetched (into L2; into L1 the requests
 * stall on the fill buffers). A thread's rows are one sequential stream, but the file's pages
 * are 4 KiB and the hardware prefetcher stops at each page's end: without this, decode at 4/16
 * with 2 threads ran at 10.0-10.6 tokens/s, with it 12.2-12.8 (2048: 11.8-12.0, 4096: 11.7). */
#define R16_PREFETCH_BYTES 3072

/* mul (1 to 128) times the sum of the 32 quants at qs, exactly: vpmaddubsw's pairs of
 * mul * quant are at most 2 * 128 * 128 in magnitude (no saturation), then int32 sums of 4, then
 * across the lanes. */
static inline __attribute__((always_inline)) int32_t x86_quant_sum(const int8_t *qs, int mul) {
    __m256i q = _mm256_loadu_si256((const __m256i *)qs);
    __m256i s8 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8((char)mul), q),
                                   _mm256_set1_epi16(1));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s4);
}

/* Prefetches the `bytes` bytes R16_PREFETCH_BYTES past the block at blk (addresses past the
 * matrix are harmless: a prefetch never faults). */
static inline __attribute__((always_inline)) void r16_prefetch(const void *blk, size_t bytes) {
    const char *p = (const char *)blk + R16_PREFETCH_BYTES;
    for (size_t line = 0; line < (bytes + 63) / 64; line++) _mm_prefetch(p + 64 * line, _MM_HINT_T1);
}

/* y[0..16) (+)= the rows of group g (its blocks [0, n_blocks)) . x: from 0 when first, else
 * adding to y's partial sums, block after block. */
typedef void (*r16_group_fn)(const void *g, const block_q8_0 *x, const int32_t *x_start,
                             const float *x_scale, size_t n_blocks, int first, float *y);

/* The matvec over rows [row_begin, row_end) of a Q8_0_R16 (q8) or Q4_0_R16 matrix at w. */
static inline __attribute__((always_inline)) void r16_matvec(const void *w, const void *x_q8,
                                                             float *y, size_t n_cols,
                                                             size_t row_begin, size_t row_end,
                                                             int q8, r16_group_fn group) {
    const size_t n_blocks = n_cols / LMOE_QK;
    const size_t block_bytes = q8 ? sizeof(block_q8_0_r16) : sizeof(block_q4_0_r16);
    const block_q8_0 *x = x_q8;
    int32_t x_start[R16_X_BLOCKS];
    float x_scale[R16_X_BLOCKS];
    for (size_t b0 = 0; b0 < n_blocks; b0 += R16_X_BLOCKS) {
        size_t nb = n_blocks - b0 < R16_X_BLOCKS ? n_blocks - b0 : R16_X_BLOCKS;
        for (size_t b = 0; b < nb; b++) {
            x_start[b] = -x86_quant_sum(x[b0 + b].qs, q8 ? 128 : 8);
            x_scale[b] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x[b0 + b].d)));
        }
        for (size_t r = row_begin; r < row_end; r += LMOE_R16_ROWS) {
            const char *g = (const char *)w + (r / LMOE_R16_ROWS * n_blocks + b0) * block_bytes;
            group(g, x + b0, x_start, x_scale, nb, b0 == 0, y + r);
        }
    }
}

#endif
