/* api.c - the public surface for models, tokenizer and contexts: argument checks, params structs,
 * handle lifetimes. The work itself is in model.c, tokenizer.c and forward.c. */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "error.h"
#include "mem.h"
#include "model.h"
#include "params.h"

#define CHECK_ARG(cond, ...) RETURN_ERROR_IF(!(cond), LMOE_ERR_INVALID_ARGUMENT, __VA_ARGS__)

/* The context's KV cache is indexed with 32-bit positions. */
#define MAX_N_CTX (1u << 30)
#define MAX_THREADS 512

const char *lmoe_version(void) { return LMOE_VERSION_STRING; }

int lmoe_version_number(void) { return LMOE_VERSION_NUMBER; }

/* ------------------------------------------------------------------------------------------------
 * model
 * ---------------------------------------------------------------------------------------------- */

static const lmoe_model_params model_defaults = {
    .struct_size = sizeof(lmoe_model_params),
    .log_level = LMOE_LOG_WARN,
};

lmoe_status lmoe_model_default_params(lmoe_model_params *params, size_t params_size) {
    return params_write_defaults(params, params_size, &model_defaults, sizeof model_defaults,
                                 sizeof model_defaults, "model params");
}

/* The common tail of the three loaders: params, binding, logging. Takes ownership of file (NULL
 * when opening failed with status open_status); what names the source in messages. */
static lmoe_status load_model(lmoe_status open_status, gguf_file *file, const char *what,
                              const lmoe_model_params *params, lmoe_model **out) {
    lmoe_model_params p = model_defaults;
    lmoe_status st = open_status;
    if (st == LMOE_OK && params)
        st = params_read(&p, sizeof p, params, sizeof model_defaults, "model params");
    if (st != LMOE_OK) {
        gguf_close(file);
        return st;
    }
    lmoe_model *model;
    st = model_load_from_gguf(file, p.vocab_only != 0, &model);
    if (st != LMOE_OK) return lmoe_error_prefix(st, "%s", what);
    model->logger = (lmoe_logger){p.log_fn, p.log_user, p.log_level};
    const llama_hparams *hp = &model->hp;
    lmoe_log(&model->logger, LMOE_LOG_INFO,
             "loaded %s: %s, %s, vocab %u, embd %u, layers %u, heads %u/%u, ff %u, %" PRIu64
             " parameters",
             what, model->architecture[0] ? model->architecture : "(no architecture)",
             model->has_weights ? "weights" : "vocabulary only", hp->n_vocab, hp->n_embd,
             hp->n_layer, hp->n_head, hp->n_head_kv, hp->n_ff, model->n_params);
    *out = model;
    return LMOE_OK;
}

lmoe_status lmoe_model_load(const char *path, const lmoe_model_params *params, lmoe_model **out) {
    CHECK_ARG(out, "lmoe_model_load: out is NULL");
    *out = NULL;
    CHECK_ARG(path, "lmoe_model_load: path is NULL");
    gguf_file *file = NULL;
    lmoe_status st = gguf_open(path, &file);
    return load_model(st, file, path, params, out);
}

lmoe_status lmoe_model_load_from_fd(int fd, const lmoe_model_params *params, lmoe_model **out) {
    CHECK_ARG(out, "lmoe_model_load_from_fd: out is NULL");
    *out = NULL;
    CHECK_ARG(fd >= 0, "lmoe_model_load_from_fd: fd %d is not a file descriptor", fd);
    gguf_file *file = NULL;
    lmoe_status st = gguf_open_fd(fd, &file);
    char what[32];
    snprintf(what, sizeof what, "file descriptor %d", fd);
    return load_model(st, file, what, params, out);
}

lmoe_status lmoe_model_load_from_memory(const void *data, size_t size,
                                        const lmoe_model_params *params, lmoe_model **out) {
    CHECK_ARG(out, "lmoe_model_load_from_memory: out is NULL");
    *out = NULL;
    CHECK_ARG(data && size, "lmoe_model_load_from_memory: no data (%zu bytes at %p)", size, data);
    CHECK_ARG((uintptr_t)data % 32 == 0,
              "lmoe_model_load_from_memory: data must be aligned to 32 bytes (it is at %p)", data);
    gguf_file *file = NULL;
    lmoe_status st = lmoe_error_prefix(gguf_open_memory(data, size, &file), "memory buffer");
    return load_model(st, file, "memory buffer", params, out);
}

