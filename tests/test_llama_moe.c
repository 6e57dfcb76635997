/* test_llama_moe.c - mixture-of-experts LLaMA end to end.
 *
 * 1. Golden data (../shared/models/tiny-llama-moe-{4_16,2_8}, computed with the original
 *    pjlab-sys4nlp/llama-moe MoE code; see tiny-llama-moe-README.md). Each Hugging Face folder is
 *    converted by `llamamoe-convert hf` with --type f32 and with --type bf16 (the checkpoints are
 *    bf16, so both conversions hold exactly the same values), and for both prompts:
 *      - lmoe_tokenize(prompt, add_bos) equals the golden ids;
 *      - the prompt evaluated in one lmoe_eval call: last-position logits within 1e-4 of the golden
 *        float32 logits; the same prompt token by token in a second context: logits within 1e-6
 *        of the one-call logits;
 *      - the routing trace (lmoe_context_params.routing_fn) at every layer and prompt position:
 *        the same experts in the same order as the golden `routing`, weights within 1e-5; every
 *        (layer, position) reported exactly once, on the thread that called lmoe_eval;
 *      - 24 greedy tokens decoded with the KV cache equal the golden greedy ids;
 *      - lmoe_context_expert_counts after the prompt equals the counts of the golden routing;
 *      - the top-10 set equals the golden one; for the bf16 conversion also the top-1 and top-10
 *        set of golden-bf16.json;
 *      - llamamoe-cli --temp 0 prints the prompt and the golden greedy continuation (f32 file).
 * 2. Mixtral layout (general.architecture "llama", stacked experts, linear gate) against
 *    "llama_moe" with expert_gate_type "linear" and expert_score_scale 1: same routing, same
 *    logits. Both, and a tanh-MLP gate file, also against an independent float64 forward pass of
 *    position 0 written here (at position 0 attention is just W_o·W_v·x, so no RoPE or softmax is
 *    needed). Bad MoE GGUF files: an "mlp" gate without its second matrix, an unknown gate type,
 *    expert_used_count > expert_count.
 * 3. Bad Hugging Face checkpoints through the converter (built here by hand: config.json, one
 *    model.safetensors, the LLaMA-2 tokenizer.model): a missing expert tensor, a wrong shape, an
 *    unknown gate_network, unequal size_experts, a truncated or a missing shard of 2_8. A valid
 *    folder built the same way converts (so the failures are about the one thing broken).
 * 4. RssAnon: loading the f32 2_8 model and evaluating a prompt must not copy the weights into
 *    anonymous memory (measured in a fresh process: this program re-executed in a child mode).
 *
 * argv[1] = llamamoe-convert, argv[2] = llamamoe-cli. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gguf.h"
#include "json.h"
#include "llamamoe.h"
#include "test_util.h"

#define MAX_IDS 64
#define N_GREEDY 24
#define MAX_K 16
#define MAX_LAYERS 8
#define MAX_EXPERTS 64
#define MAX_TRACE_POS 128
#define N_CTX 64

/* Checks status and that the error text contains word. */
#define CHECK_STATUS(expr, status, word)                                                            \
    do {                                                                                            \
        lmoe_status check_status_st_ = (expr);                                                      \
        CHECK_MSG(check_status_st_ == (status), "%s -> %d %s (%s), expected %d", #expr,             \
                  (int)check_status_st_, lmoe_status_string(check_status_st_), lmoe_last_error(),   \
                  (int)(status));                                                                   \
        CHECK_MSG(strstr(lmoe_last_error(), (word)) != NULL, "%s: error '%s' lacks '%s'", #expr,    \
                  lmoe_last_error(), (word));                                                       \
    } while (0)

static const char *convert_tool, *cli_tool;

/* ------------------------------------------------------------------------------------------------
 * summary lines, printed at the end
 * ---------------------------------------------------------------------------------------------- */

/* ------------------------------------------------------------------------------------------------
 * golden.json / golden-bf16.json
 * ---------------------------------------------------------------------------------------------- */

typedef struct golden_prompt {
    char *text;                  /* malloc'd */
    size_t text_len;
    lmoe_token ids[MAX_IDS];
    size_t n_ids;
    float *last_logits;          /* n_vocab floats, malloc'd */
    size_t n_logits;
    lmoe_token top10[10];
    lmoe_token greedy[N_GREEDY];
    size_t n_greedy;
    int n_pos;                   /* routing positions (= n_ids) */
    int32_t experts[MAX_LAYERS][MAX_IDS][MAX_K];
    float weights[MAX_LAYERS][MAX_IDS][MAX_K];
    /* golden-bf16.json */
    lmoe_token bf16_top10[10];
    lmoe_token bf16_greedy_kv[N_GREEDY];
    size_t n_bf16_greedy;
} golden_prompt;

typedef struct golden {
    const char *name;
    int n_embd, n_layer, n_head, n_head_kv, n_expert, n_used, expert_size, n_vocab;
    double score_scale, rms_eps;
    golden_prompt prompts[2];
    size_t n_prompts;
} golden;

/* Looks up key and checks its kind; prints what is missing. */
static const json_value *jget(const json_value *o, const char *key, json_kind kind) {
    const json_value *v = o ? json_get(o, key) : NULL;
    if (!v || v->kind != kind) {
        fprintf(stderr, "golden: key '%s' missing or of the wrong kind\n", key);
        return NULL;
    }
    return v;
}

static size_t json_tokens(const json_value *arr, lmoe_token *out, size_t max) {
    size_t n = 0;
    for (size_t i = 0; arr && i < arr->n_items && n < max; i++) out[n++] = (lmoe_token)arr->items[i].number;
    return n;
}

static int load_golden_prompt(const json_value *p, const golden *g, golden_prompt *gp) {
    const json_value *text = jget(p, "text", JSON_STRING), *ids = jget(p, "ids", JSON_ARRAY);
    const json_value *ll = jget(p, "last_logits", JSON_OBJECT);
    const json_value *data = jget(ll, "data", JSON_STRING);
    const json_value *top10 = jget(jget(p, "top10", JSON_OBJECT), "ids", JSON_ARRAY);
    const json_value *greedy = jget(jget(p, "greedy", JSON_OBJECT), "ids", JSON_ARRAY);
    const json_value *routing = jget(p, "routing", JSON_OBJECT);
    const json_value *positions = jget(routing, "positions", JSON_ARRAY);
    const json_value *layers = jget(routing, "layers", JSON_ARRAY);
    if (!text || !ids || !data || !top10 || !greedy || !positions || !layers) return -1;
    gp->text = malloc(text->str_len + 1);
    if (!gp->text) return -1;
    memcpy(gp->text, text->str, text->str_len + 1);
    gp->text_len = text->str_len;
    gp->n_ids = json_tokens(ids, gp->ids, MAX_IDS);
    size_t n_bytes = 0;
    uint8_t *raw = test_base64_decode(data->str, data->str_len, &n_bytes);
    if (!raw || n_bytes != (size_t)g->n_vocab * sizeof(float)) {
        fprintf(stderr, "golden: last_logits decode to %zu bytes\n", n_bytes);
        free(raw);
        return -1;
    }
    gp->last_logits = (float *)raw; /* little-endian host assumed (x86-64, aarch64) */
    gp->n_logits = (size_t)g->n_vocab;
    if (json_tokens(top10, gp->top10, 10) != 10) return -1;
    gp->n_greedy = json_tokens(greedy, gp->greedy, N_GREEDY);
    gp->n_pos = (int)positions->n_items;
    if (gp->n_pos != (int)gp->n_ids || layers->n_items != (size_t)g->n_layer) {
        fprintf(stderr, "golden: routing has %d positions and %zu layers\n", gp->n_pos, layers->n_items);
        return -1;
    }
    for (int i = 0; i < gp->n_pos; i++)
        if ((int)positions->items[i].number != i) return -1;
    for (int l = 0; l < g->n_layer; l++) {
        const json_value *L = &layers->items[l];
        const json_value *ex = jget(L, "experts", JSON_ARRAY), *w = jget(L, "weights", JSON_ARRAY);
        const json_value *li = jget(L, "layer", JSON_NUMBER);
        if (!ex || !w || !li || (int)li->number != l || ex->n_items != (size_t)gp->n_pos ||
            w->n_items != (size_t)gp->n_pos)
            return -1;
        for (int pos = 0; pos < gp->n_pos; pos++) {
            const json_value *e = &ex->items[pos], *ww = &w->items[pos];
            if (e->kind != JSON_ARRAY || ww->kind != JSON_ARRAY || e->n_items != (size_t)g->n_used ||
                ww->n_items != (size_t)g->n_used)
                return -1;
            for (int j = 0; j < g->n_used; j++) {
                gp->experts[l][pos][j] = (int32_t)e->items[j].number;
                gp->weights[l][pos][j] = (float)ww->items[j].number;
            }
        }
    }
    return 0;
}

static int load_golden_bf16_prompt(const json_value *p, golden_prompt *gp) {
    const json_value *text = jget(p, "text", JSON_STRING);
    const json_value *top10 = jget(jget(p, "top10", JSON_OBJECT), "ids", JSON_ARRAY);
    const json_value *kv = jget(jget(p, "greedy", JSON_OBJECT), "ids_kv_cache", JSON_ARRAY);
    if (!text || !top10 || !kv) return -1;
    if (text->str_len != gp->text_len || memcmp(text->str, gp->text, gp->text_len) != 0) return -1;
    if (json_tokens(top10, gp->bf16_top10, 10) != 10) return -1;
    gp->n_bf16_greedy = json_tokens(kv, gp->bf16_greedy_kv, N_GREEDY);
    return 0;
}

static int parse_golden(const json_value *root, const json_value *root16, golden *g) {
    const json_value *cfg = jget(root, "config", JSON_OBJECT);
    const json_value *prompts = jget(root, "prompts", JSON_ARRAY);
    const json_value *prompts16 = jget(root16, "prompts", JSON_ARRAY);
    if (!cfg || !prompts || !prompts16) return -1;
    const json_value *v;
#define CFG_INT(field, key)                                                                         \
    if (!(v = jget(cfg, key, JSON_NUMBER))) return -1;                                              \
    g->field = (int)v->number
    CFG_INT(n_embd, "hidden_size");
    CFG_INT(n_layer, "num_hidden_layers");
    CFG_INT(n_head, "num_attention_heads");
    CFG_INT(n_head_kv, "num_key_value_heads");
    CFG_INT(n_expert, "num_experts");
    CFG_INT(n_used, "num_selects");
    CFG_INT(n_vocab, "vocab_size");
#undef CFG_INT
    if (!(v = jget(cfg, "score_scale_factor", JSON_NUMBER))) return -1;
    g->score_scale = v->number;
    if (!(v = jget(cfg, "rms_norm_eps", JSON_NUMBER))) return -1;
    g->rms_eps = v->number;
    const json_value *sizes = jget(cfg, "size_experts", JSON_ARRAY);
    if (!sizes || sizes->n_items < 1 || sizes->items[0].kind != JSON_ARRAY ||
        sizes->items[0].n_items < 1)
        return -1;
    g->expert_size = (int)sizes->items[0].items[0].number;
    if (g->n_layer > MAX_LAYERS || g->n_expert > MAX_EXPERTS || g->n_used > MAX_K) return -1;
    g->n_prompts = prompts->n_items < 2 ? prompts->n_items : 2;
    if (g->n_prompts != 2 || prompts16->n_items < g->n_prompts) return -1;
    for (size_t i = 0; i < g->n_prompts; i++) {
        if (load_golden_prompt(&prompts->items[i], g, &g->prompts[i]) != 0) return -1;
        if (load_golden_bf16_prompt(&prompts16->items[i], &g->prompts[i]) != 0) return -1;
    }
    return 0;
}

