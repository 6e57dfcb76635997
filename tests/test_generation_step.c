/* test_generation_step.c - step-wise generation (lmoe_generation_start / _step / _free):
 *   - it gives the same tokens, text and stop reason as lmoe_generate with the same sampler seed,
 *     greedy and sampled, with a prompt, with a stop string, at max_tokens, stopping on BOS;
 *   - no step evaluates more than one token (the context grows by at most one per step), and the
 *     prompt takes one step per token;
 *   - the caller's on_text and on_token see what lmoe_generate's would;
 *   - an abort during a step returns LMOE_ERR_ABORTED and the same step can be retried, ending in
 *     the same text;
 *   - bad arguments are refused; freeing a generation half-way is fine.
 * Model: stories260K converted from ../shared/models. */
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"
#include "test_util.h"

typedef struct record {
    char text[8192];
    size_t len;
    lmoe_token tokens[512];
    int n_tokens;
} record;

static int on_text(void *user, const char *text, size_t len, lmoe_token token) {
    (void)token;
    record *r = user;
    if (r->len + len < sizeof r->text) memcpy(r->text + r->len, text, len), r->len += len;
    return 0;
}

static int on_token(void *user, lmoe_token token) {
    record *r = user;
    if (r->n_tokens < 512) r->tokens[r->n_tokens++] = token;
    return 0;
}

static lmoe_context *new_context(const lmoe_model *m) {
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 512;
    cp.n_threads = 1;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    return ctx;
}

static lmoe_sampler *new_sampler(float temperature, uint64_t seed) {
    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = temperature;
    sp.seed = seed;
    lmoe_sampler *s = NULL;
    CHECK_OK(lmoe_sampler_create(&sp, &s));
    return s;
}

static int abort_at = -1, abort_calls = 0; /* abort the abort_at-th check, once */
static int maybe_abort(void *user) {
    (void)user;
    return abort_calls++ == abort_at;
}

/* One configuration: lmoe_generate, then the steps, compared. */
static void compare(const lmoe_model *m, const char *prompt, float temperature, uint64_t seed,
                    int max_tokens, const char *stop, const char *label) {
    record whole = {0}, steps = {0}, streamed = {0};
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = max_tokens;
    gp.on_text = on_text;
    gp.on_token = on_token;
    gp.user = &whole;
    const char *stops[1] = {stop};
    if (stop) gp.stop_strings = stops, gp.n_stop_strings = 1;
    lmoe_context *ctx = new_context(m);
    lmoe_sampler *s = new_sampler(temperature, seed);
    lmoe_generate_result want;
    CHECK_OK(lmoe_generate(ctx, s, prompt, strlen(prompt), &gp, &want, sizeof want));
    lmoe_context_free(ctx);
    lmoe_sampler_free(s);

    ctx = new_context(m);
    s = new_sampler(temperature, seed);
    gp.user = &streamed;
    lmoe_generation *gen = NULL;
    CHECK_OK(lmoe_generation_start(ctx, s, prompt, strlen(prompt), &gp, &gen));
    lmoe_stop_reason stopped = LMOE_STOP_NONE;
    int n_steps = 0, too_big = 0;
    while (gen && stopped == LMOE_STOP_NONE && n_steps < 2000) {
        uint32_t before = lmoe_context_n_tokens(ctx);
        const char *text = NULL;
        size_t len = 0;
        lmoe_status st = lmoe_generation_step(gen, &text, &len, &stopped);
        CHECK_MSG(st == LMOE_OK, "%s: step %d: %s", label, n_steps, lmoe_last_error());
        if (st != LMOE_OK) break;
        too_big += lmoe_context_n_tokens(ctx) > before + 1;
        CHECK(text && strlen(text) == len);
        on_text(&steps, text, len, 0);
        n_steps++;
    }
    lmoe_generate_result got;
    CHECK_OK(lmoe_generation_result(gen, &got, sizeof got));
    CHECK_MSG(too_big == 0, "%s: %d steps evaluated more than one token", label, too_big);
    CHECK_MSG(stopped == want.stop_reason, "%s: stopped %d, lmoe_generate %d", label, (int)stopped,
              (int)want.stop_reason);
    CHECK(got.n_generated == want.n_generated && got.n_prompt_tokens == want.n_prompt_tokens);
    /* a step per prompt token, a step per generated token (one to find out there is none for
     * max_tokens 0) */
    CHECK_MSG((uint32_t)n_steps == want.n_prompt_tokens + (want.n_generated ? want.n_generated : 1),
              "%s: %d steps for %u prompt and %u generated tokens", label, n_steps,
              want.n_prompt_tokens, want.n_generated);
    CHECK_MSG(steps.len == whole.len && memcmp(steps.text, whole.text, whole.len) == 0,
              "%s: step text\n%.*s\ndiffers from lmoe_generate's\n%.*s", label, (int)steps.len,
              steps.text, (int)whole.len, whole.text);
    CHECK(streamed.len == whole.len && memcmp(streamed.text, whole.text, whole.len) == 0);
    CHECK(streamed.n_tokens == whole.n_tokens &&
          memcmp(streamed.tokens, whole.tokens, sizeof(lmoe_token) * (size_t)whole.n_tokens) == 0);
    /* after the end, steps do nothing */
    uint32_t n = lmoe_context_n_tokens(ctx);
    CHECK_OK(lmoe_generation_step(gen, NULL, NULL, &stopped));
    CHECK(lmoe_context_n_tokens(ctx) == n && stopped == want.stop_reason);
    test_summary("%-28s %3d steps, %3u generated, stop %d, %zu bytes", label, n_steps,
                 want.n_generated, (int)stopped, whole.len);
    lmoe_generation_free(gen);
    lmoe_context_free(ctx);
    lmoe_sampler_free(s);
}

