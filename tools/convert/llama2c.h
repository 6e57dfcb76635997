/* llama2c.h - llama2.c checkpoints (legacy v0 and version-1 layouts, float32) to GGUF. */
#ifndef LMOE_LLAMA2C_H
#define LMOE_LLAMA2C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "llamamoe.h"
#include "vocab.h"

typedef struct llama2c_config {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    bool shared_classifier;
    int version;                 /* 0 = legacy, 1 = "ak42" version 1 */
} llama2c_config;

/* Pointers into the checkpoint bytes; each per-layer tensor holds all layers back to back. */
typedef struct llama2c_weights {
    const float *token_embedding;  /* (vocab, dim) */
    const float *rms_att;          /* (layer, dim) */
    const float *wq;               /* (layer, dim, dim) */
    const float *wk;               /* (layer, kv_dim, dim) */
    const float *wv;               /* (layer, kv_dim, dim) */
    const float *wo;               /* (layer, dim, dim) */
    const float *rms_ffn;          /* (layer, dim) */
    const float *w1;               /* (layer, hidden, dim) */
    const float *w2;               /* (layer, dim, hidden) */
    const float *w3;               /* (layer, hidden, dim) */
    const float *rms_final;        /* (dim) */
    const float *wcls;             /* (vocab, dim); token_embedding when shared */
} llama2c_weights;

/* Parses a checkpoint held in data (size bytes, 4-byte aligned) and checks that its size matches
 * the header exactly. */
lmoe_status llama2c_checkpoint_read(const void *data, size_t size, llama2c_config *cfg,
                                    llama2c_weights *w);

/* Adds the llama.* keys and all tensors of the checkpoint to w (tensor data is not copied: data
 * must outlive gguf_writer_write). name goes to general.name. */
lmoe_status llama2c_to_gguf(const llama2c_config *cfg, const llama2c_weights *weights,
                            const char *name, gguf_writer *w);

#endif
