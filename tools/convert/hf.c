/* hf.c - a Hugging Face checkpoint folder to GGUF.
 *
 * config.json gives the hyperparameters, tokenizer.model the vocabulary, the shards the tensors.
 * Every tensor the architecture needs is looked up by its Hugging Face name and checked for shape
 * before anything is written; tensors nobody needs are an error, except the two buffers the
 * released LLaMA-MoE files carry for training (rotary_emb.inv_freq, gate.weight_noise). Each
 * output tensor is produced only while it is written (gguf_writer_add_tensor_fill): converted to
 * the output type, Q and K rows permuted from rotate-half to adjacent-pair RoPE, experts stacked. */
#include "hf.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "error.h"
#include "progress.h"
#include "file_map.h"
#include "json.h"
#include "quant.h"
#include "tokenizer_import.h"
#include "vocab.h"

#define MAX_DIM (1u << 20)
#define MAX_LAYERS 4096u
#define MAX_EXPERTS 1024u

/* ------------------------------------------------------------------------------------------------
 * config.json
 * ---------------------------------------------------------------------------------------------- */

typedef enum hf_kind { HF_LLAMA, HF_LLAMA_MOE, HF_MIXTRAL } hf_kind;

typedef struct hf_config {
    hf_kind kind;
    uint32_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, n_ctx;
    float rms_eps, rope_theta;
    bool tied;
    uint32_t n_expert, n_expert_used;
    bool gate_mlp;            /* LLaMA-MoE gate_network "mlp" */
    float *scales;            /* (n_layer) expert score scale, owned; NULL for dense */
    char name[128];
} hf_config;

static lmoe_status cfg_u32(const json_value *cfg, const char *key, bool required, uint32_t dflt,
                           uint32_t max, uint32_t *out) {
    const json_value *v = json_get(cfg, key);
    if (!v || v->kind == JSON_NULL) {
        RETURN_ERROR_IF(required, LMOE_ERR_BAD_FILE, "config.json: '%s' is missing", key);
        *out = dflt;
        return LMOE_OK;
    }
    RETURN_ERROR_IF(v->kind != JSON_NUMBER || v->number != floor(v->number) || v->number < 1 ||
                        v->number > max,
                    LMOE_ERR_BAD_FILE, "config.json: '%s' must be an integer from 1 to %u", key,
                    max);
    *out = (uint32_t)v->number;
    return LMOE_OK;
}

static lmoe_status cfg_f32(const json_value *cfg, const char *key, float dflt, float *out) {
    const json_value *v = json_get(cfg, key);
    if (!v || v->kind == JSON_NULL) {
        *out = dflt;
        return LMOE_OK;
    }
    RETURN_ERROR_IF(v->kind != JSON_NUMBER || !(v->number > 0) || !isfinite(v->number),
                    LMOE_ERR_BAD_FILE, "config.json: '%s' must be a positive number", key);
    *out = (float)v->number;
    return LMOE_OK;
}

static bool cfg_str_is(const json_value *cfg, const char *key, const char *want) {
    const json_value *v = json_get(cfg, key);
    return v && v->kind == JSON_STRING && strcmp(v->str, want) == 0;
}

/* score_scale_factor (llama_moe) or scale_factor (mixtral): a number or one per layer. */
static lmoe_status read_scales(const json_value *cfg, const char *key, hf_config *c) {
    c->scales = malloc(c->n_layer * sizeof *c->scales);
    RETURN_ERROR_IF(!c->scales, LMOE_ERR_OUT_OF_MEMORY, "out of memory");
    const json_value *v = json_get(cfg, key);
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const json_value *x = v && v->kind == JSON_ARRAY && l < v->n_items ? &v->items[l] : v;
        if (!v || v->kind == JSON_NULL) {
            c->scales[l] = 1.0f;
            continue;
        }
        RETURN_ERROR_IF(v->kind == JSON_ARRAY && v->n_items != c->n_layer, LMOE_ERR_BAD_FILE,
                        "config.json: '%s' has %zu values for %u layers", key, v->n_items,
                        c->n_layer);
        RETURN_ERROR_IF(x->kind != JSON_NUMBER || !isfinite(x->number), LMOE_ERR_BAD_FILE,
                        "config.json: '%s' must be a number or a list of numbers", key);
        c->scales[l] = (float)x->number;
    }
    return LMOE_OK;
}

/* size_experts: one list of num_experts sizes per layer, all equal (the stacked-tensor layout
 * needs one size; unequal sizes would need padding the issue of which is not guessed here). */
