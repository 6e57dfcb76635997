/* test_stories260k.c - end to end on Karpathy's stories260K against llama2.c run.c's outputs
 * (../shared/models/stories260K-reference.json, stories260K-greedy-logits-pos0-7.f32):
 *   - llamamoe-convert turns both checkpoint layouts (legacy, version 1) plus tok512.bin into GGUF;
 *   - every reference run gives the same token ids through lmoe_generate (1, 2 and 3 threads);
 *   - llamamoe-cli prints the same bytes run.c printed;
 *   - logits of positions 0..7 are within 1e-4 of run.c's.
 * argv[1] = llamamoe-convert, argv[2] = llamamoe-cli. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "llamamoe.h"
#include "test_util.h"

#define MAX_IDS 1024

typedef struct ref_run {
    const char *name;
    const char *prompt;
    size_t prompt_len;
    lmoe_token prompt_ids[MAX_IDS];
    size_t n_prompt_ids;
    lmoe_token ids[MAX_IDS];
    size_t n_ids;
    int stopped_on_bos;
    const char *stdout_text;
    size_t stdout_len;
    float temperature, top_p;
    unsigned long long seed;
    int steps;                  /* run.c -n: positions including BOS */
} ref_run;

static size_t json_ids(const json_value *arr, lmoe_token *out) {
    size_t n = 0;
    for (size_t i = 0; arr && i < arr->n_items && i < MAX_IDS; i++) out[n++] = (lmoe_token)arr->items[i].number;
    return n;
}

/* Reads run.c's command line: -t temperature, -p top-p, -s seed, -n steps (defaults as run.c). */
static void parse_argv(const json_value *argv, ref_run *r) {
    r->temperature = 1.0f;
    r->top_p = 0.9f;
    r->seed = 0;
    r->steps = 256;
    for (size_t i = 0; i + 1 < argv->n_items; i++) {
        const char *a = argv->items[i].str, *v = argv->items[i + 1].str;
        if (!strcmp(a, "-t")) r->temperature = strtof(v, NULL);
        else if (!strcmp(a, "-p")) r->top_p = strtof(v, NULL);
        else if (!strcmp(a, "-s")) r->seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "-n")) r->steps = atoi(v);
    }
}

static size_t load_runs(json_value *root, ref_run *runs, size_t max_runs) {
    size_t n = 0;
    for (size_t i = 0; i < root->n_items && n < max_runs; i++) {
        const json_value *o = &root->items[i];
        ref_run *r = &runs[n++];
        r->name = json_get(o, "name")->str;
        r->prompt = json_get(o, "prompt")->str;
        r->prompt_len = json_get(o, "prompt")->str_len;
        r->n_prompt_ids = json_ids(json_get(o, "prompt_ids"), r->prompt_ids);
        r->n_ids = json_ids(json_get(o, "ids"), r->ids);
        r->stopped_on_bos = json_get(o, "stopped_on_bos")->boolean;
        r->stdout_text = json_get(o, "stdout")->str;
        r->stdout_len = json_get(o, "stdout")->str_len;
        parse_argv(json_get(o, "argv"), r);
    }
    return n;
}

/* ---- generation through the library ---- */

typedef struct collected {
    lmoe_token ids[MAX_IDS];
    size_t n;
} collected;

static int collect_token(void *user, lmoe_token token) {
    collected *c = user;
    if (c->n < MAX_IDS) c->ids[c->n++] = token;
    return 0;
}

static int tokens_generated(const ref_run *r) {
    return r->steps + 1 - (int)r->n_prompt_ids;
}

