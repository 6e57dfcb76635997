/* test_api.c - the promises of include/llamamoe.h that are not about numbers: versions, status
 * text, params structs, model info and metadata, contexts (fill, reset, full), logits lifetime,
 * and lmoe_generate's streaming, stop strings, callbacks and token limit. Runs on stories260K. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"
#include "quantize.h"
#include "test_util.h"

static void test_version(void) {
    /* header and library agree */
    CHECK(lmoe_version_number() == LMOE_VERSION_NUMBER);
    CHECK(strcmp(lmoe_version(), LMOE_VERSION_STRING) == 0);
    char built[32];
    snprintf(built, sizeof built, "%d.%d.%d", LMOE_VERSION_MAJOR, LMOE_VERSION_MINOR,
             LMOE_VERSION_PATCH);
    CHECK(strcmp(built, LMOE_VERSION_STRING) == 0);
}

static void test_status_strings(void) {
    for (int s = LMOE_OK; s <= LMOE_ERR_INTERNAL; s++) {
        const char *text = lmoe_status_string((lmoe_status)s);
        CHECK(text && text[0] && strcmp(text, "unknown status") != 0);
    }
    CHECK(strcmp(lmoe_status_string((lmoe_status)999), "unknown status") == 0);
    CHECK(lmoe_last_error() != NULL);
}

static void test_params_defaults(void) {
    lmoe_sampler_params sp;
    CHECK_OK(lmoe_sampler_default_params(&sp, sizeof sp));
    CHECK(sp.struct_size == sizeof sp);
    /* run.c's defaults: the documented ones */
    CHECK(sp.temperature == 1.0f && sp.top_p == 0.9f && sp.top_k == 0 && sp.min_p == 0.0f &&
          sp.repeat_penalty == 1.0f);
    lmoe_generate_params gp;
    CHECK_OK(lmoe_generate_default_params(&gp, sizeof gp));
    CHECK(gp.max_tokens == 256 && gp.add_bos == 1 && gp.n_stop_strings == 0);
    lmoe_context_params cp;
    CHECK_OK(lmoe_context_default_params(&cp, sizeof cp));
    CHECK(cp.n_ctx == 0 && cp.n_threads == 0 && cp.log_fn == NULL);
    CHECK(lmoe_context_default_params(&cp, 4) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_model_default_params(NULL, sizeof(lmoe_model_params)) == LMOE_ERR_INVALID_ARGUMENT);
}

static void test_info_and_meta(const lmoe_model *model) {
    lmoe_model_info info;
    CHECK_OK(lmoe_model_get_info(model, &info, sizeof info));
    CHECK(info.struct_size == sizeof info);
    CHECK(strcmp(info.architecture, "llama") == 0);
    CHECK(info.has_weights == 1 && info.n_expert == 0 && info.n_expert_used == 0);
    CHECK(info.rms_norm_eps == 1e-5f && info.rope_freq_base == 10000.0f);
    CHECK(info.n_params_active == info.n_params);
    CHECK(info.n_bytes == info.n_params * 4);
    char buf[64];
    size_t len = 0;
    CHECK_OK(lmoe_model_meta_string(model, "llama.block_count", buf, sizeof buf, &len));
    CHECK(strcmp(buf, "5") == 0 && len == 1);
    CHECK_OK(lmoe_model_meta_string(model, "general.architecture", buf, sizeof buf, &len));
    CHECK(strcmp(buf, "llama") == 0);
    CHECK_OK(lmoe_model_meta_string(model, "llamamoe.stop_on_bos", buf, sizeof buf, NULL));
    CHECK(strcmp(buf, "true") == 0);
    CHECK_OK(lmoe_model_meta_string(model, "tokenizer.ggml.tokens", buf, sizeof buf, NULL));
    CHECK(strcmp(buf, "[array of 512 string]") == 0);
    CHECK(lmoe_model_meta_string(model, "general.architecture", buf, 3, &len) ==
          LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(len == 5);
    CHECK(lmoe_model_meta_string(model, "no.such.key", buf, sizeof buf, &len) ==
          LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "no.such.key") != NULL);
    CHECK(lmoe_token_bos(model) == 1 && lmoe_token_eos(model) == 2);
}

