/* test_quant.c - the f16 / bf16 conversions (quant.c) and the 16-bit weight kernels:
 *   - every one of the 65536 half and bfloat16 bit patterns widens to the value the format
 *     defines, and narrowing it back gives the same bits (NaN stays NaN);
 *   - narrowing rounds to nearest even, overflows to infinity, and keeps subnormals;
 *   - matvec_f16 / matvec_bf16 equal matvec_f32 on the widened weights, bit for bit;
 *   - Q8_0 / Q4_0 blocks have ggml's layout and rounding, and the quantised products equal an
 *     independent double-precision evaluation of the same blocks. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "arch/kernels.h"
#include "quant.h"
#include "test_util.h"

/* The value of a binary16 pattern, computed independently with ldexp. */
static double half_value(uint16_t h) {
    int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    double v;
    if (exponent == 0x1f) v = mantissa ? NAN : INFINITY;
    else if (exponent == 0) v = ldexp(mantissa, -24);
    else v = ldexp(1024 + mantissa, exponent - 25);
    return sign ? -v : v;
}

static void test_all_halves(void) {
    int mismatches = 0, roundtrip_failures = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lmoe_f16_to_f32((uint16_t)h);
        double want = half_value((uint16_t)h);
        bool same = isnan(want) ? isnan(f) : (double)f == want && !signbit(f) == !signbit(want);
        if (!same) mismatches++;
        uint16_t back = lmoe_f32_to_f16(f);
        if (isnan(want) ? (back & 0x7c00) != 0x7c00 || (back & 0x3ff) == 0 : back != h)
            roundtrip_failures++;
    }
    CHECK_MSG(mismatches == 0, "%d half patterns widen wrongly", mismatches);
    CHECK_MSG(roundtrip_failures == 0, "%d half patterns do not survive a round trip",
              roundtrip_failures);
}

static void test_all_bfloat16s(void) {
    int failures = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = lmoe_bf16_to_f32((uint16_t)h);
        uint32_t bits;
        memcpy(&bits, &f, 4);
        if (bits != h << 16) failures++;
        uint16_t back = lmoe_f32_to_bf16(f);
        if (isnan(f) ? !isnan(lmoe_bf16_to_f32(back)) : back != h) failures++;
    }
    CHECK_MSG(failures == 0, "%d bfloat16 patterns fail", failures);
}

static void test_rounding(void) {
    /* halfway between 1 and the next half (1 + 2^-10): ties to even (1.0) */
    CHECK(lmoe_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);
    /* just above halfway rounds up */
    CHECK(lmoe_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);
    /* halfway from an odd mantissa rounds up to even */
    CHECK(lmoe_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);
    CHECK(lmoe_f32_to_f16(65504.0f) == 0x7bff);       /* largest half */
    CHECK(lmoe_f32_to_f16(65520.0f) == 0x7c00);       /* rounds to infinity */
    CHECK(lmoe_f32_to_f16(-1e10f) == 0xfc00);
    CHECK(lmoe_f32_to_f16(0x1p-24f) == 0x0001);       /* smallest subnormal */
    CHECK(lmoe_f32_to_f16(0x1p-25f) == 0x0000);       /* half of it: tie to even (0) */
    CHECK(lmoe_f32_to_f16(0x1.8p-25f) == 0x0001);
    CHECK(lmoe_f32_to_f16(-0.0f) == 0x8000);
    /* bfloat16: ties to even on the dropped 16 bits */
    CHECK(lmoe_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);
    CHECK(lmoe_f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82);
    CHECK(lmoe_f32_to_bf16(3.4e38f) == 0x7f80);       /* rounds past the largest: infinity */
    CHECK(isnan(lmoe_bf16_to_f32(lmoe_f32_to_bf16(NAN))));
}

static uint64_t rng_state = 0x1234567;
static float random_weight(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* The 16-bit kernels must equal the f32 kernel run on exactly widened weights. */
static void test_kernels_16bit(void) {
    const lmoe_kernels *k = lmoe_kernels_generic();
    static const size_t sizes[] = {1, 3, 17, 32, 33, 100};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t rows = 7, cols = sizes[si];
        uint16_t *wh = malloc(rows * cols * 2), *wb = malloc(rows * cols * 2);
        float *wf_h = malloc(rows * cols * 4), *wf_b = malloc(rows * cols * 4), *x = malloc(cols * 4);
        float y16[7], y32[7];
        if (!wh || !wb || !wf_h || !wf_b || !x) abort();
        for (size_t i = 0; i < rows * cols; i++) {
            float w = random_weight();
            wh[i] = lmoe_f32_to_f16(w);
            wb[i] = lmoe_f32_to_bf16(w);
            wf_h[i] = lmoe_f16_to_f32(wh[i]);
            wf_b[i] = lmoe_bf16_to_f32(wb[i]);
        }
        for (size_t j = 0; j < cols; j++) x[j] = random_weight();
        k->matvec_f16(wh, x, y16, cols, 0, rows);
        k->matvec_f32(wf_h, x, y32, cols, 0, rows);
        CHECK_MSG(memcmp(y16, y32, sizeof y16) == 0, "matvec_f16 differs at %zu columns", cols);
        k->matvec_bf16(wb, x, y16, cols, 2, 5); /* a row range: only rows 2..4 are written */
        k->matvec_f32(wf_b, x, y32, cols, 2, 5);
        CHECK_MSG(memcmp(y16 + 2, y32 + 2, 3 * sizeof(float)) == 0,
                  "matvec_bf16 differs at %zu columns", cols);
        free(wh);
        free(wb);
        free(wf_h);
        free(wf_b);
        free(x);
    }
}