static lmoe_status read_expert_sizes(const json_value *cfg, hf_config *c) {
    const json_value *v = json_get(cfg, "size_experts");
    if (!v || v->kind == JSON_NULL) {
        RETURN_ERROR_IF(c->n_ff % c->n_expert != 0, LMOE_ERR_BAD_FILE,
                        "config.json: no size_experts and intermediate_size %u is not divisible "
                        "by num_experts %u", c->n_ff, c->n_expert);
        c->n_ff /= c->n_expert;
        return LMOE_OK;
    }
    RETURN_ERROR_IF(v->kind != JSON_ARRAY || v->n_items != c->n_layer, LMOE_ERR_BAD_FILE,
                    "config.json: 'size_experts' must hold one list per layer (%u)", c->n_layer);
    uint32_t size = 0;
    for (uint32_t l = 0; l < c->n_layer; l++) {
        const json_value *layer = &v->items[l];
        RETURN_ERROR_IF(layer->kind != JSON_ARRAY || layer->n_items != c->n_expert,
                        LMOE_ERR_BAD_FILE,
                        "config.json: size_experts[%u] must list %u expert sizes", l, c->n_expert);
        for (uint32_t e = 0; e < c->n_expert; e++) {
            const json_value *x = &layer->items[e];
            RETURN_ERROR_IF(x->kind != JSON_NUMBER || x->number < 1 || x->number > MAX_DIM ||
                                x->number != floor(x->number),
                            LMOE_ERR_BAD_FILE, "config.json: size_experts[%u][%u] is not a size",
                            l, e);
            if (size == 0) size = (uint32_t)x->number;
            RETURN_ERROR_IF((uint32_t)x->number != size, LMOE_ERR_UNSUPPORTED,
                            "config.json: size_experts[%u][%u] is %u but other experts have %u; "
                            "experts of unequal size are not supported", l, e,
                            (uint32_t)x->number, size);
        }
    }
    c->n_ff = size;
    return LMOE_OK;
}

static lmoe_status read_moe_config(const json_value *cfg, hf_config *c) {
    if (c->kind == HF_MIXTRAL) {
        FORWARD_IF_ERROR(cfg_u32(cfg, "num_local_experts", true, 0, MAX_EXPERTS, &c->n_expert));
        FORWARD_IF_ERROR(
            cfg_u32(cfg, "num_experts_per_tok", true, 0, MAX_EXPERTS, &c->n_expert_used));
        const json_value *norm = json_get(cfg, "norm_topk_prob");
        RETURN_ERROR_IF(norm && norm->kind == JSON_BOOL && !norm->boolean, LMOE_ERR_UNSUPPORTED,
                        "config.json: norm_topk_prob false (top-k weights not renormalised) is "
                        "not supported");
        FORWARD_IF_ERROR(read_scales(cfg, "scale_factor", c));
    } else {
        FORWARD_IF_ERROR(cfg_u32(cfg, "num_experts", true, 0, MAX_EXPERTS, &c->n_expert));
        FORWARD_IF_ERROR(cfg_u32(cfg, "num_selects", true, 0, MAX_EXPERTS, &c->n_expert_used));
        const json_value *gate = json_get(cfg, "gate_network");
        RETURN_ERROR_IF(gate && gate->kind != JSON_STRING, LMOE_ERR_BAD_FILE,
                        "config.json: 'gate_network' must be a string");
        c->gate_mlp = !gate || strcmp(gate->str, "mlp") == 0;
        RETURN_ERROR_IF(!c->gate_mlp && strcmp(gate->str, "linear") != 0, LMOE_ERR_UNSUPPORTED,
                        "config.json: gate_network '%s' is not a known gate kind (mlp, linear)",
                        gate->str);
        const json_value *multiply = json_get(cfg, "multiply_gate_scores");
        RETURN_ERROR_IF(multiply && multiply->kind == JSON_BOOL && !multiply->boolean,
                        LMOE_ERR_UNSUPPORTED,
                        "config.json: multiply_gate_scores false is not supported");
        const json_value *calc = json_get(cfg, "calculator_type");
        RETURN_ERROR_IF(calc && !cfg_str_is(cfg, "calculator_type", "UniversalCalculator"),
                        LMOE_ERR_UNSUPPORTED,
                        "config.json: calculator_type must be UniversalCalculator");
        FORWARD_IF_ERROR(read_expert_sizes(cfg, c));
        FORWARD_IF_ERROR(read_scales(cfg, "score_scale_factor", c));
    }
    RETURN_ERROR_IF(c->n_expert_used > c->n_expert, LMOE_ERR_BAD_FILE,
                    "config.json: %u experts selected of %u", c->n_expert_used, c->n_expert);
    return LMOE_OK;
}