static void golden_free(golden *g) {
    for (size_t i = 0; i < 2; i++) {
        free(g->prompts[i].text);
        free(g->prompts[i].last_logits);
        g->prompts[i].text = NULL;
        g->prompts[i].last_logits = NULL;
    }
}

/* Reads folder/golden.json and folder/golden-bf16.json into *g (free with golden_free). Returns 0
 * on success. */
static int load_golden(const char *folder, golden *g) {
    memset(g, 0, sizeof *g);
    g->name = folder;
    char rel[256];
    test_fmt(rel, sizeof rel, "%s/golden.json", folder);
    size_t len = 0;
    char *text = test_read_file(test_model_path(rel), &len);
    json_value *root = text ? json_parse(text, len) : NULL;
    free(text);
    test_fmt(rel, sizeof rel, "%s/golden-bf16.json", folder);
    char *text16 = test_read_file(test_model_path(rel), &len);
    json_value *root16 = text16 ? json_parse(text16, len) : NULL;
    free(text16);
    int rc = -1;
    if (!root || !root16) fprintf(stderr, "%s: cannot read golden.json / golden-bf16.json\n", folder);
    else rc = parse_golden(root, root16, g);
    json_free(root);
    json_free(root16);
    if (rc != 0) golden_free(g);
    return rc;
}

/* ------------------------------------------------------------------------------------------------
 * routing traces
 * ---------------------------------------------------------------------------------------------- */

typedef struct routing_trace {
    int n_layer, n_expert, k;
    pthread_t eval_thread;       /* the thread calling lmoe_eval */
    int32_t experts[MAX_LAYERS][MAX_TRACE_POS][MAX_K];
    float weights[MAX_LAYERS][MAX_TRACE_POS][MAX_K];
    int calls[MAX_LAYERS][MAX_TRACE_POS];
    int n_bad;                   /* calls with bad arguments or on another thread */
    char first_bad[256];
} routing_trace;

static routing_trace *trace_new(int n_layer, int n_expert, int k) {
    routing_trace *t = calloc(1, sizeof *t);
    if (!t) abort();
    t->n_layer = n_layer;
    t->n_expert = n_expert;
    t->k = k;
    t->eval_thread = pthread_self();
    return t;
}

static void trace_clear(routing_trace *t) {
    memset(t->calls, 0, sizeof t->calls);
    memset(t->experts, 0, sizeof t->experts);
    memset(t->weights, 0, sizeof t->weights);
}

static void trace_bad(routing_trace *t, const char *what, int32_t layer, uint32_t pos, int32_t n_used) {
    if (t->n_bad++ == 0)
        test_fmt(t->first_bad, sizeof t->first_bad, "%s (layer %d, pos %u, n_used %d)", what,
                 (int)layer, pos, (int)n_used);
}

static void on_routing(void *user, int32_t layer, uint32_t pos, const int32_t *experts,
                       const float *weights, int32_t n_used) {
    routing_trace *t = user;
    if (!pthread_equal(pthread_self(), t->eval_thread))
        trace_bad(t, "called on a thread other than lmoe_eval's", layer, pos, n_used);
    if (layer < 0 || layer >= t->n_layer || pos >= MAX_TRACE_POS || n_used != t->k || !experts ||
        !weights) {
        trace_bad(t, "arguments out of range", layer, pos, n_used);
        return;
    }
    t->calls[layer][pos]++;
    for (int j = 0; j < n_used; j++) {
        if (experts[j] < 0 || experts[j] >= t->n_expert || !isfinite(weights[j]))
            trace_bad(t, "expert id out of range or weight not finite", layer, pos, n_used);
        t->experts[layer][pos][j] = experts[j];
        t->weights[layer][pos][j] = weights[j];
    }
}

static void format_experts(char *buf, size_t size, const int32_t *e, const float *w, int k) {
    size_t n = 0;
    buf[0] = 0;
    for (int j = 0; j < k && n < size; j++)
        n += (size_t)snprintf(buf + n, size - n, "%s%d:%.6f", j ? " " : "", (int)e[j], (double)w[j]);
}

/* Checks a trace of positions [0, n_pos) against the golden routing; returns the largest weight
 * difference. Prints at most a few mismatches (with layer, position, experts and weights). */
static double check_trace_golden(const routing_trace *t, const golden *g, const golden_prompt *gp,
                                 const char *label) {
    double max_w = 0;
    int mismatches = 0, wrong_calls = 0;
    for (int l = 0; l < g->n_layer; l++)
        for (int pos = 0; pos < gp->n_pos; pos++) {
            if (t->calls[l][pos] != 1) {
                if (wrong_calls++ < 3)
                    fprintf(stderr, "%s: routing_fn called %d times for layer %d pos %d\n", label,
                            t->calls[l][pos], l, pos);
                continue;
            }
            bool same = true;
            for (int j = 0; j < g->n_used; j++) {
                if (t->experts[l][pos][j] != gp->experts[l][pos][j]) same = false;
                double d = fabs((double)t->weights[l][pos][j] - (double)gp->weights[l][pos][j]);
                if (!(d <= 1e-5)) same = false;
                if (d > max_w || isnan(d)) max_w = isnan(d) ? INFINITY : d;
            }
            if (!same && mismatches++ < 5) {
                char got[256], want[256];
                format_experts(got, sizeof got, t->experts[l][pos], t->weights[l][pos], g->n_used);
                format_experts(want, sizeof want, gp->experts[l][pos], gp->weights[l][pos], g->n_used);
                fprintf(stderr, "%s: routing differs at layer %d pos %d: got [%s], golden [%s]\n",
                        label, l, pos, got, want);
            }
        }
    CHECK_MSG(wrong_calls == 0, "%s: %d (layer, position) pairs not reported exactly once", label,
              wrong_calls);
    CHECK_MSG(mismatches == 0, "%s: routing differs from golden at %d (layer, position) pairs "
              "(max weight difference %.3g)", label, mismatches, max_w);
    CHECK_MSG(t->n_bad == 0, "%s: %d bad routing_fn calls, first: %s", label, t->n_bad, t->first_bad);
    return max_w;
}

/* ------------------------------------------------------------------------------------------------
 * helpers on logits
 * ---------------------------------------------------------------------------------------------- */

static double max_abs_diff(const float *a, const float *b, size_t n, size_t *where) {
    double m = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(d)) d = INFINITY;
        if (d > m) {
            m = d;
            at = i;
        }
    }
    if (where) *where = at;
    return m;
}

/* The 10 largest (lowest id first on ties). */
static void top10(const float *x, int n, lmoe_token out[10]) {
    for (int j = 0; j < 10; j++) out[j] = -1;
    for (int i = 0; i < n; i++) {
        int j = 10;
        while (j > 0 && (out[j - 1] < 0 || x[i] > x[out[j - 1]])) j--;
        if (j >= 10) continue;
        memmove(&out[j + 1], &out[j], (size_t)(9 - j) * sizeof *out);
        out[j] = (lmoe_token)i;
    }
}

static bool same_set10(const lmoe_token a[10], const lmoe_token b[10]) {
    for (int i = 0; i < 10; i++) {
        bool found = false;
        for (int j = 0; j < 10; j++) found |= a[i] == b[j];
        if (!found) return false;
    }
    return true;
}

static void format_ids(char *buf, size_t size, const lmoe_token *ids, size_t n) {
    size_t len = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && len < size; i++)
        len += (size_t)snprintf(buf + len, size - len, "%s%d", i ? "," : "", (int)ids[i]);
}

/* ------------------------------------------------------------------------------------------------
 * 1. golden data
 * ---------------------------------------------------------------------------------------------- */

