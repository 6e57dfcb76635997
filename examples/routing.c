/* routing.c - show which experts a mixture-of-experts model picks for every token.
 *
 *   routing -m MOE_MODEL.gguf [-p PROMPT] [-n MAX_TOKENS] [-t THREADS]
 *
 * Evaluates the prompt, then generates up to MAX_TOKENS (default 16) tokens greedily, with a
 * routing_fn set in the context params. The callback receives, per layer and token, the selected
 * experts (best first) and their weights; they are stored by position and printed afterwards as
 * one line per token:
 *
 *      pos  token          L0:3=0.62,1=0.38  L1:...
 *
 * Then the per-layer selection counts from lmoe_context_expert_counts, which must agree with what
 * the callback saw. A dense model (n_expert 0) has no routing: the program says so and exits 0.
 *
 * Note that a prompt is evaluated as a batch, routed layer by layer (all the batch's tokens for
 * layer 0, then layer 1, ...), which is why the callback files each decision by its position.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"

typedef struct {
    int32_t n_layer, n_expert, n_used;
    uint32_t capacity; /* positions the arrays hold (the context size) */
    int32_t *experts;  /* [pos][layer][n_used] */
    float *weights;    /* same layout */
    uint64_t *seen;    /* [layer][expert]: selections the callback saw */
} routing_log;

/* routing_fn: runs on the thread inside lmoe_eval; it must not call back into the context. */
static void on_routing(void *user, int32_t layer, uint32_t pos, const int32_t *experts,
                       const float *weights, int32_t n_used) {
    routing_log *r = user;
    if (pos >= r->capacity || layer >= r->n_layer || n_used != r->n_used) return;
    size_t at = ((size_t)pos * (size_t)r->n_layer + (size_t)layer) * (size_t)n_used;
    memcpy(r->experts + at, experts, (size_t)n_used * sizeof *experts);
    memcpy(r->weights + at, weights, (size_t)n_used * sizeof *weights);
    for (int32_t k = 0; k < n_used; k++) r->seen[(size_t)layer * (size_t)r->n_expert + (size_t)experts[k]]++;
}