static void check_run_ids(const lmoe_model *model, const ref_run *r, int n_threads) {
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_threads = n_threads;
    lmoe_context *ctx = NULL;
    lmoe_sampler *smp = NULL;
    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = r->temperature;
    sp.top_p = r->top_p;
    sp.seed = r->seed;
    CHECK_OK(lmoe_context_create(model, &cp, &ctx));
    CHECK_OK(lmoe_sampler_create(&sp, &smp));
    if (!ctx || !smp) goto done;

    collected got = {.n = 0};
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = tokens_generated(r);
    gp.on_token = collect_token;
    gp.user = &got;
    lmoe_generate_result res;
    CHECK_OK(lmoe_generate(ctx, smp, r->prompt, r->prompt_len, &gp, &res, sizeof res));

    lmoe_token all[2 * MAX_IDS];
    size_t n_all = 0;
    for (size_t i = 0; i < r->n_prompt_ids; i++) all[n_all++] = r->prompt_ids[i];
    for (size_t i = 0; i < got.n; i++) all[n_all++] = got.ids[i];
    size_t first_diff = 0;
    while (first_diff < n_all && first_diff < r->n_ids && all[first_diff] == r->ids[first_diff])
        first_diff++;
    CHECK_MSG(n_all == r->n_ids && first_diff == n_all,
              "%s, %d threads: %zu ids vs %zu expected, first difference at %zu", r->name,
              n_threads, n_all, r->n_ids, first_diff);
    CHECK_MSG(res.n_prompt_tokens == r->n_prompt_ids, "%s: %u prompt tokens", r->name,
              res.n_prompt_tokens);
    lmoe_stop_reason want = r->stopped_on_bos ? LMOE_STOP_BOS : LMOE_STOP_MAX_TOKENS;
    CHECK_MSG(res.stop_reason == want, "%s: stop reason %d, expected %d", r->name,
              (int)res.stop_reason, (int)want);
done:
    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
}

static void check_prompt_tokens(const lmoe_model *model, const ref_run *r) {
    lmoe_token ids[MAX_IDS];
    size_t n = 0;
    CHECK_OK(lmoe_tokenize(model, r->prompt, r->prompt_len, 1, ids, MAX_IDS, &n));
    CHECK_MSG(n == r->n_prompt_ids && memcmp(ids, r->prompt_ids, n * sizeof *ids) == 0,
              "%s: prompt tokenizes differently", r->name);
}

/* ---- the CLI's stdout ---- */

static void check_cli(const char *cli, const char *gguf, const lmoe_model *model, const ref_run *r) {
    char n_arg[32], temp_arg[32], top_p_arg[32], seed_arg[32];
    snprintf(n_arg, sizeof n_arg, "%d", tokens_generated(r));
    snprintf(temp_arg, sizeof temp_arg, "%g", (double)r->temperature);
    snprintf(top_p_arg, sizeof top_p_arg, "%g", (double)r->top_p);
    snprintf(seed_arg, sizeof seed_arg, "%llu", r->seed);
    char *argv[] = {(char *)cli, "-m", (char *)gguf, "-p", (char *)r->prompt, "-n", n_arg,
                    "--temp", temp_arg, "--top-p", top_p_arg, "--seed", seed_arg, "-t", "1", NULL};
    char *out = NULL;
    size_t out_len = 0;
    int status = test_run(argv, &out, &out_len);
    CHECK_MSG(status == 0, "%s: llamamoe-cli exited with %d", r->name, status);
    if (!out) return;

    /* run.c does not print single bytes that are neither printable nor whitespace (the emoji's
     * byte tokens); where that makes its stdout differ from the decoded ids, compare with the
     * decoded ids plus run.c's final newline instead. */
    char decoded[8192];
    size_t dec_len = 0;
    CHECK_OK(lmoe_detokenize(model, r->ids, r->n_ids, decoded, sizeof decoded - 1, &dec_len));
    decoded[dec_len++] = '\n';
    int run_c_dropped_bytes = strstr(r->name, "emoji") != NULL;
    if (!run_c_dropped_bytes)
        CHECK_MSG(dec_len == r->stdout_len && memcmp(decoded, r->stdout_text, dec_len) == 0,
                  "%s: decoded reference ids differ from run.c's stdout", r->name);
    const char *want = run_c_dropped_bytes ? decoded : r->stdout_text;
    size_t want_len = run_c_dropped_bytes ? dec_len : r->stdout_len;
    CHECK_MSG(out_len == want_len && memcmp(out, want, want_len) == 0,
              "%s: llamamoe-cli printed %zu bytes, expected %zu:\n%s", r->name, out_len, want_len,
              out);
    free(out);
}