static int convert_hf(const char *dir, const char *out_path, const char *type, char **output) {
    unlink(out_path);
    char *argv[] = {(char *)convert_tool, "hf", (char *)dir, "-o", (char *)out_path, "--type",
                    (char *)type, NULL};
    char *out = NULL;
    size_t len = 0;
    int status = test_run_merged(argv, &out, &len);
    if (output) *output = out;
    else free(out);
    return status;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void check_model_info(const lmoe_model *m, const golden *g, const char *label) {
    lmoe_model_info info;
    CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
    CHECK_MSG(strcmp(info.architecture, "llama_moe") == 0, "%s: architecture '%s'", label,
              info.architecture);
    CHECK_MSG(info.has_weights && info.n_vocab == g->n_vocab && info.n_embd == g->n_embd &&
              info.n_layer == g->n_layer && info.n_head == g->n_head &&
              info.n_head_kv == g->n_head_kv && info.n_ff == g->expert_size &&
              info.n_expert == g->n_expert && info.n_expert_used == g->n_used,
              "%s: info vocab %d embd %d layers %d heads %d/%d ff %d experts %d used %d", label,
              info.n_vocab, info.n_embd, info.n_layer, info.n_head, info.n_head_kv, info.n_ff,
              info.n_expert, info.n_expert_used);
    CHECK_MSG(fabs((double)info.rms_norm_eps - g->rms_eps) < 1e-9 &&
              info.rope_freq_base == 10000.0f, "%s: eps %g theta %g", label,
              (double)info.rms_norm_eps, (double)info.rope_freq_base);
    /* Parameters: everything in the checkpoint except rotary_emb.inv_freq and gate.weight_noise. */
    uint64_t H = (uint64_t)g->n_embd, E = (uint64_t)g->n_expert, s = (uint64_t)g->expert_size;
    uint64_t V = (uint64_t)g->n_vocab, L = (uint64_t)g->n_layer;
    uint64_t per_layer = 4 * H * H + E * H + E * E + 3 * E * s * H + 2 * H;
    uint64_t want = 2 * V * H + L * per_layer + H;
    uint64_t want_active = want - L * (E - (uint64_t)g->n_used) * 3 * s * H;
    CHECK_MSG(info.n_params == want, "%s: n_params %llu, expected %llu", label,
              (unsigned long long)info.n_params, (unsigned long long)want);
    CHECK_MSG(info.n_params_active == want_active, "%s: n_params_active %llu, expected %llu "
              "(n_params minus the unselected experts)", label,
              (unsigned long long)info.n_params_active, (unsigned long long)want_active);
    char buf[128];
    size_t len = 0;
    CHECK_OK(lmoe_model_meta_string(m, "general.architecture", buf, sizeof buf, &len));
    CHECK_MSG(strcmp(buf, "llama_moe") == 0, "%s: general.architecture '%s'", label, buf);
    lmoe_status st = lmoe_model_meta_string(m, "llama_moe.expert_gate_type", buf, sizeof buf, &len);
    CHECK_MSG(st == LMOE_OK && strcmp(buf, "mlp") == 0, "%s: llama_moe.expert_gate_type '%s' (%s)",
              label, st == LMOE_OK ? buf : "", st == LMOE_OK ? "" : lmoe_last_error());
    st = lmoe_model_meta_string(m, "llama_moe.expert_score_scale", buf, sizeof buf, &len);
    CHECK_MSG(st == LMOE_OK && strtod(buf, NULL) == g->score_scale,
              "%s: llama_moe.expert_score_scale '%s' (%s)", label, st == LMOE_OK ? buf : "",
              st == LMOE_OK ? "" : lmoe_last_error());
}

typedef struct prompt_result {
    double logit_diff, batch_vs_single, weight_diff;
    size_t greedy_ok;
    bool top10_ok, bf16_top1_ok, bf16_top10_ok;
} prompt_result;

static lmoe_context *make_ctx(const lmoe_model *m, int n_threads, routing_trace *t) {
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = N_CTX;
    cp.n_threads = n_threads;
    cp.routing_fn = t ? on_routing : NULL;
    cp.routing_user = t;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    return ctx;
}

static void check_counts_golden(lmoe_context *ctx, const golden *g, const golden_prompt *gp,
                                const char *label) {
    size_t n = (size_t)(g->n_layer * g->n_expert);
    uint64_t counts[MAX_LAYERS * MAX_EXPERTS], want[MAX_LAYERS * MAX_EXPERTS];
    memset(want, 0, sizeof want);
    for (int l = 0; l < g->n_layer; l++)
        for (int pos = 0; pos < gp->n_pos; pos++)
            for (int j = 0; j < g->n_used; j++) want[l * g->n_expert + gp->experts[l][pos][j]]++;
    memset(counts, 0xff, sizeof counts);
    CHECK_OK(lmoe_context_expert_counts(ctx, counts, n));
    for (size_t i = 0; i < n; i++)
        CHECK_MSG(counts[i] == want[i], "%s: expert count layer %zu expert %zu = %llu, golden routing "
                  "gives %llu", label, i / (size_t)g->n_expert, i % (size_t)g->n_expert,
                  (unsigned long long)counts[i], (unsigned long long)want[i]);
    CHECK_STATUS(lmoe_context_expert_counts(ctx, counts, n - 1), LMOE_ERR_BUFFER_TOO_SMALL, "");
}

static void check_prompt(const lmoe_model *m, const golden *g, const golden_prompt *gp,
                         bool bf16, const char *label, prompt_result *r) {
    memset(r, 0, sizeof *r);
    /* 1. tokenization */
    lmoe_token ids[MAX_IDS];
    size_t n = 0;
    CHECK_OK(lmoe_tokenize(m, gp->text, gp->text_len, 1, ids, MAX_IDS, &n));
    char got_s[1024], want_s[1024];
    format_ids(got_s, sizeof got_s, ids, n);
    format_ids(want_s, sizeof want_s, gp->ids, gp->n_ids);
    CHECK_MSG(n == gp->n_ids && memcmp(ids, gp->ids, n * sizeof *ids) == 0,
              "%s: tokens [%s], golden [%s]", label, got_s, want_s);

    /* 2. the whole prompt in one call */
    routing_trace *ta = trace_new(g->n_layer, g->n_expert, g->n_used);
    routing_trace *tb = trace_new(g->n_layer, g->n_expert, g->n_used);
    lmoe_context *a = make_ctx(m, 2, ta), *b = make_ctx(m, 1, tb);
    float *prompt_logits = malloc((size_t)g->n_vocab * sizeof(float));
    if (!a || !b || !prompt_logits) goto done;
    CHECK_OK(lmoe_eval(a, gp->ids, gp->n_ids));
    const float *logits = lmoe_logits(a);
    CHECK_MSG(logits != NULL, "%s: no logits", label);
    if (!logits) goto done;
    memcpy(prompt_logits, logits, (size_t)g->n_vocab * sizeof(float));
    size_t at = 0;
    r->logit_diff = max_abs_diff(prompt_logits, gp->last_logits, (size_t)g->n_vocab, &at);
    printf("%s: last-position logits: max |diff| from golden = %.3g (at id %zu: %.7f vs %.7f)\n",
           label, r->logit_diff, at, (double)prompt_logits[at], (double)gp->last_logits[at]);
    CHECK_MSG(r->logit_diff <= 1e-4, "%s: logits differ from golden by %g at id %zu (%.7f vs %.7f)",
              label, r->logit_diff, at, (double)prompt_logits[at], (double)gp->last_logits[at]);
    lmoe_token t10[10];
    top10(prompt_logits, g->n_vocab, t10);
    r->top10_ok = same_set10(t10, gp->top10) && t10[0] == gp->top10[0];
    format_ids(got_s, sizeof got_s, t10, 10);
    format_ids(want_s, sizeof want_s, gp->top10, 10);
    CHECK_MSG(r->top10_ok, "%s: top-10 [%s], golden [%s]", label, got_s, want_s);
    if (bf16) {
        /* 6. against the model run in bfloat16 end to end */
        r->bf16_top1_ok = t10[0] == gp->bf16_top10[0];
        r->bf16_top10_ok = same_set10(t10, gp->bf16_top10);
        format_ids(want_s, sizeof want_s, gp->bf16_top10, 10);
        CHECK_MSG(r->bf16_top1_ok, "%s: top-1 %d, golden-bf16 %d", label, t10[0], gp->bf16_top10[0]);
        CHECK_MSG(r->bf16_top10_ok, "%s: top-10 set [%s], golden-bf16 [%s]", label, got_s, want_s);
    }

    /* 3. routing of the prompt positions */
    r->weight_diff = check_trace_golden(ta, g, gp, label);

    /* 5. expert counts after the prompt */
    check_counts_golden(a, g, gp, label);

    /* 4. greedy with the KV cache */
    lmoe_token greedy[N_GREEDY];
    size_t n_greedy = 0;
    for (size_t i = 0; i < gp->n_greedy && logits; i++) {
        greedy[n_greedy++] = test_argmax(logits, g->n_vocab);
        if (i + 1 == gp->n_greedy) break;
        lmoe_status st = lmoe_eval(a, &greedy[n_greedy - 1], 1);
        CHECK_MSG(st == LMOE_OK, "%s: greedy eval %zu: %s", label, i, lmoe_last_error());
        if (st != LMOE_OK) break;
        logits = lmoe_logits(a);
    }
    while (r->greedy_ok < n_greedy && greedy[r->greedy_ok] == gp->greedy[r->greedy_ok]) r->greedy_ok++;
    format_ids(got_s, sizeof got_s, greedy, n_greedy);
    format_ids(want_s, sizeof want_s, gp->greedy, gp->n_greedy);
    CHECK_MSG(n_greedy == gp->n_greedy && r->greedy_ok == n_greedy,
              "%s: greedy differs from token %zu:\n  got    [%s]\n  golden [%s]", label,
              r->greedy_ok, got_s, want_s);
    if (bf16) {
        size_t same = 0;
        while (same < n_greedy && same < gp->n_bf16_greedy && greedy[same] == gp->bf16_greedy_kv[same])
            same++;
        printf("%s: greedy agrees with golden-bf16 (KV cache) for %zu of %zu tokens "
               "(informative)\n", label, same, gp->n_bf16_greedy);
    }
    /* every generated position routed once per layer; counts cover prompt + generated tokens */
    uint32_t n_total = (uint32_t)(gp->n_ids + (n_greedy ? n_greedy - 1 : 0));
    CHECK(lmoe_context_n_tokens(a) == n_total);
    int wrong = 0;
    for (int l = 0; l < g->n_layer; l++)
        for (uint32_t pos = 0; pos < n_total && pos < MAX_TRACE_POS; pos++) wrong += ta->calls[l][pos] != 1;
    CHECK_MSG(wrong == 0, "%s: %d (layer, position) pairs of prompt + greedy not routed exactly once",
              label, wrong);
    uint64_t counts[MAX_LAYERS * MAX_EXPERTS];
    size_t n_counts = (size_t)(g->n_layer * g->n_expert);
    CHECK_OK(lmoe_context_expert_counts(a, counts, n_counts));
    for (int l = 0; l < g->n_layer; l++) {
        uint64_t sum = 0;
        for (int e = 0; e < g->n_expert; e++) sum += counts[l * g->n_expert + e];
        CHECK_MSG(sum == (uint64_t)n_total * (uint64_t)g->n_used, "%s: layer %d counts sum to %llu "
                  "after %u tokens", label, l, (unsigned long long)sum, n_total);
    }
    lmoe_context_reset_expert_counts(a);
    CHECK_OK(lmoe_context_expert_counts(a, counts, n_counts));
    bool zero = true;
    for (size_t i = 0; i < n_counts; i++) zero &= counts[i] == 0;
    CHECK_MSG(zero && lmoe_context_n_tokens(a) == n_total,
              "%s: reset_expert_counts must zero the counts and keep the KV cache", label);

    /* 2b. token by token in a second context (one thread) */
    for (size_t i = 0; i < gp->n_ids; i++) CHECK_OK(lmoe_eval(b, &gp->ids[i], 1));
    const float *lb = lmoe_logits(b);
    CHECK(lb != NULL);
    if (lb) {
        r->batch_vs_single = max_abs_diff(lb, prompt_logits, (size_t)g->n_vocab, &at);
        CHECK_MSG(r->batch_vs_single <= 1e-6, "%s: token-by-token logits differ from the one-call "
                  "logits by %g at id %zu", label, r->batch_vs_single, at);
    }
    char label_b[160];
    test_fmt(label_b, sizeof label_b, "%s (token by token)", label);
    check_trace_golden(tb, g, gp, label_b);
    check_counts_golden(b, g, gp, label_b);

    /* reset: counts zero, cache empty; the prompt again in one call gives the same logits */
    lmoe_context_reset(b);
    trace_clear(tb);
    CHECK_OK(lmoe_context_expert_counts(b, counts, n_counts));
    zero = true;
    for (size_t i = 0; i < n_counts; i++) zero &= counts[i] == 0;
    CHECK_MSG(zero && lmoe_context_n_tokens(b) == 0, "%s: lmoe_context_reset must zero the counts",
              label);
    CHECK_OK(lmoe_eval(b, gp->ids, gp->n_ids));
    lb = lmoe_logits(b);
    if (lb) {
        double d = max_abs_diff(lb, prompt_logits, (size_t)g->n_vocab, NULL);
        CHECK_MSG(d <= 1e-6, "%s: after reset, logits (1 thread) differ by %g", label, d);
    }
    test_fmt(label_b, sizeof label_b, "%s (after reset)", label);
    check_trace_golden(tb, g, gp, label_b);
    check_counts_golden(b, g, gp, label_b);
done:
    free(prompt_logits);
    lmoe_context_free(a);
    lmoe_context_free(b);
    free(ta);
    free(tb);
}

/* llamamoe-cli --temp 0 prints the prompt, then the decoded greedy tokens, then a newline. */
static void check_cli(const lmoe_model *m, const char *gguf, const golden_prompt *gp,
                      const char *label) {
    char prompt[512];
    test_fmt(prompt, sizeof prompt, "%.*s", (int)gp->text_len, gp->text);
    char n_arg[16];
    test_fmt(n_arg, sizeof n_arg, "%zu", gp->n_greedy);
    char *argv[] = {(char *)cli_tool, "-m", (char *)gguf, "-p", prompt, "-n", n_arg, "--temp", "0",
                    "-s", "1", "-t", "2", "-c", "64", NULL};
    char *out = NULL;
    size_t out_len = 0;
    int status = test_run(argv, &out, &out_len);
    CHECK_MSG(status == 0, "%s: llamamoe-cli exited with %d", label, status);
    if (!out) return;
    lmoe_token all[MAX_IDS + N_GREEDY];
    memcpy(all, gp->ids, gp->n_ids * sizeof *all);
    memcpy(all + gp->n_ids, gp->greedy, gp->n_greedy * sizeof *all);
    char want[4096];
    size_t want_len = 0;
    CHECK_OK(lmoe_detokenize(m, all, gp->n_ids + gp->n_greedy, want, sizeof want - 1, &want_len));
    want[want_len++] = '\n';
    CHECK_MSG(out_len == want_len && memcmp(out, want, want_len) == 0,
              "%s: llamamoe-cli printed %zu bytes, expected %zu:\n  got    '%s'\n  expected '%.*s'",
              label, out_len, want_len, out, (int)want_len, want);
    free(out);
}

static void test_golden_model(const char *folder) {
    static golden g;
    int rc = load_golden(folder, &g);
    CHECK_MSG(rc == 0, "%s: golden files unreadable", folder);
    if (rc != 0) return;
    char dir[4096];
    test_fmt(dir, sizeof dir, "%s", test_model_path(folder));
    const char *types[2] = {"f32", "bf16"};
    for (int ti = 0; ti < 2; ti++) {
        char gguf[4096], label[160];
        char name[256];
        test_fmt(name, sizeof name, "%s-%s.gguf", folder, types[ti]);
        test_fmt(gguf, sizeof gguf, "%s", test_tmp_path(name));
        char *out = NULL;
        int status = convert_hf(dir, gguf, types[ti], &out);
        CHECK_MSG(status == 0, "%s --type %s: llamamoe-convert exited with %d:\n%s", folder,
                  types[ti], status, out ? out : "");
        free(out);
        lmoe_model *m = NULL;
        if (status == 0) CHECK_OK(lmoe_model_load(gguf, NULL, &m));
        if (!m) {
            test_summary("%s %s: not converted or not loaded", folder, types[ti]);
            continue;
        }
        test_fmt(label, sizeof label, "%s %s", folder, types[ti]);
        check_model_info(m, &g, label);
        for (size_t p = 0; p < g.n_prompts; p++) {
            test_fmt(label, sizeof label, "%s %s prompt %zu", folder, types[ti], p);
            prompt_result r;
            check_prompt(m, &g, &g.prompts[p], ti == 1, label, &r);
            if (ti == 0) check_cli(m, gguf, &g.prompts[p], label);
            if (ti == 0)
                test_summary("%-32s logits %.2e  1-call vs 1-by-1 %.2e  routing w %.2e  greedy %zu/%zu%s",
                        label, r.logit_diff, r.batch_vs_single, r.weight_diff, r.greedy_ok,
                        g.prompts[p].n_greedy, r.top10_ok ? "" : "  TOP10 DIFFERS");
            else
                test_summary("%-32s logits %.2e  1-call vs 1-by-1 %.2e  routing w %.2e  greedy %zu/%zu  "
                        "bf16 top1 %s top10 %s", label, r.logit_diff, r.batch_vs_single,
                        r.weight_diff, r.greedy_ok, g.prompts[p].n_greedy,
                        r.bf16_top1_ok ? "ok" : "DIFFERS", r.bf16_top10_ok ? "ok" : "DIFFERS");
        }
        lmoe_model_free(m);
    }
    golden_free(&g);
}

/* ------------------------------------------------------------------------------------------------
 * 2. synthetic MoE GGUF files: Mixtral layout vs llama_moe, checked against a float64 forward
 * ---------------------------------------------------------------------------------------------- */

#define S_EMBD 32
#define S_LAYER 2
#define S_HEAD 4
#define S_HEAD_KV 2
#define S_HEAD_DIM (S_EMBD / S_HEAD)
#define S_EMBD_KV (S_HEAD_KV * S_HEAD_DIM)
#define S_FF 16
#define S_EXP 8
#define S_USED 2
#define S_NORMAL 9
#define S_VOCAB (3 + 256 + S_NORMAL)

static const char *const s_normal_pieces[S_NORMAL] = {
    "\xE2\x96\x81",  "a", "b", "c", "\xE2\x96\x81" "a", "\xE2\x96\x81" "b", "\xE2\x96\x81" "c",
    "ab", "\xE2\x96\x81" "ab",
};
static const float s_normal_scores[S_NORMAL] = {-10, -11, -12, -13, -1, -2, -3, -4, -5};

/* The synthetic weights, drawn once (seeded) and shared by every file. Layouts are GGUF's: a
 * matrix with ne = [n_in, n_out] is n_out rows of n_in floats. */
static struct {
    float embd[S_VOCAB][S_EMBD];
    float out_norm[S_EMBD];
    float output[S_VOCAB][S_EMBD];
    struct {
        float attn_norm[S_EMBD];
        float wq[S_EMBD][S_EMBD], wk[S_EMBD_KV][S_EMBD], wv[S_EMBD_KV][S_EMBD];
        float wo[S_EMBD][S_EMBD];
        float ffn_norm[S_EMBD];
        float gate_inp[S_EXP][S_EMBD];       /* ne [n_embd, n_expert] */
        float gate_inp_2[S_EXP][S_EXP];      /* ne [n_expert, n_expert] (mlp gate only) */
        float gate_exps[S_EXP][S_FF][S_EMBD]; /* ne [n_embd, n_ff, n_expert] */
        float up_exps[S_EXP][S_FF][S_EMBD];
        float down_exps[S_EXP][S_EMBD][S_FF]; /* ne [n_ff, n_embd, n_expert] */
    } layer[S_LAYER];
} sw;

static uint64_t s_rng = 0x9E3779B97F4A7C15ull;

static double s_uniform(void) { /* [-1, 1) */
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return (double)(s_rng >> 11) / 4503599627370496.0 - 1.0;
}

static void s_fill(float *p, size_t n, double scale, double offset) {
    for (size_t i = 0; i < n; i++) p[i] = (float)(offset + scale * s_uniform());
}

static void s_init_weights(void) {
    s_fill(&sw.embd[0][0], sizeof sw.embd / sizeof(float), 1.0, 0);
    s_fill(sw.out_norm, S_EMBD, 0.2, 1.0);
    s_fill(&sw.output[0][0], sizeof sw.output / sizeof(float), 0.3, 0);
    for (int l = 0; l < S_LAYER; l++) {
        s_fill(sw.layer[l].attn_norm, S_EMBD, 0.2, 1.0);
        s_fill(&sw.layer[l].wq[0][0], sizeof sw.layer[l].wq / sizeof(float), 0.3, 0);
        s_fill(&sw.layer[l].wk[0][0], sizeof sw.layer[l].wk / sizeof(float), 0.3, 0);
        s_fill(&sw.layer[l].wv[0][0], sizeof sw.layer[l].wv / sizeof(float), 0.3, 0);
        s_fill(&sw.layer[l].wo[0][0], sizeof sw.layer[l].wo / sizeof(float), 0.3, 0);
        s_fill(sw.layer[l].ffn_norm, S_EMBD, 0.2, 1.0);
        /* gate logits spread by a few units: routing is far from ties */
        s_fill(&sw.layer[l].gate_inp[0][0], sizeof sw.layer[l].gate_inp / sizeof(float), 1.0, 0);
        s_fill(&sw.layer[l].gate_inp_2[0][0], sizeof sw.layer[l].gate_inp_2 / sizeof(float), 1.0, 0);
        s_fill(&sw.layer[l].gate_exps[0][0][0], sizeof sw.layer[l].gate_exps / sizeof(float), 0.3, 0);
        s_fill(&sw.layer[l].up_exps[0][0][0], sizeof sw.layer[l].up_exps / sizeof(float), 0.3, 0);
        s_fill(&sw.layer[l].down_exps[0][0][0], sizeof sw.layer[l].down_exps / sizeof(float), 0.3, 0);
    }
}

typedef struct moe_opts {
    const char *arch;           /* "llama" or "llama_moe" */
    const char *gate_type;      /* llama_moe.expert_gate_type (NULL: key absent) */
    float score_scale;          /* llama_moe.expert_score_scale (0: key absent) */
    uint32_t n_expert_used;     /* 0 = S_USED */
    bool gate_inp_2;            /* write blk.N.ffn_gate_inp_2.weight */
    bool dense;                 /* a dense llama: ffn_gate/up/down = expert 0 */
} moe_opts;

#define TRY(expr)                                                                                   \
    do {                                                                                            \
        if (st == LMOE_OK) st = (expr);                                                             \
    } while (0)

static lmoe_status s_write(const moe_opts *o, const char *path) {
    gguf_writer *w = NULL;
    lmoe_status st = gguf_writer_create(&w);
    if (st != LMOE_OK) return st;
    const char *a = o->arch;
    char key[128];
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", a, suffix), key)
    TRY(gguf_writer_set_str(w, "general.architecture", a));
    TRY(gguf_writer_set_str(w, "general.name", "synthetic-moe"));
    TRY(gguf_writer_set_u32(w, KEY("context_length"), 64));
    TRY(gguf_writer_set_u32(w, KEY("embedding_length"), S_EMBD));
    TRY(gguf_writer_set_u32(w, KEY("block_count"), S_LAYER));
    TRY(gguf_writer_set_u32(w, KEY("feed_forward_length"), S_FF));
    TRY(gguf_writer_set_u32(w, KEY("attention.head_count"), S_HEAD));
    TRY(gguf_writer_set_u32(w, KEY("attention.head_count_kv"), S_HEAD_KV));
    TRY(gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f));
    TRY(gguf_writer_set_f32(w, KEY("rope.freq_base"), 10000.0f));
    if (!o->dense) {
        TRY(gguf_writer_set_u32(w, KEY("expert_count"), S_EXP));
        TRY(gguf_writer_set_u32(w, KEY("expert_used_count"), o->n_expert_used ? o->n_expert_used : S_USED));
    }
    if (o->gate_type) TRY(gguf_writer_set_str(w, KEY("expert_gate_type"), o->gate_type));
    if (o->score_scale != 0) TRY(gguf_writer_set_f32(w, KEY("expert_score_scale"), o->score_scale));
#undef KEY
    TRY(test_write_tiny_vocab(w, s_normal_pieces, s_normal_scores, S_NORMAL));

    uint64_t ne[3];
#define T2(name, data, n0, n1) (ne[0] = (n0), ne[1] = (n1), gguf_writer_add_tensor(w, name, GGML_TYPE_F32, 2, ne, data))
#define T1(name, data, n0) (ne[0] = (n0), gguf_writer_add_tensor(w, name, GGML_TYPE_F32, 1, ne, data))
#define T3(name, data, n0, n1, n2)                                                                  \
    (ne[0] = (n0), ne[1] = (n1), ne[2] = (n2), gguf_writer_add_tensor(w, name, GGML_TYPE_F32, 3, ne, data))
    TRY(T2("token_embd.weight", sw.embd, S_EMBD, S_VOCAB));
    TRY(T1("output_norm.weight", sw.out_norm, S_EMBD));
    TRY(T2("output.weight", sw.output, S_EMBD, S_VOCAB));
    char name[128];
#define NAME(fmt) (snprintf(name, sizeof name, fmt, l), name)
    for (int l = 0; l < S_LAYER; l++) {
        TRY(T1(NAME("blk.%d.attn_norm.weight"), sw.layer[l].attn_norm, S_EMBD));
        TRY(T2(NAME("blk.%d.attn_q.weight"), sw.layer[l].wq, S_EMBD, S_EMBD));
        TRY(T2(NAME("blk.%d.attn_k.weight"), sw.layer[l].wk, S_EMBD, S_EMBD_KV));
        TRY(T2(NAME("blk.%d.attn_v.weight"), sw.layer[l].wv, S_EMBD, S_EMBD_KV));
        TRY(T2(NAME("blk.%d.attn_output.weight"), sw.layer[l].wo, S_EMBD, S_EMBD));
        TRY(T1(NAME("blk.%d.ffn_norm.weight"), sw.layer[l].ffn_norm, S_EMBD));
        if (o->dense) {
            TRY(T2(NAME("blk.%d.ffn_gate.weight"), sw.layer[l].gate_exps[0], S_EMBD, S_FF));
            TRY(T2(NAME("blk.%d.ffn_up.weight"), sw.layer[l].up_exps[0], S_EMBD, S_FF));
            TRY(T2(NAME("blk.%d.ffn_down.weight"), sw.layer[l].down_exps[0], S_FF, S_EMBD));
            continue;
        }
        TRY(T2(NAME("blk.%d.ffn_gate_inp.weight"), sw.layer[l].gate_inp, S_EMBD, S_EXP));
        if (o->gate_inp_2) TRY(T2(NAME("blk.%d.ffn_gate_inp_2.weight"), sw.layer[l].gate_inp_2, S_EXP, S_EXP));
        TRY(T3(NAME("blk.%d.ffn_gate_exps.weight"), sw.layer[l].gate_exps, S_EMBD, S_FF, S_EXP));
        TRY(T3(NAME("blk.%d.ffn_up_exps.weight"), sw.layer[l].up_exps, S_EMBD, S_FF, S_EXP));
        TRY(T3(NAME("blk.%d.ffn_down_exps.weight"), sw.layer[l].down_exps, S_FF, S_EMBD, S_EXP));
    }
#undef NAME
#undef T1
#undef T2
#undef T3
    TRY(gguf_writer_write(w, path));
    gguf_writer_free(w);
    return st;
}

