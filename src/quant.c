/* quant.c - f32 <-> f16 / bf16 reference conversions (see quant.h). */
#include "quant.h"

#include <math.h>

uint16_t lmoe_f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* NaN */
    uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)((bits + rounding) >> 16);
}

float lmoe_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13); /* inf or NaN */
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign; /* signed zero */
    } else {
        /* subnormal: shift the mantissa up until its leading 1 is the implicit bit */
        exponent = 113;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            exponent--;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t lmoe_f32_to_f16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t abs = bits & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);   /* NaN */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  /* rounds to >= 65520: inf */
    if (abs >= 0x38800000u) {                                   /* normal half */
        uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
        return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
    }
    if (abs < 0x33000000u) return sign; /* below half the smallest subnormal: zero */
    /* subnormal half: value = mantissa * 2^-24; round the 24-bit significand to nearest even */
    uint32_t exponent = abs >> 23;
    uint32_t significand = (abs & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - exponent; /* 14 .. 24 */
    uint32_t half = 1u << (shift - 1);
    uint32_t rest = significand & ((1u << shift) - 1u);
    uint32_t value = significand >> shift;
    if (rest > half || (rest == half && (value & 1u))) value++;
    return (uint16_t)(sign | value);
}

void lmoe_bf16_row_to_f32(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = lmoe_bf16_to_f32(src[i]);
}

void lmoe_f16_row_to_f32(const uint16_t *src, float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = lmoe_f16_to_f32(src[i]);
}

/* 1 / d, or 0 when d is 0 or so small that 1 / d overflows (the block then quantises to 0). */
static float inverse(float d) {
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    return isfinite(id) ? id : 0.0f;
}

/* round(v) as an int8 within [-limit, limit]; NaN (from NaN or infinite input) gives 0. These
 * guards change nothing for finite blocks, where |v| <= limit already: they only keep the
 * conversion defined. */
static int8_t quant_int8(float v, float limit) {
    if (v != v) return 0;
    return (int8_t)roundf(fminf(fmaxf(v, -limit), limit));
}