/* ---- logits ---- */

static void check_logits(const lmoe_model *model, const lmoe_token *ids, const char *label) {
    size_t size = 0;
    float *ref = (float *)test_read_file(test_model_path("stories260K-greedy-logits-pos0-7.f32"), &size);
    CHECK_MSG(ref && size == 8 * 512 * sizeof(float), "reference logits file");
    if (!ref || size != 8 * 512 * sizeof(float)) {
        free(ref);
        return;
    }
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_threads = 2;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(model, &cp, &ctx));
    double max_diff = 0;
    for (int pos = 0; ctx && pos < 8; pos++) {
        CHECK_OK(lmoe_eval(ctx, &ids[pos], 1));
        const float *logits = lmoe_logits(ctx);
        CHECK(logits != NULL);
        for (int i = 0; logits && i < 512; i++) {
            double d = fabs((double)logits[i] - (double)ref[pos * 512 + i]);
            if (d > max_diff) max_diff = d;
        }
    }
    printf("%s: logits of positions 0..7: max |difference| from run.c = %.3g\n", label, max_diff);
    CHECK_MSG(max_diff <= 1e-4, "%s: logits differ from run.c by %g", label, max_diff);
    /* the generic kernels do run.c's float operations in run.c's order */
    const char *exact = getenv("LMOE_EXPECT_EXACT_LOGITS");
    if (exact && strcmp(exact, "1") == 0)
        CHECK_MSG(max_diff == 0, "%s: generic kernels differ from run.c by %g", label, max_diff);
    lmoe_context_free(ctx);
    free(ref);
}

static int convert(const char *tool, const char *checkpoint, const char *tokenizer,
                   const char *out_path) {
    char ckpt[4096], tok[4096];
    snprintf(ckpt, sizeof ckpt, "%s", test_model_path(checkpoint));
    snprintf(tok, sizeof tok, "%s", test_model_path(tokenizer));
    char *argv[] = {(char *)tool, "llama2c", ckpt, tok, "-o", (char *)out_path, NULL};
    char *out = NULL;
    size_t len = 0;
    int status = test_run(argv, &out, &len);
    free(out);
    return status;
}

/* Writes a copy of the legacy checkpoint with a separate classifier: vocab_size negated in the
 * header and the embedding matrix appended as the classifier. Same weights, other layout. */
static int write_separate_classifier(const char *path) {
    size_t size = 0;
    char *ckpt = test_read_file(test_model_path("stories260K.bin"), &size);
    if (!ckpt || size != 1056540) {
        free(ckpt);
        return -1;
    }
    size_t embedding_bytes = 512 * 64 * sizeof(float);
    char *out = malloc(size + embedding_bytes);
    if (!out) {
        free(ckpt);
        return -1;
    }
    memcpy(out, ckpt, size);
    int32_t vocab = -512;
    memcpy(out + 5 * sizeof(int32_t), &vocab, sizeof vocab);
    memcpy(out + size, ckpt + 28, embedding_bytes); /* the embedding comes first in the payload */
    int rc = test_write_file(path, out, size + embedding_bytes);
    free(out);
    free(ckpt);
    return rc;
}

/* The scratch file for name; the run with the generic kernels (test_stories260k_generic, which
 * ctest may run at the same time) uses its own files. */
static const char *scratch(const char *name) {
    char prefixed[256];
    const char *exact = getenv("LMOE_EXPECT_EXACT_LOGITS");
    snprintf(prefixed, sizeof prefixed, "%s%s", exact && strcmp(exact, "1") == 0 ? "exact-" : "",
             name);
    return test_tmp_path(prefixed);
}