void lmoe_model_free(lmoe_model *model) { model_free(model); }

lmoe_status lmoe_model_get_info(const lmoe_model *model, lmoe_model_info *info, size_t info_size) {
    CHECK_ARG(model && info, "lmoe_model_get_info: model or info is NULL");
    CHECK_ARG(info_size >= sizeof(lmoe_model_info), "lmoe_model_get_info: info_size %zu is "
              "smaller than the struct (%zu)", info_size, sizeof(lmoe_model_info));
    const llama_hparams *hp = &model->hp;
    lmoe_model_info full = {
        .struct_size = sizeof full,
        .has_weights = model->has_weights,
        .n_vocab = (int32_t)hp->n_vocab,
        .n_ctx_train = (int32_t)(hp->n_ctx_train > INT32_MAX ? INT32_MAX : hp->n_ctx_train),
        .n_embd = (int32_t)hp->n_embd,
        .n_layer = (int32_t)hp->n_layer,
        .n_head = (int32_t)hp->n_head,
        .n_head_kv = (int32_t)hp->n_head_kv,
        .n_ff = (int32_t)hp->n_ff,
        .rms_norm_eps = hp->rms_eps,
        .rope_freq_base = hp->rope_theta,
        .n_expert = (int32_t)hp->n_expert,
        .n_expert_used = (int32_t)hp->n_expert_used,
        .n_params = model->n_params,
        .n_params_active = model->n_params_active,
        .n_bytes = model->n_bytes,
    };
    memcpy(full.architecture, model->architecture, sizeof full.architecture);
    memcpy(full.name, model->name, sizeof full.name);
    size_t n = info_size < sizeof full ? info_size : sizeof full;
    memcpy(info, &full, n);
    info->struct_size = n;
    return LMOE_OK;
}

/* Formats element value p of type t as text into out (at least 64 bytes). */
static void format_scalar(gguf_type t, const uint8_t *p, char *out, size_t out_size) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            uint64_t u64; int64_t i64; float f32; double f64; } v;
    switch (t) {
    case GGUF_TYPE_UINT8: memcpy(&v.u8, p, 1); snprintf(out, out_size, "%u", v.u8); break;
    case GGUF_TYPE_INT8: memcpy(&v.i8, p, 1); snprintf(out, out_size, "%d", v.i8); break;
    case GGUF_TYPE_UINT16: memcpy(&v.u16, p, 2); snprintf(out, out_size, "%u", v.u16); break;
    case GGUF_TYPE_INT16: memcpy(&v.i16, p, 2); snprintf(out, out_size, "%d", v.i16); break;
    case GGUF_TYPE_UINT32: memcpy(&v.u32, p, 4); snprintf(out, out_size, "%" PRIu32, v.u32); break;
    case GGUF_TYPE_INT32: memcpy(&v.i32, p, 4); snprintf(out, out_size, "%" PRId32, v.i32); break;
    case GGUF_TYPE_UINT64: memcpy(&v.u64, p, 8); snprintf(out, out_size, "%" PRIu64, v.u64); break;
    case GGUF_TYPE_INT64: memcpy(&v.i64, p, 8); snprintf(out, out_size, "%" PRId64, v.i64); break;
    case GGUF_TYPE_FLOAT32: memcpy(&v.f32, p, 4); snprintf(out, out_size, "%.9g", (double)v.f32); break;
    case GGUF_TYPE_FLOAT64: memcpy(&v.f64, p, 8); snprintf(out, out_size, "%.17g", v.f64); break;
    case GGUF_TYPE_BOOL: snprintf(out, out_size, "%s", *p ? "true" : "false"); break;
    default: snprintf(out, out_size, "?"); break;
    }
}