static void test_tokenizer_surface(const lmoe_model *model) {
    lmoe_token ids[64];
    size_t n = 0;
    CHECK_OK(lmoe_tokenize(model, "Once upon a time", 16, 1, ids, 64, &n));
    CHECK(n == 5 && ids[0] == 1 && ids[1] == 403 && ids[4] == 378);
    /* too small: the count needed is reported */
    CHECK(lmoe_tokenize(model, "Once upon a time", 16, 1, ids, 2, &n) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 5);
    CHECK(lmoe_tokenize(model, "Once upon a time", 16, 1, NULL, 0, &n) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 5);
    /* a NUL byte is data */
    CHECK_OK(lmoe_tokenize(model, "a\0b", 3, 0, ids, 64, &n));
    char text[64];
    size_t len = 0;
    CHECK_OK(lmoe_detokenize(model, ids, n, text, sizeof text, &len));
    CHECK(len == 3 && memcmp(text, "a\0b", 3) == 0);
    /* pieces: the space of a word piece, stripped on request */
    CHECK_OK(lmoe_token_to_piece(model, 403, 0, text, sizeof text, &len));
    CHECK(len == 5 && memcmp(text, " Once", 5) == 0);
    CHECK_OK(lmoe_token_to_piece(model, 403, 1, text, sizeof text, &len));
    CHECK(len == 4 && memcmp(text, "Once", 4) == 0);
    CHECK_OK(lmoe_token_to_piece(model, 1, 0, text, sizeof text, &len));
    CHECK(len == 0);
    CHECK(lmoe_token_to_piece(model, 512, 0, text, sizeof text, &len) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_token_to_piece(model, -1, 0, text, sizeof text, &len) == LMOE_ERR_INVALID_ARGUMENT);
}

static lmoe_context *new_context(const lmoe_model *model, uint32_t n_ctx) {
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = n_ctx;
    cp.n_threads = 2;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(model, &cp, &ctx));
    return ctx;
}

static void test_context(const lmoe_model *model) {
    lmoe_context *ctx = new_context(model, 8);
    if (!ctx) return;
    CHECK(lmoe_context_n_ctx(ctx) == 8 && lmoe_context_n_tokens(ctx) == 0);
    CHECK(lmoe_context_model(ctx) == model);
    CHECK(lmoe_logits(ctx) == NULL); /* nothing evaluated yet */
    lmoe_token ids[9] = {1, 403, 407, 261, 378, 432, 383, 286, 261};
    CHECK_OK(lmoe_eval(ctx, ids, 3));
    CHECK(lmoe_context_n_tokens(ctx) == 3);
    const float *logits = lmoe_logits(ctx);
    CHECK(logits != NULL);
    float after_three[512];
    if (logits) memcpy(after_three, logits, sizeof after_three);
    /* a full context returns a distinct status and changes nothing */
    CHECK(lmoe_eval(ctx, ids + 3, 6) == LMOE_ERR_CONTEXT_FULL);
    CHECK(lmoe_context_n_tokens(ctx) == 3);
    CHECK(strstr(lmoe_last_error(), "do not fit") != NULL);
    CHECK(lmoe_eval(ctx, ids + 3, 5) == LMOE_OK);
    CHECK(lmoe_context_n_tokens(ctx) == 8);
    CHECK(lmoe_eval(ctx, ids, 1) == LMOE_ERR_CONTEXT_FULL);
    /* reset: the same tokens give the same logits again, in one batch this time */
    lmoe_context_reset(ctx);
    CHECK(lmoe_context_n_tokens(ctx) == 0 && lmoe_logits(ctx) == NULL);
    CHECK_OK(lmoe_eval(ctx, ids, 3));
    logits = lmoe_logits(ctx);
    CHECK(logits && memcmp(logits, after_three, sizeof after_three) == 0);
    lmoe_token bad = 512;
    CHECK(lmoe_eval(ctx, &bad, 1) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_context_n_tokens(ctx) == 3);
    lmoe_context_free(ctx);
}

