/* generate.c - lmoe_generate: prompt in, streamed text out, with stop conditions.
 *
 * Text is released to the caller as soon as it cannot be part of a stop string: the longest tail
 * of the pending text that is a prefix of some stop string is held back until the next token
 * decides it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "context.h"
#include "error.h"
#include "params.h"

#define MAX_STOP_STRINGS 64
#define PIECE_MAX 256

static const lmoe_generate_params generate_defaults = {
    .struct_size = sizeof(lmoe_generate_params),
    .max_tokens = 256,
    .add_bos = 1,
};

lmoe_status lmoe_generate_default_params(lmoe_generate_params *params, size_t params_size) {
    return params_write_defaults(params, params_size, &generate_defaults, sizeof generate_defaults,
                                 sizeof generate_defaults, "generate params");
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ------------------------------------------------------------------------------------------------
 * the text stream with stop strings
 * ---------------------------------------------------------------------------------------------- */

typedef struct text_stream {
    const lmoe_generate_params *p;
    size_t *stop_lens;
    char *pending;           /* text not yet passed to on_text */
    size_t n_pending, cap_pending;
} text_stream;

static lmoe_status stream_append(text_stream *ts, const char *text, size_t len) {
    if (len == 0) return LMOE_OK;
    if (ts->n_pending + len > ts->cap_pending) {
        size_t cap = ts->cap_pending ? ts->cap_pending * 2 : 256;
        while (cap < ts->n_pending + len) cap *= 2;
        char *p = realloc(ts->pending, cap);
        RETURN_ERROR_IF(!p, LMOE_ERR_OUT_OF_MEMORY, "lmoe_generate: out of memory for text");
        ts->pending = p;
        ts->cap_pending = cap;
    }
    memcpy(ts->pending + ts->n_pending, text, len);
    ts->n_pending += len;
    return LMOE_OK;
}

/* Offset of the earliest complete stop string in the pending text, or n_pending. */
static size_t find_stop(const text_stream *ts) {
    size_t best = ts->n_pending;
    for (size_t s = 0; s < ts->p->n_stop_strings; s++) {
        size_t n = ts->stop_lens[s];
        if (n == 0 || n > ts->n_pending) continue;
        for (size_t at = 0; at + n <= ts->n_pending && at < best; at++)
            if (memcmp(ts->pending + at, ts->p->stop_strings[s], n) == 0) {
                best = at;
                break;
            }
    }
    return best;
}

/* Length of the longest tail of the pending text that begins some stop string. */
static size_t held_back(const text_stream *ts) {
    size_t keep = 0;
    for (size_t s = 0; s < ts->p->n_stop_strings; s++) {
        size_t max = ts->stop_lens[s] - 1; /* a complete match is find_stop's business */
        if (max > ts->n_pending) max = ts->n_pending;
        for (size_t len = max; len > keep; len--)
            if (memcmp(ts->pending + ts->n_pending - len, ts->p->stop_strings[s], len) == 0) {
                keep = len;
                break;
            }
    }
    return keep;
}

/* Passes the first n pending bytes to on_text and drops them. Returns the callback's answer. */
static int stream_release(text_stream *ts, size_t n, lmoe_token token) {
    int stop = 0;
    if (ts->p->on_text && n > 0) stop = ts->p->on_text(ts->p->user, ts->pending, n, token);
    if (ts->n_pending > n) memmove(ts->pending, ts->pending + n, ts->n_pending - n);
    ts->n_pending -= n;
    return stop;
}

/* ------------------------------------------------------------------------------------------------
 * generation
 * ---------------------------------------------------------------------------------------------- */

typedef struct generation {
    lmoe_context *ctx;
    lmoe_sampler *sampler;
    const lmoe_generate_params *p;
    text_stream text;
    lmoe_generate_result result;
} generation;

