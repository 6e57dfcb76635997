/* tiny_model.h - a tiny valid LLaMA model written with the library's own GGUF writer, with options
 * to break it in one place: the base of the bad-file and hostile-value tests.
 * n_embd 8, 1 layer, n_ff 16, 2 heads, 1 kv head, f32 weights, the tiny vocabulary of
 * test_write_tiny_vocab with TINY_N_NORMAL normal pieces. */
#ifndef LMOE_TINY_MODEL_H
#define LMOE_TINY_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llamamoe.h"

#define TINY_N_EMBD 8
#define TINY_N_FF 16
#define TINY_N_EMBD_KV 4
#define TINY_N_NORMAL 9
#define TINY_N_VOCAB (3 + 256 + TINY_N_NORMAL)

/* A metadata key written instead of the default one of the same name (or in addition). */
typedef struct tiny_key {
    const char *key;          /* e.g. "llama.block_count" */
    enum { TINY_U32, TINY_I32, TINY_U64, TINY_F32 } type;
    int64_t i;                /* the value of an integer type */
    float f;                  /* the value of TINY_F32 */
} tiny_key;

typedef struct tiny_opts {
    const char *arch;         /* general.architecture; NULL = "llama" */
    uint32_t n_head;          /* 0 = 2 */
    uint32_t n_head_kv;       /* 0 = 1 */
    uint64_t q_rows;          /* rows of blk.0.attn_q.weight; 0 = TINY_N_EMBD */
    const char *omit_tensor;  /* a tensor to leave out */
    float rms_eps;            /* 0 = 1e-5 */
    bool no_tensors;          /* a vocabulary-only file: tokenizer keys, no hparams, no tensors */
    const tiny_key *keys;     /* n_keys keys replacing or adding metadata */
    size_t n_keys;
    const char *poison_tensor; /* every element of this tensor becomes poison_value */
    float poison_value;
} tiny_opts;

/* Builds the model into a buffer from the library's allocator (*buf, *size; free with mem_free).
 * The weights are the same for the same options. */
lmoe_status tiny_model_build(const tiny_opts *o, uint8_t **buf, size_t *size);

#endif
