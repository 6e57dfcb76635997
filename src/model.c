/* model.c - from an opened GGUF file to a model: hyperparameters, vocabulary, and weight pointers
 * bound by name and checked against the shapes the hyperparameters imply. No tensor is copied. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

/* Limits far above any real model that keep size arithmetic away from overflow. */
#define MAX_DIM (1u << 20)
#define MAX_LAYERS 4096u

static void copy_gguf_str(char *dst, size_t dst_size, gguf_str s) {
    size_t n = s.len < dst_size - 1 ? (size_t)s.len : dst_size - 1;
    memcpy(dst, s.ptr, n);
    dst[n] = 0;
}

/* Reads "<arch>.<suffix>" as a u32 that must be in [1, max]. */
static lmoe_status get_arch_u32(const gguf_file *f, const char *arch, const char *suffix,
                                uint32_t max, bool required, uint32_t *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!required && !gguf_find_kv(f, key)) return LMOE_OK;
    FORWARD_IF_ERROR(gguf_get_u32(f, key, out));
    RETURN_ERROR_IF(*out == 0 || *out > max, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%s' = %u is out of range (1 to %u)", key, *out, max);
    return LMOE_OK;
}

static lmoe_status get_arch_f32(const gguf_file *f, const char *arch, const char *suffix,
                                float *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    FORWARD_IF_ERROR(gguf_get_f32_opt(f, key, out));
    RETURN_ERROR_IF(!(*out > 0.0f), LMOE_ERR_BAD_FILE, "GGUF: key '%s' = %g must be positive",
                    key, (double)*out);
    return LMOE_OK;
}

static lmoe_status read_hparams(const gguf_file *f, const char *arch, llama_hparams *hp) {
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "context_length", UINT32_MAX, true, &hp->n_ctx_train));
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "embedding_length", MAX_DIM, true, &hp->n_embd));
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "block_count", MAX_LAYERS, true, &hp->n_layer));
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "feed_forward_length", MAX_DIM, true, &hp->n_ff));
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "attention.head_count", MAX_DIM, true, &hp->n_head));
    hp->n_head_kv = hp->n_head;
    FORWARD_IF_ERROR(
        get_arch_u32(f, arch, "attention.head_count_kv", MAX_DIM, false, &hp->n_head_kv));
    hp->rms_eps = 1e-5f;
    hp->rope_theta = 10000.0f;
    FORWARD_IF_ERROR(get_arch_f32(f, arch, "attention.layer_norm_rms_epsilon", &hp->rms_eps));
    FORWARD_IF_ERROR(get_arch_f32(f, arch, "rope.freq_base", &hp->rope_theta));

    RETURN_ERROR_IF(hp->n_embd % hp->n_head != 0, LMOE_ERR_BAD_FILE,
                    "GGUF: embedding_length %u is not a multiple of head_count %u", hp->n_embd,
                    hp->n_head);
    RETURN_ERROR_IF(hp->n_head_kv > hp->n_head || hp->n_head % hp->n_head_kv != 0,
                    LMOE_ERR_BAD_FILE,
                    "GGUF: head_count %u is not a multiple of head_count_kv %u", hp->n_head,
                    hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    RETURN_ERROR_IF(hp->head_dim % 2 != 0, LMOE_ERR_BAD_FILE,
                    "GGUF: head dimension %u is odd; RoPE needs pairs", hp->head_dim);
    hp->n_embd_kv = hp->head_dim * hp->n_head_kv;
    uint32_t n_rot = hp->head_dim;
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "rope.dimension_count", MAX_DIM, false, &n_rot));
    RETURN_ERROR_IF(n_rot != hp->head_dim, LMOE_ERR_UNSUPPORTED,
                    "GGUF: rope.dimension_count %u differs from the head dimension %u (partial "
                    "rotary embeddings are not supported)", n_rot, hp->head_dim);
    uint32_t n_vocab = hp->n_vocab;
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "vocab_size", UINT32_MAX, false, &n_vocab));
    RETURN_ERROR_IF(n_vocab != hp->n_vocab, LMOE_ERR_BAD_FILE,
                    "GGUF: %s.vocab_size is %u but the vocabulary has %u tokens", arch, n_vocab,
                    hp->n_vocab);
    return LMOE_OK;
}

/* Finds a tensor, checks its type and shape (ne[0] = cols, ne[1] = rows; rows 0 for a vector),
 * counts it, and returns its data. */
static lmoe_status bind(lmoe_model *m, const char *name, uint64_t cols, uint64_t rows,
                        const float **out) {
    const gguf_tensor *t = gguf_find_tensor(m->file, name);
    RETURN_ERROR_IF(!t, LMOE_ERR_BAD_FILE, "GGUF: tensor '%s' is missing", name);
    RETURN_ERROR_IF(t->type != GGML_TYPE_F32, LMOE_ERR_UNSUPPORTED,
                    "GGUF: tensor '%s' has type %s; this version runs f32 weights only", name,
                    ggml_type_name(t->type));
    uint32_t want_dims = rows ? 2 : 1;
    bool ok = t->n_dims == want_dims && t->ne[0] == cols && (rows == 0 || t->ne[1] == rows);
    RETURN_ERROR_IF(!ok, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor '%s' has shape [%llu, %llu] (%u dims), expected [%llu, %llu]",
                    name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], t->n_dims,
                    (unsigned long long)cols, (unsigned long long)(rows ? rows : 1));
    RETURN_ERROR_IF((uintptr_t)t->data % sizeof(float) != 0, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor '%s' data is not aligned to 4 bytes", name);
    *out = t->data;
    return LMOE_OK;
}

