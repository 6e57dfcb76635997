/* tiny_model.c - see tiny_model.h. */
#include "tiny_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "test_util.h"

static const char *const normal_pieces[TINY_N_NORMAL] = {
    "\xE2\x96\x81",  "a", "b", "c", "\xE2\x96\x81" "a", "\xE2\x96\x81" "b", "\xE2\x96\x81" "c",
    "ab", "\xE2\x96\x81" "ab",
};
static const float normal_scores[TINY_N_NORMAL] = {-10, -11, -12, -13, -1, -2, -3, -4, -5};

static float small_random(uint32_t *rng) {
    *rng = *rng * 1664525u + 1013904223u;
    return ((float)(*rng >> 8) / 16777216.0f - 0.5f) * 0.2f;
}

typedef struct tensor_def {
    const char *name;
    uint64_t ne0, ne1;        /* ne1 0: a vector */
} tensor_def;

static const tiny_key *find_key(const tiny_opts *o, const char *key) {
    for (size_t i = 0; i < o->n_keys; i++)
        if (strcmp(o->keys[i].key, key) == 0) return &o->keys[i];
    return NULL;
}

static lmoe_status write_key(gguf_writer *w, const tiny_key *k) {
    switch (k->type) {
    case TINY_U32: return gguf_writer_set_u32(w, k->key, (uint32_t)k->i);
    case TINY_I32: return gguf_writer_set_i32(w, k->key, (int32_t)k->i);
    case TINY_U64: return gguf_writer_set_u64(w, k->key, (uint64_t)k->i);
    case TINY_F32: return gguf_writer_set_f32(w, k->key, k->f);
    }
    return LMOE_ERR_INVALID_ARGUMENT;
}

/* A default u32 key, unless the options replace it. */
static lmoe_status default_u32(gguf_writer *w, const tiny_opts *o, const char *key, uint32_t v) {
    return find_key(o, key) ? LMOE_OK : gguf_writer_set_u32(w, key, v);
}

lmoe_status tiny_model_build(const tiny_opts *o, uint8_t **buf, size_t *size) {
    gguf_writer *w = NULL;
    lmoe_status st = gguf_writer_create(&w);
    if (st != LMOE_OK) return st;

#define TRY(expr)                                                                                   \
    do {                                                                                            \
        if (st == LMOE_OK) st = (expr);                                                             \
    } while (0)
    TRY(gguf_writer_set_str(w, "general.architecture", o->arch ? o->arch : "llama"));
    TRY(gguf_writer_set_str(w, "general.name", "tiny"));
    if (!o->no_tensors) {
        TRY(default_u32(w, o, "llama.context_length", 32));
        TRY(default_u32(w, o, "llama.embedding_length", TINY_N_EMBD));
        TRY(default_u32(w, o, "llama.block_count", 1));
        TRY(default_u32(w, o, "llama.feed_forward_length", TINY_N_FF));
        TRY(default_u32(w, o, "llama.attention.head_count", o->n_head ? o->n_head : 2));
        TRY(default_u32(w, o, "llama.attention.head_count_kv", o->n_head_kv ? o->n_head_kv : 1));
        if (!find_key(o, "llama.attention.layer_norm_rms_epsilon"))
            TRY(gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon",
                                    o->rms_eps != 0 || isnan(o->rms_eps) ? o->rms_eps : 1e-5f));
        if (!find_key(o, "llama.rope.freq_base"))
            TRY(gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f));
    }
    for (size_t i = 0; i < o->n_keys; i++) TRY(write_key(w, &o->keys[i]));
    TRY(test_write_tiny_vocab(w, normal_pieces, normal_scores, TINY_N_NORMAL));

    /* The last tensor ends the file: every size is a multiple of 32 bytes, so no padding follows
     * it and a file cut anywhere loses tensor bytes. */
    const tensor_def defs[] = {
        {"token_embd.weight", TINY_N_EMBD, TINY_N_VOCAB},
        {"output_norm.weight", TINY_N_EMBD, 0},
        {"blk.0.attn_norm.weight", TINY_N_EMBD, 0},
        {"blk.0.attn_q.weight", TINY_N_EMBD, o->q_rows ? o->q_rows : TINY_N_EMBD},
        {"blk.0.attn_k.weight", TINY_N_EMBD, TINY_N_EMBD_KV},
        {"blk.0.attn_v.weight", TINY_N_EMBD, TINY_N_EMBD_KV},
        {"blk.0.attn_output.weight", TINY_N_EMBD, TINY_N_EMBD},
        {"blk.0.ffn_norm.weight", TINY_N_EMBD, 0},
        {"blk.0.ffn_gate.weight", TINY_N_EMBD, TINY_N_FF},
        {"blk.0.ffn_up.weight", TINY_N_EMBD, TINY_N_FF},
        {"blk.0.ffn_down.weight", TINY_N_FF, TINY_N_EMBD},
    };
    enum { N_DEFS = sizeof defs / sizeof defs[0] };
    float *data[N_DEFS] = {0};
    uint32_t rng = 12345;
    for (size_t i = 0; i < N_DEFS && !o->no_tensors; i++) {
        const tensor_def *d = &defs[i];
        if (o->omit_tensor && strcmp(o->omit_tensor, d->name) == 0) continue;
        size_t n = (size_t)(d->ne0 * (d->ne1 ? d->ne1 : 1));
        data[i] = malloc(n * sizeof(float));
        if (!data[i]) {
            st = LMOE_ERR_OUT_OF_MEMORY;
            break;
        }
        bool poison = o->poison_tensor && strcmp(o->poison_tensor, d->name) == 0;
        for (size_t j = 0; j < n; j++) {
            float v = d->ne1 ? small_random(&rng) : 1.0f;
            data[i][j] = poison ? o->poison_value : v;
        }
        uint64_t ne[2] = {d->ne0, d->ne1};
        TRY(gguf_writer_add_tensor(w, d->name, GGML_TYPE_F32, d->ne1 ? 2 : 1, ne, data[i]));
    }
#undef TRY
    if (st == LMOE_OK) st = gguf_writer_write_memory(w, buf, size);
    for (size_t i = 0; i < N_DEFS; i++) free(data[i]);
    gguf_writer_free(w);
    return st;
}
