/* context.h - one sequence's state: KV cache, activations, thread pool and kernel table. Used by
 * one thread at a time; the model it points to is shared and never written. */
#ifndef LMOE_CONTEXT_H
#define LMOE_CONTEXT_H

#include <stdbool.h>
#include <stdint.h>

#include "arch/kernels.h"
#include "llamamoe.h"
#include "log.h"
#include "model.h"
#include "quant.h"
#include "threadpool.h"

/* Tokens evaluated together by default (lmoe_context_params.n_batch): each weight row is read
 * once per batch rather than once per token, an expert runs once over all the batch's tokens
 * routed to it, and quantised products become int8 GEMMs, which need many tokens per expert to
 * reach the machine's arithmetic peak. lmoe_eval splits longer inputs into batches. */
#define FORWARD_DEFAULT_BATCH 512u

/* Activations of a batch and the KV cache; every buffer is owned by the context. Rows are tokens:
 * "(B, n)" is n_batch rows of n floats. */
typedef struct forward_state {
    uint32_t n_batch;    /* B: most tokens per forward_batch */
    float *x;            /* (B, n_embd) residual stream */
    float *xb;           /* (B, n_embd) normed input / attention output */
    float *xb2;          /* (B, n_embd) projection / FFN output */
    float *q;            /* (B, n_embd) queries of all heads */
    float *hb;           /* (B, max(n_ff, n_ff_shexp)) FFN gate activations, then silu(gate) * up */
    float *hb2;          /* (B, max(n_ff, n_ff_shexp)) FFN up activations */
    float *att;          /* (n_threads, att_stride) attention scores, each thread's own */
    size_t att_stride;   /* LMOE_ATTENTION_BLOCK x n_ctx */
    float *logits;       /* (n_vocab) of the batch's last token */
    float *rope;         /* (B, head_dim) cos and sin of each token's RoPE angles */
    block_q8_0 *x_q8;    /* (max(B, 32), max(n_embd, n_ff, n_ff_shexp) / 32) activations quantised for Q8_0 /
                            Q4_0 weights */
    void *x_packed;      /* a batch of x_q8 packed for the table's batched kernels (NULL without
                            them) */
    const float *x_q8_of; /* what x_q8 holds (NULL: unknown): activations at x_q8_of, */
    size_t x_q8_ldx, x_q8_tokens, x_q8_cols; /* row stride, tokens and columns */
    void *gemm_scratch;  /* (n_threads, gemm_scratch_stride bytes), 64-byte aligned (with x_packed) */
    size_t gemm_scratch_stride;
    float *key_cache;    /* (n_layer, n_head_kv, n_ctx, head_dim), RoPE applied */
    float *value_cache;  /* (n_layer, n_head_kv, n_ctx, head_dim) */
    /* MoE only (NULL for dense models) */
    float *gate_logits;  /* (B, n_expert) */
    float *gate_hidden;  /* (B, n_expert) tanh(W1 x) of an MLP gate */
    int32_t *selected;   /* (B, n_expert_used) chosen experts, descending gate logit */
    float *selected_weights; /* (B, n_expert_used) their combine weights */
    float *expert_in;    /* (B, n_embd) the tokens routed to one expert, gathered */
    float *expert_out;   /* (B, n_embd) that expert's outputs before weighting */
    uint32_t *group;     /* (B) token index of each gathered row */
    float *group_weights; /* (B) its combine weight */
    /* Several streams in one pass (lmoe_eval_streams): row t belongs to context row_ctx[t] at
     * position row_pos[t]; NULL for an ordinary batch of this context's tokens. */
    lmoe_context *const *row_ctx;
    const uint32_t *row_pos;
} forward_state;

/* What the construction tools see of a dense model's FFNs on calibration text (not public API):
 * layer il's normed inputs x (n_tokens, n_embd) and SwiGLU activations h (n_tokens, n_ff),
 * before the down projection. Only dense models report. */
typedef void (*forward_ffn_observer)(void *user, uint32_t il, const float *x, const float *h,
                                     uint32_t n_tokens);