/* Float64 reference of position 0 (one token, empty cache): at position 0 RoPE is the identity
 * and attention over one key has weight 1, so each head's output is its key/value head's v.
 * gate: 0 linear, 1 tanh MLP. Fills the logits and the routing (experts, weights) per layer. */
static void s_reference_pos0(int token, int gate, double scale, bool dense, double *logits,
                             int32_t experts[S_LAYER][S_USED], double weights[S_LAYER][S_USED]) {
    double x[S_EMBD], xn[S_EMBD], tmp[S_EMBD];
    for (int i = 0; i < S_EMBD; i++) x[i] = sw.embd[token][i];
#define RMSNORM(w)                                                                                  \
    do {                                                                                            \
        double ss = 0;                                                                              \
        for (int i = 0; i < S_EMBD; i++) ss += x[i] * x[i];                                         \
        double r = 1.0 / sqrt(ss / S_EMBD + 1e-5);                                                  \
        for (int i = 0; i < S_EMBD; i++) xn[i] = x[i] * r * (double)(w)[i];                         \
    } while (0)
    for (int l = 0; l < S_LAYER; l++) {
        RMSNORM(sw.layer[l].attn_norm);
        double v[S_EMBD_KV], att[S_EMBD];
        for (int r = 0; r < S_EMBD_KV; r++) {
            double s = 0;
            for (int i = 0; i < S_EMBD; i++) s += (double)sw.layer[l].wv[r][i] * xn[i];
            v[r] = s;
        }
        for (int h = 0; h < S_HEAD; h++) {
            int kvh = h / (S_HEAD / S_HEAD_KV);
            for (int d = 0; d < S_HEAD_DIM; d++) att[h * S_HEAD_DIM + d] = v[kvh * S_HEAD_DIM + d];
        }
        for (int r = 0; r < S_EMBD; r++) {
            double s = 0;
            for (int i = 0; i < S_EMBD; i++) s += (double)sw.layer[l].wo[r][i] * att[i];
            tmp[r] = s;
        }
        for (int i = 0; i < S_EMBD; i++) x[i] += tmp[i];
        RMSNORM(sw.layer[l].ffn_norm);
        double ffn[S_EMBD] = {0};
        int n_sel = dense ? 1 : S_USED;
        int sel[S_USED] = {0};
        double wsel[S_USED] = {1.0, 0.0};
        if (!dense) {
            double g[S_EXP], h1[S_EXP];
            for (int e = 0; e < S_EXP; e++) {
                double s = 0;
                for (int i = 0; i < S_EMBD; i++) s += (double)sw.layer[l].gate_inp[e][i] * xn[i];
                h1[e] = s;
            }
            for (int e = 0; e < S_EXP; e++) {
                if (!gate) {
                    g[e] = h1[e];
                    continue;
                }
                double s = 0;
                for (int j = 0; j < S_EXP; j++) s += (double)sw.layer[l].gate_inp_2[e][j] * tanh(h1[j]);
                g[e] = s;
            }
            bool used[S_EXP] = {false};
            for (int k = 0; k < S_USED; k++) {
                int best = -1;
                for (int e = 0; e < S_EXP; e++)
                    if (!used[e] && (best < 0 || g[e] > g[best])) best = e;
                used[best] = true;
                sel[k] = best;
            }
            double mx = g[sel[0]], den = 0;
            for (int k = 0; k < S_USED; k++) den += exp(g[sel[k]] - mx);
            for (int k = 0; k < S_USED; k++) wsel[k] = exp(g[sel[k]] - mx) / den * scale;
            for (int k = 0; k < S_USED; k++) {
                experts[l][k] = sel[k];
                weights[l][k] = wsel[k];
            }
        }
        for (int k = 0; k < n_sel; k++) {
            int e = sel[k];
            double hbuf[S_FF];
            for (int j = 0; j < S_FF; j++) {
                double a = 0, b = 0;
                for (int i = 0; i < S_EMBD; i++) {
                    a += (double)sw.layer[l].gate_exps[e][j][i] * xn[i];
                    b += (double)sw.layer[l].up_exps[e][j][i] * xn[i];
                }
                hbuf[j] = a / (1.0 + exp(-a)) * b;
            }
            for (int r = 0; r < S_EMBD; r++) {
                double s = 0;
                for (int j = 0; j < S_FF; j++) s += (double)sw.layer[l].down_exps[e][r][j] * hbuf[j];
                ffn[r] += wsel[k] * s;
            }
        }
        for (int i = 0; i < S_EMBD; i++) x[i] += ffn[i];
    }
    RMSNORM(sw.out_norm);
#undef RMSNORM
    for (int t = 0; t < S_VOCAB; t++) {
        double s = 0;
        for (int i = 0; i < S_EMBD; i++) s += (double)sw.output[t][i] * xn[i];
        logits[t] = s;
    }
}