static void default_name(const char *dir, const json_value *cfg, hf_config *c) {
    const json_value *v = json_get(cfg, "_name_or_path");
    const char *name = v && v->kind == JSON_STRING && v->str_len ? v->str : NULL;
    if (!name) {
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/') n--;
        const char *start = dir;
        for (size_t i = 0; i < n; i++)
            if (dir[i] == '/') start = dir + i + 1;
        snprintf(c->name, sizeof c->name, "%.*s", (int)(n - (size_t)(start - dir)), start);
        return;
    }
    snprintf(c->name, sizeof c->name, "%s", name);
}

static lmoe_status read_config(const json_value *cfg, hf_config *c) {
    RETURN_ERROR_IF(!cfg || cfg->kind != JSON_OBJECT, LMOE_ERR_BAD_FILE,
                    "config.json: not a JSON object");
    const json_value *type = json_get(cfg, "model_type");
    RETURN_ERROR_IF(!type || type->kind != JSON_STRING, LMOE_ERR_BAD_FILE,
                    "config.json: 'model_type' is missing");
    if (strcmp(type->str, "llama_moe") == 0) c->kind = HF_LLAMA_MOE;
    else if (strcmp(type->str, "llama") == 0) c->kind = HF_LLAMA;
    else if (strcmp(type->str, "mixtral") == 0) c->kind = HF_MIXTRAL;
    else
        return lmoe_error(LMOE_ERR_UNSUPPORTED,
                          "config.json: model_type '%s' is not supported (llama_moe, llama, "
                          "mixtral are)", type->str);
    FORWARD_IF_ERROR(cfg_u32(cfg, "hidden_size", true, 0, MAX_DIM, &c->n_embd));
    FORWARD_IF_ERROR(cfg_u32(cfg, "num_hidden_layers", true, 0, MAX_LAYERS, &c->n_layer));
    FORWARD_IF_ERROR(cfg_u32(cfg, "num_attention_heads", true, 0, MAX_DIM, &c->n_head));
    FORWARD_IF_ERROR(cfg_u32(cfg, "num_key_value_heads", false, c->n_head, MAX_DIM, &c->n_head_kv));
    FORWARD_IF_ERROR(cfg_u32(cfg, "intermediate_size", true, 0, 1u << 24, &c->n_ff));
    FORWARD_IF_ERROR(cfg_u32(cfg, "vocab_size", true, 0, 1u << 24, &c->n_vocab));
    FORWARD_IF_ERROR(cfg_u32(cfg, "max_position_embeddings", false, 4096, UINT32_MAX, &c->n_ctx));
    FORWARD_IF_ERROR(cfg_f32(cfg, "rms_norm_eps", 1e-6f, &c->rms_eps));
    FORWARD_IF_ERROR(cfg_f32(cfg, "rope_theta", 10000.0f, &c->rope_theta));
    const json_value *tied = json_get(cfg, "tie_word_embeddings");
    c->tied = tied && tied->kind == JSON_BOOL && tied->boolean;
    const json_value *rope_scaling = json_get(cfg, "rope_scaling");
    RETURN_ERROR_IF(rope_scaling && rope_scaling->kind != JSON_NULL, LMOE_ERR_UNSUPPORTED,
                    "config.json: rope_scaling is not supported");
    RETURN_ERROR_IF(c->n_embd % c->n_head != 0 || (c->n_embd / c->n_head) % 2 != 0,
                    LMOE_ERR_BAD_FILE,
                    "config.json: hidden_size %u is not num_attention_heads %u times an even "
                    "head size", c->n_embd, c->n_head);
    RETURN_ERROR_IF(c->n_head % c->n_head_kv != 0, LMOE_ERR_BAD_FILE,
                    "config.json: num_attention_heads %u is not a multiple of "
                    "num_key_value_heads %u", c->n_head, c->n_head_kv);
    if (c->kind != HF_LLAMA) FORWARD_IF_ERROR(read_moe_config(cfg, c));
    return LMOE_OK;
}

/* ------------------------------------------------------------------------------------------------
 * the output tensors
 * ---------------------------------------------------------------------------------------------- */

typedef enum fill_kind { FILL_COPY, FILL_ROPE_PERMUTE, FILL_STACK } fill_kind;

typedef struct out_tensor {
    char name[96];
    ggml_type type;
    uint32_t n_dims;
    uint64_t ne[3];
    fill_kind kind;
    const ckpt_tensor *src;       /* COPY, ROPE_PERMUTE */
    const ckpt_tensor **stack;    /* STACK: one per expert, owned array */
    uint32_t n_stack;
    uint32_t n_head;              /* ROPE_PERMUTE: heads in the rows */
} out_tensor;

typedef struct conversion {
    const hf_config *cfg;
    const ckpt_set *set;
    ggml_type matrix_type;
    out_tensor *out;
    size_t n_out, cap_out;
    const ckpt_tensor **used;     /* source tensors taken, to find the ones nobody wants */
    size_t n_used, cap_used;
} conversion;

