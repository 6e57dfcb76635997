/* quant.h - scalar conversions between f32 and the 16-bit weight formats (IEEE half, bfloat16).
 * The reference implementations every kernel agrees with. */
#ifndef LMOE_QUANT_H
#define LMOE_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gguf.h"

/* bfloat16 is the top half of an f32: widening is exact. */
static inline float lmoe_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Round to nearest even; NaN stays NaN (quiet). */
uint16_t lmoe_f32_to_bf16(float f);
/* IEEE 754 binary16, exact for every value (subnormals, infinities, NaN). */
float lmoe_f16_to_f32(uint16_t h);
/* Round to nearest even, overflow to infinity, NaN stays NaN. */
uint16_t lmoe_f32_to_f16(float f);

/* Block formats, bit-compatible with ggml's: 32 elements per block, an IEEE half scale d first.
 * Q8_0: value = q * d, q int8. Q4_0: byte j holds element j in its low nibble and element j + 16
 * in its high nibble, value = (q - 8) * d. */
#define LMOE_QK 32

typedef struct block_q8_0 {
    uint16_t d;             /* f16 scale */
    int8_t qs[LMOE_QK];
} block_q8_0;

typedef struct block_q4_0 {
    uint16_t d;             /* f16 scale */
    uint8_t qs[LMOE_QK / 2];
} block_q4_0;

/* n (a multiple of 32) f32 values to blocks, the reference rounding: Q8_0 d = max|x| / 127,
 * q = round(x / d); Q4_0 d = (the value of largest magnitude) / -8, q = min(15, (int)(x / d + 8.5)). */
void lmoe_quantize_row_q8_0(const float *x, block_q8_0 *out, size_t n);
void lmoe_quantize_row_q4_0(const float *x, block_q4_0 *out, size_t n);
void lmoe_dequantize_row_q8_0(const block_q8_0 *in, float *y, size_t n);
void lmoe_dequantize_row_q4_0(const block_q4_0 *in, float *y, size_t n);

/* For each of n_blocks Q8_0 blocks, the sum of its 32 quants and its scale as f32: what the batched
 * quantised kernels (kernels.h, lmoe_q8_batch) read for the activations. */
void lmoe_q8_0_block_stats(const block_q8_0 *x, size_t n_blocks, int32_t *sums, float *scales);

/* n elements (whole blocks) of a row of a weight type the library binds (f32, f16, bf16, q8_0,
 * q4_0) to f32, and from f32 with the reference rounding. Other types leave dst untouched. */
void lmoe_row_to_f32(ggml_type type, const void *src, float *dst, size_t n);
void lmoe_row_from_f32(ggml_type type, const float *src, void *dst, size_t n);

/* Widen n elements of a weight row of the given 16-bit type to f32. */
void lmoe_bf16_row_to_f32(const uint16_t *src, float *dst, size_t n);
void lmoe_f16_row_to_f32(const uint16_t *src, float *dst, size_t n);

#endif
