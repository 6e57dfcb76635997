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
#include "mem.h"
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

/* Grows *buf (capacity *cap) to hold at least need bytes; false when out of memory. */
static bool grow_text(char **buf, size_t *cap, size_t need) {
    if (need <= *cap) return true;
    size_t new_cap = *cap ? *cap * 2 : 256;
    while (new_cap < need) new_cap *= 2;
    char *p = mem_realloc(*buf, new_cap);
    if (!p) return false;
    *buf = p;
    *cap = new_cap;
    return true;
}

/* Room for extra more pending bytes. Reserved before a token is sampled, so that adding its text
 * cannot fail afterwards: a step that fails must not have consumed a sample. */
static lmoe_status stream_reserve(text_stream *ts, size_t extra) {
    RETURN_ERROR_IF(!grow_text(&ts->pending, &ts->cap_pending, ts->n_pending + extra),
                    LMOE_ERR_OUT_OF_MEMORY, "lmoe_generate: out of memory for text");
    return LMOE_OK;
}

static lmoe_status stream_append(text_stream *ts, const char *text, size_t len) {
    if (len == 0) return LMOE_OK;
    FORWARD_IF_ERROR(stream_reserve(ts, len));
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

/* The prompt's tokens (BOS first when add_bos and the context is empty) into a malloc'd array:
 * *tokens is NULL when there are none (allowed only after an evaluation, whose logits continue).
 * Refuses a prompt that does not fit the context. */
static lmoe_status tokenize_prompt(lmoe_context *ctx, const char *prompt, size_t prompt_len,
                                   int add_bos_param, lmoe_token **tokens, size_t *n) {
    const lmoe_model *model = ctx->model;
    bool add_bos = add_bos_param && ctx->n_past == 0;
    *tokens = NULL;
    *n = 0;
    /* One tokenize call into a buffer that is always large enough (every token covers at least one
     * byte of the text or of the dummy-prefix space, and BOS is one more): asking for the size
     * first would leave that call's "buffer too small" as the thread's last error after a
     * successful generation. */
    RETURN_ERROR_IF(prompt_len > SIZE_MAX / sizeof(lmoe_token) - 2, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generate: the prompt is too long (%zu bytes)", prompt_len);
    size_t cap = prompt_len + 2;
    lmoe_token *t = mem_alloc(cap * sizeof *t);
    RETURN_ERROR_IF(!t, LMOE_ERR_OUT_OF_MEMORY, "lmoe_generate: out of memory for the prompt");
    lmoe_status st = lmoe_tokenize(model, prompt, prompt_len, add_bos, t, cap, n);
    if (st == LMOE_ERR_BUFFER_TOO_SMALL) { /* not expected; *n says how many are needed */
        lmoe_token *more = mem_realloc(t, *n * sizeof *t);
        st = more ? lmoe_tokenize(model, prompt, prompt_len, add_bos, more, *n, n)
                  : lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "lmoe_generate: out of memory for the prompt");
        if (more) t = more;
    }
    if (st == LMOE_OK && *n == 0 && !ctx->logits_valid)
        st = lmoe_error(LMOE_ERR_MISUSE,
                        "lmoe_generate: the prompt is empty, BOS is off and the context holds no "
                        "evaluated tokens: there is nothing to generate from");
    else if (st == LMOE_OK && *n > ctx->n_ctx - ctx->n_past)
        st = lmoe_error(LMOE_ERR_CONTEXT_FULL,
                        "lmoe_generate: the prompt is %zu tokens; the context has room for %u", *n,
                        ctx->n_ctx - ctx->n_past);
    if (st != LMOE_OK || *n == 0) {
        mem_free(t);
        return st;
    }
    *tokens = t;
    return LMOE_OK;
}

/* Tokenizes and evaluates the prompt in one go; *last_token is its last token (-1: none). */
static lmoe_status eval_prompt(generation *g, const char *prompt, size_t prompt_len,
                               lmoe_token *last_token) {
    lmoe_token *tokens = NULL;
    size_t n = 0;
    *last_token = -1;
    FORWARD_IF_ERROR(tokenize_prompt(g->ctx, prompt, prompt_len, g->p->add_bos, &tokens, &n));
    if (n == 0) return LMOE_OK;
    double t0 = now_ms();
    lmoe_status st = lmoe_eval(g->ctx, tokens, n);
    g->result.prompt_ms = now_ms() - t0;
    if (st == LMOE_OK) {
        for (size_t i = 0; i < n; i++) lmoe_sampler_accept(g->sampler, tokens[i]);
        g->result.n_prompt_tokens = (uint32_t)n;
        *last_token = tokens[n - 1];
    }
    mem_free(tokens);
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

/* One generated token: sampled, reported, checked for the stop conditions and turned into text.
 * index counts the generated tokens from 0; prev is the last evaluated token. Sets *reason when
 * generation ends with this token; otherwise the caller evaluates it next (the last token is
 * never evaluated). */
static lmoe_status next_token(generation *g, int32_t index, lmoe_token prev, lmoe_token *token,
                              lmoe_stop_reason *reason) {
    lmoe_context *ctx = g->ctx;
    const lmoe_vocab *vocab = &ctx->model->vocab;
    *reason = LMOE_STOP_NONE;
    FORWARD_IF_ERROR(stream_reserve(&g->text, PIECE_MAX));
    FORWARD_IF_ERROR(
        lmoe_sampler_sample(g->sampler, ctx->state.logits, (int32_t)vocab->n_tokens, token));
    g->result.n_generated++;
    lmoe_sampler_accept(g->sampler, *token);
    bool token_stop = g->p->on_token && g->p->on_token(g->p->user, *token);
    if (*token == vocab->eos_id) {
        *reason = LMOE_STOP_EOS;
        return LMOE_OK;
    }
    if (*token == vocab->bos_id && vocab->stop_on_bos) {
        *reason = LMOE_STOP_BOS;
        return LMOE_OK;
    }
    lmoe_stop_reason text_reason = LMOE_STOP_NONE;
    FORWARD_IF_ERROR(emit_token_text(g, *token, prev, &text_reason));
    if (text_reason != LMOE_STOP_NONE || token_stop)
        *reason = text_reason != LMOE_STOP_NONE ? text_reason : LMOE_STOP_CALLBACK;
    else if (index + 1 == g->p->max_tokens)
        *reason = LMOE_STOP_MAX_TOKENS;
    return LMOE_OK;
}

/* The end of a generation: held-back text that never became a stop string is text like any
 * other. */
static void finish(generation *g, lmoe_status st, lmoe_stop_reason reason, lmoe_token token) {
    if (reason != LMOE_STOP_STRING) stream_release(&g->text, g->text.n_pending, token);
    g->result.stop_reason = st == LMOE_OK ? reason : LMOE_STOP_NONE;
}

static lmoe_status generate_loop(generation *g, lmoe_token prev) {
    lmoe_stop_reason reason = LMOE_STOP_NONE;
    lmoe_token token = -1;
    double t0 = now_ms();
    lmoe_status st = LMOE_OK;
    for (int32_t i = 0; i < g->p->max_tokens && st == LMOE_OK && reason == LMOE_STOP_NONE; i++) {
        st = next_token(g, i, prev, &token, &reason);
        if (st == LMOE_OK && reason == LMOE_STOP_NONE) st = lmoe_eval(g->ctx, &token, 1);
        prev = token;
    }
    if (reason == LMOE_STOP_NONE) reason = LMOE_STOP_MAX_TOKENS; /* max_tokens 0 */
    g->result.generate_ms = now_ms() - t0;
    finish(g, st, reason, token);
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
    mem_free(g.text.pending);
    if (result) {
        memcpy(result, &g.result, sizeof g.result);
        result->struct_size = sizeof g.result;
    }
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * step-wise generation: at most one token evaluated per call
 * ---------------------------------------------------------------------------------------------- */

struct lmoe_generation {
    generation g;
    lmoe_generate_params params;     /* the caller's (on_token, max_tokens, ...) */
    lmoe_generate_params text_params; /* the same with on_text routed through step_text */
    size_t stop_lens[MAX_STOP_STRINGS];
    lmoe_token *prompt;              /* prompt tokens, evaluated one per step */
    size_t n_prompt, next_prompt;
    lmoe_token prev;                 /* the last evaluated token (-1: none yet) */
    lmoe_token last;                 /* the last sampled token */
    int32_t n_sampled;
    lmoe_stop_reason stopped;        /* LMOE_STOP_NONE while going on */
    char *out;                       /* text released during the current step */
    size_t n_out, cap_out;
    bool out_of_memory;              /* step_text could not keep some text */
    lmoe_token to_eval;              /* sampled but not evaluated (a step failed): -1 if none */
    bool keep_out;                   /* out holds text of a failed step, not yet returned */
};

/* The text stream's on_text in step mode: keeps the text for the step's caller, then passes it to
 * the caller's on_text if there is one. */
static int step_text(void *user, const char *text, size_t len, lmoe_token token) {
    lmoe_generation *gen = user;
    if (!grow_text(&gen->out, &gen->cap_out, gen->n_out + len + 1)) {
        gen->out_of_memory = true; /* stops generation; the step reports it (reserved: unexpected) */
        return 1;
    }
    memcpy(gen->out + gen->n_out, text, len);
    gen->n_out += len;
    gen->out[gen->n_out] = 0;
    return gen->params.on_text ? gen->params.on_text(gen->params.user, text, len, token) : 0;
}

void lmoe_generation_free(lmoe_generation *gen) {
    if (!gen) return;
    mem_free(gen->g.text.pending);
    mem_free(gen->prompt);
    mem_free(gen->out);
    mem_free(gen);
}

lmoe_status lmoe_generation_start(lmoe_context *ctx, lmoe_sampler *sampler, const char *prompt,
                                  size_t prompt_len, const lmoe_generate_params *params,
                                  lmoe_generation **out) {
    RETURN_ERROR_IF(!out, LMOE_ERR_INVALID_ARGUMENT, "lmoe_generation_start: out is NULL");
    *out = NULL;
    RETURN_ERROR_IF(!ctx || !sampler, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generation_start: ctx or sampler is NULL");
    RETURN_ERROR_IF(!prompt && prompt_len, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generation_start: prompt is NULL");
    lmoe_generation *gen = mem_calloc(1, sizeof *gen);
    RETURN_ERROR_IF(!gen, LMOE_ERR_OUT_OF_MEMORY, "lmoe_generation_start: out of memory");
    gen->params = generate_defaults;
    lmoe_status st = params ? params_read(&gen->params, sizeof gen->params, params,
                                          sizeof generate_defaults, "generate params")
                            : LMOE_OK;
    if (st == LMOE_OK) st = check_params(&gen->params);
    if (st == LMOE_OK) {
        for (size_t i = 0; i < gen->params.n_stop_strings; i++)
            gen->stop_lens[i] = strlen(gen->params.stop_strings[i]);
        /* the text stream passes text to text_params.on_text: step_text keeps it for the step's
         * caller and calls the caller's on_text; on_token keeps the caller's user pointer */
        gen->text_params = gen->params;
        gen->text_params.on_text = step_text;
        gen->text_params.user = gen;
        gen->g = (generation){ctx, sampler, &gen->params,
                              {&gen->text_params, gen->stop_lens, NULL, 0, 0},
                              {.struct_size = sizeof gen->g.result}};
        st = tokenize_prompt(ctx, prompt ? prompt : "", prompt_len, gen->params.add_bos,
                             &gen->prompt, &gen->n_prompt);
    }
    if (st != LMOE_OK) {
        lmoe_generation_free(gen);
        return st;
    }
    gen->prev = -1;
    gen->to_eval = -1;
    *out = gen;
    return LMOE_OK;
}

/* Evaluates one token in step mode; on success it becomes prev and the step's text is returned. */
static lmoe_status step_eval(lmoe_generation *gen, lmoe_token token, double *ms) {
    double t0 = now_ms();
    lmoe_status st = lmoe_eval(gen->g.ctx, &token, 1);
    *ms += now_ms() - t0;
    if (st != LMOE_OK) {
        gen->to_eval = token; /* the next step retries it; the text made so far is kept */
        gen->keep_out = true;
        return st;
    }
    gen->to_eval = -1;
    gen->keep_out = false;
    gen->prev = token;
    return LMOE_OK;
}

lmoe_status lmoe_generation_step(lmoe_generation *gen, const char **text, size_t *text_len,
                                 lmoe_stop_reason *stopped) {
    RETURN_ERROR_IF(!gen, LMOE_ERR_INVALID_ARGUMENT, "lmoe_generation_step: gen is NULL");
    if (!gen->keep_out) gen->n_out = 0;
    if (gen->out) gen->out[gen->n_out] = 0;
    if (text) *text = "";
    if (text_len) *text_len = 0;
    if (stopped) *stopped = gen->stopped;
    if (gen->stopped != LMOE_STOP_NONE) return LMOE_OK; /* finished: nothing more to do */
    lmoe_status st = LMOE_OK;
    lmoe_stop_reason reason = LMOE_STOP_NONE;
    if (gen->to_eval >= 0) { /* a failed step's token */
        st = step_eval(gen, gen->to_eval, &gen->g.result.generate_ms);
    } else if (gen->next_prompt < gen->n_prompt) { /* one prompt token */
        lmoe_token t = gen->prompt[gen->next_prompt];
        double t0 = now_ms();
        st = lmoe_eval(gen->g.ctx, &t, 1);
        gen->g.result.prompt_ms += now_ms() - t0;
        if (st == LMOE_OK) {
            lmoe_sampler_accept(gen->g.sampler, t);
            gen->g.result.n_prompt_tokens++;
            gen->next_prompt++;
            gen->prev = t;
        }
    } else if (gen->n_sampled < gen->params.max_tokens) { /* sample a token, then evaluate it */
        /* the most text this token can release: what is held back plus its piece */
        RETURN_ERROR_IF(!grow_text(&gen->out, &gen->cap_out,
                                   gen->n_out + gen->g.text.n_pending + PIECE_MAX + 1),
                        LMOE_ERR_OUT_OF_MEMORY, "lmoe_generation_step: out of memory for text");
        double t0 = now_ms();
        st = next_token(&gen->g, gen->n_sampled, gen->prev, &gen->last, &reason);
        gen->g.result.generate_ms += now_ms() - t0;
        if (st == LMOE_OK) gen->n_sampled++; /* a failed sample is retried by the next step */
        if (st == LMOE_OK && gen->out_of_memory)
            st = lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "lmoe_generation_step: out of memory for text");
        if (st == LMOE_OK && reason == LMOE_STOP_NONE)
            st = step_eval(gen, gen->last, &gen->g.result.generate_ms);
    } else {
        reason = LMOE_STOP_MAX_TOKENS; /* max_tokens 0 */
    }
    if (st != LMOE_OK) return st;
    if (reason != LMOE_STOP_NONE) {
        finish(&gen->g, st, reason, gen->last);
        gen->stopped = reason;
    }
    if (text) *text = gen->out ? gen->out : "";
    if (text_len) *text_len = gen->n_out;
    if (stopped) *stopped = gen->stopped;
    return LMOE_OK;
}

lmoe_status lmoe_generation_result(const lmoe_generation *gen, lmoe_generate_result *result,
                                   size_t result_size) {
    RETURN_ERROR_IF(!gen || !result, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generation_result: gen or result is NULL");
    RETURN_ERROR_IF(result_size < sizeof(lmoe_generate_result), LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_generation_result: result_size %zu is smaller than the struct (%zu)",
                    result_size, sizeof(lmoe_generate_result));
    memcpy(result, &gen->g.result, sizeof gen->g.result);
    result->struct_size = sizeof gen->g.result;
    result->stop_reason = gen->stopped;
    return LMOE_OK;
}