static lmoe_status push(void **items, size_t *n, size_t *cap, size_t size) {
    if (*n < *cap) return LMOE_OK;
    size_t new_cap = *cap ? *cap * 2 : 64;
    void *p = realloc(*items, new_cap * size);
    RETURN_ERROR_IF(!p, LMOE_ERR_OUT_OF_MEMORY, "out of memory");
    *items = p;
    *cap = new_cap;
    return LMOE_OK;
}

/* Finds a source tensor and checks its shape: rows x cols, or a vector of cols when rows is 0. */
static lmoe_status take(conversion *cv, const char *name, uint64_t rows, uint64_t cols,
                        const ckpt_tensor **out) {
    const ckpt_tensor *t = ckpt_set_find(cv->set, name);
    RETURN_ERROR_IF(!t, LMOE_ERR_BAD_FILE, "checkpoint: tensor '%s' is missing", name);
    bool ok = rows ? t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols
                   : t->n_dims == 1 && t->shape[0] == cols;
    RETURN_ERROR_IF(!ok, LMOE_ERR_BAD_FILE,
                    "checkpoint: tensor '%s' has shape [%llu%s%llu] (%u dims), expected "
                    "[%llu%s%llu]", name, (unsigned long long)t->shape[0],
                    t->n_dims > 1 ? ", " : "", t->n_dims > 1 ? (unsigned long long)t->shape[1] : 0ull,
                    t->n_dims, (unsigned long long)(rows ? rows : cols), rows ? ", " : "",
                    rows ? (unsigned long long)cols : 0ull);
    FORWARD_IF_ERROR(push((void **)&cv->used, &cv->n_used, &cv->cap_used, sizeof *cv->used));
    cv->used[cv->n_used++] = t;
    *out = t;
    return LMOE_OK;
}