static lmoe_status check_params(const lmoe_generate_params *p) {
    RETURN_ERROR_IF(p->max_tokens < 0, LMOE_ERR_INVALID_ARGUMENT,
                    "generate params: max_tokens must be >= 0, got %d", (int)p->max_tokens);
    RETURN_ERROR_IF(p->n_stop_strings > MAX_STOP_STRINGS, LMOE_ERR_INVALID_ARGUMENT,
                    "generate params: %zu stop strings (at most %d)", p->n_stop_strings,
                    MAX_STOP_STRINGS);
    RETURN_ERROR_IF(p->n_stop_strings && !p->stop_strings, LMOE_ERR_INVALID_ARGUMENT,
                    "generate params: stop_strings is NULL but n_stop_strings is %zu",
                    p->n_stop_strings);
    for (size_t i = 0; i < p->n_stop_strings; i++)
        RETURN_ERROR_IF(!p->stop_strings[i] || !p->stop_strings[i][0], LMOE_ERR_INVALID_ARGUMENT,
                        "generate params: stop string %zu is NULL or empty", i);
    return LMOE_OK;
}

static lmoe_status eval_prompt(generation *g, const char *prompt, size_t prompt_len,
                               lmoe_token *last_token) {
    lmoe_context *ctx = g->ctx;
    const lmoe_model *model = ctx->model;
    bool add_bos = g->p->add_bos && ctx->n_past == 0;
    /* One tokenize call into a buffer that is always large enough (every token covers at least one
     * byte of the text or of the dummy-prefix space, and BOS is one more): asking for the size
     * first would leave that call's "buffer too small" as the thread's last error after a
     * successful generation. */
    RETURN_ERROR_IF(prompt_len > SIZE_MAX / sizeof(lmoe_token) - 2, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generate: the prompt is too long (%zu bytes)", prompt_len);
    size_t cap = prompt_len + 2, n = 0;
    lmoe_token *tokens = malloc(cap * sizeof *tokens);
    RETURN_ERROR_IF(!tokens, LMOE_ERR_OUT_OF_MEMORY, "lmoe_generate: out of memory for the prompt");
    lmoe_status st = lmoe_tokenize(model, prompt, prompt_len, add_bos, tokens, cap, &n);
    if (st == LMOE_ERR_BUFFER_TOO_SMALL) { /* not expected; n says how many are needed */
        lmoe_token *more = realloc(tokens, n * sizeof *tokens);
        st = more ? lmoe_tokenize(model, prompt, prompt_len, add_bos, more, n, &n)
                  : lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "lmoe_generate: out of memory for the prompt");
        if (more) tokens = more;
    }
    if (st == LMOE_OK && n == 0 && !ctx->logits_valid)
        st = lmoe_error(LMOE_ERR_MISUSE,
                        "lmoe_generate: the prompt is empty, BOS is off and the context holds no "
                        "evaluated tokens: there is nothing to generate from");
    else if (st == LMOE_OK && n > ctx->n_ctx - ctx->n_past)
        st = lmoe_error(LMOE_ERR_CONTEXT_FULL,
                        "lmoe_generate: the prompt is %zu tokens; the context has room for %u", n,
                        ctx->n_ctx - ctx->n_past);
    if (st != LMOE_OK || n == 0) {
        *last_token = -1;
        free(tokens);
        return st;
    }
    double t0 = now_ms();
    if (st == LMOE_OK) st = lmoe_eval(ctx, tokens, n);
    g->result.prompt_ms = now_ms() - t0;
    if (st == LMOE_OK) {
        for (size_t i = 0; i < n; i++) lmoe_sampler_accept(g->sampler, tokens[i]);
        g->result.n_prompt_tokens = (uint32_t)n;
        *last_token = tokens[n - 1];
    }
    free(tokens);
    return st;
}

/* Adds the text of token to the stream and releases what is final. Sets *reason when a stop
 * string completes or on_text asks to stop. */
