/* model.c - from an opened GGUF file to a model: hyperparameters, vocabulary, and weight pointers
 * bound by name and checked against the shapes the hyperparameters imply. No tensor is copied. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "mem.h"

/* Limits far above any real model that keep size arithmetic away from overflow. */
#define MAX_DIM (1u << 20)
#define MAX_LAYERS 4096u
#define MAX_EXPERTS 1024u

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

/* Experts: "llama" files with expert_count are Mixtral-style (linear gate, softmax over all
 * experts, top-k renormalised); "llama_moe" files are LLaMA-MoE v1 (gate kind and score scale are
 * keys, softmax over the selected logits). */
static lmoe_status read_expert_hparams(const gguf_file *f, const char *arch, llama_hparams *hp) {
    bool is_llama_moe = strcmp(arch, "llama_moe") == 0;
    char key[128];
    snprintf(key, sizeof key, "%s.expert_count", arch);
    if (!gguf_find_kv(f, key)) {
        RETURN_ERROR_IF(is_llama_moe, LMOE_ERR_BAD_FILE,
                        "GGUF: architecture llama_moe needs the key '%s'", key);
        return LMOE_OK;
    }
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "expert_count", MAX_EXPERTS, true, &hp->n_expert));
    FORWARD_IF_ERROR(
        get_arch_u32(f, arch, "expert_used_count", MAX_EXPERTS, true, &hp->n_expert_used));
    RETURN_ERROR_IF(hp->n_expert_used > hp->n_expert, LMOE_ERR_BAD_FILE,
                    "GGUF: %s.expert_used_count %u is larger than expert_count %u", arch,
                    hp->n_expert_used, hp->n_expert);
    hp->gating = is_llama_moe ? MOE_GATING_SOFTMAX_SELECTED : MOE_GATING_SOFTMAX_RENORM;
    hp->gate_kind = MOE_GATE_LINEAR;
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "expert_shared_feed_forward_length", MAX_DIM, false,
                                  &hp->n_ff_shexp));
    if (!is_llama_moe) return LMOE_OK;
    snprintf(key, sizeof key, "%s.expert_gate_type", arch);
    gguf_str kind;
    FORWARD_IF_ERROR(gguf_get_str(f, key, &kind));
    if (gguf_str_eq(kind, "mlp"))
        hp->gate_kind = MOE_GATE_MLP;
    else
        RETURN_ERROR_IF(!gguf_str_eq(kind, "linear"), LMOE_ERR_UNSUPPORTED,
                        "GGUF: %s is '%.*s'; supported gate types are 'linear' and 'mlp'", key,
                        (int)(kind.len > 32 ? 32 : kind.len), kind.ptr);
    return LMOE_OK;
}

/* llama_moe.expert_score_scale: one f32 for every layer, or an array of n_layer f32. */
static lmoe_status read_expert_scales(lmoe_model *m) {
    for (uint32_t il = 0; il < m->hp.n_layer; il++) m->layers[il].expert_scale = 1.0f;
    if (m->hp.gating != MOE_GATING_SOFTMAX_SELECTED) return LMOE_OK;
    char key[128];
    snprintf(key, sizeof key, "%s.expert_score_scale", m->architecture);
    const gguf_kv *kv = gguf_find_kv(m->file, key);
    RETURN_ERROR_IF(!kv, LMOE_ERR_BAD_FILE, "GGUF: required key '%s' is missing", key);
    if (kv->type == GGUF_TYPE_ARRAY) {
        FORWARD_IF_ERROR(gguf_get_array(m->file, key, GGUF_TYPE_FLOAT32, &kv));
        RETURN_ERROR_IF(kv->n_elems != m->hp.n_layer, LMOE_ERR_BAD_FILE,
                        "GGUF: '%s' has %llu values for %u layers", key,
                        (unsigned long long)kv->n_elems, m->hp.n_layer);
        for (uint32_t il = 0; il < m->hp.n_layer; il++)
            m->layers[il].expert_scale = gguf_array_f32(kv, il);
    } else {
        float scale;
        FORWARD_IF_ERROR(gguf_get_f32(m->file, key, &scale));
        for (uint32_t il = 0; il < m->hp.n_layer; il++) m->layers[il].expert_scale = scale;
    }
    for (uint32_t il = 0; il < m->hp.n_layer; il++)
        RETURN_ERROR_IF(!isfinite(m->layers[il].expert_scale), LMOE_ERR_BAD_FILE,
                        "GGUF: '%s' for layer %u is not a finite number", key, il);
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
    FORWARD_IF_ERROR(read_expert_hparams(f, arch, hp));
    uint32_t n_vocab = hp->n_vocab;
    FORWARD_IF_ERROR(get_arch_u32(f, arch, "vocab_size", UINT32_MAX, false, &n_vocab));
    RETURN_ERROR_IF(n_vocab != hp->n_vocab, LMOE_ERR_BAD_FILE,
                    "GGUF: %s.vocab_size is %u but the vocabulary has %u tokens", arch, n_vocab,
                    hp->n_vocab);
    return LMOE_OK;
}