static lmoe_model *s_load(const char *name, const moe_opts *o) {
    char path[4096];
    test_fmt(path, sizeof path, "%s", test_tmp_path(name));
    lmoe_status st = s_write(o, path);
    CHECK_MSG(st == LMOE_OK, "%s: cannot write: %s", name, lmoe_last_error());
    lmoe_model *m = NULL;
    if (st == LMOE_OK) CHECK_OK(lmoe_model_load(path, NULL, &m));
    return m;
}

static void s_expect_load_error(const char *name, const moe_opts *o, lmoe_status want1,
                                lmoe_status want2, const char *word) {
    char path[4096];
    test_fmt(path, sizeof path, "%s", test_tmp_path(name));
    lmoe_status st = s_write(o, path);
    CHECK_MSG(st == LMOE_OK, "%s: cannot write: %s", name, lmoe_last_error());
    lmoe_model *m = (lmoe_model *)path; /* must be overwritten with NULL */
    st = lmoe_model_load(path, NULL, &m);
    printf("%s: %s: %s\n", name, lmoe_status_string(st), lmoe_last_error());
    CHECK_MSG(st == want1 || st == want2, "%s: load gave %d %s (%s), expected %s%s%s", name, (int)st,
              lmoe_status_string(st), lmoe_last_error(), lmoe_status_string(want1),
              want2 != want1 ? " or " : "", want2 != want1 ? lmoe_status_string(want2) : "");
    if (word)
        CHECK_MSG(strstr(lmoe_last_error(), word) != NULL, "%s: error '%s' lacks '%s'", name,
                  lmoe_last_error(), word);
    CHECK_MSG(m == NULL, "%s: *out not NULL after a failed load", name);
    if (st == LMOE_OK && m && m != (lmoe_model *)path) lmoe_model_free(m);
}

/* Position 0 of model m against the float64 reference: logits and routing. */
static void s_check_pos0(const lmoe_model *m, int gate, double scale, bool dense, const char *label) {
    static const int first_tokens[3] = {1, 263, 100};
    double max_logit = 0, max_w = 0;
    for (int ti = 0; ti < 3; ti++) {
        routing_trace *t = trace_new(S_LAYER, S_EXP, S_USED);
        lmoe_context *ctx = make_ctx(m, 2, dense ? NULL : t);
        lmoe_token tok = first_tokens[ti];
        double ref[S_VOCAB];
        int32_t ref_e[S_LAYER][S_USED];
        double ref_w[S_LAYER][S_USED];
        s_reference_pos0(tok, gate, scale, dense, ref, ref_e, ref_w);
        if (ctx) CHECK_OK(lmoe_eval(ctx, &tok, 1));
        const float *lg = ctx ? lmoe_logits(ctx) : NULL;
        for (int i = 0; lg && i < S_VOCAB; i++) {
            double d = fabs((double)lg[i] - ref[i]);
            if (isnan(d) || d > max_logit) max_logit = isnan(d) ? INFINITY : d;
        }
        for (int l = 0; !dense && lg && l < S_LAYER; l++) {
            CHECK_MSG(t->calls[l][0] == 1, "%s: layer %d pos 0 routed %d times", label, l, t->calls[l][0]);
            for (int k = 0; k < S_USED; k++) {
                CHECK_MSG(t->experts[l][0][k] == ref_e[l][k], "%s token %d: layer %d choice %d: "
                          "expert %d, float64 reference %d", label, tok, l, k,
                          t->experts[l][0][k], ref_e[l][k]);
                double d = fabs((double)t->weights[l][0][k] - ref_w[l][k]);
                if (isnan(d) || d > max_w) max_w = isnan(d) ? INFINITY : d;
            }
        }
        lmoe_context_free(ctx);
        free(t);
    }
    printf("%s: position 0 vs float64 reference: logits max |diff| %.3g, routing weights %.3g\n",
           label, max_logit, max_w);
    CHECK_MSG(max_logit <= 1e-4, "%s: position-0 logits differ from the float64 reference by %g",
              label, max_logit);
    CHECK_MSG(max_w <= 1e-5, "%s: routing weights differ from the float64 reference by %g", label,
              max_w);
    test_summary("%-32s pos-0 logits vs float64 %.2e  routing w %.2e", label, max_logit, max_w);
}

