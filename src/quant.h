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

/* Q4_0_R16 (LMOE_TYPE_Q4_0_R16, this library's own): Q4_0's scales and nibbles for groups of 16
 * consecutive rows, interleaved so that one 64-byte load holds 4 quants of each of the 16 rows
 * (a row per 32-bit lane). A group of rows is n_cols / 32 of these, block after block; groups
 * follow each other. qs[k][4 r + i] is byte 4 k + i of row r's Q4_0 block: element 4 k + i in its
 * low nibble, element 16 + 4 k + i in its high one. */
typedef struct block_q4_0_r16 {
    uint16_t d[LMOE_R16_ROWS];          /* the 16 rows' f16 scales */
    uint8_t qs[4][4 * LMOE_R16_ROWS];
} block_q4_0_r16;

/* Q8_0_R16 (LMOE_TYPE_Q8_0_R16, this library's own): the same for Q8_0. qs[k][4 r + i] is
 * element 4 k + i of row r's block. */
typedef struct block_q8_0_r16 {
    uint16_t d[LMOE_R16_ROWS];          /* the 16 rows' f16 scales */
    int8_t qs[8][4 * LMOE_R16_ROWS];
} block_q8_0_r16;

/* Rows [0, 16) of Q4_0 / Q8_0 (each n_blocks blocks, row_stride blocks apart) -> one group of
 * the _R16 type, and back (row r of the group, as n_blocks blocks). Exact both ways. */
void lmoe_q4_0_to_r16(const block_q4_0 *rows, size_t row_stride, size_t n_blocks,
                      block_q4_0_r16 *group);
void lmoe_r16_row_to_q4_0(const block_q4_0_r16 *group, size_t r, size_t n_blocks,
                          block_q4_0 *out);
void lmoe_q8_0_to_r16(const block_q8_0 *rows, size_t row_stride, size_t n_blocks,
                      block_q8_0_r16 *group);
void lmoe_r16_row_to_q8_0(const block_q8_0_r16 *group, size_t r, size_t n_blocks,
                          block_q8_0 *out);

/* n (a multiple of 32) f32 values to blocks, the reference rounding: Q8_0 d = max|x| / 127,
 * q = round(x / d); Q4_0 d = (the value of largest magnitude) / -8, q = min(15, (int)(x / d + 8.5)). */
void lmoe_quantize_row_q8_0(const float *x, block_q8_0 *out, size_t n);
void lmoe_quantize_row_q4_0(const float *x, block_q4_0 *out, size_t n);
void lmoe_dequantize_row_q8_0(const block_q8_0 *in, float *y, size_t n);
void lmoe_dequantize_row_q4_0(const block_q4_0 *in, float *y, size_t n);


/* n elements (whole blocks) of a row of a weight type the library binds (f32, f16, bf16, q8_0,
 * q4_0) to f32, and from f32 with the reference rounding. Other types leave dst untouched. */
void lmoe_row_to_f32(ggml_type type, const void *src, float *dst, size_t n);
void lmoe_row_from_f32(ggml_type type, const float *src, void *dst, size_t n);

/* Row `row` of a matrix (n_cols wide, starting at matrix) of any bound type, the _R16 types
 * included, to f32. */
void lmoe_matrix_row_to_f32(ggml_type type, const void *matrix, size_t row, size_t n_cols,
                            float *dst);
/* Rows [0, 16) of f32 (n_cols each, contiguous) -> one group (n_cols / 32 blocks) of an _R16
 * type, with Q4_0's / Q8_0's reference rounding. */
void lmoe_quantize_rows_r16(ggml_type type, const float *x, void *group, size_t n_cols);

/* Widen n elements of a weight row of the given 16-bit type to f32. */
void lmoe_bf16_row_to_f32(const uint16_t *src, float *dst, size_t n);
void lmoe_f16_row_to_f32(const uint16_t *src, float *dst, size_t n);

#endif
