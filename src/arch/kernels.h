/* kernels.h - the table of compute kernels, one implementation per instruction set.
 *
 * generic.c is the portable scalar oracle: every other implementation is tested against it on
 * random data with ragged sizes. dispatch.c reads the CPU features once and picks the table; the
 * environment variable LLAMAMOE_KERNELS=generic|avx2|avx512|avx512vnni|neon|neon_dotprod forces one
 * (generic if this CPU cannot run the named table). Only src/arch/ files use intrinsics or ISA
 * compiler flags. All vectors are f32 and need no particular alignment. */
#ifndef LMOE_KERNELS_H
#define LMOE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* The activations of a batched quantised product: n_tokens rows of n_blocks Q8_0 blocks, packed
 * by the table's gemm_pack_token into the layout its batched kernels read (with what they need
 * per block precomputed, so every (row, token) pair does not redo it). */
typedef struct lmoe_q8_batch {
    const void *packed;       /* gemm_x_bytes(n_tokens, n_blocks) bytes, 64-byte aligned */
    size_t n_tokens;
    size_t n_blocks;
} lmoe_q8_batch;

/* Rows of scores an attention kernel keeps at once: its scratch is this many times the number of
 * keys of the block's last query. */
#define LMOE_ATTENTION_BLOCK 4

/* Bytes of scratch a batched quantised kernel needs for rows of n_cols columns. */
#define LMOE_GEMM_SCRATCH_BYTES(n_cols) (((n_cols) / 32) * 1152 + 64)

/* A batched quantised product (the gemm_* fields below). */
typedef void (*lmoe_gemm_fn)(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                             size_t n_cols, size_t row_begin, size_t row_end, void *scratch);

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

    /* Quantised weights (ggml block layouts, see quant.h): W (n_rows, n_cols) in Q8_0 or Q4_0
     * blocks @ x given as n_cols / 32 Q8_0 blocks -> y[r] for r in [row_begin, row_end). Each
     * block contributes d_w * d_x * (integer dot of its 32 quants). n_cols is a multiple of 32. */
    void (*matvec_q8_0)(const void *w, const void *x_q8, float *y, size_t n_cols,
                        size_t row_begin, size_t row_end);
    void (*matvec_q4_0)(const void *w, const void *x_q8, float *y, size_t n_cols,
                        size_t row_begin, size_t row_end);
    /* The same for Q8_0_R16 / Q4_0_R16 weights (quant.h: Q8_0's / Q4_0's values, 16 rows
     * interleaved): w is the matrix's first group; row_begin and row_end are multiples of 16. The
     * same result as generic's matvec_q8_0 / matvec_q4_0 of the same rows, to the same tolerance
     * as the table's own matvec_q8_0 / matvec_q4_0 (bit for bit on x86). */
    void (*matvec_q8_0_r16)(const void *w, const void *x_q8, float *y, size_t n_cols,
                            size_t row_begin, size_t row_end);
    void (*matvec_q4_0_r16)(const void *w, const void *x_q8, float *y, size_t n_cols,
                            size_t row_begin, size_t row_end);
    /* x (n,) -> n / 32 Q8_0 blocks, the activations' side of the quantised products. */
    void (*quantize_q8_0)(const float *x, void *x_q8, size_t n);

    /* Batched (prefill) forms of matvec_q8_0 / matvec_q4_0: for every token t of x and row r in
     * [row_begin, row_end), y[t * ldy + r] = row r . x_t, bit for bit what the same table's matvec
     * gives for that token alone. Each block of weight rows is unpacked once into scratch
     * (LMOE_GEMM_SCRATCH_BYTES(n_cols) bytes, 64-byte aligned, this thread's own) and used for
     * every token. These two may be NULL: a table without a batched kernel is used through its
     * matvec, token by token (the test checks both ways agree). */
    lmoe_gemm_fn gemm_q8_0;
    lmoe_gemm_fn gemm_q4_0;
    /* The same for Q8_0_R16 / Q4_0_R16 (row_begin, row_end multiples of 16). A table has all
     * four or none, and with them the two below. */
    lmoe_gemm_fn gemm_q8_0_r16;
    lmoe_gemm_fn gemm_q4_0_r16;
    /* The batched kernels' activation layout: its size for n_tokens rows of n_blocks blocks, and
     * token t's blocks x (n_blocks Q8_0 blocks) written into it. Tokens are independent: threads
     * may pack different tokens of one batch at once. */
    size_t (*gemm_x_bytes)(size_t n_tokens, size_t n_blocks);
    void (*gemm_pack_token)(const block_q8_0 *x, size_t token, size_t n_blocks, void *packed);

    /* Causal attention of one head for n_q consecutive queries, the first at position pos0: query
     * i (row i of q, rows q_stride floats apart) attends to keys and values 0 .. pos0 + i (rows of
     * k and v, kv_stride apart; head_dim floats each): out_i = softmax(q_i . k_p / sqrt(head_dim))
     * weighted sum of v_p. scores: LMOE_ATTENTION_BLOCK x (pos0 + n_q) floats of scratch. A
     * query's result may not depend on n_q or its place in the block (prefill and decode must
     * agree). Generic's is run.c's loop; may be NULL, then the forward pass composes attention
     * from the table's dot_f32, softmax and axpy. */
    void (*attention)(const float *q, size_t q_stride, const float *k, const float *v,
                      size_t kv_stride, float *out, size_t out_stride, size_t head_dim, size_t pos0,
                      size_t n_q, float *scores);
} lmoe_kernels;