static void test_synthetic(void) {
    s_init_weights();
    moe_opts oa = {.arch = "llama"};
    moe_opts ob = {.arch = "llama_moe", .gate_type = "linear", .score_scale = 1.0f};
    moe_opts og = {.arch = "llama_moe", .gate_type = "mlp", .score_scale = 4.0f, .gate_inp_2 = true};
    lmoe_model *ma = s_load("moe-mixtral-layout.gguf", &oa);
    lmoe_model *mb = s_load("moe-llama_moe-linear.gguf", &ob);
    lmoe_model *mg = s_load("moe-llama_moe-mlp.gguf", &og);

    if (ma) {
        lmoe_model_info info;
        CHECK_OK(lmoe_model_get_info(ma, &info, sizeof info));
        CHECK_MSG(strcmp(info.architecture, "llama") == 0 && info.n_expert == S_EXP &&
                  info.n_expert_used == S_USED && info.n_ff == S_FF && info.n_embd == S_EMBD &&
                  info.n_layer == S_LAYER, "mixtral layout: info arch %s experts %d used %d ff %d",
                  info.architecture, info.n_expert, info.n_expert_used, info.n_ff);
        s_check_pos0(ma, 0, 1.0, false, "mixtral layout");
    }
    if (mb) s_check_pos0(mb, 0, 1.0, false, "llama_moe linear gate");
    if (mg) s_check_pos0(mg, 1, 4.0, false, "llama_moe mlp gate, scale 4");

    /* A and B over a few tokens: identical routing, same logits after every call */
    if (ma && mb) {
        static const lmoe_token toks[] = {1, 263, 265, 100, 267, 5, 260, 42};
        const size_t n_toks = sizeof toks / sizeof toks[0];
        routing_trace *ta = trace_new(S_LAYER, S_EXP, S_USED), *tb = trace_new(S_LAYER, S_EXP, S_USED);
        lmoe_context *ca = make_ctx(ma, 2, ta), *cb = make_ctx(mb, 2, tb);
        double max_d = 0;
        size_t fed = 0;
        while (ca && cb && fed < n_toks) {
            size_t step = fed == 0 ? 4 : 1; /* 4 tokens in one call, then one at a time */
            CHECK_OK(lmoe_eval(ca, toks + fed, step));
            CHECK_OK(lmoe_eval(cb, toks + fed, step));
            fed += step;
            const float *la = lmoe_logits(ca), *lb = lmoe_logits(cb);
            if (!la || !lb) break;
            double d = max_abs_diff(la, lb, S_VOCAB, NULL);
            if (d > max_d) max_d = d;
        }
        int diff_experts = 0, calls_wrong = 0;
        double max_w = 0, max_sum_err_a = 0, max_sum_err_b = 0;
        for (int l = 0; l < S_LAYER; l++)
            for (size_t p = 0; p < n_toks; p++) {
                calls_wrong += ta->calls[l][p] != 1 || tb->calls[l][p] != 1;
                double sa = 0, sb = 0;
                for (int k = 0; k < S_USED; k++) {
                    diff_experts += ta->experts[l][p][k] != tb->experts[l][p][k];
                    double d = fabs((double)ta->weights[l][p][k] - (double)tb->weights[l][p][k]);
                    if (d > max_w) max_w = d;
                    sa += ta->weights[l][p][k];
                    sb += tb->weights[l][p][k];
                    if (k > 0)
                        CHECK_MSG(ta->weights[l][p][k] <= ta->weights[l][p][k - 1],
                                  "mixtral layout: weights not in descending order at layer %d pos %zu",
                                  l, p);
                }
                if (fabs(sa - 1) > max_sum_err_a) max_sum_err_a = fabs(sa - 1);
                if (fabs(sb - 1) > max_sum_err_b) max_sum_err_b = fabs(sb - 1);
            }
        printf("mixtral layout vs llama_moe linear: logits max |diff| %.3g, routing weights %.3g, "
               "%d expert choices differ\n", max_d, max_w, diff_experts);
        CHECK_MSG(calls_wrong == 0, "mixtral vs llama_moe: %d (layer, pos) not routed exactly once",
                  calls_wrong);
        CHECK_MSG(diff_experts == 0, "mixtral vs llama_moe: %d expert choices differ", diff_experts);
        CHECK_MSG(max_d <= 1e-5, "mixtral vs llama_moe: logits differ by %g", max_d);
        CHECK_MSG(max_w <= 1e-6, "mixtral vs llama_moe: weights differ by %g", max_w);
        CHECK_MSG(max_sum_err_a <= 1e-6 && max_sum_err_b <= 1e-6,
                  "routing weights must sum to 1 (scale 1): errors %g / %g", max_sum_err_a,
                  max_sum_err_b);
        CHECK(ta->n_bad == 0 && tb->n_bad == 0);
        /* counts of both agree with their traces */
        uint64_t ca_counts[S_LAYER * S_EXP], cb_counts[S_LAYER * S_EXP], want[S_LAYER * S_EXP];
        memset(want, 0, sizeof want);
        for (int l = 0; l < S_LAYER; l++)
            for (size_t p = 0; p < n_toks; p++)
                for (int k = 0; k < S_USED; k++) want[l * S_EXP + ta->experts[l][p][k]]++;
        if (ca && cb) {
            CHECK_OK(lmoe_context_expert_counts(ca, ca_counts, S_LAYER * S_EXP));
            CHECK_OK(lmoe_context_expert_counts(cb, cb_counts, S_LAYER * S_EXP));
            CHECK(memcmp(ca_counts, want, sizeof want) == 0);
            CHECK(memcmp(cb_counts, want, sizeof want) == 0);
        }
        test_summary("%-32s logits %.2e  routing w %.2e  expert choices differing %d",
                "mixtral vs llama_moe linear", max_d, max_w, diff_experts);
        lmoe_context_free(ca);
        lmoe_context_free(cb);
        free(ta);
        free(tb);
    }
    lmoe_model_free(ma);
    lmoe_model_free(mb);
    lmoe_model_free(mg);

    /* a dense file: no routing, expert counts refused */
    moe_opts od = {.arch = "llama", .dense = true};
    lmoe_model *md = s_load("moe-dense.gguf", &od);
    if (md) {
        s_check_pos0(md, 0, 1.0, true, "dense (expert 0 as the FFN)");
        routing_trace *t = trace_new(S_LAYER, S_EXP, S_USED);
        lmoe_context *ctx = make_ctx(md, 1, t);
        lmoe_token tok[2] = {1, 263};
        if (ctx) {
            CHECK_OK(lmoe_eval(ctx, tok, 2));
            uint64_t counts[S_LAYER * S_EXP];
            CHECK_STATUS(lmoe_context_expert_counts(ctx, counts, S_LAYER * S_EXP), LMOE_ERR_MISUSE, "");
            int calls = 0;
            for (int l = 0; l < S_LAYER; l++) calls += t->calls[l][0] + t->calls[l][1];
            CHECK_MSG(calls == 0 && t->n_bad == 0, "dense model: routing_fn called");
        }
        lmoe_context_free(ctx);
        free(t);
        lmoe_model_free(md);
    }

    /* bad MoE files */
    moe_opts oc = ob;
    oc.gate_type = "mlp"; /* without blk.N.ffn_gate_inp_2.weight */
    s_expect_load_error("moe-bad-mlp-gate-missing-second.gguf", &oc, LMOE_ERR_BAD_FILE,
                        LMOE_ERR_BAD_FILE, "ffn_gate_inp_2");
    moe_opts od2 = ob;
    od2.gate_type = "softmax";
    s_expect_load_error("moe-bad-gate-type.gguf", &od2, LMOE_ERR_UNSUPPORTED, LMOE_ERR_BAD_FILE,
                        "expert_gate_type");
    moe_opts oe = ob;
    oe.n_expert_used = S_EXP + 1;
    s_expect_load_error("moe-bad-used-count.gguf", &oe, LMOE_ERR_BAD_FILE, LMOE_ERR_BAD_FILE, NULL);
    moe_opts oe2 = oa;
    oe2.n_expert_used = S_EXP + 1;
    s_expect_load_error("moe-bad-used-count-mixtral.gguf", &oe2, LMOE_ERR_BAD_FILE,
                        LMOE_ERR_BAD_FILE, NULL);
}

/* ------------------------------------------------------------------------------------------------
 * 3. bad Hugging Face checkpoints through llamamoe-convert
 * ---------------------------------------------------------------------------------------------- */

#define HF_H 8
#define HF_HEADS 2
#define HF_E 4
#define HF_S 4
#define HF_K 2
#define HF_V 32000

typedef struct hf_opts {
    const char *omit;            /* tensor left out */
    const char *bad_shape;       /* tensor given one row too many */
    const char *gate_network;    /* config gate_network (NULL: "mlp") */
    bool unequal_sizes;          /* expert 3 has size 2*HF_S, and the config says so */
} hf_opts;

typedef struct st_entry {
    char name[96];
    uint64_t shape[2];
    int n_dims;
} st_entry;

static void hf_add(st_entry *list, size_t *n, const hf_opts *o, const char *name, uint64_t d0,
                   uint64_t d1) {
    if (o->omit && strcmp(o->omit, name) == 0) return;
    st_entry *e = &list[(*n)++];
    test_fmt(e->name, sizeof e->name, "%s", name);
    e->shape[0] = d0;
    e->shape[1] = d1;
    e->n_dims = d1 ? 2 : 1;
    if (o->bad_shape && strcmp(o->bad_shape, name) == 0) e->shape[0]++;
}

/* Writes dir/model.safetensors (BF16, a real layout: 8-byte header length, JSON header padded with
 * spaces to a multiple of 8, data), config.json, generation_config.json, tokenizer.model. */