/* ---- generation ---- */

typedef struct stream {
    char text[8192];
    size_t len;
    lmoe_token ids[1024];
    size_t n_ids;
    int stop_after_tokens;   /* on_token returns nonzero after this many (0: never) */
    int stop_on_text_calls;  /* on_text returns nonzero on this call (0: never) */
    int text_calls;
} stream;

static int on_text(void *user, const char *text, size_t len, lmoe_token token) {
    (void)token;
    stream *s = user;
    if (s->len + len < sizeof s->text) {
        memcpy(s->text + s->len, text, len);
        s->len += len;
    }
    s->text_calls++;
    return s->stop_on_text_calls && s->text_calls == s->stop_on_text_calls;
}

static int on_token(void *user, lmoe_token token) {
    stream *s = user;
    if (s->n_ids < 1024) s->ids[s->n_ids++] = token;
    return s->stop_after_tokens && (int)s->n_ids == s->stop_after_tokens;
}

static lmoe_status generate(const lmoe_model *model, const char *prompt, int max_tokens,
                            const char *const *stops, size_t n_stops, stream *s,
                            lmoe_generate_result *res) {
    lmoe_context *ctx = new_context(model, 0);
    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = 0;
    lmoe_sampler *smp = NULL;
    CHECK_OK(lmoe_sampler_create(&sp, &smp));
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = max_tokens;
    gp.stop_strings = stops;
    gp.n_stop_strings = n_stops;
    gp.on_text = on_text;
    gp.on_token = on_token;
    gp.user = s;
    lmoe_status st = lmoe_generate(ctx, smp, prompt, strlen(prompt), &gp, res, sizeof *res);
    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
    return st;
}

static void test_generate(const lmoe_model *model) {
    static const char greedy_start[] =
        "Once upon a time, there was a little girl named Lily. She loved to play outside";
    lmoe_generate_result res;
    static stream s;

    /* the streamed text is the decoded ids, and the prompt is not repeated */
    memset(&s, 0, sizeof s);
    CHECK_OK(generate(model, "", 40, NULL, 0, &s, &res));
    CHECK(res.stop_reason == LMOE_STOP_MAX_TOKENS && res.n_generated == 40 && s.n_ids == 40);
    CHECK(res.n_prompt_tokens == 1);
    CHECK(s.len > 20 && memcmp(s.text, greedy_start, s.len < 79 ? s.len : 79) == 0);
    char decoded[8192];
    size_t dec_len = 0;
    CHECK_OK(lmoe_detokenize(model, s.ids, s.n_ids, decoded, sizeof decoded, &dec_len));
    CHECK(dec_len == s.len && memcmp(decoded, s.text, s.len) == 0);

    /* a stop string: text before it is passed, the string and what follows are not */
    memset(&s, 0, sizeof s);
    const char *stops[] = {"never appears", "Lily."};
    CHECK_OK(generate(model, "", 100, stops, 2, &s, &res));
    CHECK(res.stop_reason == LMOE_STOP_STRING);
    const char *want = "Once upon a time, there was a little girl named ";
    CHECK_MSG(s.len == strlen(want) && memcmp(s.text, want, s.len) == 0, "got '%.*s'",
              (int)s.len, s.text);

    /* a stop string spanning tokens, after a prompt */
    memset(&s, 0, sizeof s);
    const char *stop_span[] = {"e was a"};
    CHECK_OK(generate(model, "Once upon a time", 100, stop_span, 1, &s, &res));
    CHECK(res.stop_reason == LMOE_STOP_STRING);
    CHECK_MSG(s.len == strlen(", ther") && memcmp(s.text, ", ther", s.len) == 0, "got '%.*s'",
              (int)s.len, s.text);

    /* held-back text that never completes a stop string is released at the end */
    memset(&s, 0, sizeof s);
    const char *partial[] = {"Once upon a time, there was a little girl named Lily. She loved to "
                             "play outside in the garden"};
    CHECK_OK(generate(model, "", 20, partial, 1, &s, &res));
    CHECK(res.stop_reason == LMOE_STOP_MAX_TOKENS);
    CHECK(s.len > 40 && memcmp(s.text, greedy_start, s.len < 79 ? s.len : 79) == 0);

    /* callbacks stop generation */
    memset(&s, 0, sizeof s);
    s.stop_after_tokens = 7;
    CHECK_OK(generate(model, "", 100, NULL, 0, &s, &res));
    CHECK(res.stop_reason == LMOE_STOP_CALLBACK && res.n_generated == 7 && s.n_ids == 7);
    memset(&s, 0, sizeof s);
    s.stop_on_text_calls = 3;
    CHECK_OK(generate(model, "", 100, NULL, 0, &s, &res));
    CHECK(res.stop_reason == LMOE_STOP_CALLBACK && s.text_calls == 3 && res.n_generated == 3);

    /* max_tokens 0 evaluates the prompt only */
    memset(&s, 0, sizeof s);
    CHECK_OK(generate(model, "Once", 0, NULL, 0, &s, &res));
    CHECK(res.stop_reason == LMOE_STOP_MAX_TOKENS && res.n_generated == 0 && s.len == 0);
    CHECK(res.n_prompt_tokens == 2);

    /* bad params */
    memset(&s, 0, sizeof s);
    const char *empty_stop[] = {""};
    CHECK(generate(model, "", 10, empty_stop, 1, &s, &res) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "stop string") != NULL);
    CHECK(generate(model, "", -1, NULL, 0, &s, &res) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "max_tokens") != NULL);
}