/* Q8_0 and Q4_0 layout and rounding on hand-checked values. */
static void test_block_formats(void) {
    CHECK(sizeof(block_q8_0) == 34 && sizeof(block_q4_0) == 18);
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 16) / 4.0f; /* -4 .. 3.75 */
    block_q8_0 q8;
    lmoe_quantize_row_q8_0(x, &q8, 32);
    CHECK(lmoe_f16_to_f32(q8.d) == lmoe_f16_to_f32(lmoe_f32_to_f16(4.0f / 127.0f)));
    CHECK(q8.qs[0] == -127 && q8.qs[16] == 0 && q8.qs[31] == (int8_t)roundf(3.75f * 127.0f / 4.0f));
    float back[32];
    lmoe_dequantize_row_q8_0(&q8, back, 32);
    float d8 = lmoe_f16_to_f32(q8.d);
    int far = 0;
    for (int j = 0; j < 32; j++) far += fabsf(back[j] - x[j]) > d8 * 0.5f + 1e-6f;
    CHECK_MSG(far == 0, "%d Q8_0 values off by more than half a step", far);

    block_q4_0 q4;
    lmoe_quantize_row_q4_0(x, &q4, 32);
    /* the largest magnitude is -4 (element 0): d = -4 / -8 = 0.5, so element j maps to q = x/0.5 + 8 */
    CHECK(lmoe_f16_to_f32(q4.d) == 0.5f);
    CHECK((q4.qs[0] & 0x0f) == 0);            /* element 0: -4 -> 0 */
    CHECK((q4.qs[0] >> 4) == 8);              /* element 16: 0 -> 8 (high nibble of byte 0) */
    CHECK((q4.qs[15] >> 4) == 15);            /* element 31: 3.75 -> 15.5 -> clamped to 15 */
    lmoe_dequantize_row_q4_0(&q4, back, 32);
    CHECK(back[0] == -4.0f && back[16] == 0.0f && back[31] == 3.5f);
    /* an all-zero block has d = 0 and dequantises to zeros */
    float zeros[32] = {0};
    lmoe_quantize_row_q4_0(zeros, &q4, 32);
    lmoe_dequantize_row_q4_0(&q4, back, 32);
    CHECK(lmoe_f16_to_f32(q4.d) == 0.0f && back[5] == 0.0f); /* d may be -0 */
}

/* The quantised products against a double-precision evaluation of the same blocks. */
static void test_kernels_quantised(void) {
    const lmoe_kernels *k = lmoe_kernels_generic();
    enum { ROWS = 5, COLS = 96 };
    float w[ROWS * COLS], x[COLS];
    for (int i = 0; i < ROWS * COLS; i++) w[i] = random_weight();
    for (int j = 0; j < COLS; j++) x[j] = random_weight() * 3.0f;
    block_q8_0 wq8[ROWS * COLS / 32], xq[COLS / 32];
    block_q4_0 wq4[ROWS * COLS / 32];
    for (int r = 0; r < ROWS; r++) {
        lmoe_quantize_row_q8_0(w + r * COLS, wq8 + r * (COLS / 32), COLS);
        lmoe_quantize_row_q4_0(w + r * COLS, wq4 + r * (COLS / 32), COLS);
    }
    k->quantize_q8_0(x, xq, COLS);
    float xd[COLS];
    lmoe_dequantize_row_q8_0(xq, xd, COLS);
    float y8[ROWS], y4[ROWS];
    k->matvec_q8_0(wq8, xq, y8, COLS, 0, ROWS);
    k->matvec_q4_0(wq4, xq, y4, COLS, 0, ROWS);
    double worst8 = 0, worst4 = 0, worst_vs_f32 = 0;
    for (int r = 0; r < ROWS; r++) {
        float wd8[COLS], wd4[COLS];
        lmoe_dequantize_row_q8_0(wq8 + r * (COLS / 32), wd8, COLS);
        lmoe_dequantize_row_q4_0(wq4 + r * (COLS / 32), wd4, COLS);
        double ref8 = 0, ref4 = 0, exact = 0, scale = 0;
        for (int j = 0; j < COLS; j++) {
            ref8 += (double)wd8[j] * xd[j];
            ref4 += (double)wd4[j] * xd[j];
            exact += (double)w[r * COLS + j] * x[j];
            scale += fabs((double)w[r * COLS + j] * x[j]);
        }
        worst8 = fmax(worst8, fabs(y8[r] - ref8) / scale);
        worst4 = fmax(worst4, fabs(y4[r] - ref4) / scale);
        worst_vs_f32 = fmax(worst_vs_f32, fabs(y8[r] - exact) / scale);
    }
    CHECK_MSG(worst8 < 1e-6 && worst4 < 1e-6, "quantised products off: %g %g", worst8, worst4);
    /* and Q8_0 x Q8_0 stays close to the f32 product it approximates */
    CHECK_MSG(worst_vs_f32 < 0.02, "q8_0 product is %g (relative) from f32", worst_vs_f32);
}

int main(void) {
    test_all_halves();
    test_all_bfloat16s();
    test_rounding();
    test_kernels_16bit();
    test_block_formats();
    test_kernels_quantised();
    return test_finish("test_quant");
}
