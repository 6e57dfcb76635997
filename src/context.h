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
#include "threadpool.h"

/* Activations of one token and the KV cache; every buffer is owned by the context. */
typedef struct forward_state {
    float *x;            /* (n_embd) residual stream */
    float *xb;           /* (n_embd) normed input / attention output */
    float *xb2;          /* (n_embd) projection output */
    float *q;            /* (n_embd) queries of all heads */
    float *hb;           /* (n_ff) FFN gate activations, then silu(gate) * up */
    float *hb2;          /* (n_ff) FFN up activations */
    float *att;          /* (n_head, n_ctx) attention scores */
    float *logits;       /* (n_vocab) */
    float *key_cache;    /* (n_layer, n_ctx, n_embd_kv), RoPE applied */
    float *value_cache;  /* (n_layer, n_ctx, n_embd_kv) */
    /* MoE only (NULL for dense models) */
    float *gate_logits;  /* (n_expert) */
    float *gate_hidden;  /* (n_expert) tanh(W1 x) of an MLP gate */
    float *expert_out;   /* (n_embd) one expert's output before weighting */
    int32_t *selected;   /* (n_expert_used) chosen experts, descending gate logit */
    float *selected_weights; /* (n_expert_used) their combine weights */
} forward_state;

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
};

/* forward.c */
/* W (n_rows, n_cols) of any weight type @ x (n_cols,) -> y (n_rows,), rows split over the pool. */
void forward_matvec(lmoe_context *ctx, weight_ref w, const float *x, float *y, size_t n_rows,
                    size_t n_cols);
/* The sub-matrix starting at row first_row of a matrix with n_cols columns. */
weight_ref weight_rows(weight_ref w, size_t first_row, size_t n_cols);

lmoe_status forward_state_init(forward_state *s, const llama_hparams *hp, uint32_t n_ctx);
void forward_state_free(forward_state *s);
/* Runs the transformer on one token at position pos (< n_ctx), writing its keys and values into
 * the cache at pos; computes logits when want_logits. Returns LMOE_ERR_ABORTED if the abort
 * callback fired between layers. */
lmoe_status forward_token(lmoe_context *ctx, lmoe_token token, uint32_t pos, bool want_logits);

/* moe.c */
/* The MoE FFN of layer il for one token at pos: routes x (n_embd, normed), runs the selected
 * experts and writes their weighted sum to out (n_embd). */
void moe_ffn(lmoe_context *ctx, uint32_t il, uint32_t pos, const float *x, float *out);

#endif
