/* generic.c - the portable scalar kernels: the oracle every SIMD table is tested against.
 *
 * Each loop performs its float operations in the order of llama2.c run.c (sequential f32
 * accumulation, rmsnorm's `weight * (scale * x)`, softmax's max / expf / sum / divide), because
 * tests compare our logits and sampled tokens with run.c's. Do not reassociate. */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"

/* run.c rounds every product before adding it. Clang would fuse a * b + c into one FMA when the
 * target has it (-march=native); GCC in ISO C mode (-std=c11) already does not. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* W (n_rows, n_cols) @ x (n_cols,) -> y: y[r] for r in [row_begin, row_end). */
static void generic_matvec_f32(const float *w, const float *x, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    for (size_t r = row_begin; r < row_end; r++) {
        const float *row = w + r * n_cols;
        float val = 0.0f;
        for (size_t j = 0; j < n_cols; j++) val += row[j] * x[j];
        y[r] = val;
    }
}

/* 16-bit weights: widened exactly, then the f32 loop's order. */
static void generic_matvec_f16(const uint16_t *w, const float *x, float *y, size_t n_cols,
                               size_t row_begin, size_t row_end) {
    for (size_t r = row_begin; r < row_end; r++) {
        const uint16_t *row = w + r * n_cols;
        float val = 0.0f;
        for (size_t j = 0; j < n_cols; j++) val += lmoe_f16_to_f32(row[j]) * x[j];
        y[r] = val;
    }
}

static void generic_matvec_bf16(const uint16_t *w, const float *x, float *y, size_t n_cols,
                                size_t row_begin, size_t row_end) {
    for (size_t r = row_begin; r < row_end; r++) {
        const uint16_t *row = w + r * n_cols;
        float val = 0.0f;
        for (size_t j = 0; j < n_cols; j++) val += lmoe_bf16_to_f32(row[j]) * x[j];
        y[r] = val;
    }
}

/* Quantised rows: per block, an exact integer dot product scaled by both block scales and added
 * with one rounding (fmaf): sum = fma((float)dot, d_w * d_x, sum), block after block. The product
 * of two f16 scales is exact in f32, and |dot| <= 2^19 converts exactly, so this is the one
 * float operation order every table reproduces; the fused add lets the batched kernels spend one
 * operation less per block (an exact-order contract, not a precision one). */
static float add_block_q8_0(float sum, const block_q8_0 *w, const block_q8_0 *x) {
    int32_t dot = 0;
    for (int j = 0; j < LMOE_QK; j++) dot += (int32_t)w->qs[j] * x->qs[j];
    return fmaf((float)dot, lmoe_f16_to_f32(w->d) * lmoe_f16_to_f32(x->d), sum);
}

static float add_block_q4_0(float sum, const block_q4_0 *w, const block_q8_0 *x) {
    int32_t dot = 0;
    for (int j = 0; j < LMOE_QK / 2; j++) {
        dot += ((w->qs[j] & 0x0f) - 8) * x->qs[j];
        dot += ((w->qs[j] >> 4) - 8) * x->qs[j + LMOE_QK / 2];
    }
    return fmaf((float)dot, lmoe_f16_to_f32(w->d) * lmoe_f16_to_f32(x->d), sum);
}

static void generic_matvec_q8_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                                size_t row_begin, size_t row_end) {
    size_t n_blocks = n_cols / LMOE_QK;
    const block_q8_0 *x = x_q8;
    for (size_t r = row_begin; r < row_end; r++) {
        const block_q8_0 *row = (const block_q8_0 *)w + r * n_blocks;
        float sum = 0.0f;
        for (size_t b = 0; b < n_blocks; b++) sum = add_block_q8_0(sum, &row[b], &x[b]);
        y[r] = sum;
    }
}

static void generic_matvec_q4_0(const void *w, const void *x_q8, float *y, size_t n_cols,
                                size_t row_begin, size_t row_end) {
    size_t n_blocks = n_cols / LMOE_QK;
    const block_q8_0 *x = x_q8;
    for (size_t r = row_begin; r < row_end; r++) {
        const block_q4_0 *row = (const block_q4_0 *)w + r * n_blocks;
        float sum = 0.0f;
        for (size_t b = 0; b < n_blocks; b++) sum = add_block_q4_0(sum, &row[b], &x[b]);
        y[r] = sum;
    }
}

/* The _R16 types: each block of a row taken out of its group (quant.c) and added as the plain
 * type's is, so these are generic_matvec_q8_0 / _q4_0 of the same rows by construction. */
static void generic_matvec_q8_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                    size_t row_begin, size_t row_end) {
    size_t n_blocks = n_cols / LMOE_QK;
    const block_q8_0 *x = x_q8;
    for (size_t r = row_begin; r < row_end; r++) {
        const block_q8_0_r16 *group = (const block_q8_0_r16 *)w + r / LMOE_R16_ROWS * n_blocks;
        float sum = 0.0f;
        for (size_t b = 0; b < n_blocks; b++) {
            block_q8_0 blk;
            lmoe_r16_row_to_q8_0(&group[b], r % LMOE_R16_ROWS, 1, &blk);
            sum = add_block_q8_0(sum, &blk, &x[b]);
        }
        y[r] = sum;
    }
}