struct lmoe_context {
    const lmoe_model *model;
    uint32_t n_ctx;      /* KV cache capacity in tokens */
    uint32_t n_past;     /* tokens in the KV cache */
    bool logits_valid;   /* logits hold the result of the last successful eval */
    forward_state state;
    lmoe_threadpool *pool;
    const lmoe_kernels *kernels;
    lmoe_logger logger;
    lmoe_abort_fn abort_fn;
    void *abort_user;
    lmoe_routing_fn routing_fn;
    void *routing_user;
    uint64_t *expert_counts;         /* (n_layer, n_expert) selections since the last reset */
    uint64_t *expert_counts_pending; /* (n_layer, n_expert) of the eval in progress */
    forward_ffn_observer ffn_observer;  /* NULL unless a tool set it */
    void *ffn_observer_user;
};

/* The context whose cache, callbacks and counts row t of a batch belongs to, and its position. */
static inline lmoe_context *forward_row_ctx(lmoe_context *ctx, uint32_t t) {
    return ctx->state.row_ctx ? ctx->state.row_ctx[t] : ctx;
}
static inline uint32_t forward_row_pos(const lmoe_context *ctx, uint32_t pos0, uint32_t t) {
    return ctx->state.row_pos ? ctx->state.row_pos[t] : pos0 + t;
}

/* forward.c */
lmoe_status forward_state_init(forward_state *s, const llama_hparams *hp, const lmoe_kernels *k,
                               uint32_t n_ctx, uint32_t n_batch, int n_threads);
void forward_state_free(forward_state *s);
/* Runs the transformer on n_tokens (1..state.n_batch) tokens at positions pos0.., writing
 * their keys and values into the cache; computes the last token's logits when want_logits.
 * Returns LMOE_ERR_ABORTED if the abort callback fired between layers. */
lmoe_status forward_batch(lmoe_context *ctx, const lmoe_token *tokens, uint32_t n_tokens,
                          uint32_t pos0, bool want_logits);
/* Y (n_tokens, n_rows; row stride ldy) = X (n_tokens, n_cols; stride ldx) @ W^T for a weight
 * matrix W (n_rows, n_cols) of any weight type. Rows are split over the pool; each block of rows
 * is applied to every token before the next block, so it is read from memory once. */
void forward_matmul(lmoe_context *ctx, weight_ref w, const float *x, size_t ldx, float *y,
                    size_t ldy, size_t n_tokens, size_t n_rows, size_t n_cols);
/* y[r] for r in [r0, r1) = row r of W (n_cols wide) . x, with the kernel for W's type (x_q8: x
 * quantised, used for Q8_0 / Q4_0 weights). One token, on the calling thread. */
void forward_rows(const lmoe_kernels *k, weight_ref w, const float *x, const block_q8_0 *x_q8,
                  float *y, size_t n_cols, size_t r0, size_t r1);
/* forward_matmul for a product whose input is the previous quantised product's, unchanged since
 * (q, k, v of the same normed rows; an expert's gate and up): x is not quantised again when the
 * state still holds it. */
void forward_matmul_same_input(lmoe_context *ctx, weight_ref w, const float *x, size_t ldx,
                               float *y, size_t ldy, size_t n_tokens, size_t n_rows,
                               size_t n_cols);
bool weight_is_quantised(weight_ref w);
/* The sub-matrix starting at row first_row of a matrix with n_cols columns. */
weight_ref weight_rows(weight_ref w, size_t first_row, size_t n_cols);

/* Removes cache positions [n_keep, n_keep + n_discard) (n_keep + n_discard <= n_past): the later
 * entries move down by n_discard and their keys are rotated back by n_discard positions, so the
 * cache reads as if the dropped tokens had never been there. Does not change n_past. */
void forward_shift_cache(lmoe_context *ctx, uint32_t n_keep, uint32_t n_discard);

/* moe.c */
/* The MoE FFN of layer il for n_tokens tokens at positions pos0..: routes each row of x
 * (n_tokens, n_embd; normed), runs every selected expert once over its tokens, and writes each
 * token's weighted sum of expert outputs to out (n_tokens, n_embd). */
void moe_ffn(lmoe_context *ctx, uint32_t il, uint32_t pos0, const float *x, float *out,
             uint32_t n_tokens);

#endif
