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

/* How an MoE layer turns gate logits into expert weights. */
typedef enum moe_gating {
    MOE_GATING_NONE = 0,          /* dense model */
    MOE_GATING_SOFTMAX_SELECTED,  /* LLaMA-MoE: top-k of the logits, softmax over those k, x scale */
    MOE_GATING_SOFTMAX_RENORM     /* Mixtral: softmax over all, top-k, renormalised to sum 1 */
} moe_gating;

typedef enum moe_gate_kind {
    MOE_GATE_LINEAR = 0,          /* logits = W1 x */
    MOE_GATE_MLP                  /* logits = W2 tanh(W1 x) (LLaMA-MoE gate_network "mlp") */
} moe_gate_kind;

typedef struct llama_hparams {
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_embd;         /* hidden size */
    uint32_t n_layer;
    uint32_t n_head;         /* query heads */
    uint32_t n_head_kv;      /* key/value heads; n_head % n_head_kv == 0 */
    uint32_t n_ff;           /* FFN intermediate size; per expert for MoE */
    uint32_t head_dim;       /* n_embd / n_head */
    uint32_t n_embd_kv;      /* head_dim * n_head_kv */
    float rms_eps;
    float rope_theta;
    uint32_t n_expert;       /* 0 for a dense model */
    uint32_t n_expert_used;  /* k */
    moe_gating gating;
    moe_gate_kind gate_kind;
    uint32_t n_ff_shexp;     /* width of the always-on shared expert; 0: none */
} llama_hparams;

/* A weight matrix in the map: row-major [rows][cols] of type (f32, f16 or bf16); rows are the
 * outputs (GGUF ne = {cols, rows}). */
typedef struct weight_ref {
    const void *data;
    ggml_type type;
} weight_ref;

typedef struct layer_weights {
    const float *attn_norm;  /* (n_embd) f32 */
    weight_ref wq;           /* (n_embd, n_embd), RoPE pairs adjacent (GGUF llama layout) */
    weight_ref wk;           /* (n_embd_kv, n_embd) */
    weight_ref wv;           /* (n_embd_kv, n_embd) */
    weight_ref wo;           /* (n_embd, n_embd) */
    const float *ffn_norm;   /* (n_embd) f32 */
    /* dense FFN */
    weight_ref ffn_gate;     /* (n_ff, n_embd)  w1 */
    weight_ref ffn_up;       /* (n_ff, n_embd)  w3 */
    weight_ref ffn_down;     /* (n_embd, n_ff)  w2 */
    /* MoE FFN */
    weight_ref gate_inp;     /* (n_expert, n_embd): the linear gate, or the MLP gate's first layer */
    weight_ref gate_inp_2;   /* (n_expert, n_expert): the MLP gate's second layer */
    weight_ref gate_exps;    /* (n_expert, n_ff, n_embd) stacked experts' w1 */
    weight_ref up_exps;      /* (n_expert, n_ff, n_embd) w3 */
    weight_ref down_exps;    /* (n_expert, n_embd, n_ff) w2 */
    float expert_scale;      /* multiplies every expert weight (LLaMA-MoE score_scale_factor) */
    /* always-on shared expert (n_ff_shexp wide), added with weight 1 to the routed experts' sum */
    weight_ref gate_shexp;   /* (n_ff_shexp, n_embd) */
    weight_ref up_shexp;     /* (n_ff_shexp, n_embd) */
    weight_ref down_shexp;   /* (n_embd, n_ff_shexp) */
} layer_weights;

struct lmoe_model {
    gguf_file *file;
    char architecture[32];
    char name[64];
    bool has_weights;
    llama_hparams hp;
    lmoe_vocab vocab;

    weight_ref tok_embd;      /* (n_vocab, n_embd) */
    const float *output_norm; /* (n_embd) f32 */
    weight_ref output;        /* (n_vocab, n_embd); tok_embd when the classifier is tied */
    layer_weights *layers;    /* [n_layer], owned */

    uint64_t n_params;        /* elements of all tensors */
    uint64_t n_params_active; /* elements read per token: experts count k / n_expert */
    uint64_t n_bytes;         /* bytes of all tensors */

    lmoe_logger logger;
};

/* Parses hyperparameters, vocabulary and (unless vocab_only) binds and shape-checks the weights of
 * an opened file. Takes ownership of file on success and on failure. */
lmoe_status model_load_from_gguf(gguf_file *file, bool vocab_only, lmoe_model **out);
void model_free(lmoe_model *model);

#endif