static void generic_matvec_q4_0_r16(const void *w, const void *x_q8, float *y, size_t n_cols,
                                    size_t row_begin, size_t row_end) {
    size_t n_blocks = n_cols / LMOE_QK;
    const block_q8_0 *x = x_q8;
    for (size_t r = row_begin; r < row_end; r++) {
        const block_q4_0_r16 *group = (const block_q4_0_r16 *)w + r / LMOE_R16_ROWS * n_blocks;
        float sum = 0.0f;
        for (size_t b = 0; b < n_blocks; b++) {
            block_q4_0 blk;
            lmoe_r16_row_to_q4_0(&group[b], r % LMOE_R16_ROWS, 1, &blk);
            sum = add_block_q4_0(sum, &blk, &x[b]);
        }
        y[r] = sum;
    }
}

static void generic_quantize_q8_0(const float *x, void *x_q8, size_t n) {
    lmoe_quantize_row_q8_0(x, x_q8, n);
}

/* a (n,) . b (n,), accumulated left to right. */
static float generic_dot_f32(const float *a, const float *b, size_t n) {
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* out (n,) = weight * (x / sqrt(mean(x^2) + eps)); the scale is computed before out is written,
 * so out may alias x. */
static void generic_rmsnorm(float *out, const float *x, const float *weight, size_t n, float eps) {
    float ss = 0.0f;
    for (size_t j = 0; j < n; j++) ss += x[j] * x[j];
    ss /= (float)n;
    ss += eps;
    ss = 1.0f / sqrtf(ss);
    for (size_t j = 0; j < n; j++) out[j] = weight[j] * (ss * x[j]);
}

/* x (n,) <- softmax(x); subtracting the max keeps expf from overflowing. */
static void generic_softmax(float *x, size_t n) {
    if (n == 0) return;
    float max_val = x[0];
    for (size_t i = 1; i < n; i++)
        if (x[i] > max_val) max_val = x[i];
    float sum = 0.0f;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    for (size_t i = 0; i < n; i++) x[i] /= sum;
}

/* out (n,) = silu(gate) * up, element by element, so out may alias gate (or up). */
static void generic_swiglu(float *out, const float *gate, const float *up, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = gate[i];
        v *= (1.0f / (1.0f + expf(-v)));
        v *= up[i];
        out[i] = v;
    }
}

/* y (n,) += a * x (n,). */
static void generic_axpy(float *y, float a, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a * x[i];
}

void lmoe_attention_composed(const lmoe_kernels *k, const float *q, size_t q_stride,
                             const float *keys, const float *values, size_t kv_stride, float *out,
                             size_t out_stride, size_t head_dim, size_t pos0, size_t n_q,
                             float *scores) {
    float scale = sqrtf((float)head_dim);
    for (size_t i = 0; i < n_q; i++) {
        const float *qi = q + i * q_stride;
        size_t n_keys = pos0 + i + 1;
        for (size_t p = 0; p < n_keys; p++)
            scores[p] = k->dot_f32(qi, keys + p * kv_stride, head_dim) / scale;
        k->softmax(scores, n_keys);
        float *o = out + i * out_stride;
        memset(o, 0, head_dim * sizeof(float));
        for (size_t p = 0; p < n_keys; p++) k->axpy(o, scores[p], values + p * kv_stride, head_dim);
    }
}

/* run.c's attention loop, with the kernels above. */
static void generic_attention(const float *q, size_t q_stride, const float *k, const float *v,
                              size_t kv_stride, float *out, size_t out_stride, size_t head_dim,
                              size_t pos0, size_t n_q, float *scores) {
    lmoe_attention_composed(lmoe_kernels_generic(), q, q_stride, k, v, kv_stride, out, out_stride,
                            head_dim, pos0, n_q, scores);
}

static const lmoe_kernels generic_table = {
    .name = "generic",
    .matvec_f32 = generic_matvec_f32,
    .matvec_f16 = generic_matvec_f16,
    .matvec_bf16 = generic_matvec_bf16,
    .dot_f32 = generic_dot_f32,
    .rmsnorm = generic_rmsnorm,
    .softmax = generic_softmax,
    .swiglu = generic_swiglu,
    .axpy = generic_axpy,
    .matvec_q8_0 = generic_matvec_q8_0,
    .matvec_q4_0 = generic_matvec_q4_0,
    .matvec_q8_0_r16 = generic_matvec_q8_0_r16,
    .matvec_q4_0_r16 = generic_matvec_q4_0_r16,
    .quantize_q8_0 = generic_quantize_q8_0,
    .attention = generic_attention,
};

const lmoe_kernels *lmoe_kernels_generic(void) { return &generic_table; }
