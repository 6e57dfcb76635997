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
};

/* forward.c */
lmoe_status forward_state_init(forward_state *s, const llama_hparams *hp, uint32_t n_ctx);
void forward_state_free(forward_state *s);
/* Runs the transformer on one token at position pos (< n_ctx), writing its keys and values into
 * the cache at pos; computes logits when want_logits. Returns LMOE_ERR_ABORTED if the abort
 * callback fired between layers. */
lmoe_status forward_token(lmoe_context *ctx, lmoe_token token, uint32_t pos, bool want_logits);

#endif