static lmoe_status emit_token_text(generation *g, lmoe_token token, lmoe_token prev,
                                   lmoe_stop_reason *reason) {
    const lmoe_model *model = g->ctx->model;
    char piece[PIECE_MAX];
    size_t len = 0;
    bool after_bos = prev >= 0 && prev == model->vocab.bos_id;
    FORWARD_IF_ERROR(lmoe_token_to_piece(model, token, after_bos, piece, sizeof piece, &len));
    FORWARD_IF_ERROR(stream_append(&g->text, piece, len));
    size_t stop_at = find_stop(&g->text);
    if (stop_at < g->text.n_pending) {
        stream_release(&g->text, stop_at, token);
        g->text.n_pending = 0; /* the stop string and anything after it are never passed on */
        *reason = LMOE_STOP_STRING;
        return LMOE_OK;
    }
    if (stream_release(&g->text, g->text.n_pending - held_back(&g->text), token))
        *reason = LMOE_STOP_CALLBACK;
    return LMOE_OK;
}

static lmoe_status generate_loop(generation *g, lmoe_token prev) {
    lmoe_context *ctx = g->ctx;
    const lmoe_vocab *vocab = &ctx->model->vocab;
    lmoe_stop_reason reason = LMOE_STOP_MAX_TOKENS;
    lmoe_token token = -1;
    double t0 = now_ms();
    lmoe_status st = LMOE_OK;
    for (int32_t i = 0; i < g->p->max_tokens; i++) {
        st = lmoe_sampler_sample(g->sampler, ctx->state.logits, (int32_t)vocab->n_tokens, &token);
        if (st != LMOE_OK) break;
        g->result.n_generated++;
        lmoe_sampler_accept(g->sampler, token);
        bool token_stop = g->p->on_token && g->p->on_token(g->p->user, token);
        if (token == vocab->eos_id) {
            reason = LMOE_STOP_EOS;
            break;
        }
        if (token == vocab->bos_id && vocab->stop_on_bos) {
            reason = LMOE_STOP_BOS;
            break;
        }
        lmoe_stop_reason text_reason = LMOE_STOP_NONE;
        st = emit_token_text(g, token, prev, &text_reason);
        if (st != LMOE_OK) break;
        if (text_reason != LMOE_STOP_NONE || token_stop) {
            reason = text_reason != LMOE_STOP_NONE ? text_reason : LMOE_STOP_CALLBACK;
            break;
        }
        if (i + 1 == g->p->max_tokens) break;
        st = lmoe_eval(ctx, &token, 1);
        if (st != LMOE_OK) break;
        prev = token;
    }
    g->result.generate_ms = now_ms() - t0;
    /* Held-back text that never became a stop string is text like any other. */
    if (reason != LMOE_STOP_STRING) stream_release(&g->text, g->text.n_pending, token);
    g->result.stop_reason = st == LMOE_OK ? reason : LMOE_STOP_NONE;
    return st;
}

lmoe_status lmoe_generate(lmoe_context *ctx, lmoe_sampler *sampler, const char *prompt,
                          size_t prompt_len, const lmoe_generate_params *params,
                          lmoe_generate_result *result, size_t result_size) {
    RETURN_ERROR_IF(!ctx || !sampler, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generate: ctx or sampler is NULL");
    RETURN_ERROR_IF(!prompt && prompt_len, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generate: prompt is NULL");
    RETURN_ERROR_IF(result && result_size < sizeof(lmoe_generate_result),
                    LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generate: result_size %zu is smaller than the struct (%zu)", result_size,
                    sizeof(lmoe_generate_result));
    lmoe_generate_params p = generate_defaults;
    if (params)
        FORWARD_IF_ERROR(params_read(&p, sizeof p, params, sizeof generate_defaults,
                                     "generate params"));
    FORWARD_IF_ERROR(check_params(&p));

    generation g = {ctx, sampler, &p, {&p, NULL, NULL, 0, 0}, {.struct_size = sizeof g.result}};
    size_t stop_lens[MAX_STOP_STRINGS];
    for (size_t i = 0; i < p.n_stop_strings; i++) stop_lens[i] = strlen(p.stop_strings[i]);
    g.text.stop_lens = stop_lens;

    lmoe_token last = -1;
    lmoe_status st = eval_prompt(&g, prompt ? prompt : "", prompt_len, &last);
    if (st == LMOE_OK) st = generate_loop(&g, last);
    free(g.text.pending);
    if (result) {
        memcpy(result, &g.result, sizeof g.result);
        result->struct_size = sizeof g.result;
    }
    return st;
}