/* Prints a token's text quoted and escaped, padded to a fixed width. */
static void print_piece(const lmoe_model *model, lmoe_token tok) {
    char piece[256], out[64];
    size_t len = 0, n = 0;
    if (lmoe_token_to_piece(model, tok, 0, piece, sizeof piece, &len) != LMOE_OK) len = 0;
    out[n++] = '\'';
    for (size_t i = 0; i < len && n < sizeof out - 6; i++) {
        unsigned char c = (unsigned char)piece[i];
        if (c == '\n') n += (size_t)snprintf(out + n, sizeof out - n, "\\n");
        else if (c < 0x20 || c == 0x7f) n += (size_t)snprintf(out + n, sizeof out - n, "\\x%02x", c);
        else out[n++] = (char)c;
    }
    out[n++] = '\'';
    out[n] = '\0';
    printf("%-14s", out);
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s -m MOE_MODEL.gguf [-p PROMPT] [-n MAX_TOKENS] [-t THREADS]\n"
            "  prints the experts each layer chose for every token, then the expert counts\n",
            argv0);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = "Once upon a time";
    long max_tokens = 16, n_threads = 1;
    for (int i = 1; i < argc; i += 2) { /* options come as pairs: -x VALUE */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!v || a[0] != '-' || a[1] == '\0' || a[2] != '\0') { usage(argv[0]); return 2; }
        switch (a[1]) {
        case 'm': model_path = v; break;
        case 'p': prompt = v; break;
        case 'n': max_tokens = strtol(v, &end, 10); break;
        case 't': n_threads = strtol(v, &end, 10); break;
        default: usage(argv[0]); return 2;
        }
        if (end && (*end != '\0' || end == v)) { usage(argv[0]); return 2; }
    }
    if (!model_path || max_tokens < 0 || n_threads < 0) {
        usage(argv[0]);
        return 2;
    }

    lmoe_model *model = NULL;
    lmoe_context *ctx = NULL;
    lmoe_sampler *sampler = NULL;
    lmoe_token *tokens = NULL;
    uint64_t *counts = NULL;
    routing_log log = {0};
    int rc = 1;

    lmoe_status st = lmoe_model_load(model_path, NULL, &model);
    if (st != LMOE_OK) goto fail;
    lmoe_model_info info;
    if ((st = lmoe_model_get_info(model, &info, sizeof info)) != LMOE_OK) goto fail;
    if (info.n_expert == 0) {
        printf("%s is a dense model (no experts): there is no routing to show.\n", model_path);
        rc = 0;
        goto out;
    }
    printf("%s: %d layers, %d experts per layer, %d used per token\n", model_path, info.n_layer,
           info.n_expert, info.n_expert_used);

    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_threads = (int32_t)n_threads;
    cp.routing_fn = on_routing; /* every routing decision of every eval on this context */
    cp.routing_user = &log;
    if ((st = lmoe_context_create(model, &cp, &ctx)) != LMOE_OK) goto fail;

    /* The log is filled only by evals, so it may be allocated after the context exists. */
    log.n_layer = info.n_layer;
    log.n_expert = info.n_expert;
    log.n_used = info.n_expert_used;
    log.capacity = lmoe_context_n_ctx(ctx);
    size_t per_pos = (size_t)info.n_layer * (size_t)info.n_expert_used;
    size_t n_counts = (size_t)info.n_layer * (size_t)info.n_expert;
    log.experts = malloc((size_t)log.capacity * per_pos * sizeof *log.experts);
    log.weights = malloc((size_t)log.capacity * per_pos * sizeof *log.weights);
    log.seen = calloc(n_counts, sizeof *log.seen);
    counts = calloc(n_counts, sizeof *counts);
    tokens = malloc((size_t)log.capacity * sizeof *tokens);
    if (!log.experts || !log.weights || !log.seen || !counts || !tokens) {
        fprintf(stderr, "error: out of memory\n");
        goto out;
    }

    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = 0; /* greedy: the same table every run */
    if ((st = lmoe_sampler_create(&sp, &sampler)) != LMOE_OK) goto fail;

    /* The prompt (BOS first), evaluated as one batch. */
    size_t n_tokens = 0;
    st = lmoe_tokenize(model, prompt, strlen(prompt), 1, tokens, log.capacity, &n_tokens);
    if (st != LMOE_OK) goto fail;
    if ((st = lmoe_eval(ctx, tokens, n_tokens)) != LMOE_OK) goto fail;
    size_t n_prompt = n_tokens;

    /* Greedy generation, one token at a time, until EOS/BOS-stop, -n or a full context. Only
     * evaluated tokens were routed, so the token that ends the text is not kept. */
    char flag[16];
    int stop_on_bos = lmoe_model_meta_string(model, "llamamoe.stop_on_bos", flag, sizeof flag,
                                             NULL) == LMOE_OK && strcmp(flag, "true") == 0;
    for (long i = 0; i < max_tokens && n_tokens < log.capacity; i++) {
        lmoe_token tok;
        if ((st = lmoe_sampler_sample(sampler, lmoe_logits(ctx), info.n_vocab, &tok)) != LMOE_OK)
            goto fail;
        if (tok == lmoe_token_eos(model) || (stop_on_bos && tok == lmoe_token_bos(model))) break;
        lmoe_sampler_accept(sampler, tok);
        if ((st = lmoe_eval(ctx, &tok, 1)) != LMOE_OK) goto fail;
        tokens[n_tokens++] = tok;
    }

    /* The table: one line per token, one column per layer. */
    printf("\n pos  token         experts chosen per layer (=weight), best first\n");
    for (size_t pos = 0; pos < n_tokens; pos++) {
        printf("%4zu%c ", pos, pos < n_prompt ? ' ' : '+'); /* '+': a generated token */
        print_piece(model, tokens[pos]);
        for (int32_t l = 0; l < info.n_layer; l++) {
            const int32_t *e = log.experts + pos * per_pos + (size_t)l * (size_t)log.n_used;
            const float *w = log.weights + pos * per_pos + (size_t)l * (size_t)log.n_used;
            printf(" L%d:", l);
            for (int32_t k = 0; k < log.n_used; k++) printf("%s%d=%.2f", k ? "," : "", e[k], w[k]);
        }
        putchar('\n');
    }

    /* The library's own counts, per layer; they must match what the callback saw. */
    if ((st = lmoe_context_expert_counts(ctx, counts, n_counts)) != LMOE_OK) goto fail;
    printf("\nexpert selections per layer (lmoe_context_expert_counts, %zu tokens):\n", n_tokens);
    printf("layer");
    for (int32_t e = 0; e < info.n_expert; e++) {
        char name[16];
        snprintf(name, sizeof name, "e%d", e);
        printf(" %8s", name);
    }
    putchar('\n');
    int match = 1;
    for (int32_t l = 0; l < info.n_layer; l++) {
        printf("L%-4d", l);
        for (int32_t e = 0; e < info.n_expert; e++) {
            size_t at = (size_t)l * (size_t)info.n_expert + (size_t)e;
            printf(" %8llu", (unsigned long long)counts[at]);
            if (counts[at] != log.seen[at]) match = 0;
        }
        putchar('\n');
    }
    if (!match) {
        fprintf(stderr, "error: the counts differ from what routing_fn reported\n");
        goto out;
    }
    printf("(the same counts as the routing_fn calls)\n");
    rc = 0;
    goto out;

fail:
    fprintf(stderr, "error: %s (%s)\n", lmoe_last_error(), lmoe_status_string(st));
out:
    free(tokens);
    free(counts);
    free(log.experts);
    free(log.weights);
    free(log.seen);
    lmoe_sampler_free(sampler);
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    return rc;
}