lmoe_status lmoe_model_meta_string(const lmoe_model *model, const char *key, char *buf,
                                   size_t buf_size, size_t *len) {
    CHECK_ARG(model && key, "lmoe_model_meta_string: model or key is NULL");
    CHECK_ARG(buf || buf_size == 0, "lmoe_model_meta_string: buf is NULL");
    const gguf_kv *kv = gguf_find_kv(model->file, key);
    CHECK_ARG(kv, "metadata key '%s' is not in the model file", key);
    char scratch[96];
    const char *text = scratch;
    size_t n;
    if (kv->type == GGUF_TYPE_STRING) {
        gguf_str s = {0};
        FORWARD_IF_ERROR(gguf_get_str(model->file, key, &s));
        text = s.ptr;
        n = (size_t)s.len;
    } else {
        if (kv->type == GGUF_TYPE_ARRAY)
            snprintf(scratch, sizeof scratch, "[array of %" PRIu64 " %s]", kv->n_elems,
                     gguf_type_name(kv->elem_type));
        else
            format_scalar(kv->type, kv->data, scratch, sizeof scratch);
        n = strlen(scratch);
    }
    if (len) *len = n;
    RETURN_ERROR_IF(n + 1 > buf_size, LMOE_ERR_BUFFER_TOO_SMALL,
                    "metadata key '%s' needs %zu bytes, buffer has %zu", key, n + 1, buf_size);
    memcpy(buf, text, n);
    buf[n] = 0;
    return LMOE_OK;
}

/* ------------------------------------------------------------------------------------------------
 * tokenizer
 * ---------------------------------------------------------------------------------------------- */

lmoe_token lmoe_token_bos(const lmoe_model *model) { return model ? model->vocab.bos_id : -1; }

lmoe_token lmoe_token_eos(const lmoe_model *model) { return model ? model->vocab.eos_id : -1; }

lmoe_status lmoe_tokenize(const lmoe_model *model, const char *text, size_t text_len, int add_bos,
                          lmoe_token *tokens, size_t max_tokens, size_t *n_tokens) {
    CHECK_ARG(model && n_tokens, "lmoe_tokenize: model or n_tokens is NULL");
    CHECK_ARG(text || text_len == 0, "lmoe_tokenize: text is NULL");
    CHECK_ARG(tokens || max_tokens == 0, "lmoe_tokenize: tokens is NULL");
    return vocab_encode(&model->vocab, text ? text : "", text_len, add_bos != 0, tokens,
                        max_tokens, n_tokens);
}

lmoe_status lmoe_detokenize(const lmoe_model *model, const lmoe_token *tokens, size_t n_tokens,
                            char *buf, size_t buf_size, size_t *len) {
    CHECK_ARG(model && len, "lmoe_detokenize: model or len is NULL");
    CHECK_ARG(tokens || n_tokens == 0, "lmoe_detokenize: tokens is NULL");
    CHECK_ARG(buf || buf_size == 0, "lmoe_detokenize: buf is NULL");
    return vocab_decode(&model->vocab, tokens, n_tokens, buf, buf_size, len);
}

lmoe_status lmoe_token_to_piece(const lmoe_model *model, lmoe_token token,
                                int strip_leading_space, char *buf, size_t buf_size, size_t *len) {
    CHECK_ARG(model && len, "lmoe_token_to_piece: model or len is NULL");
    CHECK_ARG(buf || buf_size == 0, "lmoe_token_to_piece: buf is NULL");
    return vocab_token_to_piece(&model->vocab, token, strip_leading_space != 0, buf, buf_size,
                                len);
}

/* ------------------------------------------------------------------------------------------------
 * context
 * ---------------------------------------------------------------------------------------------- */

/* The first version of lmoe_context_params ended at routing_user; callers built with that header
 * keep working (n_batch then takes its default). */
#define CONTEXT_PARAMS_MIN_SIZE offsetof(lmoe_context_params, n_batch)

static const lmoe_context_params context_defaults = {
    .struct_size = sizeof(lmoe_context_params),
    .log_level = LMOE_LOG_WARN,
};

lmoe_status lmoe_context_default_params(lmoe_context_params *params, size_t params_size) {
    return params_write_defaults(params, params_size, &context_defaults, sizeof context_defaults,
                                 CONTEXT_PARAMS_MIN_SIZE, "context params");
}

