/* kernels.h - the table of compute kernels, one implementation per instruction set.
 *
 * generic.c is the portable scalar oracle: every other implementation is tested against it on
 * random data with ragged sizes. dispatch.c reads the CPU features once and picks the table; the
 * environment variable LLAMAMOE_KERNELS=generic forces the portable one. Only src/arch/ files use
 * intrinsics or ISA compiler flags. All vectors are f32 and need no particular alignment. */
#ifndef LMOE_KERNELS_H
#define LMOE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct lmoe_kernels {
    const char *name;

    /* W (n_rows, n_cols) row-major f32 @ x (n_cols,) -> y: only rows [row_begin, row_end) are
     * computed, y[r] for r in that range. Most of the time of a forward pass is spent here. */
    void (*matvec_f32)(const float *w, const float *x, float *y, size_t n_cols, size_t row_begin,
                       size_t row_end);

    /* The same with 16-bit weights (IEEE half / bfloat16, row-major uint16), f32 x and y; each
     * weight is widened exactly and the products are accumulated in f32. */
    void (*matvec_f16)(const uint16_t *w, const float *x, float *y, size_t n_cols,
                       size_t row_begin, size_t row_end);
    void (*matvec_bf16)(const uint16_t *w, const float *x, float *y, size_t n_cols,
                        size_t row_begin, size_t row_end);

    /* a (n,) . b (n,) -> returned. */
    float (*dot_f32)(const float *a, const float *b, size_t n);

    /* out (n,) = x * weight / sqrt(mean(x^2) + eps). out may alias x. */
    void (*rmsnorm)(float *out, const float *x, const float *weight, size_t n, float eps);

    /* x (n,) <- exp(x - max) / sum, in place. */
    void (*softmax)(float *x, size_t n);

    /* out (n,) = silu(gate) * up, silu(v) = v / (1 + exp(-v)). out may alias gate. */
    void (*swiglu)(float *out, const float *gate, const float *up, size_t n);

    /* y (n,) += a * x (n,). */
    void (*axpy)(float *y, float a, const float *x, size_t n);
} lmoe_kernels;

/* The portable scalar table. */
const lmoe_kernels *lmoe_kernels_generic(void);
/* The best table for this CPU (chosen once, thread-safe), honouring LLAMAMOE_KERNELS. */
const lmoe_kernels *lmoe_kernels_select(void);

#endif