/* Attention as kernels.h's attention field describes it, composed from k's dot_f32, softmax and
 * axpy one (query, key) at a time: generic's attention with the generic table (run.c's order),
 * and what the forward pass uses for a table without an attention kernel. */
void lmoe_attention_composed(const lmoe_kernels *k, const float *q, size_t q_stride,
                             const float *keys, const float *values, size_t kv_stride, float *out,
                             size_t out_stride, size_t head_dim, size_t pos0, size_t n_q,
                             float *scores);

/* The portable scalar table. */
const lmoe_kernels *lmoe_kernels_generic(void);
/* The best table for this CPU (chosen once, thread-safe), honouring LLAMAMOE_KERNELS. */
const lmoe_kernels *lmoe_kernels_select(void);

/* The table called name ("generic", "avx2", "avx512", "avx512vnni", "neon", "neon_dotprod") if it is
 * compiled into this build and this CPU can run it, NULL otherwise (unknown name, table not built
 * for this target, or a CPU / OS without the instructions). Ignores LLAMAMOE_KERNELS: for tests
 * and benchmarks that run every table. Thread-safe. */
const lmoe_kernels *lmoe_kernels_by_name(const char *name);

/* Names of the tables compiled into this build, best first, ending with "generic" and then a
 * NULL pointer; whether this CPU can run each one is lmoe_kernels_by_name's answer. */
const char *const *lmoe_kernels_compiled(void);

/* The x86-64 tables (x86_avx2.c, x86_avx512.c; x86_avx512vnni.c compiles the latter again with
 * the VNNI int8 dot products). They are defined only when CMake builds those files for an x86-64
 * target (it then defines LMOE_HAVE_X86_* for dispatch.c), and may be called only after
 * dispatch.c has checked the CPU: reach them through lmoe_kernels_select or lmoe_kernels_by_name. */
const lmoe_kernels *lmoe_kernels_avx2(void);
const lmoe_kernels *lmoe_kernels_avx512(void);
const lmoe_kernels *lmoe_kernels_avx512vnni(void);
/* The avx512 and avx512vnni tables' attention (x86_avx512_attention.c). */
void lmoe_avx512_attention(const float *q, size_t q_stride, const float *k, const float *v,
                           size_t kv_stride, float *out, size_t out_stride, size_t head_dim,
                           size_t pos0, size_t n_q, float *scores);
/* The avx512vnni table's batched kernels (x86_avx512vnni_gemm.c). */
void lmoe_avx512vnni_gemm_q8_0(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                               size_t n_cols, size_t row_begin, size_t row_end, void *scratch);
void lmoe_avx512vnni_gemm_q4_0(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                               size_t n_cols, size_t row_begin, size_t row_end, void *scratch);
void lmoe_avx512vnni_gemm_q8_0_r16(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                                   size_t n_cols, size_t row_begin, size_t row_end,
                                   void *scratch);
void lmoe_avx512vnni_gemm_q4_0_r16(const void *w, const lmoe_q8_batch *x, float *y, size_t ldy,
                                   size_t n_cols, size_t row_begin, size_t row_end,
                                   void *scratch);
size_t lmoe_avx512vnni_gemm_x_bytes(size_t n_tokens, size_t n_blocks);
void lmoe_avx512vnni_gemm_pack_token(const block_q8_0 *x, size_t token, size_t n_blocks,
                                     void *packed);

/* The AArch64 tables (arm_neon.c; arm_neon_dotprod.c compiles it again with the dot product
 * instructions). Defined only when CMake builds them for an AArch64 target (LMOE_HAVE_ARM_NEON /
 * LMOE_HAVE_ARM_NEON_DOTPROD for dispatch.c), and, like the x86 ones, reached only through
 * lmoe_kernels_select or lmoe_kernels_by_name after dispatch.c has checked AT_HWCAP. */
const lmoe_kernels *lmoe_kernels_neon(void);
const lmoe_kernels *lmoe_kernels_neon_dotprod(void);

#endif
