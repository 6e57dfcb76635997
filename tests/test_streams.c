/* test_streams.c - several contexts advanced together (lmoe_eval_streams):
 *   - 4 contexts of one model, each after its own prompt, advanced 24 times by one greedy token
 *     each in one call, give the tokens and (within 1e-4) the logits of the same contexts
 *     advanced one by one with lmoe_eval; for the dense stories260K and for a 4-expert top-2 MoE
 *     built from it, whose per-context expert counts and routing callbacks (positions included)
 *     must match too;
 *   - one stream alone equals lmoe_eval bit for bit;
 *   - bad calls change nothing: a context given twice, a context of another model, a full
 *     context, more streams than n_batch, a token outside the vocabulary, NULLs.
 * argv[1] = llamamoe-convert (for the MoE). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"
#include "test_util.h"

#define N_STREAMS 4
#define N_STEPS 24

static const char *const prompts[N_STREAMS] = {"Once upon a time", "Tom had a", "The sun",
                                               "Lily and her mom went"};

typedef struct routing_log {
    uint64_t sum;            /* a hash of (layer, pos, experts) reports */
    uint32_t n;
} routing_log;

static void on_route(void *user, int32_t layer, uint32_t pos, const int32_t *experts,
                     const float *weights, int32_t k) {
    (void)weights;
    routing_log *r = user;
    uint64_t h = (uint64_t)layer * 1000003u + pos;
    for (int32_t i = 0; i < k; i++) h = h * 31 + (uint64_t)experts[i];
    r->sum += h * 0x9E3779B97F4A7C15ull;
    r->n++;
}

static lmoe_context *context_for(const lmoe_model *m, routing_log *log, uint32_t n_ctx) {
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = n_ctx;
    cp.n_threads = 2;
    cp.routing_fn = on_route;
    cp.routing_user = log;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    return ctx;
}

static void prime(lmoe_context *ctx, const lmoe_model *m, const char *prompt) {
    lmoe_token t[64];
    size_t n = 0;
    CHECK_OK(lmoe_tokenize(m, prompt, strlen(prompt), 1, t, 64, &n));
    CHECK_OK(lmoe_eval(ctx, t, n));
}

static void compare(const char *path, const char *label) {
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    if (!m) return;
    lmoe_model_info info;
    CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
    routing_log alone_log[N_STREAMS] = {{0, 0}}, together_log[N_STREAMS] = {{0, 0}};
    lmoe_context *alone[N_STREAMS], *together[N_STREAMS];
    for (int i = 0; i < N_STREAMS; i++) {
        alone[i] = context_for(m, &alone_log[i], 128);
        together[i] = context_for(m, &together_log[i], 128);
        if (!alone[i] || !together[i]) return;
        prime(alone[i], m, prompts[i]);
        prime(together[i], m, prompts[i]);
    }
    float worst = 0;
    int token_diff = 0;
    for (int step = 0; step < N_STEPS; step++) {
        lmoe_token next[N_STREAMS];
        for (int i = 0; i < N_STREAMS; i++) {
            next[i] = test_argmax(lmoe_logits(alone[i]), info.n_vocab);
            token_diff += next[i] != test_argmax(lmoe_logits(together[i]), info.n_vocab);
            CHECK_OK(lmoe_eval(alone[i], &next[i], 1));
        }
        CHECK_OK(lmoe_eval_streams(together, next, N_STREAMS));
        for (int i = 0; i < N_STREAMS; i++) {
            const float *a = lmoe_logits(alone[i]), *b = lmoe_logits(together[i]);
            for (int32_t v = 0; a && b && v < info.n_vocab; v++) {
                float d = fabsf(a[v] - b[v]);
                if (!(d <= worst)) worst = d;
            }
            CHECK(lmoe_context_n_tokens(alone[i]) == lmoe_context_n_tokens(together[i]));
        }
    }
    CHECK_MSG(worst <= 1e-4f && token_diff == 0, "%s: streams differ from one by one: logits by "
              "%g, %d greedy tokens", label, (double)worst, token_diff);
    if (info.n_expert) {
        size_t n_counts = (size_t)info.n_layer * (size_t)info.n_expert;
        uint64_t *ca = calloc(n_counts, 8), *cb = calloc(n_counts, 8);
        for (int i = 0; i < N_STREAMS; i++) {
            CHECK_OK(lmoe_context_expert_counts(alone[i], ca, n_counts));
            CHECK_OK(lmoe_context_expert_counts(together[i], cb, n_counts));
            CHECK_MSG(memcmp(ca, cb, n_counts * 8) == 0, "%s: stream %d's expert counts differ",
                      label, i);
            CHECK_MSG(alone_log[i].n == together_log[i].n && alone_log[i].sum == together_log[i].sum,
                      "%s: stream %d's routing reports differ (%u and %u)", label, i,
                      alone_log[i].n, together_log[i].n);
        }
        free(ca);
        free(cb);
    }
    test_summary("%-9s %d streams x %d steps: max |logit difference| %.2e, same greedy tokens",
                 label, N_STREAMS, N_STEPS, (double)worst);

    /* one stream alone is lmoe_eval */
    lmoe_token t = 300;
    CHECK_OK(lmoe_eval(alone[0], &t, 1));
    CHECK_OK(lmoe_eval_streams(&together[0], &t, 1));
    CHECK(memcmp(lmoe_logits(alone[0]), lmoe_logits(together[0]), (size_t)info.n_vocab * 4) == 0);
    for (int i = 0; i < N_STREAMS; i++) {
        lmoe_context_free(alone[i]);
        lmoe_context_free(together[i]);
    }
    lmoe_model_free(m);
}