static lmoe_status add_out(conversion *cv, const char *name, ggml_type type, uint64_t cols,
                           uint64_t rows, uint64_t experts, out_tensor **out) {
    FORWARD_IF_ERROR(push((void **)&cv->out, &cv->n_out, &cv->cap_out, sizeof *cv->out));
    out_tensor *o = &cv->out[cv->n_out++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->type = type;
    o->ne[0] = cols;
    o->ne[1] = rows ? rows : 1;
    o->ne[2] = experts ? experts : 1;
    o->n_dims = experts ? 3 : rows ? 2 : 1;
    *out = o;
    return LMOE_OK;
}

/* A matrix or vector copied (and converted) as it is; norms and gates stay f32. */
static lmoe_status map_plain(conversion *cv, const char *hf_name, const char *gguf_name,
                             uint64_t rows, uint64_t cols, bool keep_f32) {
    const ckpt_tensor *src;
    FORWARD_IF_ERROR(take(cv, hf_name, rows, cols, &src));
    out_tensor *o;
    FORWARD_IF_ERROR(add_out(cv, gguf_name, keep_f32 ? GGML_TYPE_F32 : cv->matrix_type, cols, rows,
                             0, &o));
    o->kind = FILL_COPY;
    o->src = src;
    return LMOE_OK;
}

static lmoe_status map_rope(conversion *cv, const char *hf_name, const char *gguf_name,
                            uint32_t n_head) {
    const hf_config *c = cv->cfg;
    uint64_t rows = (uint64_t)n_head * (c->n_embd / c->n_head);
    FORWARD_IF_ERROR(map_plain(cv, hf_name, gguf_name, rows, c->n_embd, false));
    cv->out[cv->n_out - 1].kind = FILL_ROPE_PERMUTE;
    cv->out[cv->n_out - 1].n_head = n_head;
    return LMOE_OK;
}

/* n_expert source matrices [rows, cols] named by fmt (with the layer and the expert id) stacked
 * into one [cols, rows, n_expert] tensor. */
static lmoe_status map_stack(conversion *cv, const char *fmt, uint32_t layer, const char *gguf_name,
                             uint64_t rows, uint64_t cols) {
    uint32_t n = cv->cfg->n_expert;
    out_tensor *o;
    FORWARD_IF_ERROR(add_out(cv, gguf_name, cv->matrix_type, cols, rows, n, &o));
    o->kind = FILL_STACK;
    o->stack = calloc(n, sizeof *o->stack);
    RETURN_ERROR_IF(!o->stack, LMOE_ERR_OUT_OF_MEMORY, "out of memory");
    o->n_stack = n;
    for (uint32_t e = 0; e < n; e++) {
        char name[160];
        snprintf(name, sizeof name, fmt, layer, e);
        const ckpt_tensor *src;
        FORWARD_IF_ERROR(take(cv, name, rows, cols, &src));
        o->stack[e] = src; /* take() grows cv->used, never cv->out, so o stays valid */
    }
    return LMOE_OK;
}

static lmoe_status map_ffn(conversion *cv, uint32_t l) {
    const hf_config *c = cv->cfg;
    char hf[160], gg[96];
    uint64_t H = c->n_embd, F = c->n_ff, E = c->n_expert;
#define GG(suffix) (snprintf(gg, sizeof gg, "blk.%u." suffix ".weight", l), gg)
#define HF(...) (snprintf(hf, sizeof hf, __VA_ARGS__), hf)
    switch (c->kind) {
    case HF_LLAMA:
        FORWARD_IF_ERROR(map_plain(cv, HF("model.layers.%u.mlp.gate_proj.weight", l), GG("ffn_gate"), F, H, false));
        FORWARD_IF_ERROR(map_plain(cv, HF("model.layers.%u.mlp.up_proj.weight", l), GG("ffn_up"), F, H, false));
        FORWARD_IF_ERROR(map_plain(cv, HF("model.layers.%u.mlp.down_proj.weight", l), GG("ffn_down"), H, F, false));
        return LMOE_OK;
    case HF_LLAMA_MOE:
        if (c->gate_mlp) {
            FORWARD_IF_ERROR(map_plain(cv, HF("model.layers.%u.mlp.gate.gate_network.0.weight", l), GG("ffn_gate_inp"), E, H, true));
            FORWARD_IF_ERROR(map_plain(cv, HF("model.layers.%u.mlp.gate.gate_network.2.weight", l), GG("ffn_gate_inp_2"), E, E, true));
        } else {
            FORWARD_IF_ERROR(map_plain(cv, HF("model.layers.%u.mlp.gate.gate_network.weight", l), GG("ffn_gate_inp"), E, H, true));
        }
        FORWARD_IF_ERROR(map_stack(cv, "model.layers.%u.mlp.calculator.experts.weight_gate.%u", l, GG("ffn_gate_exps"), F, H));
        FORWARD_IF_ERROR(map_stack(cv, "model.layers.%u.mlp.calculator.experts.weight_up.%u", l, GG("ffn_up_exps"), F, H));
        FORWARD_IF_ERROR(map_stack(cv, "model.layers.%u.mlp.calculator.experts.weight_down.%u", l, GG("ffn_down_exps"), H, F));
        return LMOE_OK;
    case HF_MIXTRAL:
        FORWARD_IF_ERROR(map_plain(cv, HF("model.layers.%u.block_sparse_moe.gate.weight", l), GG("ffn_gate_inp"), E, H, true));
        FORWARD_IF_ERROR(map_stack(cv, "model.layers.%u.block_sparse_moe.experts.%u.w1.weight", l, GG("ffn_gate_exps"), F, H));
        FORWARD_IF_ERROR(map_stack(cv, "model.layers.%u.block_sparse_moe.experts.%u.w3.weight", l, GG("ffn_up_exps"), F, H));
        FORWARD_IF_ERROR(map_stack(cv, "model.layers.%u.block_sparse_moe.experts.%u.w2.weight", l, GG("ffn_down_exps"), H, F));
        return LMOE_OK;
    }
#undef GG
#undef HF
    return LMOE_OK;
}

static lmoe_status map_layer(conversion *cv, uint32_t l) {
    const hf_config *c = cv->cfg;
    char hf[160], gg[96];
    uint64_t H = c->n_embd, KV = (uint64_t)c->n_head_kv * (c->n_embd / c->n_head);
#define GG(suffix) (snprintf(gg, sizeof gg, "blk.%u." suffix ".weight", l), gg)
#define HF(suffix) (snprintf(hf, sizeof hf, "model.layers.%u." suffix ".weight", l), hf)
    FORWARD_IF_ERROR(map_plain(cv, HF("input_layernorm"), GG("attn_norm"), 0, H, true));
    FORWARD_IF_ERROR(map_rope(cv, HF("self_attn.q_proj"), GG("attn_q"), c->n_head));
    FORWARD_IF_ERROR(map_rope(cv, HF("self_attn.k_proj"), GG("attn_k"), c->n_head_kv));
    FORWARD_IF_ERROR(map_plain(cv, HF("self_attn.v_proj"), GG("attn_v"), KV, H, false));
    FORWARD_IF_ERROR(map_plain(cv, HF("self_attn.o_proj"), GG("attn_output"), H, H, false));
    FORWARD_IF_ERROR(map_plain(cv, HF("post_attention_layernorm"), GG("ffn_norm"), 0, H, true));
#undef GG
#undef HF
    return map_ffn(cv, l);
}

static bool ignorable(const char *name) {
    static const char *const suffixes[] = {".rotary_emb.inv_freq", ".mlp.gate.weight_noise.weight"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t m = strlen(suffixes[i]);
        if (n >= m && strcmp(name + n - m, suffixes[i]) == 0) return true;
    }
    return false;
}

/* A tensor the architecture does not use means the config and the weights disagree. */
static lmoe_status check_all_used(const conversion *cv) {
    for (size_t f = 0; f < cv->set->n_files; f++) {
        const ckpt_file *file = &cv->set->files[f];
        for (size_t i = 0; i < file->n_tensors; i++) {
            const ckpt_tensor *t = &file->tensors[i];
            bool used = ignorable(t->name);
            for (size_t u = 0; u < cv->n_used && !used; u++) used = cv->used[u] == t;
            RETURN_ERROR_IF(!used, LMOE_ERR_BAD_FILE,
                            "checkpoint: tensor '%s' is not part of this model_type's layout "
                            "(wrong config.json?)", t->name);
        }
    }
    return LMOE_OK;
}

static lmoe_status plan(conversion *cv) {
    const hf_config *c = cv->cfg;
    uint64_t H = c->n_embd, V = c->n_vocab;
    FORWARD_IF_ERROR(map_plain(cv, "model.embed_tokens.weight", "token_embd.weight", V, H, false));
    for (uint32_t l = 0; l < c->n_layer; l++) FORWARD_IF_ERROR(map_layer(cv, l));
    FORWARD_IF_ERROR(map_plain(cv, "model.norm.weight", "output_norm.weight", 0, H, true));
    if (!c->tied) FORWARD_IF_ERROR(map_plain(cv, "lm_head.weight", "output.weight", V, H, false));
    return check_all_used(cv);
}

/* ------------------------------------------------------------------------------------------------
 * producing the bytes
 * ---------------------------------------------------------------------------------------------- */

static float element(const void *src, ggml_type type, size_t i) {
    if (type == GGML_TYPE_F32) {
        float f;
        memcpy(&f, (const char *)src + i * 4, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, (const char *)src + i * 2, 2);
    return type == GGML_TYPE_BF16 ? lmoe_bf16_to_f32(h) : lmoe_f16_to_f32(h);
}

/* n elements from src (src_type) to dst (dst_type); identical types are copied bit for bit. */
static void convert(const void *src, ggml_type src_type, void *dst, ggml_type dst_type, size_t n) {
    if (src_type == dst_type) {
        memcpy(dst, src, n * ggml_type_block_bytes(src_type));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float f = element(src, src_type, i);
        if (dst_type == GGML_TYPE_F32) {
            memcpy((char *)dst + i * 4, &f, 4);
        } else {
            uint16_t h = dst_type == GGML_TYPE_BF16 ? lmoe_f32_to_bf16(f) : lmoe_f32_to_f16(f);
            memcpy((char *)dst + i * 2, &h, 2);
        }
    }
}

static const void *row_of(const ckpt_tensor *t, uint64_t row, uint64_t cols) {
    return (const char *)t->data + row * cols * ggml_type_block_bytes(t->type);
}

static lmoe_status fill_tensor(void *user, void *dst, size_t n_bytes) {
    const out_tensor *o = user;
    size_t out_elem = ggml_type_block_bytes(o->type);
    uint64_t cols = o->ne[0], rows = o->ne[1];
    RETURN_ERROR_IF(n_bytes != cols * rows * o->ne[2] * out_elem, LMOE_ERR_INTERNAL,
                    "converter: size mismatch for '%s'", o->name);
    switch (o->kind) {
    case FILL_COPY:
        convert(o->src->data, o->src->type, dst, o->type, (size_t)(cols * rows));
        break;
    case FILL_ROPE_PERMUTE: {
        /* Hugging Face rotates (i, i + d/2) within a head; GGUF rotates (2i, 2i + 1). Row 2i of
         * a head takes row i, row 2i + 1 takes row i + d/2. */
        uint64_t head_dim = rows / o->n_head, half = head_dim / 2;
        for (uint64_t r = 0; r < rows; r++) {
            uint64_t head = r / head_dim, i = r % head_dim;
            uint64_t src_row = head * head_dim + (i % 2 ? half + i / 2 : i / 2);
            convert(row_of(o->src, src_row, cols), o->src->type,
                    (char *)dst + r * cols * out_elem, o->type, (size_t)cols);
        }
        break;
    }
    case FILL_STACK:
        for (uint32_t e = 0; e < o->n_stack; e++)
            convert(o->stack[e]->data, o->stack[e]->type, (char *)dst + e * rows * cols * out_elem,
                    o->type, (size_t)(rows * cols));
        break;
    }
    return LMOE_OK;
}

/* ------------------------------------------------------------------------------------------------
 * metadata
 * ---------------------------------------------------------------------------------------------- */

static bool all_scales_one(const hf_config *c) {
    for (uint32_t l = 0; c->scales && l < c->n_layer; l++)
        if (c->scales[l] != 1.0f) return false;
    return true;
}

/* LLaMA-MoE math that llama.cpp also does (linear gate, scale 1) is written as "llama", so
 * existing tools run it; a tanh-MLP gate or a scale keeps our own name, so that a reader which
 * ignores them refuses the file instead of running it wrong. */
static const char *output_architecture(const hf_config *c) {
    if (c->kind == HF_LLAMA) return "llama";
    return (!c->gate_mlp && all_scales_one(c)) ? "llama" : "llama_moe";
}

static lmoe_status write_scales(gguf_writer *w, const hf_config *c) {
    bool same = true;
    for (uint32_t l = 1; l < c->n_layer; l++) same &= c->scales[l] == c->scales[0];
    if (same) return gguf_writer_set_f32(w, "llama_moe.expert_score_scale", c->scales[0]);
    return gguf_writer_set_array(w, "llama_moe.expert_score_scale", GGUF_TYPE_FLOAT32, c->scales,
                                 c->n_layer);
}

static lmoe_status write_keys(gguf_writer *w, const hf_config *c, const char *arch,
                              const char *chat_format) {
    char key[128];
#define KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), key)
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.architecture", arch));
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.name", c->name));
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.source", "Hugging Face checkpoint"));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("context_length"), c->n_ctx));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("embedding_length"), c->n_embd));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("block_count"), c->n_layer));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("feed_forward_length"), c->n_ff));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("attention.head_count"), c->n_head));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("attention.head_count_kv"), c->n_head_kv));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("rope.dimension_count"), c->n_embd / c->n_head));
    FORWARD_IF_ERROR(gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), c->rms_eps));
    FORWARD_IF_ERROR(gguf_writer_set_f32(w, KEY("rope.freq_base"), c->rope_theta));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("vocab_size"), c->n_vocab));
    if (c->n_expert) {
        FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("expert_count"), c->n_expert));
        FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY("expert_used_count"), c->n_expert_used));
    }
    if (strcmp(arch, "llama_moe") == 0) {
        FORWARD_IF_ERROR(gguf_writer_set_str(w, KEY("expert_gate_type"), c->gate_mlp ? "mlp" : "linear"));
        FORWARD_IF_ERROR(write_scales(w, c));
    }