static lmoe_status context_init(lmoe_context *ctx, const lmoe_context_params *p) {
    const llama_hparams *hp = &ctx->model->hp;
    int n_threads = p->n_threads ? p->n_threads : threadpool_cpu_count();
    uint32_t n_batch = p->n_batch ? p->n_batch : FORWARD_DEFAULT_BATCH;
    if (n_batch > ctx->n_ctx) n_batch = ctx->n_ctx;
    ctx->kernels = lmoe_kernels_select();
    FORWARD_IF_ERROR(forward_state_init(&ctx->state, hp, ctx->kernels, ctx->n_ctx, n_batch, n_threads));
    if (hp->n_expert) {
        size_t n_counts = (size_t)hp->n_layer * hp->n_expert;
        ctx->expert_counts = mem_calloc(n_counts, sizeof *ctx->expert_counts);
        ctx->expert_counts_pending = mem_calloc(n_counts, sizeof *ctx->expert_counts_pending);
        RETURN_ERROR_IF(!ctx->expert_counts || !ctx->expert_counts_pending,
                        LMOE_ERR_OUT_OF_MEMORY, "out of memory for expert counts");
    }
    FORWARD_IF_ERROR(threadpool_create(n_threads, &ctx->pool));
    lmoe_log(&ctx->logger, LMOE_LOG_INFO, "context: %u tokens, batches of %u, %d threads, kernels %s",
             ctx->n_ctx, n_batch, n_threads, ctx->kernels->name);
    return LMOE_OK;
}

lmoe_status lmoe_context_create(const lmoe_model *model, const lmoe_context_params *params,
                                lmoe_context **out) {
    CHECK_ARG(out, "lmoe_context_create: out is NULL");
    *out = NULL;
    CHECK_ARG(model, "lmoe_context_create: model is NULL");
    RETURN_ERROR_IF(!model->has_weights, LMOE_ERR_MISUSE,
                    "lmoe_context_create: the model was loaded without weights (vocabulary "
                    "only); it can tokenize but not evaluate");
    lmoe_context_params p = context_defaults;
    if (params)
        FORWARD_IF_ERROR(params_read(&p, sizeof p, params, CONTEXT_PARAMS_MIN_SIZE,
                                     "context params"));
    CHECK_ARG(p.n_threads >= 0 && p.n_threads <= MAX_THREADS,
              "context params: n_threads must be 0 (one per CPU) to %d, got %d", MAX_THREADS,
              (int)p.n_threads);
    /* 0: the training context, capped at the limit (a larger cache could not be indexed) */
    uint32_t n_ctx = p.n_ctx ? p.n_ctx
                             : (model->hp.n_ctx_train < MAX_N_CTX ? model->hp.n_ctx_train : MAX_N_CTX);
    CHECK_ARG(n_ctx <= MAX_N_CTX, "context params: n_ctx %u is larger than the limit %u", n_ctx,
              MAX_N_CTX);
    lmoe_context *ctx = mem_calloc(1, sizeof *ctx);
    RETURN_ERROR_IF(!ctx, LMOE_ERR_OUT_OF_MEMORY, "out of memory for a context");
    ctx->model = model;
    ctx->n_ctx = n_ctx;
    ctx->logger = (lmoe_logger){p.log_fn, p.log_user, p.log_level};
    ctx->abort_fn = p.abort_fn;
    ctx->abort_user = p.abort_user;
    ctx->routing_fn = p.routing_fn;
    ctx->routing_user = p.routing_user;
    lmoe_status st = context_init(ctx, &p);
    if (st != LMOE_OK) {
        lmoe_context_free(ctx);
        return st;
    }
    *out = ctx;
    return LMOE_OK;
}

void lmoe_context_free(lmoe_context *ctx) {
    if (!ctx) return;
    threadpool_free(ctx->pool);
    forward_state_free(&ctx->state);
    mem_free(ctx->expert_counts);
    mem_free(ctx->expert_counts_pending);
    mem_free(ctx);
}

void lmoe_context_reset(lmoe_context *ctx) {
    if (!ctx) return;
    ctx->n_past = 0;
    ctx->logits_valid = false;
    lmoe_context_reset_expert_counts(ctx);
}

lmoe_status lmoe_context_truncate(lmoe_context *ctx, uint32_t n_tokens) {
    CHECK_ARG(ctx, "lmoe_context_truncate: ctx is NULL");
    RETURN_ERROR_IF(n_tokens > ctx->n_past, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_context_truncate: %u tokens asked to keep, the cache holds %u",
                    n_tokens, ctx->n_past);
    /* entries past n_tokens are simply overwritten by the next eval */
    if (n_tokens < ctx->n_past) ctx->logits_valid = false;
    ctx->n_past = n_tokens;
    return LMOE_OK;
}

