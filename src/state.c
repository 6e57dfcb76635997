/* state.c - a context's state (KV cache, logits, expert counts) saved to bytes and restored, so a
 * host can park a conversation and resume it later, or start many from one evaluated prefix.
 *
 * Layout (little-endian, as the machine that wrote it; a big-endian reader refuses the magic):
 *   0   "LMOESTAT"                      magic
 *   8   u32 version (1)
 *   12  u32 n_tokens                    tokens in the KV cache
 *   16  u32 n_layer, n_head_kv, head_dim, n_vocab, n_expert
 *   36  u32 flags                       bit 0: logits are valid
 *   40  u64 model fingerprint           parameters and tensor bytes of the model that wrote it
 *   48  f32 keys   [n_layer][n_head_kv][n_tokens][head_dim]
 *       f32 values [n_layer][n_head_kv][n_tokens][head_dim]
 *       f32 logits [n_vocab]            when flag bit 0 is set
 *       u64 expert counts [n_layer][n_expert]
 *       u64 FNV-1a hash of every byte before it
 * Restoring checks all of it before changing the context: a state from another model, a
 * truncated or altered buffer, or one too long for the context is refused with a message. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "error.h"
#include "mem.h"

#define STATE_MAGIC "LMOESTAT"
#define STATE_VERSION 1u
#define STATE_HEADER_BYTES 48u

typedef struct state_header {
    uint32_t n_tokens, n_layer, n_head_kv, head_dim, n_vocab, n_expert, flags;
    uint64_t fingerprint;
} state_header;

/* The header's u32 fields in file order, after the magic and the version. */
#define HEADER_U32S 7
static void header_u32s(state_header *h, uint32_t *fields[HEADER_U32S]) {
    uint32_t *in_order[HEADER_U32S] = {&h->n_tokens, &h->n_layer,  &h->n_head_kv, &h->head_dim,
                                       &h->n_vocab,  &h->n_expert, &h->flags};
    memcpy(fields, in_order, sizeof in_order);
}

static uint64_t model_fingerprint(const lmoe_model *m) {
    return m->n_params * 0x9E3779B97F4A7C15ull ^ m->n_bytes;
}

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* a * b, or 0 when it does not fit a size_t (0 is never a valid size here: see state_bytes) */
static size_t mul(size_t a, size_t b) {
    return a && b > SIZE_MAX / a ? 0 : a * b;
}

/* Bytes of a state with this header (0 if it would not fit a size_t). */
static size_t state_bytes(const state_header *h) {
    size_t per_row = (size_t)h->head_dim * 2 * sizeof(float); /* a key and a value */
    size_t kv = mul(mul(mul(h->n_layer, h->n_head_kv), h->n_tokens), per_row);
    if (h->n_tokens && kv == 0) return 0;
    size_t logits = h->flags & 1 ? (size_t)h->n_vocab * sizeof(float) : 0;
    size_t counts = mul((size_t)h->n_layer * h->n_expert, sizeof(uint64_t));
    size_t fixed = STATE_HEADER_BYTES + logits + counts + 8;
    return kv > SIZE_MAX - fixed ? 0 : kv + fixed;
}

static state_header header_of(const lmoe_context *ctx) {
    const llama_hparams *hp = &ctx->model->hp;
    state_header h = {ctx->n_past, hp->n_layer, hp->n_head_kv, hp->head_dim, hp->n_vocab,
                      hp->n_expert, ctx->logits_valid ? 1u : 0u,
                      model_fingerprint(ctx->model)};
    return h;
}

size_t lmoe_context_state_size(const lmoe_context *ctx) {
    if (!ctx) return 0;
    state_header h = header_of(ctx);
    return state_bytes(&h);
}

static uint8_t *put(uint8_t *p, const void *src, size_t n) {
    memcpy(p, src, n);
    return p + n;
}

/* The cache rows of one layer's head for positions 0..n_tokens-1 are contiguous in the context
 * (cache_offset in forward.c: [layer][head][pos][dim]). */
static size_t cache_at(const lmoe_context *ctx, uint32_t layer, uint32_t head) {
    const llama_hparams *hp = &ctx->model->hp;
    return (((size_t)layer * hp->n_head_kv + head) * ctx->n_ctx) * hp->head_dim;
}