void lmoe_quantize_row_q8_0(const float *x, block_q8_0 *out, size_t n) {
    for (size_t b = 0; b < n / LMOE_QK; b++, x += LMOE_QK) {
        float amax = 0.0f;
        for (int j = 0; j < LMOE_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        out[b].d = lmoe_f32_to_f16(d);
        for (int j = 0; j < LMOE_QK; j++) out[b].qs[j] = quant_int8(x[j] * inverse(d), 127.0f);
    }
}

void lmoe_quantize_row_q4_0(const float *x, block_q4_0 *out, size_t n) {
    for (size_t b = 0; b < n / LMOE_QK; b++, x += LMOE_QK) {
        float amax = 0.0f, max = 0.0f; /* max: the value of largest magnitude, with its sign */
        for (int j = 0; j < LMOE_QK; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -8.0f;
        float id = inverse(d);
        out[b].d = lmoe_f32_to_f16(d);
        for (int j = 0; j < LMOE_QK / 2; j++) {
            /* x * id is in [-8, 8] for finite input; the clamp only keeps NaN/inf defined */
            int lo = (int)fminf(fmaxf(x[j] * id + 8.5f, 0.0f), 15.0f);
            int hi = (int)fminf(fmaxf(x[j + LMOE_QK / 2] * id + 8.5f, 0.0f), 15.0f);
            out[b].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

void lmoe_dequantize_row_q8_0(const block_q8_0 *in, float *y, size_t n) {
    for (size_t b = 0; b < n / LMOE_QK; b++) {
        float d = lmoe_f16_to_f32(in[b].d);
        for (int j = 0; j < LMOE_QK; j++) y[b * LMOE_QK + j] = (float)in[b].qs[j] * d;
    }
}

void lmoe_dequantize_row_q4_0(const block_q4_0 *in, float *y, size_t n) {
    for (size_t b = 0; b < n / LMOE_QK; b++) {
        float d = lmoe_f16_to_f32(in[b].d);
        for (int j = 0; j < LMOE_QK / 2; j++) {
            y[b * LMOE_QK + j] = (float)((in[b].qs[j] & 0x0f) - 8) * d;
            y[b * LMOE_QK + j + LMOE_QK / 2] = (float)((in[b].qs[j] >> 4) - 8) * d;
        }
    }
}

void lmoe_q4_0_to_r16(const block_q4_0 *rows, size_t row_stride, size_t n_blocks,
                      block_q4_0_r16 *group) {
    for (size_t b = 0; b < n_blocks; b++)
        for (size_t r = 0; r < LMOE_R16_ROWS; r++) {
            const block_q4_0 *src = &rows[r * row_stride + b];
            group[b].d[r] = src->d;
            for (int k = 0; k < 4; k++) memcpy(&group[b].qs[k][4 * r], &src->qs[4 * k], 4);
        }
}

void lmoe_r16_row_to_q4_0(const block_q4_0_r16 *group, size_t r, size_t n_blocks,
                          block_q4_0 *out) {
    for (size_t b = 0; b < n_blocks; b++) {
        out[b].d = group[b].d[r];
        for (int k = 0; k < 4; k++) memcpy(&out[b].qs[4 * k], &group[b].qs[k][4 * r], 4);
    }
}

void lmoe_q8_0_to_r16(const block_q8_0 *rows, size_t row_stride, size_t n_blocks,
                      block_q8_0_r16 *group) {
    for (size_t b = 0; b < n_blocks; b++)
        for (size_t r = 0; r < LMOE_R16_ROWS; r++) {
            const block_q8_0 *src = &rows[r * row_stride + b];
            group[b].d[r] = src->d;
            for (int k = 0; k < 8; k++) memcpy(&group[b].qs[k][4 * r], &src->qs[4 * k], 4);
        }
}

void lmoe_r16_row_to_q8_0(const block_q8_0_r16 *group, size_t r, size_t n_blocks,
                          block_q8_0 *out) {
    for (size_t b = 0; b < n_blocks; b++) {
        out[b].d = group[b].d[r];
        for (int k = 0; k < 8; k++) memcpy(&out[b].qs[4 * k], &group[b].qs[k][4 * r], 4);
    }
}

void lmoe_quantize_rows_r16(ggml_type type, const float *x, void *group, size_t n_cols) {
    enum { PIECE = 16 }; /* blocks of each row quantised at a time */
    size_t n_blocks = n_cols / LMOE_QK;
    for (size_t b0 = 0; b0 < n_blocks; b0 += PIECE) {
        size_t nb = n_blocks - b0 < PIECE ? n_blocks - b0 : PIECE;
        if (type == LMOE_TYPE_Q4_0_R16) {
            block_q4_0 rows[LMOE_R16_ROWS][PIECE];
            for (size_t r = 0; r < LMOE_R16_ROWS; r++)
                lmoe_quantize_row_q4_0(x + r * n_cols + b0 * LMOE_QK, rows[r], nb * LMOE_QK);
            lmoe_q4_0_to_r16(&rows[0][0], PIECE, nb, (block_q4_0_r16 *)group + b0);
        } else {
            block_q8_0 rows[LMOE_R16_ROWS][PIECE];
            for (size_t r = 0; r < LMOE_R16_ROWS; r++)
                lmoe_quantize_row_q8_0(x + r * n_cols + b0 * LMOE_QK, rows[r], nb * LMOE_QK);
            lmoe_q8_0_to_r16(&rows[0][0], PIECE, nb, (block_q8_0_r16 *)group + b0);
        }
    }
}

void lmoe_matrix_row_to_f32(ggml_type type, const void *matrix, size_t row, size_t n_cols,
                            float *dst) {
    size_t n_blocks = n_cols / LMOE_QK, r = row % LMOE_R16_ROWS;
    if (!ggml_type_is_r16(type)) {
        size_t row_bytes = n_cols / ggml_type_block_elems(type) * ggml_type_block_bytes(type);
        lmoe_row_to_f32(type, (const char *)matrix + row * row_bytes, dst, n_cols);
        return;
    }
    for (size_t b = 0; b < n_blocks; b++) {
        if (type == LMOE_TYPE_Q4_0_R16) {
            block_q4_0 q;
            lmoe_r16_row_to_q4_0((const block_q4_0_r16 *)matrix + row / LMOE_R16_ROWS * n_blocks + b,
                                 r, 1, &q);
            lmoe_dequantize_row_q4_0(&q, dst + b * LMOE_QK, LMOE_QK);
        } else {
            block_q8_0 q;
            lmoe_r16_row_to_q8_0((const block_q8_0_r16 *)matrix + row / LMOE_R16_ROWS * n_blocks + b,
                                 r, 1, &q);
            lmoe_dequantize_row_q8_0(&q, dst + b * LMOE_QK, LMOE_QK);
        }
    }
}

void lmoe_row_to_f32(ggml_type type, const void *src, float *dst, size_t n) {
    switch (type) {
    case GGML_TYPE_F32: memcpy(dst, src, n * sizeof(float)); break;
    case GGML_TYPE_F16: lmoe_f16_row_to_f32(src, dst, n); break;
    case GGML_TYPE_BF16: lmoe_bf16_row_to_f32(src, dst, n); break;
    case GGML_TYPE_Q8_0: lmoe_dequantize_row_q8_0(src, dst, n); break;
    case GGML_TYPE_Q4_0: lmoe_dequantize_row_q4_0(src, dst, n); break;
    default: break;
    }
}

void lmoe_row_from_f32(ggml_type type, const float *src, void *dst, size_t n) {
    switch (type) {
    case GGML_TYPE_F32: memcpy(dst, src, n * sizeof(float)); break;
    case GGML_TYPE_F16:
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = lmoe_f32_to_f16(src[i]);
        break;
    case GGML_TYPE_BF16:
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = lmoe_f32_to_bf16(src[i]);
        break;
    case GGML_TYPE_Q8_0: lmoe_quantize_row_q8_0(src, dst, n); break;
    case GGML_TYPE_Q4_0: lmoe_quantize_row_q4_0(src, dst, n); break;
    default: break;
    }
}