static void test_bad_calls(const char *path, const char *other_path) {
    lmoe_model *m = NULL, *other = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    CHECK_OK(lmoe_model_load(other_path, NULL, &other));
    if (!m || !other) return;
    routing_log log = {0, 0};
    lmoe_context *a = context_for(m, &log, 8), *b = context_for(m, &log, 8),
                 *c = context_for(other, &log, 8);
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 8;
    cp.n_batch = 2;
    lmoe_context *small_batch = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &small_batch));
    lmoe_token two[2] = {5, 6}, three[3] = {5, 6, 7};
    lmoe_context *same[2] = {a, a}, *mixed[2] = {a, c}, *pair[2] = {a, b};
    lmoe_context *batch3[3] = {small_batch, a, b}, *with_null[2] = {a, NULL};
    CHECK(lmoe_eval_streams(same, two, 2) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_eval_streams(mixed, two, 2) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "another model") != NULL);
    CHECK(lmoe_eval_streams(batch3, three, 3) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_eval_streams(with_null, two, 2) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_eval_streams(NULL, two, 2) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_eval_streams(pair, NULL, 2) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_eval_streams(pair, two, 0) == LMOE_ERR_INVALID_ARGUMENT);
    lmoe_token bad[2] = {5, 1 << 20};
    CHECK(lmoe_eval_streams(pair, bad, 2) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_context_n_tokens(a) == 0 && lmoe_context_n_tokens(b) == 0);
    /* b full: nothing is evaluated, a included */
    lmoe_token fill[8] = {1, 5, 6, 7, 8, 9, 10, 11};
    CHECK_OK(lmoe_eval(b, fill, 8));
    CHECK(lmoe_eval_streams(pair, two, 2) == LMOE_ERR_CONTEXT_FULL);
    CHECK(strstr(lmoe_last_error(), "stream 1") != NULL);
    CHECK(lmoe_context_n_tokens(a) == 0 && lmoe_logits(a) == NULL);
    lmoe_context_free(a);
    lmoe_context_free(b);
    lmoe_context_free(c);
    lmoe_context_free(small_batch);
    lmoe_model_free(m);
    lmoe_model_free(other);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_streams LLAMAMOE-CONVERT\n");
        return 2;
    }
    test_require_models();
    char dense[4096], moe[4096];
    const char *path = test_stories_gguf("streams.gguf");
    CHECK(path != NULL);
    if (!path) return test_finish("test_streams");
    test_fmt(dense, sizeof dense, "%s", path);
    test_fmt(moe, sizeof moe, "%s", test_tmp_path("streams_moe.gguf"));
    char *args[] = {argv[1], "moefy", dense, "-o", moe, "--experts", "4", "--top-k", "2", NULL};
    char *out = NULL;
    size_t len = 0;
    CHECK(test_run_merged(args, &out, &len) == 0);
    free(out);
    compare(dense, "dense");
    compare(moe, "MoE 4/2");
    test_bad_calls(dense, moe);
    test_summary_print();
    return test_finish("test_streams");
}