lmoe_status lmoe_context_shift(lmoe_context *ctx, uint32_t n_keep, uint32_t n_discard) {
    CHECK_ARG(ctx, "lmoe_context_shift: ctx is NULL");
    RETURN_ERROR_IF(n_keep > ctx->n_past || n_discard > ctx->n_past - n_keep,
                    LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_context_shift: keeping %u and dropping %u tokens, but the cache holds %u",
                    n_keep, n_discard, ctx->n_past);
    if (n_discard == 0) return LMOE_OK;
    forward_shift_cache(ctx, n_keep, n_discard);
    ctx->n_past -= n_discard;
    return LMOE_OK;
}

static size_t n_expert_counts(const lmoe_context *ctx) {
    return (size_t)ctx->model->hp.n_layer * ctx->model->hp.n_expert;
}

void lmoe_context_reset_expert_counts(lmoe_context *ctx) {
    if (!ctx || !ctx->expert_counts) return;
    memset(ctx->expert_counts, 0, n_expert_counts(ctx) * sizeof *ctx->expert_counts);
}

lmoe_status lmoe_context_expert_counts(const lmoe_context *ctx, uint64_t *counts,
                                       size_t n_counts) {
    CHECK_ARG(ctx && counts, "lmoe_context_expert_counts: ctx or counts is NULL");
    RETURN_ERROR_IF(!ctx->expert_counts, LMOE_ERR_MISUSE,
                    "lmoe_context_expert_counts: the model is dense (no experts)");
    size_t n = n_expert_counts(ctx);
    RETURN_ERROR_IF(n_counts < n, LMOE_ERR_BUFFER_TOO_SMALL,
                    "lmoe_context_expert_counts: %zu entries needed (n_layer x n_expert), %zu "
                    "given", n, n_counts);
    memcpy(counts, ctx->expert_counts, n * sizeof *counts);
    return LMOE_OK;
}

/* Counts of an eval are kept aside until it succeeds, so a failed eval counts nothing. */
static void commit_expert_counts(lmoe_context *ctx, bool success) {
    if (!ctx->expert_counts) return;
    size_t n = n_expert_counts(ctx);
    for (size_t i = 0; success && i < n; i++) ctx->expert_counts[i] += ctx->expert_counts_pending[i];
    memset(ctx->expert_counts_pending, 0, n * sizeof *ctx->expert_counts_pending);
}

uint32_t lmoe_context_n_tokens(const lmoe_context *ctx) { return ctx ? ctx->n_past : 0; }

uint32_t lmoe_context_n_ctx(const lmoe_context *ctx) { return ctx ? ctx->n_ctx : 0; }

const lmoe_model *lmoe_context_model(const lmoe_context *ctx) { return ctx ? ctx->model : NULL; }

lmoe_status lmoe_eval(lmoe_context *ctx, const lmoe_token *tokens, size_t n_tokens) {
    CHECK_ARG(ctx, "lmoe_eval: ctx is NULL");
    CHECK_ARG(tokens || n_tokens == 0, "lmoe_eval: tokens is NULL");
    if (n_tokens == 0) return LMOE_OK;
    RETURN_ERROR_IF(n_tokens > ctx->n_ctx - ctx->n_past, LMOE_ERR_CONTEXT_FULL,
                    "lmoe_eval: %zu tokens do not fit: the context holds %u of %u", n_tokens,
                    ctx->n_past, ctx->n_ctx);
    uint32_t n_vocab = ctx->model->hp.n_vocab;
    for (size_t i = 0; i < n_tokens; i++)
        CHECK_ARG(tokens[i] >= 0 && (uint32_t)tokens[i] < n_vocab,
                  "lmoe_eval: token %zu is %d, outside the vocabulary of %u", i, (int)tokens[i],
                  n_vocab);
    ctx->logits_valid = false;
    lmoe_status st = LMOE_OK;
    size_t n_batch = ctx->state.n_batch;
    for (size_t i = 0; i < n_tokens && st == LMOE_OK; i += n_batch) {
        size_t n = n_tokens - i < n_batch ? n_tokens - i : n_batch;
        st = forward_batch(ctx, tokens + i, (uint32_t)n, ctx->n_past + (uint32_t)i,
                           i + n == n_tokens);
    }
    commit_expert_counts(ctx, st == LMOE_OK);
    if (st != LMOE_OK) return st;
    ctx->n_past += (uint32_t)n_tokens;
    ctx->logits_valid = true;
    return LMOE_OK;
}