/* The payload after the header, one layout for both directions: the keys and values of the
 * tokens held, the logits when valid, the expert counts. Copies the context into bytes (save) or
 * bytes into the context (restore); returns the end of the payload in bytes. */
static uint8_t *transfer_payload(lmoe_context *ctx, const state_header *h, uint8_t *bytes,
                                 bool restore) {
    size_t rows = (size_t)h->n_tokens * h->head_dim * sizeof(float);
    size_t n_counts = (size_t)h->n_layer * h->n_expert * sizeof(uint64_t);
    void *parts[2 + 2] = {NULL, NULL, h->flags & 1 ? ctx->state.logits : NULL,
                          h->n_expert ? ctx->expert_counts : NULL};
    size_t sizes[2 + 2] = {0, 0, (size_t)h->n_vocab * sizeof(float), n_counts};
    for (int which = 0; which < 2; which++) {
        float *cache = which ? ctx->state.value_cache : ctx->state.key_cache;
        for (uint32_t l = 0; l < h->n_layer; l++)
            for (uint32_t k = 0; k < h->n_head_kv; k++, bytes += rows) {
                float *at = cache + cache_at(ctx, l, k);
                if (restore) memcpy(at, bytes, rows);
                else memcpy(bytes, at, rows);
            }
    }
    for (int i = 2; i < 4; i++) {
        if (!parts[i]) continue;
        if (restore) memcpy(parts[i], bytes, sizes[i]);
        else memcpy(bytes, parts[i], sizes[i]);
        bytes += sizes[i];
    }
    return bytes;
}

lmoe_status lmoe_context_state_save(const lmoe_context *ctx, void *buf, size_t buf_size,
                                    size_t *written) {
    RETURN_ERROR_IF(!ctx, LMOE_ERR_INVALID_ARGUMENT, "lmoe_context_state_save: ctx is NULL");
    state_header h = header_of(ctx);
    size_t need = state_bytes(&h);
    if (written) *written = need;
    RETURN_ERROR_IF(!buf || buf_size < need, LMOE_ERR_BUFFER_TOO_SMALL,
                    "lmoe_context_state_save: the state of %u tokens needs %zu bytes, %zu given",
                    h.n_tokens, need, buf ? buf_size : 0);
    uint8_t *p = buf;
    uint32_t version = STATE_VERSION;
    p = put(p, STATE_MAGIC, 8);
    p = put(p, &version, 4);
    uint32_t *fields[HEADER_U32S];
    header_u32s(&h, fields);
    for (int i = 0; i < HEADER_U32S; i++) p = put(p, fields[i], 4);
    p = put(p, &h.fingerprint, 8);
    /* saving only reads the context: the cast lets one function serve both directions */
    p = transfer_payload((lmoe_context *)ctx, &h, p, false);
    uint64_t hash = fnv1a(buf, (size_t)(p - (uint8_t *)buf));
    put(p, &hash, 8);
    return LMOE_OK;
}

static const uint8_t *get(const uint8_t *p, void *dst, size_t n) {
    memcpy(dst, p, n);
    return p + n;
}