static int hf_write(const char *dir, const hf_opts *o) {
    mkdir(dir, 0755);
    static st_entry list[128];
    size_t n = 0;
    char name[96];
    hf_add(list, &n, o, "model.embed_tokens.weight", HF_V, HF_H);
    const int L = 0;
#define NM(fmt, ...) (snprintf(name, sizeof name, fmt, __VA_ARGS__), name)
    hf_add(list, &n, o, NM("model.layers.%d.self_attn.q_proj.weight", L), HF_H, HF_H);
    hf_add(list, &n, o, NM("model.layers.%d.self_attn.k_proj.weight", L), HF_H, HF_H);
    hf_add(list, &n, o, NM("model.layers.%d.self_attn.v_proj.weight", L), HF_H, HF_H);
    hf_add(list, &n, o, NM("model.layers.%d.self_attn.o_proj.weight", L), HF_H, HF_H);
    hf_add(list, &n, o, NM("model.layers.%d.self_attn.rotary_emb.inv_freq", L), HF_H / HF_HEADS / 2, 0);
    hf_add(list, &n, o, NM("model.layers.%d.mlp.gate.gate_network.0.weight", L), HF_E, HF_H);
    hf_add(list, &n, o, NM("model.layers.%d.mlp.gate.gate_network.2.weight", L), HF_E, HF_E);
    hf_add(list, &n, o, NM("model.layers.%d.mlp.gate.weight_noise.weight", L), HF_E, HF_H);
    for (int j = 0; j < HF_E; j++) {
        uint64_t s = o->unequal_sizes && j == 3 ? 2 * HF_S : HF_S;
        hf_add(list, &n, o, NM("model.layers.%d.mlp.calculator.experts.weight_gate.%d", L, j), s, HF_H);
    }
    for (int j = 0; j < HF_E; j++) {
        uint64_t s = o->unequal_sizes && j == 3 ? 2 * HF_S : HF_S;
        hf_add(list, &n, o, NM("model.layers.%d.mlp.calculator.experts.weight_up.%d", L, j), s, HF_H);
    }
    for (int j = 0; j < HF_E; j++) {
        uint64_t s = o->unequal_sizes && j == 3 ? 2 * HF_S : HF_S;
        hf_add(list, &n, o, NM("model.layers.%d.mlp.calculator.experts.weight_down.%d", L, j), HF_H, s);
    }
    hf_add(list, &n, o, NM("model.layers.%d.input_layernorm.weight", L), HF_H, 0);
    hf_add(list, &n, o, NM("model.layers.%d.post_attention_layernorm.weight", L), HF_H, 0);
#undef NM
    hf_add(list, &n, o, "model.norm.weight", HF_H, 0);
    hf_add(list, &n, o, "lm_head.weight", HF_V, HF_H);

    /* header */
    size_t hcap = 65536, hlen = 0;
    char *header = malloc(hcap);
    uint64_t off = 0;
    hlen += (size_t)snprintf(header + hlen, hcap - hlen, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        uint64_t count = list[i].shape[0] * (list[i].n_dims == 2 ? list[i].shape[1] : 1);
        if (list[i].n_dims == 2)
            hlen += (size_t)snprintf(header + hlen, hcap - hlen,
                                     ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu,%llu],"
                                     "\"data_offsets\":[%llu,%llu]}", list[i].name,
                                     (unsigned long long)list[i].shape[0],
                                     (unsigned long long)list[i].shape[1], (unsigned long long)off,
                                     (unsigned long long)(off + 2 * count));
        else
            hlen += (size_t)snprintf(header + hlen, hcap - hlen,
                                     ",\"%s\":{\"dtype\":\"BF16\",\"shape\":[%llu],"
                                     "\"data_offsets\":[%llu,%llu]}", list[i].name,
                                     (unsigned long long)list[i].shape[0], (unsigned long long)off,
                                     (unsigned long long)(off + 2 * count));
        off += 2 * count;
    }
    hlen += (size_t)snprintf(header + hlen, hcap - hlen, "}");
    while (hlen % 8) header[hlen++] = ' ';
    size_t total = 8 + hlen + (size_t)off;
    uint8_t *file = malloc(total);
    uint64_t hl = hlen;
    memcpy(file, &hl, 8);
    memcpy(file + 8, header, hlen);
    uint16_t *data = (uint16_t *)(file + 8 + hlen);
    uint64_t rng = 77;
    for (uint64_t i = 0; i < off / 2; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        float f = (float)((double)(rng >> 40) / 16777216.0 - 0.5) * 0.1f;
        uint32_t bits;
        memcpy(&bits, &f, 4);
        uint16_t b16 = (uint16_t)(bits >> 16);
        memcpy(&data[i], &b16, 2);
    }
    char path[4096];
    test_fmt(path, sizeof path, "%s/model.safetensors", dir);
    int rc = test_write_file(path, file, total);
    free(file);
    free(header);

    /* config.json: the released LlamaMoEConfig key set */
    char sizes[256];
    test_fmt(sizes, sizeof sizes, "[[%d, %d, %d, %d]]", HF_S, HF_S, HF_S,
             o->unequal_sizes ? 2 * HF_S : HF_S);
    char cfg[4096];
    test_fmt(cfg, sizeof cfg,
             "{\n"
             "  \"_name_or_path\": \"tiny-hf-test\",\n"
             "  \"add_weight_norm\": false,\n"
             "  \"architectures\": [\"LlamaMoEForCausalLM\"],\n"
             "  \"bos_token_id\": 1,\n"
             "  \"calculator_type\": \"UniversalCalculator\",\n"
             "  \"capacity_factor\": 1.25,\n"
             "  \"drop_tokens\": true,\n"
             "  \"dropped_padding\": \"zero\",\n"
             "  \"eos_token_id\": 2,\n"
             "  \"gate_add_noise\": true,\n"
             "  \"gate_balance_loss_weight\": 0.01,\n"
             "  \"gate_network\": \"%s\",\n"
             "  \"gate_noise_epsilon\": 0.01,\n"
             "  \"gate_type\": \"TopKBalancedNoisyGate\",\n"
             "  \"gate_use_balance\": true,\n"
             "  \"gate_use_softmax\": true,\n"
             "  \"hidden_act\": \"silu\",\n"
             "  \"hidden_size\": %d,\n"
             "  \"initializer_range\": 0.02,\n"
             "  \"intermediate_size\": %d,\n"
             "  \"max_position_embeddings\": 4096,\n"
             "  \"model_type\": \"llama_moe\",\n"
             "  \"multiply_gate_scores\": true,\n"
             "  \"num_attention_heads\": %d,\n"
             "  \"num_experts\": %d,\n"
             "  \"num_hidden_layers\": 1,\n"
             "  \"num_key_value_heads\": %d,\n"
             "  \"num_selects\": %d,\n"
             "  \"pad_token_id\": 0,\n"
             "  \"pretraining_tp\": 1,\n"
             "  \"rms_norm_eps\": 1e-05,\n"
             "  \"rope_scaling\": null,\n"
             "  \"rope_theta\": 10000.0,\n"
             "  \"score_scale_factor\": 4.0,\n"
             "  \"size_experts\": %s,\n"
             "  \"tie_word_embeddings\": false,\n"
             "  \"torch_dtype\": \"bfloat16\",\n"
             "  \"transformers_version\": \"4.36.2\",\n"
             "  \"use_cache\": true,\n"
             "  \"vocab_size\": %d\n"
             "}\n",
             o->gate_network ? o->gate_network : "mlp", HF_H,
             o->unequal_sizes ? 5 * HF_S : HF_E * HF_S, HF_HEADS, HF_E, HF_HEADS, HF_K, sizes, HF_V);
    test_fmt(path, sizeof path, "%s/config.json", dir);
    rc |= test_write_file(path, cfg, strlen(cfg));
    static const char gen[] = "{\n  \"_from_model_config\": true,\n  \"bos_token_id\": 1,\n"
                              "  \"eos_token_id\": 2,\n  \"pad_token_id\": 0,\n"
                              "  \"transformers_version\": \"4.36.2\"\n}\n";
    test_fmt(path, sizeof path, "%s/generation_config.json", dir);
    rc |= test_write_file(path, gen, strlen(gen));
    size_t tok_size = 0;
    char *tok = test_read_file(test_model_path("llama2-tokenizer.model"), &tok_size);
    test_fmt(path, sizeof path, "%s/tokenizer.model", dir);
    rc |= tok ? test_write_file(path, tok, tok_size) : -1;
    free(tok);
    return rc;
}

/* Converts dir; expects failure (nonzero exit, no output file, a message containing word1 or
 * word2) or success. */
static void hf_expect(const char *dir, const char *case_name, bool want_ok, const char *word1,
                      const char *word2) {
    char out_path[4096];
    test_fmt(out_path, sizeof out_path, "%s.gguf", dir);
    char *out = NULL;
    int status = convert_hf(dir, out_path, "f32", &out);
    const char *text = out ? out : "";
    if (want_ok) {
        CHECK_MSG(status == 0 && file_exists(out_path), "%s: conversion should succeed, exit %d:\n%s",
                  case_name, status, text);
    } else {
        /* the last line of the output is the error */
        const char *last = text + strlen(text);
        while (last > text && last[-1] == '\n') last--;
        const char *start = last;
        while (start > text && start[-1] != '\n') start--;
        printf("%s: exit %d: %.*s\n", case_name, status, (int)(last - start), start);
        CHECK_MSG(status != 0 && status != -1, "%s: llamamoe-convert exited with %d", case_name,
                  status);
        CHECK_MSG(!file_exists(out_path), "%s: %s exists after a failed conversion", case_name,
                  out_path);
        CHECK_MSG(strstr(text, word1) || (word2 && strstr(text, word2)),
                  "%s: the message does not name '%s'%s%s:\n%s", case_name, word1,
                  word2 ? " or " : "", word2 ? word2 : "", text);
    }
    free(out);
}

static int copy_file(const char *from, const char *to, size_t keep /* SIZE_MAX: all */) {
    size_t size = 0;
    char *data = test_read_file(from, &size);
    if (!data) return -1;
    int rc = test_write_file(to, data, keep < size ? keep : size);
    free(data);
    return rc;
}

static void test_bad_hf(void) {
    char dir[4096];
    const char *base = "hf-";
    struct {
        const char *name;
        hf_opts o;
        bool ok;
        const char *word1, *word2;
    } cases[] = {
        {"valid", {0}, true, NULL, NULL},
        {"missing-expert", {.omit = "model.layers.0.mlp.calculator.experts.weight_up.1"}, false,
         "model.layers.0.mlp.calculator.experts.weight_up.1", NULL},
        {"missing-gate", {.omit = "model.layers.0.mlp.gate.gate_network.2.weight"}, false,
         "model.layers.0.mlp.gate.gate_network.2.weight", NULL},
        {"wrong-shape", {.bad_shape = "model.layers.0.mlp.calculator.experts.weight_down.2"}, false,
         "model.layers.0.mlp.calculator.experts.weight_down.2", NULL},
        {"wrong-shape-attn", {.bad_shape = "model.layers.0.self_attn.k_proj.weight"}, false,
         "model.layers.0.self_attn.k_proj.weight", NULL},
        {"gate-conv", {.gate_network = "conv"}, false, "gate_network", "conv"},
        {"unequal-sizes", {.unequal_sizes = true}, false, "size_experts", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[128];
        test_fmt(name, sizeof name, "%s%s", base, cases[i].name);
        test_fmt(dir, sizeof dir, "%s", test_tmp_path(name));
        int rc = hf_write(dir, &cases[i].o);
        CHECK_MSG(rc == 0, "%s: cannot write the folder", name);
        if (rc != 0) continue;
        hf_expect(dir, name, cases[i].ok, cases[i].word1, cases[i].word2);
        if (cases[i].ok) {
            /* the valid tiny model loads and evaluates */
            char gguf[4096];
            test_fmt(gguf, sizeof gguf, "%s.gguf", dir);
            lmoe_model *m = NULL;
            CHECK_OK(lmoe_model_load(gguf, NULL, &m));
            if (m) {
                lmoe_model_info info;
                CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
                CHECK_MSG(info.n_expert == HF_E && info.n_expert_used == HF_K && info.n_ff == HF_S &&
                          info.n_embd == HF_H && info.n_layer == 1 && info.n_vocab == HF_V,
                          "tiny HF model: experts %d used %d ff %d", info.n_expert,
                          info.n_expert_used, info.n_ff);
                lmoe_context *ctx = make_ctx(m, 1, NULL);
                lmoe_token t[3] = {1, 450, 7483};
                if (ctx) {
                    CHECK_OK(lmoe_eval(ctx, t, 3));
                    const float *lg = lmoe_logits(ctx);
                    bool finite = lg != NULL;
                    for (int j = 0; lg && j < HF_V; j++) finite &= isfinite(lg[j]) != 0;
                    CHECK_MSG(finite, "tiny HF model: logits not finite");
                }
                lmoe_context_free(ctx);
                lmoe_model_free(m);
            }
        }
    }

    /* the 2_8 folder with its second shard truncated (inside the data; inside the header), or
     * missing */
    static const char *const files[] = {"config.json", "generation_config.json",
                                        "model.safetensors.index.json", "tokenizer.model",
                                        "model-00001-of-00002.safetensors"};
    const char *shard2 = "model-00002-of-00002.safetensors";
    struct {
        const char *name;
        size_t keep;
    } trunc[] = {{"hf-2_8-truncated-data", 6596824 - 1000},
                 {"hf-2_8-truncated-header", 100},
                 {"hf-2_8-shard-missing", 0}};
    for (size_t c = 0; c < sizeof trunc / sizeof trunc[0]; c++) {
        test_fmt(dir, sizeof dir, "%s", test_tmp_path(trunc[c].name));
        mkdir(dir, 0755);
        char from[4096], to[4096];
        int rc = 0;
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            char rel[256];
            test_fmt(rel, sizeof rel, "tiny-llama-moe-2_8/%s", files[i]);
            test_fmt(from, sizeof from, "%s", test_model_path(rel));
            test_fmt(to, sizeof to, "%s/%s", dir, files[i]);
            rc |= copy_file(from, to, SIZE_MAX);
        }
        char rel[256];
        test_fmt(rel, sizeof rel, "tiny-llama-moe-2_8/%s", shard2);
        test_fmt(from, sizeof from, "%s", test_model_path(rel));
        test_fmt(to, sizeof to, "%s/%s", dir, shard2);
        unlink(to);
        if (trunc[c].keep) rc |= copy_file(from, to, trunc[c].keep);
        CHECK_MSG(rc == 0, "%s: cannot copy the folder", trunc[c].name);
        if (rc == 0) hf_expect(dir, trunc[c].name, false, shard2, NULL);
    }
}