static lmoe_model *load(const char *path) {
    lmoe_model *model = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &model));
    return model;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_stories260k LLAMAMOE_CONVERT LLAMAMOE_CLI\n");
        return 2;
    }
    test_require_models();
    const char *convert_tool = argv[1], *cli = argv[2];
    char legacy[4096], v1[4096], from_model[4096];
    snprintf(legacy, sizeof legacy, "%s", scratch("stories260K.gguf"));
    snprintf(v1, sizeof v1, "%s", scratch("stories260K-v1.gguf"));
    snprintf(from_model, sizeof from_model, "%s", scratch("stories260K-spm.gguf"));
    CHECK(convert(convert_tool, "stories260K.bin", "tok512.bin", legacy) == 0);
    CHECK(convert(convert_tool, "stories260K.v1.bin", "tok512.bin", v1) == 0);
    CHECK(convert(convert_tool, "stories260K.bin", "tok512.model", from_model) == 0);
    char separate_ckpt[4096], separate[4096];
    snprintf(separate_ckpt, sizeof separate_ckpt, "%s", scratch("stories260K-wcls.bin"));
    snprintf(separate, sizeof separate, "%s", scratch("stories260K-wcls.gguf"));
    CHECK(write_separate_classifier(separate_ckpt) == 0);
    {
        char tok[4096];
        snprintf(tok, sizeof tok, "%s", test_model_path("tok512.bin"));
        char *args[] = {(char *)convert_tool, "llama2c", separate_ckpt, tok, "-o", separate, NULL};
        char *out = NULL;
        size_t len = 0;
        CHECK(test_run(args, &out, &len) == 0);
        free(out);
    }

    size_t json_len = 0;
    char *json_text = test_read_file(test_model_path("stories260K-reference.json"), &json_len);
    json_value *root = json_text ? json_parse(json_text, json_len) : NULL;
    CHECK(root && root->kind == JSON_ARRAY && root->n_items >= 8);
    static ref_run runs[16];
    size_t n_runs = root ? load_runs(root, runs, 16) : 0;

    lmoe_model *model = load(legacy);
    lmoe_model *model_v1 = load(v1);
    if (model && model_v1) {
        lmoe_model_info info;
        CHECK_OK(lmoe_model_get_info(model, &info, sizeof info));
        CHECK(info.n_vocab == 512 && info.n_embd == 64 && info.n_layer == 5 && info.n_head == 8 &&
              info.n_head_kv == 4 && info.n_ff == 172 && info.n_ctx_train == 512);
        CHECK(info.n_params == 260032); /* 264,128 floats minus the 4,096 RoPE table entries */
        for (size_t i = 0; i < n_runs; i++) {
            check_prompt_tokens(model, &runs[i]);
            for (int threads = 1; threads <= 3; threads++) check_run_ids(model, &runs[i], threads);
            check_run_ids(model_v1, &runs[i], 1);
            check_cli(cli, legacy, model, &runs[i]);
        }
        check_logits(model, runs[0].ids, "legacy checkpoint");
        check_logits(model_v1, runs[0].ids, "version-1 checkpoint");
    }
    lmoe_model_free(model_v1);
    lmoe_model_free(model);

    /* The SentencePiece tok512.model normalises whitespace (remove_extra_whitespaces), which run.c
     * does not; for these prompts both give the same tokens and so the same runs. */
    /* A separate classifier (output.weight) holding the same values gives the same runs. */
    lmoe_model *model_wcls = load(separate);
    if (model_wcls) {
        lmoe_model_info info;
        CHECK_OK(lmoe_model_get_info(model_wcls, &info, sizeof info));
        CHECK(info.n_params == 260032 + 512 * 64);
        for (size_t i = 0; i < n_runs; i++) check_run_ids(model_wcls, &runs[i], 1);
        check_logits(model_wcls, runs[0].ids, "separate classifier");
    }
    lmoe_model_free(model_wcls);

    lmoe_model *model_spm = load(from_model);
    if (model_spm)
        for (size_t i = 0; i < n_runs; i++) check_run_ids(model_spm, &runs[i], 2);
    lmoe_model_free(model_spm);

    json_free(root);
    free(json_text);
    return test_finish("test_stories260k");
}
