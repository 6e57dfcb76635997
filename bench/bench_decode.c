/* bench_decode - prompt and decode speed of a model, and the weight bandwidth decode achieves.
 *
 *   bench_decode MODEL.gguf [N_THREADS] [N_TOKENS] [REPEATS]
 *
 * Decode reads every active weight once per token (for MoE, only the selected experts'), so
 * active-weight bytes x tokens/s is the bandwidth the forward pass sustains; compare it with the
 * machine's memory bandwidth (docs/PERFORMANCE.md). The figure counts the whole embedding table,
 * of which a token reads one row, so for small-vocabulary-heavy models it is an overestimate. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "bench_util.h"
#include "llamamoe.h"



int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_decode MODEL.gguf [N_THREADS] [N_TOKENS] [REPEATS]\n");
        return 2;
    }
    int n_threads = argc > 2 ? atoi(argv[2]) : 0;
    int n_tokens = argc > 3 ? atoi(argv[3]) : 128;
    int repeats = argc > 4 ? atoi(argv[4]) : 5;
    if (n_tokens < 2 || repeats < 1 || repeats > 100) {
        fprintf(stderr, "bench_decode: N_TOKENS >= 2 and 1 <= REPEATS <= 100\n");
        return 2;
    }
    lmoe_model *model = NULL;
    lmoe_context *ctx = NULL;
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_threads = n_threads;
    cp.n_ctx = (uint32_t)n_tokens;
    lmoe_model_info info;
    lmoe_status st = lmoe_model_load(argv[1], NULL, &model);
    if (st == LMOE_OK) st = lmoe_model_get_info(model, &info, sizeof info);
    if (st == LMOE_OK) st = lmoe_context_create(model, &cp, &ctx);
    lmoe_token *tokens = malloc((size_t)n_tokens * sizeof *tokens);
    if (st != LMOE_OK || !tokens) {
        fprintf(stderr, "bench_decode: %s\n", tokens ? lmoe_last_error() : "out of memory");
        return 1;
    }
    for (int i = 0; i < n_tokens; i++) tokens[i] = (lmoe_token)((i * 7919 + 1) % info.n_vocab);

    double prompt_s[100], decode_s[100];
    for (int r = 0; r < repeats && st == LMOE_OK; r++) {
        lmoe_context_reset(ctx);
        double t0 = bench_now();
        st = lmoe_eval(ctx, tokens, (size_t)n_tokens);
        prompt_s[r] = bench_now() - t0;
        lmoe_context_reset(ctx);
        t0 = bench_now();
        for (int i = 0; i < n_tokens && st == LMOE_OK; i++) st = lmoe_eval(ctx, &tokens[i], 1);
        decode_s[r] = bench_now() - t0;
    }
    if (st != LMOE_OK) {
        fprintf(stderr, "bench_decode: %s\n", lmoe_last_error());
        return 1;
    }
    qsort(prompt_s, (size_t)repeats, sizeof(double), bench_cmp_double);
    qsort(decode_s, (size_t)repeats, sizeof(double), bench_cmp_double);
    double prompt_tps = n_tokens / prompt_s[repeats / 2];
    double decode_tps = n_tokens / decode_s[repeats / 2];
    double active_bytes = (double)info.n_bytes * (double)info.n_params_active / (double)info.n_params;
    printf("model %s: %llu parameters (%llu active), %.1f MB of weights (%.1f MB active)\n",
           argv[1], (unsigned long long)info.n_params, (unsigned long long)info.n_params_active,
           (double)info.n_bytes / 1e6, active_bytes / 1e6);
    printf("threads %d, %d tokens, median of %d: prompt %.1f tokens/s, decode %.1f tokens/s "
           "(prompt/decode %.1fx), decode active-weight bandwidth %.2f GB/s\n", n_threads,
           n_tokens, repeats, prompt_tps, decode_tps, prompt_tps / decode_tps,
           decode_tps * active_bytes / 1e9);
    free(tokens);
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    return 0;
}