#undef KEY
    if (chat_format) FORWARD_IF_ERROR(gguf_writer_set_str(w, "llamamoe.chat_format", chat_format));
    return LMOE_OK;
}

/* SFT releases of LLaMA-MoE are trained on the Vicuna v1.1 format and say "sft" in their name. */
static const char *choose_chat_format(const hf_options *o, const hf_config *c) {
    if (o->chat_format) return strcmp(o->chat_format, "none") == 0 ? NULL : "vicuna_v1.1";
    char lower[sizeof c->name];
    size_t i = 0;
    for (; c->name[i] && i + 1 < sizeof lower; i++) lower[i] = (char)tolower((unsigned char)c->name[i]);
    lower[i] = 0;
    return strstr(lower, "sft") ? "vicuna_v1.1" : NULL;
}

/* ------------------------------------------------------------------------------------------------
 * the conversion
 * ---------------------------------------------------------------------------------------------- */

typedef struct progress_state {
    const hf_options *opt;
    uint64_t total_bytes, done_bytes;
    int last_percent;
} progress_state;

static void on_shard(void *user, size_t index, size_t count, const char *path) {
    report((const hf_options *)user, "opened shard %zu/%zu: %s", index + 1, count, path);
}

static void on_tensor_written(void *user, size_t index, size_t count, const char *name,
                              uint64_t n_bytes) {
    progress_state *p = user;
    p->done_bytes += n_bytes;
    int percent = p->total_bytes ? (int)(p->done_bytes * 100 / p->total_bytes) : 100;
    if (percent >= p->last_percent + 5 || index + 1 == count) {
        report(p->opt, "written %3d%% (%zu/%zu tensors, last %s)", percent, index + 1, count, name);
        p->last_percent = percent;
    }
}

