/* model.h - a loaded model: the mapped file, hyperparameters, vocabulary and weight pointers.
 * Immutable once loaded, so any number of contexts on any threads may share it. */
#ifndef LMOE_MODEL_H
#define LMOE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"
#include "log.h"
#include "llamamoe.h"
#include "vocab.h"

typedef struct llama_hparams {
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_embd;         /* hidden size */
    uint32_t n_layer;
    uint32_t n_head;         /* query heads */
    uint32_t n_head_kv;      /* key/value heads; n_head % n_head_kv == 0 */
    uint32_t n_ff;           /* FFN intermediate size */
    uint32_t head_dim;       /* n_embd / n_head */
    uint32_t n_embd_kv;      /* head_dim * n_head_kv */
    float rms_eps;
    float rope_theta;
} llama_hparams;

/* Weight pointers into the map; row-major [rows][cols], rows = outputs (GGUF ne = {cols, rows}). */
typedef struct layer_weights {
    const float *attn_norm;  /* (n_embd) */
    const float *wq;         /* (n_embd, n_embd), RoPE pairs adjacent (GGUF llama layout) */
    const float *wk;         /* (n_embd_kv, n_embd) */
    const float *wv;         /* (n_embd_kv, n_embd) */
    const float *wo;         /* (n_embd, n_embd) */
    const float *ffn_norm;   /* (n_embd) */
    const float *ffn_gate;   /* (n_ff, n_embd)  w1 */
    const float *ffn_up;     /* (n_ff, n_embd)  w3 */
    const float *ffn_down;   /* (n_embd, n_ff)  w2 */
} layer_weights;

struct lmoe_model {
    gguf_file *file;
    char architecture[32];
    char name[64];
    bool has_weights;
    llama_hparams hp;
    lmoe_vocab vocab;

    const float *tok_embd;    /* (n_vocab, n_embd) */
    const float *output_norm; /* (n_embd) */
    const float *output;      /* (n_vocab, n_embd); tok_embd when the classifier is tied */
    layer_weights *layers;    /* [n_layer], owned */

    uint64_t n_params;        /* elements of all tensors */
    uint64_t n_bytes;         /* bytes of all tensors */

    lmoe_logger logger;
};

/* Parses hyperparameters, vocabulary and (unless vocab_only) binds and shape-checks the weights of
 * an opened file. Takes ownership of file on success and on failure. */
lmoe_status model_load_from_gguf(gguf_file *file, bool vocab_only, lmoe_model **out);
void model_free(lmoe_model *model);

#endif