/* Generation continues the sequence already in the context: two calls equal one. */
static void test_generate_continues(const lmoe_model *model) {
    lmoe_context *ctx = new_context(model, 0);
    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = 0;
    lmoe_sampler *smp = NULL;
    CHECK_OK(lmoe_sampler_create(&sp, &smp));
    static stream s;
    memset(&s, 0, sizeof s);
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.on_text = on_text;
    gp.user = &s;
    gp.max_tokens = 4;
    CHECK_OK(lmoe_generate(ctx, smp, "Once upon a time", 16, &gp, NULL, 0));
    /* the 4th token was sampled but not evaluated: the context holds BOS + 4 prompt + 3 */
    CHECK(lmoe_context_n_tokens(ctx) == 8);
    /* a later prompt is tokenized as its own text (dummy prefix, no BOS) and appended */
    size_t n_more = 0;
    CHECK(lmoe_tokenize(model, "there", 5, 0, NULL, 0, &n_more) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK_OK(lmoe_generate(ctx, smp, "there", 5, &gp, NULL, 0));
    CHECK(lmoe_context_n_tokens(ctx) == 8 + n_more + 3);
    CHECK(s.len > 0);
    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
}

/* The abort callback is asked between layers; an aborted eval adds nothing to the context. */
static int abort_after(void *user) {
    int *calls_left = user;
    return (*calls_left)-- <= 0;
}

static void test_abort(const lmoe_model *model) {
    int calls_left = 1000;
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 32;
    cp.abort_fn = abort_after;
    cp.abort_user = &calls_left;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(model, &cp, &ctx));
    if (!ctx) return;
    lmoe_token ids[4] = {1, 403, 407, 261};
    CHECK_OK(lmoe_eval(ctx, ids, 2));
    calls_left = 2; /* the third layer of the next eval is refused */
    CHECK(lmoe_eval(ctx, ids + 2, 2) == LMOE_ERR_ABORTED);
    CHECK(strstr(lmoe_last_error(), "abort") != NULL);
    CHECK(lmoe_context_n_tokens(ctx) == 2 && lmoe_logits(ctx) == NULL);
    calls_left = 1000;
    CHECK_OK(lmoe_eval(ctx, ids + 2, 2));
    CHECK(lmoe_context_n_tokens(ctx) == 4 && lmoe_logits(ctx) != NULL);
    lmoe_context_free(ctx);
}

