/* llama2c.c - reads llama2.c checkpoints (see ../shared/models/README.md for both layouts) and
 * writes their weights under the GGUF llama tensor names. llama2.c's model already rotates
 * adjacent pairs in RoPE, the GGUF layout, so Q and K rows are written as they are. */
#include "llama2c.h"

#include <stdio.h>
#include <string.h>

#include "error.h"

#define LEGACY_HEADER_BYTES 28
#define V1_HEADER_BYTES 256
#define V1_MAGIC 0x616b3432u
#define MAX_DIM (1 << 20)

static lmoe_status check_config(const llama2c_config *c) {
    const struct { const char *name; int32_t value; } fields[] = {
        {"dim", c->dim},         {"hidden_dim", c->hidden_dim}, {"n_layers", c->n_layers},
        {"n_heads", c->n_heads}, {"n_kv_heads", c->n_kv_heads}, {"vocab_size", c->vocab_size},
        {"seq_len", c->seq_len},
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        RETURN_ERROR_IF(fields[i].value <= 0 || fields[i].value > MAX_DIM, LMOE_ERR_BAD_FILE,
                        "llama2.c checkpoint: header field %s = %d is out of range (1 to %d)",
                        fields[i].name, fields[i].value, MAX_DIM);
    RETURN_ERROR_IF(c->dim % c->n_heads != 0 || (c->dim / c->n_heads) % 2 != 0,
                    LMOE_ERR_BAD_FILE,
                    "llama2.c checkpoint: dim %d must be n_heads %d times an even head size",
                    c->dim, c->n_heads);
    RETURN_ERROR_IF(c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0,
                    LMOE_ERR_BAD_FILE,
                    "llama2.c checkpoint: n_heads %d is not a multiple of n_kv_heads %d",
                    c->n_heads, c->n_kv_heads);
    return LMOE_OK;
}

/* Walks a pointer through the payload, handing out consecutive float arrays. */
typedef struct walker {
    const float *p;
    uint64_t left;               /* floats left */
    int overrun;
} walker;

static const float *take(walker *wk, uint64_t n) {
    if (n > wk->left) {
        wk->overrun = 1;
        return NULL;
    }
    const float *p = wk->p;
    wk->p += n;
    wk->left -= n;
    return p;
}

static lmoe_status read_header(const uint8_t *bytes, size_t size, llama2c_config *c,
                               size_t *payload_offset) {
    uint32_t magic = 0;
    if (size >= 4) memcpy(&magic, bytes, 4);
    int32_t h[7];
    if (magic == V1_MAGIC) {
        RETURN_ERROR_IF(size < V1_HEADER_BYTES, LMOE_ERR_BAD_FILE,
                        "llama2.c checkpoint: %zu bytes, shorter than the 256-byte version-1 "
                        "header", size);
        int32_t version;
        memcpy(&version, bytes + 4, 4);
        RETURN_ERROR_IF(version != 1, LMOE_ERR_UNSUPPORTED,
                        "llama2.c checkpoint: version %d is not supported (legacy and version 1 "
                        "are; version 2 is int8)", version);
        memcpy(h, bytes + 8, sizeof h);
        c->shared_classifier = bytes[8 + sizeof h] != 0;
        c->version = 1;
        *payload_offset = V1_HEADER_BYTES;
    } else {
        RETURN_ERROR_IF(size < LEGACY_HEADER_BYTES, LMOE_ERR_BAD_FILE,
                        "llama2.c checkpoint: %zu bytes, shorter than the 28-byte header", size);
        memcpy(h, bytes, sizeof h);
        /* A negative vocab_size flags a separate classifier at the end. */
        c->shared_classifier = h[5] > 0;
        if (h[5] < 0 && h[5] != INT32_MIN) h[5] = -h[5];
        c->version = 0;
        *payload_offset = LEGACY_HEADER_BYTES;
    }
    c->dim = h[0];
    c->hidden_dim = h[1];
    c->n_layers = h[2];
    c->n_heads = h[3];
    c->n_kv_heads = h[4];
    c->vocab_size = h[5];
    c->seq_len = h[6];
    return check_config(c);
}

lmoe_status llama2c_checkpoint_read(const void *data, size_t size, llama2c_config *c,
                                    llama2c_weights *w) {
    memset(c, 0, sizeof *c);
    memset(w, 0, sizeof *w);
    RETURN_ERROR_IF(!data || size == 0, LMOE_ERR_BAD_FILE, "llama2.c checkpoint: the file is empty");
    size_t offset = 0;
    FORWARD_IF_ERROR(read_header(data, size, c, &offset));
    uint64_t dim = (uint64_t)c->dim, hidden = (uint64_t)c->hidden_dim;
    uint64_t layers = (uint64_t)c->n_layers, vocab = (uint64_t)c->vocab_size;
    uint64_t head_size = dim / (uint64_t)c->n_heads;
    uint64_t kv_dim = head_size * (uint64_t)c->n_kv_heads;
    walker wk = {(const float *)((const uint8_t *)data + offset), (size - offset) / 4, 0};
    if (c->version == 1) {
        w->rms_att = take(&wk, layers * dim);
        w->rms_ffn = take(&wk, layers * dim);
        w->rms_final = take(&wk, dim);
        w->token_embedding = take(&wk, vocab * dim);
    } else {
        w->token_embedding = take(&wk, vocab * dim);
        w->rms_att = take(&wk, layers * dim);
    }
    w->wq = take(&wk, layers * dim * dim);
    w->wk = take(&wk, layers * kv_dim * dim);
    w->wv = take(&wk, layers * kv_dim * dim);
    w->wo = take(&wk, layers * dim * dim);
    if (c->version == 0) w->rms_ffn = take(&wk, layers * dim);
    w->w1 = take(&wk, layers * hidden * dim);
    w->w2 = take(&wk, layers * dim * hidden);
    w->w3 = take(&wk, layers * hidden * dim);
    if (c->version == 0) {
        w->rms_final = take(&wk, dim);
        /* legacy RoPE tables, cos then sin, seq_len * head_size / 2 floats each: skipped */
        take(&wk, (uint64_t)c->seq_len * head_size);
    }
    w->wcls = c->shared_classifier ? w->token_embedding : take(&wk, vocab * dim);
    uint64_t expected = (size - offset) / 4 - wk.left;
    RETURN_ERROR_IF(wk.overrun, LMOE_ERR_BAD_FILE,
                    "llama2.c checkpoint: %zu bytes is too short for the header's shapes "
                    "(dim %d, hidden %d, layers %d, vocab %d)", size, c->dim, c->hidden_dim,
                    c->n_layers, c->vocab_size);
    RETURN_ERROR_IF(wk.left != 0 || (size - offset) % 4 != 0, LMOE_ERR_BAD_FILE,
                    "llama2.c checkpoint: %zu bytes left over after the %llu floats the header "
                    "describes (wrong format or version?)", (size_t)(size - offset - expected * 4),
                    (unsigned long long)expected);
    return LMOE_OK;
}

static lmoe_status add_matrix(gguf_writer *w, const char *name, const float *data, uint64_t cols,
                              uint64_t rows) {
    uint64_t ne[2] = {cols, rows};
    return gguf_writer_add_tensor(w, name, GGML_TYPE_F32, rows ? 2 : 1, ne, data);
}

static lmoe_status add_keys(const llama2c_config *c, const char *name, gguf_writer *w) {
    uint32_t head_size = (uint32_t)(c->dim / c->n_heads);
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.architecture", "llama"));
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.name", name));
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.source", "llama2.c checkpoint"));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama.context_length", (uint32_t)c->seq_len));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)c->dim));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama.block_count", (uint32_t)c->n_layers));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads));
    FORWARD_IF_ERROR(
        gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama.rope.dimension_count", head_size));
    /* run.c's constants */
    FORWARD_IF_ERROR(gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
    FORWARD_IF_ERROR(gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)c->vocab_size));
    return LMOE_OK;
}