/* Weight matrices may be f32, f16, bf16, q8_0, q4_0, q8_0_r16 or q4_0_r16; the small gate matrices
 * float types only (the quantiser keeps them f32); norms are f32. A set of types is a mask of
 * type_bit()s. */
#define TYPE_BIT_Q4_0_R16 (1ull << 62) /* ggml's numbers are below 62 */
#define TYPE_BIT_Q8_0_R16 (1ull << 63)
static uint64_t type_bit(ggml_type t) {
    if (t == LMOE_TYPE_Q4_0_R16) return TYPE_BIT_Q4_0_R16;
    if (t == LMOE_TYPE_Q8_0_R16) return TYPE_BIT_Q8_0_R16;
    return (unsigned)t < 62 ? 1ull << t : 0;
}
#define TYPES_FLOAT ((1ull << GGML_TYPE_F32) | (1ull << GGML_TYPE_F16) | (1ull << GGML_TYPE_BF16))
#define TYPES_MATRIX (TYPES_FLOAT | (1ull << GGML_TYPE_Q8_0) | (1ull << GGML_TYPE_Q4_0) | \
                      TYPE_BIT_Q8_0_R16 | TYPE_BIT_Q4_0_R16)
#define TYPES_F32 (1ull << GGML_TYPE_F32)

/* Finds a tensor, checks its type and shape (ne[0] = cols = row length, ne[1] = rows, ne[2] =
 * experts; 0 = dimension absent) and returns its data. */