static lmoe_status bind_layer(lmoe_model *m, uint32_t il, layer_weights *l) {
    const llama_hparams *hp = &m->hp;
    char name[96];
#define BIND(field, suffix, cols, rows)                                                             \
    do {                                                                                            \
        snprintf(name, sizeof name, "blk.%u." suffix ".weight", il);                                \
        FORWARD_IF_ERROR(bind(m, name, (cols), (rows), &l->field));                                 \
    } while (0)
    BIND(attn_norm, "attn_norm", hp->n_embd, 0);
    BIND(wq, "attn_q", hp->n_embd, hp->n_embd);
    BIND(wk, "attn_k", hp->n_embd, hp->n_embd_kv);
    BIND(wv, "attn_v", hp->n_embd, hp->n_embd_kv);
    BIND(wo, "attn_output", hp->n_embd, hp->n_embd);
    BIND(ffn_norm, "ffn_norm", hp->n_embd, 0);
    BIND(ffn_gate, "ffn_gate", hp->n_embd, hp->n_ff);
    BIND(ffn_up, "ffn_up", hp->n_embd, hp->n_ff);
    BIND(ffn_down, "ffn_down", hp->n_ff, hp->n_embd);
#undef BIND
    return LMOE_OK;
}

static lmoe_status bind_weights(lmoe_model *m) {
    const llama_hparams *hp = &m->hp;
    FORWARD_IF_ERROR(bind(m, "token_embd.weight", hp->n_embd, hp->n_vocab, &m->tok_embd));
    FORWARD_IF_ERROR(bind(m, "output_norm.weight", hp->n_embd, 0, &m->output_norm));
    if (gguf_find_tensor(m->file, "output.weight"))
        FORWARD_IF_ERROR(bind(m, "output.weight", hp->n_embd, hp->n_vocab, &m->output));
    else
        m->output = m->tok_embd; /* tied classifier */
    m->layers = calloc(hp->n_layer, sizeof *m->layers);
    RETURN_ERROR_IF(!m->layers, LMOE_ERR_OUT_OF_MEMORY, "out of memory for %u layers",
                    hp->n_layer);
    for (uint32_t il = 0; il < hp->n_layer; il++) FORWARD_IF_ERROR(bind_layer(m, il, &m->layers[il]));
    return LMOE_OK;
}

static void count_tensors(lmoe_model *m) {
    for (uint64_t i = 0; i < m->file->n_tensors; i++) {
        const gguf_tensor *t = &m->file->tensors[i];
        m->n_params += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        m->n_bytes += t->n_bytes;
    }
}

static lmoe_status load(lmoe_model *m, bool vocab_only) {
    gguf_str arch = {"", 0};
    if (gguf_find_kv(m->file, "general.architecture"))
        FORWARD_IF_ERROR(gguf_get_str(m->file, "general.architecture", &arch));
    copy_gguf_str(m->architecture, sizeof m->architecture, arch);
    if (gguf_find_kv(m->file, "general.name")) {
        gguf_str name;
        FORWARD_IF_ERROR(gguf_get_str(m->file, "general.name", &name));
        copy_gguf_str(m->name, sizeof m->name, name);
    }
    FORWARD_IF_ERROR(vocab_load_gguf(&m->vocab, m->file));
    m->hp.n_vocab = m->vocab.n_tokens;
    count_tensors(m);
    if (vocab_only || m->file->n_tensors == 0) return LMOE_OK;

    RETURN_ERROR_IF(!gguf_str_eq(arch, "llama"), LMOE_ERR_UNSUPPORTED,
                    "GGUF: architecture '%s' is not supported (this version runs 'llama')",
                    m->architecture);
    FORWARD_IF_ERROR(read_hparams(m->file, m->architecture, &m->hp));
    FORWARD_IF_ERROR(bind_weights(m));
    m->has_weights = true;
    return LMOE_OK;
}

lmoe_status model_load_from_gguf(gguf_file *file, bool vocab_only, lmoe_model **out) {
    *out = NULL;
    lmoe_model *m = calloc(1, sizeof *m);
    if (!m) {
        gguf_close(file);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "out of memory for the model");
    }
    m->file = file;
    lmoe_status st = load(m, vocab_only);
    if (st != LMOE_OK) {
        model_free(m);
        return st;
    }
    *out = m;
    return LMOE_OK;
}

void model_free(lmoe_model *m) {
    if (!m) return;
    vocab_free(&m->vocab);
    free(m->layers);
    gguf_close(m->file);
    free(m);
}