/* The batch size (lmoe_context_params.n_batch) changes how a prompt is cut into forward passes
 * and, for quantised weights, whether products run as batched kernels or matvecs: none of it may
 * change a number. A 45-token prompt evaluated in batches of 1, 4, 7, 16 and the default (all
 * at once) gives the same logits bit for bit, for f32, q8_0, q4_0, q4_0_r16 and q8_0_r16 weights
 * (and the _r16 types' are q4_0's / q8_0's); n_batch larger than
 * n_ctx is capped, not refused. */
static void test_batch_sizes(const char *f32_path) {
    static const char *const types[] = {"f32", "q8_0", "q4_0", "q4_0_r16", "q8_0_r16"};
    static const ggml_type ggml_types[] = {GGML_TYPE_F32, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0,
                                           LMOE_TYPE_Q4_0_R16, LMOE_TYPE_Q8_0_R16};
    /* the _r16 types hold q4_0's / q8_0's values: their logits must be those */
    float q4_logits[512], q8_logits[512];
    static const uint32_t batches[] = {0, 1, 4, 7, 16, 100000};
    lmoe_token ids[45];
    for (int i = 0; i < 45; i++) ids[i] = (lmoe_token)(i == 0 ? 1 : 259 + (i * 37) % 250);
    for (int ti = 0; ti < 5; ti++) {
        char name[64];
        test_fmt(name, sizeof name, "test_api-stories260K-%s.gguf", types[ti]);
        const char *path = f32_path;
        if (ti > 0) {
            path = test_tmp_path(name);
            quantize_options qo = {ggml_types[ti], NULL, NULL};
            CHECK_OK(gguf_quantize(f32_path, path, &qo));
        }
        lmoe_model *m = NULL;
        CHECK_OK(lmoe_model_load(path, NULL, &m));
        if (!m) continue;
        float first[512];
        size_t differing = 0;
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
            lmoe_context_params cp;
            lmoe_context_default_params(&cp, sizeof cp);
            cp.n_ctx = 64, cp.n_threads = 2, cp.n_batch = batches[bi];
            /* a caller built with the first header, which had no n_batch: the default applies */
            if (batches[bi] == 0 && ti == 0) cp.struct_size = offsetof(lmoe_context_params, n_batch);
            lmoe_context *ctx = NULL;
            CHECK_OK(lmoe_context_create(m, &cp, &ctx));
            if (!ctx) continue;
            CHECK_OK(lmoe_eval(ctx, ids, 45));
            const float *logits = lmoe_logits(ctx);
            CHECK(logits != NULL);
            if (logits && bi == 0) memcpy(first, logits, sizeof first);
            else if (logits) differing += memcmp(first, logits, sizeof first) != 0;
            lmoe_context_free(ctx);
        }
        CHECK_MSG(differing == 0, "%s: %zu batch sizes give logits that differ from one batch",
                  types[ti], differing);
        if (ggml_types[ti] == GGML_TYPE_Q4_0) memcpy(q4_logits, first, sizeof first);
        if (ggml_types[ti] == GGML_TYPE_Q8_0) memcpy(q8_logits, first, sizeof first);
        if (ggml_types[ti] == LMOE_TYPE_Q4_0_R16)
            CHECK_MSG(memcmp(first, q4_logits, sizeof first) == 0, "q4_0_r16 logits are not q4_0's");
        if (ggml_types[ti] == LMOE_TYPE_Q8_0_R16)
            CHECK_MSG(memcmp(first, q8_logits, sizeof first) == 0, "q8_0_r16 logits are not q8_0's");
        lmoe_model_free(m);
    }
}

int main(void) {
    test_version();
    test_status_strings();
    test_params_defaults();
    const char *path = test_stories_gguf("test_api-stories260K.gguf");
    CHECK(path != NULL);
    lmoe_model *model = NULL;
    if (path) CHECK_OK(lmoe_model_load(path, NULL, &model));
    if (model) {
        test_info_and_meta(model);
        test_tokenizer_surface(model);
        test_context(model);
        test_generate(model);
        test_generate_continues(model);
        test_abort(model);
        test_batch_sizes(path);
    }
    lmoe_model_free(model);
    return test_finish("test_api");
}
