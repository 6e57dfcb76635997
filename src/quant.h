/* quant.h - scalar conversions between f32 and the 16-bit weight formats (IEEE half, bfloat16).
 * The reference implementations every kernel agrees with. */
#ifndef LMOE_QUANT_H
#define LMOE_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

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

/* Widen n elements of a weight row of the given 16-bit type to f32. */
void lmoe_bf16_row_to_f32(const uint16_t *src, float *dst, size_t n);
void lmoe_f16_row_to_f32(const uint16_t *src, float *dst, size_t n);

#endif