lmoe_status lmoe_context_state_load(lmoe_context *ctx, const void *buf, size_t size) {
    RETURN_ERROR_IF(!ctx || !buf, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_context_state_load: ctx or buf is NULL");
    RETURN_ERROR_IF(size < STATE_HEADER_BYTES + 8 || memcmp(buf, STATE_MAGIC, 8) != 0,
                    LMOE_ERR_BAD_FILE, "context state: not a saved state (bad magic or %zu bytes)",
                    size);
    const uint8_t *p = (const uint8_t *)buf + 8;
    uint32_t version;
    state_header h;
    p = get(p, &version, 4);
    RETURN_ERROR_IF(version != STATE_VERSION, LMOE_ERR_UNSUPPORTED,
                    "context state: version %u; this library reads version %u", version,
                    STATE_VERSION);
    uint32_t *fields[HEADER_U32S];
    header_u32s(&h, fields);
    for (int i = 0; i < HEADER_U32S; i++) p = get(p, fields[i], 4);
    p = get(p, &h.fingerprint, 8);
    state_header mine = header_of(ctx);
    RETURN_ERROR_IF(h.n_layer != mine.n_layer || h.n_head_kv != mine.n_head_kv ||
                        h.head_dim != mine.head_dim || h.n_vocab != mine.n_vocab ||
                        h.n_expert != mine.n_expert || h.fingerprint != mine.fingerprint,
                    LMOE_ERR_INVALID_ARGUMENT,
                    "context state: saved from another model (%u layers, %u kv heads of %u, "
                    "vocabulary %u, %u experts); this context's model differs", h.n_layer,
                    h.n_head_kv, h.head_dim, h.n_vocab, h.n_expert);
    RETURN_ERROR_IF(h.flags > 1, LMOE_ERR_BAD_FILE, "context state: unknown flags 0x%x", h.flags);
    RETURN_ERROR_IF(h.n_tokens > ctx->n_ctx, LMOE_ERR_CONTEXT_FULL,
                    "context state: %u tokens do not fit in this context of %u", h.n_tokens,
                    ctx->n_ctx);
    size_t need = state_bytes(&h);
    RETURN_ERROR_IF(need == 0 || size != need, LMOE_ERR_BAD_FILE,
                    "context state: %zu bytes, but its header says %zu", size, need);
    uint64_t hash;
    memcpy(&hash, (const uint8_t *)buf + size - 8, 8);
    RETURN_ERROR_IF(hash != fnv1a(buf, size - 8), LMOE_ERR_BAD_FILE,
                    "context state: the checksum does not match (damaged or altered)");
    /* valid: only now is the context changed */
    transfer_payload(ctx, &h, (uint8_t *)p, true);
    ctx->n_past = h.n_tokens;
    ctx->logits_valid = h.flags & 1;
    return LMOE_OK;
}

lmoe_status lmoe_context_state_save_file(const lmoe_context *ctx, const char *path) {
    RETURN_ERROR_IF(!ctx || !path, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_context_state_save_file: ctx or path is NULL");
    size_t size = lmoe_context_state_size(ctx);
    uint8_t *buf = mem_alloc(size ? size : 1);
    RETURN_ERROR_IF(!buf, LMOE_ERR_OUT_OF_MEMORY, "context state: out of memory for %zu bytes",
                    size);
    lmoe_status st = lmoe_context_state_save(ctx, buf, size, NULL);
    FILE *f = st == LMOE_OK ? fopen(path, "wb") : NULL;
    if (st == LMOE_OK && !f)
        st = lmoe_error(LMOE_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    if (f) {
        size_t put_n = fwrite(buf, 1, size, f);
        int err = errno;
        if (fclose(f) != 0 || put_n != size) {
            st = lmoe_error(LMOE_ERR_IO, "%s: cannot write the state: %s", path, strerror(err));
            remove(path);
        }
    }
    mem_free(buf);
    return st;
}

lmoe_status lmoe_context_state_load_file(lmoe_context *ctx, const char *path) {
    RETURN_ERROR_IF(!ctx || !path, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_context_state_load_file: ctx or path is NULL");
    FILE *f = fopen(path, "rb");
    RETURN_ERROR_IF(!f, LMOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    /* the largest state this context can hold: a longer file is not one of ours */
    state_header most = header_of(ctx);
    most.n_tokens = ctx->n_ctx;
    most.flags = 1;
    size_t cap = state_bytes(&most), size = 0;
    uint8_t *buf = NULL;
    lmoe_status st = LMOE_OK;
    long end = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (end < 0 || fseek(f, 0, SEEK_SET) != 0)
        st = lmoe_error(LMOE_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    else if ((unsigned long)end > cap)
        st = lmoe_error(LMOE_ERR_BAD_FILE, "%s: %ld bytes, more than any state of this context "
                        "(%zu)", path, end, cap);
    if (st == LMOE_OK) {
        size = (size_t)end;
        buf = mem_alloc(size ? size : 1);
        if (!buf) st = lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        else if (fread(buf, 1, size, f) != size)
            st = lmoe_error(LMOE_ERR_IO, "%s: cannot read all %zu bytes", path, size);
    }
    fclose(f);
    if (st == LMOE_OK) st = lmoe_error_prefix(lmoe_context_state_load(ctx, buf, size), "%s", path);
    mem_free(buf);
    return st;
}