static lmoe_status read_json_file(const char *path, json_value **out) {
    file_map map;
    FORWARD_IF_ERROR(file_map_open(path, &map));
    *out = map.size ? json_parse((const char *)map.data, map.size) : NULL;
    file_map_close(&map);
    RETURN_ERROR_IF(!*out, LMOE_ERR_BAD_FILE, "%s: not valid JSON", path);
    return LMOE_OK;
}

static lmoe_status read_tokenizer(const char *dir, lmoe_vocab *vocab) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    file_map map;
    lmoe_status st = file_map_open(path, &map);
    RETURN_ERROR_IF(st == LMOE_ERR_IO, LMOE_ERR_UNSUPPORTED,
                    "%s: not found. Only SentencePiece tokenizers (tokenizer.model: LLaMA, LLaMA-2, "
                    "LLaMA-MoE v1) are supported; byte-level BPE tokenizers such as LLaMA-3's "
                    "(LLaMA-MoE v2) are not", path);
    st = spm_model_read(map.data, map.size, vocab);
    file_map_close(&map);
    return lmoe_error_prefix(st, "%s", path);
}

static lmoe_status choose_matrix_type(const hf_options *o, const ckpt_set *set, ggml_type *out) {
    if (o->type_set) {
        RETURN_ERROR_IF(o->type != GGML_TYPE_F32 && o->type != GGML_TYPE_F16 &&
                            o->type != GGML_TYPE_BF16,
                        LMOE_ERR_INVALID_ARGUMENT, "--type must be f32, f16 or bf16");
        *out = o->type;
        return LMOE_OK;
    }
    const ckpt_tensor *embd = ckpt_set_find(set, "model.embed_tokens.weight");
    *out = embd ? embd->type : GGML_TYPE_F32;
    return LMOE_OK;
}