/* ------------------------------------------------------------------------------------------------
 * 4. RssAnon: the weights stay in the file mapping
 * ---------------------------------------------------------------------------------------------- */

static long rss_anon_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "RssAnon:", 8) == 0) kb = strtol(line + 8, NULL, 10);
    fclose(f);
    return kb;
}

typedef struct rss_report {
    int ok;                      /* 1 if everything ran */
    long before_kb, after_load_kb, after_ctx_kb, after_eval_kb;
    uint64_t n_bytes;
    int32_t n_layer, n_embd, n_head, n_head_kv, n_vocab, n_ff, n_expert;
    char error[256];
} rss_report;

/* The child mode (a fresh process, so that the heap holds nothing freed by the rest of the test):
 * test_llama_moe --rss-child GGUF VOCAB_ONLY ID... loads the model, creates a context, evaluates
 * the ids and prints one line: "ok BEFORE AFTER_LOAD AFTER_CTX AFTER_EVAL N_BYTES N_LAYER N_EMBD
 * N_HEAD N_HEAD_KV N_VOCAB N_FF N_EXPERT" (RssAnon in kB), or "error MESSAGE". */
static int rss_child(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *gguf = argv[2];
    int vocab_only = atoi(argv[3]);
    lmoe_token ids[MAX_IDS];
    size_t n_ids = 0;
    for (int i = 4; i < argc && n_ids < MAX_IDS; i++) ids[n_ids++] = (lmoe_token)atoi(argv[i]);
    rss_report r;
    memset(&r, 0, sizeof r);
    lmoe_model_params mp;
    lmoe_model_default_params(&mp, sizeof mp);
    mp.vocab_only = vocab_only;
    lmoe_model *m = NULL;
    r.before_kb = rss_anon_kb();
    lmoe_status st = lmoe_model_load(gguf, &mp, &m);
    r.after_load_kb = rss_anon_kb();
    if (st == LMOE_OK) {
        lmoe_model_info info;
        lmoe_model_get_info(m, &info, sizeof info);
        r.n_bytes = info.n_bytes;
        r.n_layer = info.n_layer;
        r.n_embd = info.n_embd;
        r.n_head = info.n_head;
        r.n_head_kv = info.n_head_kv;
        r.n_vocab = info.n_vocab;
        r.n_ff = info.n_ff;
        r.n_expert = info.n_expert;
    }
    lmoe_context *ctx = NULL;
    if (st == LMOE_OK && !vocab_only) {
        lmoe_context_params cp;
        lmoe_context_default_params(&cp, sizeof cp);
        cp.n_ctx = N_CTX;
        cp.n_threads = 1;
        st = lmoe_context_create(m, &cp, &ctx);
        r.after_ctx_kb = rss_anon_kb();
        if (st == LMOE_OK) st = lmoe_eval(ctx, ids, n_ids);
        r.after_eval_kb = rss_anon_kb(); /* measured with everything still alive */
    }
    if (st == LMOE_OK)
        printf("ok %ld %ld %ld %ld %llu %d %d %d %d %d %d %d\n", r.before_kb, r.after_load_kb,
               r.after_ctx_kb, r.after_eval_kb, (unsigned long long)r.n_bytes, (int)r.n_layer,
               (int)r.n_embd, (int)r.n_head, (int)r.n_head_kv, (int)r.n_vocab, (int)r.n_ff,
               (int)r.n_expert);
    else
        printf("error %s\n", lmoe_last_error());
    lmoe_context_free(ctx);
    lmoe_model_free(m);
    return st == LMOE_OK ? 0 : 1;
}

/* Runs the child mode of this program (re-executed through /proc/self/exe). */
static rss_report rss_measure(const char *gguf, bool vocab_only, const lmoe_token *ids, size_t n_ids) {
    rss_report rep;
    memset(&rep, 0, sizeof rep);
    static char id_text[MAX_IDS][16];
    char *argv[MAX_IDS + 6];
    int n = 0;
    argv[n++] = "/proc/self/exe";
    argv[n++] = "--rss-child";
    argv[n++] = (char *)gguf;
    argv[n++] = vocab_only ? "1" : "0";
    for (size_t i = 0; i < n_ids && i < MAX_IDS; i++) {
        test_fmt(id_text[i], sizeof id_text[i], "%d", (int)ids[i]);
        argv[n++] = id_text[i];
    }
    argv[n] = NULL;
    char *out = NULL;
    size_t len = 0;
    int status = test_run(argv, &out, &len);
    unsigned long long n_bytes = 0;
    int f[7] = {0};
    if (status == 0 && out &&
        sscanf(out, "ok %ld %ld %ld %ld %llu %d %d %d %d %d %d %d", &rep.before_kb,
               &rep.after_load_kb, &rep.after_ctx_kb, &rep.after_eval_kb, &n_bytes, &f[0], &f[1],
               &f[2], &f[3], &f[4], &f[5], &f[6]) == 12) {
        rep.ok = 1;
        rep.n_bytes = n_bytes;
        rep.n_layer = f[0];
        rep.n_embd = f[1];
        rep.n_head = f[2];
        rep.n_head_kv = f[3];
        rep.n_vocab = f[4];
        rep.n_ff = f[5];
        rep.n_expert = f[6];
    } else {
        test_fmt(rep.error, sizeof rep.error, "child exited with %d: %s", status, out ? out : "");
    }
    free(out);
    return rep;
}

static void test_rss(const char *type) {
    static golden g;
    if (load_golden("tiny-llama-moe-2_8", &g) != 0) return;
    char name[128], gguf[4096];
    test_fmt(name, sizeof name, "tiny-llama-moe-2_8-%s.gguf", type);
    test_fmt(gguf, sizeof gguf, "%s", test_tmp_path(name));
    if (!file_exists(gguf)) { /* TEST_ONLY=rss: convert here */
        char dir[4096];
        test_fmt(dir, sizeof dir, "%s", test_model_path("tiny-llama-moe-2_8"));
        convert_hf(dir, gguf, type, NULL);
    }
    const golden_prompt *gp = &g.prompts[0];
    rss_report voc = rss_measure(gguf, true, gp->ids, gp->n_ids);
    rss_report full = rss_measure(gguf, false, gp->ids, gp->n_ids);
    golden_free(&g);
    CHECK_MSG(voc.ok && full.ok, "RssAnon %s: the child failed: %s%s", type, voc.error, full.error);
    if (!voc.ok || !full.ok || voc.before_kb < 0) return;
    /* Allowance for what the library legitimately allocates (bytes):
     *   vocabulary:  measured: the growth of a vocab_only load of the same file;
     *   KV cache:    2 * n_layer * n_ctx * n_embd_kv * 4;
     *   activations: generous: per position of the context 16 vectors of n_embd and 4 of
     *                n_expert * n_ff, plus 4 vectors of n_vocab (logits and scratch), in f32
     *                (the library computes only the last position's logits);
     *   slack:       2 MiB for malloc arenas, the thread pool, page-granular rounding and the
     *                kernel's lazily synchronised RSS counters.
     * Anything else must be < 10% of the tensor bytes: a copy of the weights is not. */
    uint64_t n_embd_kv = (uint64_t)full.n_embd / (uint64_t)full.n_head * (uint64_t)full.n_head_kv;
    uint64_t vocab = (uint64_t)(voc.after_load_kb - voc.before_kb) * 1024;
    uint64_t kv = 2ull * (uint64_t)full.n_layer * N_CTX * n_embd_kv * 4;
    uint64_t act = (uint64_t)N_CTX *
                       (16ull * (uint64_t)full.n_embd +
                        4ull * (uint64_t)full.n_expert * (uint64_t)full.n_ff) * 4 +
                   4ull * (uint64_t)full.n_vocab * 4;
    uint64_t slack = 2ull << 20;
    uint64_t allowance = vocab + kv + act + slack;
    uint64_t limit = full.n_bytes / 10 + allowance;
    uint64_t growth = (uint64_t)(full.after_eval_kb > full.before_kb ? full.after_eval_kb - full.before_kb : 0) * 1024;
    printf("RssAnon (%s, tensor bytes %llu): before %ld kB, after load %ld kB, after context %ld kB, "
           "after eval %ld kB: growth %llu bytes; allowed %llu = 10%% of tensors %llu + vocab %llu + "
           "KV %llu + activations %llu + slack %llu\n",
           type, (unsigned long long)full.n_bytes, full.before_kb, full.after_load_kb,
           full.after_ctx_kb, full.after_eval_kb, (unsigned long long)growth,
           (unsigned long long)limit, (unsigned long long)(full.n_bytes / 10),
           (unsigned long long)vocab, (unsigned long long)kv, (unsigned long long)act,
           (unsigned long long)slack);
    if (strcmp(type, "f32") == 0) {
        CHECK_MSG(growth < limit, "RssAnon grew by %llu bytes loading and running the f32 model "
                  "(limit %llu): are the weights copied?", (unsigned long long)growth,
                  (unsigned long long)limit);
        test_summary("%-32s RssAnon growth %.1f MB, limit %.1f MB (tensors %.1f MB)", "rss 2_8 f32",
                (double)growth / 1e6, (double)limit / 1e6, (double)full.n_bytes / 1e6);
    } else {
        test_summary("%-32s RssAnon growth %.1f MB (informative; tensors %.1f MB)", "rss 2_8 bf16",
                (double)growth / 1e6, (double)full.n_bytes / 1e6);
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_llama_moe LLAMAMOE_CONVERT LLAMAMOE_CLI\n");
        return 2;
    }
    if (strcmp(argv[1], "--rss-child") == 0) return rss_child(argc, argv);
    test_require_models();
    convert_tool = argv[1];
    cli_tool = argv[2];
    const char *only = getenv("TEST_ONLY"); /* golden, synthetic, hf, rss: run one part */
    if (!only || !strcmp(only, "golden")) {
        test_golden_model("tiny-llama-moe-4_16");
        test_golden_model("tiny-llama-moe-2_8");
    }
    if (!only || !strcmp(only, "synthetic")) test_synthetic();
    if (!only || !strcmp(only, "hf")) test_bad_hf();
    if (!only || !strcmp(only, "rss")) {
        test_rss("f32");
        test_rss("bf16");
    }
    printf("\nsummary (max |differences|):\n");
    test_summary_print();
    return test_finish("test_llama_moe");
}