/* Checks a call of lmoe_eval_streams before anything changes. */
static lmoe_status check_streams(lmoe_context *const *ctxs, const lmoe_token *tokens, size_t n) {
    CHECK_ARG(ctxs && tokens, "lmoe_eval_streams: ctxs or tokens is NULL");
    CHECK_ARG(n > 0, "lmoe_eval_streams: no streams");
    CHECK_ARG(ctxs[0], "lmoe_eval_streams: stream 0 has no context");
    const lmoe_context *lead = ctxs[0];
    CHECK_ARG(n <= lead->state.n_batch,
              "lmoe_eval_streams: %zu streams; at most the first context's n_batch (%u)", n,
              lead->state.n_batch);
    uint32_t n_vocab = lead->model->hp.n_vocab;
    for (size_t i = 0; i < n; i++) {
        CHECK_ARG(ctxs[i], "lmoe_eval_streams: stream %zu has no context", i);
        CHECK_ARG(ctxs[i]->model == lead->model,
                  "lmoe_eval_streams: stream %zu's context belongs to another model", i);
        for (size_t j = 0; j < i; j++)
            CHECK_ARG(ctxs[j] != ctxs[i], "lmoe_eval_streams: streams %zu and %zu are the same "
                      "context", j, i);
        RETURN_ERROR_IF(ctxs[i]->n_past >= ctxs[i]->n_ctx, LMOE_ERR_CONTEXT_FULL,
                        "lmoe_eval_streams: stream %zu's context is full (%u tokens)", i,
                        ctxs[i]->n_ctx);
        CHECK_ARG(tokens[i] >= 0 && (uint32_t)tokens[i] < n_vocab,
                  "lmoe_eval_streams: token %zu is %d, outside the vocabulary of %u", i,
                  (int)tokens[i], n_vocab);
    }
    return LMOE_OK;
}

lmoe_status lmoe_eval_streams(lmoe_context *const *ctxs, const lmoe_token *tokens,
                              size_t n_streams) {
    FORWARD_IF_ERROR(check_streams(ctxs, tokens, n_streams));
    lmoe_context *lead = ctxs[0];
    const lmoe_model *m = lead->model;
    size_t n = n_streams, dim = m->hp.n_embd, n_vocab = m->hp.n_vocab;
    uint32_t *pos = mem_alloc(n * sizeof *pos);
    float *logits = mem_alloc(n * n_vocab * sizeof *logits);
    if (!pos || !logits) {
        mem_free(pos);
        mem_free(logits);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "lmoe_eval_streams: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        pos[i] = ctxs[i]->n_past;
        ctxs[i]->logits_valid = false;
    }
    /* one pass over the weights for every stream's token; each row keeps its own cache */
    lead->state.row_ctx = ctxs;
    lead->state.row_pos = pos;
    lmoe_status st = forward_batch(lead, tokens, (uint32_t)n, 0, false);
    lead->state.row_ctx = NULL;
    lead->state.row_pos = NULL;
    if (st == LMOE_OK) {
        forward_state *s = &lead->state;
        for (size_t i = 0; i < n; i++)
            lead->kernels->rmsnorm(s->x + i * dim, s->x + i * dim, m->output_norm, dim,
                                   m->hp.rms_eps);
        forward_matmul(lead, m->output, s->x, dim, logits, n_vocab, n, n_vocab, dim);
    }
    for (size_t i = 0; i < n; i++) {
        lmoe_context *ctx = ctxs[i];
        commit_expert_counts(ctx, st == LMOE_OK);
        if (st != LMOE_OK) continue;
        memcpy(ctx->state.logits, logits + i * n_vocab, n_vocab * sizeof *logits);
        ctx->n_past++;
        ctx->logits_valid = true;
    }
    mem_free(pos);
    mem_free(logits);
    return st;
}

const float *lmoe_logits(const lmoe_context *ctx) {
    return ctx && ctx->logits_valid ? ctx->state.logits : NULL;
}