lmoe_status llama2c_to_gguf(const llama2c_config *c, const llama2c_weights *wt, const char *name,
                            gguf_writer *w) {
    FORWARD_IF_ERROR(add_keys(c, name, w));
    uint64_t dim = (uint64_t)c->dim, hidden = (uint64_t)c->hidden_dim;
    uint64_t kv_dim = dim / (uint64_t)c->n_heads * (uint64_t)c->n_kv_heads;
    FORWARD_IF_ERROR(add_matrix(w, "token_embd.weight", wt->token_embedding, dim,
                                (uint64_t)c->vocab_size));
    FORWARD_IF_ERROR(add_matrix(w, "output_norm.weight", wt->rms_final, dim, 0));
    if (!c->shared_classifier)
        FORWARD_IF_ERROR(add_matrix(w, "output.weight", wt->wcls, dim, (uint64_t)c->vocab_size));
    char n[96];
    for (uint64_t l = 0; l < (uint64_t)c->n_layers; l++) {
#define ADD(suffix, base, cols, rows)                                                               \
    do {                                                                                            \
        snprintf(n, sizeof n, "blk.%llu." suffix ".weight", (unsigned long long)l);                 \
        FORWARD_IF_ERROR(add_matrix(w, n, (base) + l * (cols) * ((rows) ? (rows) : 1), (cols),      \
                                    (rows)));                                                       \
    } while (0)
        ADD("attn_norm", wt->rms_att, dim, 0);
        ADD("attn_q", wt->wq, dim, dim);
        ADD("attn_k", wt->wk, dim, kv_dim);
        ADD("attn_v", wt->wv, dim, kv_dim);
        ADD("attn_output", wt->wo, dim, dim);
        ADD("ffn_norm", wt->rms_ffn, dim, 0);
        ADD("ffn_gate", wt->w1, dim, hidden);
        ADD("ffn_down", wt->w2, hidden, dim);
        ADD("ffn_up", wt->w3, dim, hidden);
#undef ADD
    }
    return LMOE_OK;
}