static lmoe_status convert_folder(const char *dir, const char *out_path, const hf_options *o,
                                  hf_config *c, ckpt_set *set, lmoe_vocab *vocab,
                                  conversion *cv, gguf_writer **w) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_value *cfg = NULL;
    FORWARD_IF_ERROR(read_json_file(path, &cfg));
    default_name(dir, cfg, c);
    lmoe_status st = read_config(cfg, c);
    json_free(cfg);
    FORWARD_IF_ERROR(lmoe_error_prefix(st, "%s", path));
    FORWARD_IF_ERROR(read_tokenizer(dir, vocab));
    RETURN_ERROR_IF(vocab->n_tokens != c->n_vocab, LMOE_ERR_BAD_FILE,
                    "%s/tokenizer.model has %u pieces but config.json says vocab_size %u", dir,
                    vocab->n_tokens, c->n_vocab);
    FORWARD_IF_ERROR(ckpt_set_open_dir(dir, set, on_shard, (void *)o));
    cv->cfg = c;
    cv->set = set;
    FORWARD_IF_ERROR(choose_matrix_type(o, set, &cv->matrix_type));
    FORWARD_IF_ERROR(plan(cv));

    const char *arch = output_architecture(c);
    const char *chat = choose_chat_format(o, c);
    report(o, "%s: %s -> architecture %s, %u layers, %u experts (%u used), matrices %s%s%s", dir,
           c->kind == HF_LLAMA_MOE ? "llama_moe" : c->kind == HF_MIXTRAL ? "mixtral" : "llama",
           arch, c->n_layer, c->n_expert, c->n_expert_used, ggml_type_name(cv->matrix_type),
           chat ? ", chat format " : "", chat ? chat : "");
    FORWARD_IF_ERROR(gguf_writer_create(w));
    FORWARD_IF_ERROR(write_keys(*w, c, arch, chat));
    FORWARD_IF_ERROR(vocab_write_gguf(vocab, *w));
    progress_state progress = {o, 0, 0, 0};
    for (size_t i = 0; i < cv->n_out; i++) {
        out_tensor *t = &cv->out[i];
        FORWARD_IF_ERROR(gguf_writer_add_tensor_fill(*w, t->name, t->type, t->n_dims, t->ne,
                                                     fill_tensor, t));
        progress.total_bytes += t->ne[0] * t->ne[1] * t->ne[2] * ggml_type_block_bytes(t->type);
    }
    gguf_writer_set_progress(*w, on_tensor_written, &progress);
    return gguf_writer_write(*w, out_path);
}

lmoe_status hf_convert(const char *dir, const char *out_path, const hf_options *options) {
    hf_options defaults = {0};
    const hf_options *o = options ? options : &defaults;
    hf_config c;
    memset(&c, 0, sizeof c);
    ckpt_set set = {0};
    lmoe_vocab vocab;
    memset(&vocab, 0, sizeof vocab);
    conversion cv;
    memset(&cv, 0, sizeof cv);
    gguf_writer *w = NULL;
    lmoe_status st = convert_folder(dir, out_path, o, &c, &set, &vocab, &cv, &w);
    gguf_writer_free(w);
    for (size_t i = 0; i < cv.n_out; i++) free(cv.out[i].stack);
    free(cv.out);
    free(cv.used);
    ckpt_set_close(&set);
    vocab_free(&vocab);
    free(c.scales);
    return st;
}
