/* moefy_calib.c - FFN inputs and activations of a dense model on calibration text (moefy_calib.h),
 * captured through the forward pass's FFN observer. */
#include "moefy_calib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "error.h"
#include "file_map.h"

#define CALIB_MAX_WINDOW 512u

typedef struct capture {
    moefy_calib *c;
    size_t max_tokens;
    size_t *taken;           /* [n_layer] rows captured so far */
} capture;

/* The observer: copies the batch's rows while the layer still has room. */
static void observe(void *user, uint32_t il, const float *x, const float *h, uint32_t n_tokens) {
    capture *cap = user;
    moefy_calib *c = cap->c;
    size_t room = cap->max_tokens - cap->taken[il];
    size_t n = n_tokens < room ? n_tokens : room;
    size_t at = cap->taken[il];
    memcpy(c->x[il] + at * c->n_embd, x, n * c->n_embd * sizeof(float));
    memcpy(c->h[il] + at * c->n_ff, h, n * c->n_ff * sizeof(float));
    cap->taken[il] += n;
}

static lmoe_status tokenize_file(const lmoe_model *model, const char *path, lmoe_token **tokens,
                                 size_t *n_tokens) {
    file_map map;
    FORWARD_IF_ERROR(lmoe_error_prefix(file_map_open(path, &map), "calibration text"));
    lmoe_status st = LMOE_OK;
    if (map.size == 0)
        st = lmoe_error(LMOE_ERR_INVALID_ARGUMENT, "calibration text %s is empty", path);
    if (st == LMOE_OK) {
        st = lmoe_tokenize(model, (const char *)map.data, map.size, 1, NULL, 0, n_tokens);
        if (st == LMOE_ERR_BUFFER_TOO_SMALL) {
            *tokens = malloc(*n_tokens * sizeof **tokens);
            st = *tokens ? lmoe_tokenize(model, (const char *)map.data, map.size, 1, *tokens,
                                        *n_tokens, n_tokens)
                         : lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "out of memory for %zu tokens",
                                      *n_tokens);
        }
    }
    file_map_close(&map);
    return st;
}

static lmoe_status alloc_calib(moefy_calib *c, const llama_hparams *hp, size_t max_tokens) {
    c->n_layer = hp->n_layer;
    c->n_embd = hp->n_embd;
    c->n_ff = hp->n_ff;
    c->x = calloc(hp->n_layer, sizeof *c->x);
    c->h = calloc(hp->n_layer, sizeof *c->h);
    RETURN_ERROR_IF(!c->x || !c->h, LMOE_ERR_OUT_OF_MEMORY, "calibration: out of memory");
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        c->x[il] = malloc(max_tokens * hp->n_embd * sizeof(float));
        c->h[il] = malloc(max_tokens * hp->n_ff * sizeof(float));
        RETURN_ERROR_IF(!c->x[il] || !c->h[il], LMOE_ERR_OUT_OF_MEMORY,
                        "calibration: out of memory for %zu tokens of activations", max_tokens);
    }
    return LMOE_OK;
}

/* Evaluates windows of the text until every layer has max_tokens rows (or the text ends). */
static lmoe_status run_windows(lmoe_context *ctx, const lmoe_token *tokens, size_t n_tokens,
                               size_t window, capture *cap,
                               void (*progress)(void *user, const char *line), void *user) {
    size_t next_report = cap->max_tokens / 4;
    for (size_t start = 0; start < n_tokens && cap->taken[0] < cap->max_tokens; start += window) {
        size_t len = n_tokens - start < window ? n_tokens - start : window;
        size_t want = cap->max_tokens - cap->taken[0];
        if (len > want) len = want;
        lmoe_context_reset(ctx);
        FORWARD_IF_ERROR(lmoe_eval(ctx, tokens + start, len));
        if (progress && cap->taken[0] >= next_report && cap->taken[0] < cap->max_tokens) {
            char line[128];
            snprintf(line, sizeof line, "calibration: %zu/%zu tokens", cap->taken[0],
                     cap->max_tokens);
            progress(user, line);
            next_report += cap->max_tokens / 4;
        }
    }
    return LMOE_OK;
}

lmoe_status moefy_calib_collect(const lmoe_model *model, const char *text_path, size_t max_tokens,
                                size_t min_tokens, int n_threads,
                                void (*progress)(void *user, const char *line), void *user,
                                moefy_calib *out) {
    memset(out, 0, sizeof *out);
    const llama_hparams *hp = &model->hp;
    RETURN_ERROR_IF(hp->n_expert, LMOE_ERR_INVALID_ARGUMENT,
                    "calibration needs a dense model");
    lmoe_token *tokens = NULL;
    size_t n_tokens = 0;
    FORWARD_IF_ERROR(tokenize_file(model, text_path, &tokens, &n_tokens));
    if (max_tokens > n_tokens) max_tokens = n_tokens;
    lmoe_status st = LMOE_OK;
    if (max_tokens < min_tokens)
        st = lmoe_error(LMOE_ERR_INVALID_ARGUMENT,
                        "calibration text %s gives %zu tokens; this construction needs at least "
                        "%zu", text_path, n_tokens, min_tokens);
    size_t window = hp->n_ctx_train < CALIB_MAX_WINDOW ? hp->n_ctx_train : CALIB_MAX_WINDOW;
    if (window < 2) window = 2;
    if (st == LMOE_OK && progress) {
        char line[256];
        snprintf(line, sizeof line,
                 "calibration: %s, %zu tokens, using %zu in windows of %zu (%.1f MB of "
                 "activations)", text_path, n_tokens, max_tokens, window,
                 (double)max_tokens * hp->n_layer * (hp->n_embd + hp->n_ff) * 4 / 1e6);
        progress(user, line);
    }
    if (st == LMOE_OK) st = alloc_calib(out, hp, max_tokens);
    capture cap = {out, max_tokens, calloc(hp->n_layer, sizeof(size_t))};
    if (st == LMOE_OK && !cap.taken)
        st = lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "calibration: out of memory");
    lmoe_context *ctx = NULL;
    if (st == LMOE_OK) {
        lmoe_context_params cp;
        lmoe_context_default_params(&cp, sizeof cp);
        cp.n_ctx = (uint32_t)window;
        cp.n_threads = n_threads;
        st = lmoe_context_create(model, &cp, &ctx);
    }
    if (st == LMOE_OK) {
        ctx->ffn_observer = observe;
        ctx->ffn_observer_user = &cap;
        st = run_windows(ctx, tokens, n_tokens, window, &cap, progress, user);
        out->n_tokens = cap.taken[0];
    }
    lmoe_context_free(ctx);
    free(cap.taken);
    free(tokens);
    if (st != LMOE_OK) moefy_calib_free(out);
    return st;
}

void moefy_calib_free(moefy_calib *c) {
    for (uint32_t il = 0; il < c->n_layer; il++) {
        if (c->x) free(c->x[il]);
        if (c->h) free(c->h[il]);
    }
    free(c->x);
    free(c->h);
    memset(c, 0, sizeof *c);
}