static lmoe_status bind_tensor(lmoe_model *m, const char *name, uint64_t cols, uint64_t rows,
                               uint64_t experts, uint64_t types, weight_ref *out) {
    const gguf_tensor *t = gguf_find_tensor(m->file, name);
    RETURN_ERROR_IF(!t, LMOE_ERR_BAD_FILE, "GGUF: tensor '%s' is missing", name);
    RETURN_ERROR_IF(!(types & type_bit(t->type)), LMOE_ERR_UNSUPPORTED,
                    "GGUF: tensor '%s' has type %s; supported here: %s", name,
                    ggml_type_name(t->type),
                    types == TYPES_F32     ? "f32"
                    : types == TYPES_FLOAT ? "f32, f16, bf16"
                                           : "f32, f16, bf16, q8_0, q4_0, q8_0_r16, q4_0_r16");
    uint32_t want_dims = experts ? 3 : rows ? 2 : 1;
    bool ok = t->n_dims == want_dims && t->ne[0] == cols && (rows == 0 || t->ne[1] == rows) &&
              (experts == 0 || t->ne[2] == experts);
    RETURN_ERROR_IF(!ok, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor '%s' has shape [%llu, %llu, %llu] (%u dims), expected [%llu, "
                    "%llu, %llu] (%u dims)", name, (unsigned long long)t->ne[0],
                    (unsigned long long)t->ne[1], (unsigned long long)t->ne[2], t->n_dims,
                    (unsigned long long)cols, (unsigned long long)(rows ? rows : 1),
                    (unsigned long long)(experts ? experts : 1), want_dims);
    size_t alignment = t->type == GGML_TYPE_F32 ? 4 : 2; /* f32, or 16-bit values and scales */
    RETURN_ERROR_IF((uintptr_t)t->data % alignment != 0, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor '%s' data is not aligned to its element size", name);
    out->data = t->data;
    out->type = t->type;
    return LMOE_OK;
}

/* Norm weights are checked for NaN and infinity here: they are small (n_embd floats), and every
 * activation passes through one. The matrices are too large to scan at load; what their non-finite
 * values do is contained (routing and sampling never select by a NaN). */
static lmoe_status bind_norm(lmoe_model *m, const char *name, const float **out) {
    weight_ref ref;
    FORWARD_IF_ERROR(bind_tensor(m, name, m->hp.n_embd, 0, 0, TYPES_F32, &ref));
    const float *w = ref.data;
    for (uint32_t i = 0; i < m->hp.n_embd; i++)
        RETURN_ERROR_IF(!isfinite(w[i]), LMOE_ERR_BAD_FILE,
                        "GGUF: tensor '%s' element %u is %g; norm weights must be finite", name, i,
                        (double)w[i]);
    *out = ref.data;
    return LMOE_OK;
}

static lmoe_status bind_layer(lmoe_model *m, uint32_t il, layer_weights *l) {
    const llama_hparams *hp = &m->hp;
    char name[96];
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%u." suffix ".weight", il), name)
    FORWARD_IF_ERROR(bind_norm(m, NAME("attn_norm"), &l->attn_norm));
    FORWARD_IF_ERROR(bind_tensor(m, NAME("attn_q"), hp->n_embd, hp->n_embd, 0, TYPES_MATRIX, &l->wq));
    FORWARD_IF_ERROR(bind_tensor(m, NAME("attn_k"), hp->n_embd, hp->n_embd_kv, 0, TYPES_MATRIX, &l->wk));
    FORWARD_IF_ERROR(bind_tensor(m, NAME("attn_v"), hp->n_embd, hp->n_embd_kv, 0, TYPES_MATRIX, &l->wv));
    FORWARD_IF_ERROR(bind_tensor(m, NAME("attn_output"), hp->n_embd, hp->n_embd, 0, TYPES_MATRIX, &l->wo));
    FORWARD_IF_ERROR(bind_norm(m, NAME("ffn_norm"), &l->ffn_norm));
    if (hp->n_expert == 0) {
        FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_gate"), hp->n_embd, hp->n_ff, 0, TYPES_MATRIX, &l->ffn_gate));
        FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_up"), hp->n_embd, hp->n_ff, 0, TYPES_MATRIX, &l->ffn_up));
        FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_down"), hp->n_ff, hp->n_embd, 0, TYPES_MATRIX, &l->ffn_down));
        return LMOE_OK;
    }
    uint32_t e = hp->n_expert;
    FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_gate_inp"), hp->n_embd, e, 0, TYPES_FLOAT, &l->gate_inp));
    if (hp->gate_kind == MOE_GATE_MLP)
        FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_gate_inp_2"), e, e, 0, TYPES_FLOAT, &l->gate_inp_2));
    FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_gate_exps"), hp->n_embd, hp->n_ff, e, TYPES_MATRIX, &l->gate_exps));
    FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_up_exps"), hp->n_embd, hp->n_ff, e, TYPES_MATRIX, &l->up_exps));
    FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_down_exps"), hp->n_ff, hp->n_embd, e, TYPES_MATRIX, &l->down_exps));
    if (hp->n_ff_shexp) {
        uint32_t s = hp->n_ff_shexp;
        FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_gate_shexp"), hp->n_embd, s, 0, TYPES_MATRIX, &l->gate_shexp));
        FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_up_shexp"), hp->n_embd, s, 0, TYPES_MATRIX, &l->up_shexp));
        FORWARD_IF_ERROR(bind_tensor(m, NAME("ffn_down_shexp"), s, hp->n_embd, 0, TYPES_MATRIX, &l->down_shexp));
    }
#undef NAME
    return LMOE_OK;
}

static lmoe_status bind_weights(lmoe_model *m) {
    const llama_hparams *hp = &m->hp;
    FORWARD_IF_ERROR(bind_tensor(m, "token_embd.weight", hp->n_embd, hp->n_vocab, 0, TYPES_MATRIX,
                                 &m->tok_embd));
    FORWARD_IF_ERROR(bind_norm(m, "output_norm.weight", &m->output_norm));
    if (gguf_find_tensor(m->file, "output.weight"))
        FORWARD_IF_ERROR(bind_tensor(m, "output.weight", hp->n_embd, hp->n_vocab, 0, TYPES_MATRIX,
                                     &m->output));
    else
        m->output = m->tok_embd; /* tied classifier */
    m->layers = mem_calloc(hp->n_layer, sizeof *m->layers);
    RETURN_ERROR_IF(!m->layers, LMOE_ERR_OUT_OF_MEMORY, "out of memory for %u layers",
                    hp->n_layer);
    for (uint32_t il = 0; il < hp->n_layer; il++) FORWARD_IF_ERROR(bind_layer(m, il, &m->layers[il]));
    return read_expert_scales(m);
}

/* All parameters, and those one token reads: of a stacked expert tensor only k of n_expert. */
static void count_tensors(lmoe_model *m) {
    for (uint64_t i = 0; i < m->file->n_tensors; i++) {
        const gguf_tensor *t = &m->file->tensors[i];
        uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        m->n_params += n;
        m->n_bytes += t->n_bytes;
        bool stacked_experts = m->hp.n_expert && t->n_dims == 3 && t->ne[2] == m->hp.n_expert;
        m->n_params_active += stacked_experts ? n / m->hp.n_expert * m->hp.n_expert_used : n;
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
    if (vocab_only || m->file->n_tensors == 0) {
        count_tensors(m);
        return LMOE_OK;
    }
    RETURN_ERROR_IF(!gguf_str_eq(arch, "llama") && !gguf_str_eq(arch, "llama_moe"),
                    LMOE_ERR_UNSUPPORTED,
                    "GGUF: architecture '%.*s' is not supported (this version runs 'llama' and "
                    "'llama_moe')", (int)(arch.len > 64 ? 64 : arch.len), arch.ptr);
    FORWARD_IF_ERROR(read_hparams(m->file, m->architecture, &m->hp));
    count_tensors(m);
    FORWARD_IF_ERROR(bind_weights(m));
    m->has_weights = true;
    return LMOE_OK;
}

lmoe_status model_load_from_gguf(gguf_file *file, bool vocab_only, lmoe_model **out) {
    *out = NULL;
    lmoe_model *m = mem_calloc(1, sizeof *m);
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
    mem_free(m->layers);
    gguf_close(m->file);
    mem_free(m);
}