static void test_abort_and_retry(const char *path, const lmoe_model *m) {
    (void)path;
    record whole = {0}, steps = {0};
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = 40;
    gp.on_text = on_text;
    gp.user = &whole;
    lmoe_context *ctx = new_context(m);
    lmoe_sampler *s = new_sampler(0.0f, 1);
    CHECK_OK(lmoe_generate(ctx, s, "Once upon", 9, &gp, NULL, 0));
    lmoe_context_free(ctx);
    lmoe_sampler_free(s);

    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 512;
    cp.n_threads = 1;
    cp.abort_fn = maybe_abort;
    ctx = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    s = new_sampler(0.0f, 1);
    gp.on_text = NULL;
    lmoe_generation *gen = NULL;
    CHECK_OK(lmoe_generation_start(ctx, s, "Once upon", 9, &gp, &gen));
    abort_calls = 0;
    abort_at = 30; /* some layer of some step */
    lmoe_stop_reason stopped = LMOE_STOP_NONE;
    int aborted = 0;
    for (int i = 0; gen && i < 200 && stopped == LMOE_STOP_NONE; i++) {
        const char *text = NULL;
        size_t len = 0;
        lmoe_status st = lmoe_generation_step(gen, &text, &len, &stopped);
        if (st == LMOE_ERR_ABORTED) {
            aborted++;
            continue; /* the same step again */
        }
        CHECK_OK(st);
        on_text(&steps, text, len, 0);
    }
    CHECK(aborted == 1);
    CHECK_MSG(steps.len == whole.len && memcmp(steps.text, whole.text, whole.len) == 0,
              "after an aborted step: %.*s", (int)steps.len, steps.text);
    lmoe_generation_free(gen);
    lmoe_context_free(ctx);
    lmoe_sampler_free(s);
}

static void test_bad_arguments(const lmoe_model *m) {
    lmoe_context *ctx = new_context(m);
    lmoe_sampler *s = new_sampler(0.0f, 1);
    lmoe_generation *gen = (lmoe_generation *)&gen; /* must be set to NULL on failure */
    CHECK(lmoe_generation_start(NULL, s, "x", 1, NULL, &gen) == LMOE_ERR_INVALID_ARGUMENT && !gen);
    CHECK(lmoe_generation_start(ctx, NULL, "x", 1, NULL, &gen) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_generation_start(ctx, s, NULL, 3, NULL, &gen) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_generation_start(ctx, s, "x", 1, NULL, NULL) == LMOE_ERR_INVALID_ARGUMENT);
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = -1;
    CHECK(lmoe_generation_start(ctx, s, "x", 1, &gp, &gen) == LMOE_ERR_INVALID_ARGUMENT && !gen);
    gp.max_tokens = 8;
    gp.add_bos = 0;
    CHECK(lmoe_generation_start(ctx, s, "", 0, &gp, &gen) == LMOE_ERR_MISUSE && !gen);
    CHECK(lmoe_generation_step(NULL, NULL, NULL, NULL) == LMOE_ERR_INVALID_ARGUMENT);
    lmoe_generate_result r;
    CHECK(lmoe_generation_result(NULL, &r, sizeof r) == LMOE_ERR_INVALID_ARGUMENT);
    /* freed half-way: nothing leaks (ASan in CI), the context keeps what was evaluated */
    gp.add_bos = 1;
    CHECK_OK(lmoe_generation_start(ctx, s, "Once", 4, &gp, &gen));
    for (int i = 0; gen && i < 5; i++) CHECK_OK(lmoe_generation_step(gen, NULL, NULL, NULL));
    CHECK(lmoe_context_n_tokens(ctx) == 5);
    lmoe_generation_free(gen);
    lmoe_generation_free(NULL);
    lmoe_context_free(ctx);
    lmoe_sampler_free(s);
}

int main(void) {
    test_require_models();
    const char *path = test_stories_gguf("generation_step.gguf");
    lmoe_model *m = NULL;
    CHECK(path && lmoe_model_load(path, NULL, &m) == LMOE_OK);
    if (m) {
        compare(m, "", 0.0f, 1, 200, NULL, "greedy, no prompt");
        compare(m, "Once upon a time", 0.0f, 1, 120, NULL, "greedy, prompt");
        compare(m, "Once upon a time", 1.0f, 42, 300, NULL, "sampled (stops on BOS)");
        compare(m, "Lily", 0.8f, 7, 200, ".", "stop string \".\"");
        compare(m, "Tom", 1.0f, 3, 0, NULL, "max_tokens 0");
        test_abort_and_retry(path, m);
        test_bad_arguments(m);
    }
    lmoe_model_free(m);
    test_summary_print();
    return test_finish("test_generation_step");
}
