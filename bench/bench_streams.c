/* bench_streams.c - aggregate decode speed of several streams advanced together
 * (lmoe_eval_streams) against one stream at a time: decoding reads every active weight once per
 * step, so S streams in one pass should cost far less than S single-stream steps.
 *
 *   bench_streams MODEL.gguf [-t THREADS] [-n STEPS] [-s 1,2,4,8]
 *
 * Each stream first reads a short prompt of its own; then STEPS steps (default 32) each advance
 * every stream by its greedy token. Prints a markdown table: streams, aggregate tokens/s, speed-up
 * over one stream, and time per step. Measured, never asserted (docs/PERFORMANCE.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llamamoe.h"

#define MAX_STREAMS 64

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static lmoe_token argmax(const float *logits, int32_t n) {
    lmoe_token best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

static int fail(const char *what) {
    fprintf(stderr, "bench_streams: %s: %s\n", what, lmoe_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *path = NULL, *list = "1,2,4,8";
    int threads = 0, steps = 32;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-s") && i + 1 < argc) list = argv[++i];
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else {
            fprintf(stderr, "usage: bench_streams MODEL.gguf [-t THREADS] [-n STEPS] [-s 1,2,4,8]\n");
            return 2;
        }
    }
    if (!path || steps < 1) {
        fprintf(stderr, "usage: bench_streams MODEL.gguf [-t THREADS] [-n STEPS] [-s 1,2,4,8]\n");
        return 2;
    }
    int counts[16], n_counts = 0, most = 1;
    for (const char *p = list; *p && n_counts < 16;) {
        int v = atoi(p);
        if (v < 1 || v > MAX_STREAMS) {
            fprintf(stderr, "bench_streams: stream counts are 1..%d\n", MAX_STREAMS);
            return 2;
        }
        counts[n_counts++] = v;
        most = v > most ? v : most;
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    lmoe_model *model = NULL;
    if (lmoe_model_load(path, NULL, &model) != LMOE_OK) return fail(path);
    lmoe_model_info info;
    lmoe_model_get_info(model, &info, sizeof info);
    lmoe_context *ctx[MAX_STREAMS] = {0};
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_threads = threads;
    cp.n_ctx = 16 + (uint32_t)steps * 2 + 8;
    for (int i = 0; i < most; i++)
        if (lmoe_context_create(model, &cp, &ctx[i]) != LMOE_OK) return fail("creating a context");
    printf("%s: %d layers, %d experts (%d used); %d steps per row, threads %d (0: one per CPU)\n\n",
           path, info.n_layer, info.n_expert, info.n_expert_used, steps, threads);
    printf("| streams | tokens/s (all streams) | vs 1 stream | ms per step |\n|---|---|---|---|\n");
    double one = 0;
    for (int c = 0; c < n_counts; c++) {
        int s = counts[c];
        lmoe_token next[MAX_STREAMS];
        for (int i = 0; i < s; i++) { /* a short prompt of its own, then warm-up steps */
            lmoe_context_reset(ctx[i]);
            lmoe_token prompt[8] = {1, (lmoe_token)(10 + i), 20, 30, 40, 50, 60, 70};
            for (int j = 0; j < 8; j++) prompt[j] %= info.n_vocab;
            if (lmoe_eval(ctx[i], prompt, 8) != LMOE_OK) return fail("prompt");
            next[i] = argmax(lmoe_logits(ctx[i]), info.n_vocab);
        }
        for (int w = 0; w < 4; w++) {
            if (lmoe_eval_streams(ctx, next, (size_t)s) != LMOE_OK) return fail("warm-up");
            for (int i = 0; i < s; i++) next[i] = argmax(lmoe_logits(ctx[i]), info.n_vocab);
        }
        double t0 = now_s();
        for (int step = 0; step < steps; step++) {
            if (lmoe_eval_streams(ctx, next, (size_t)s) != LMOE_OK) return fail("step");
            for (int i = 0; i < s; i++) next[i] = argmax(lmoe_logits(ctx[i]), info.n_vocab);
        }
        double dt = now_s() - t0, rate = (double)s * steps / dt;
        if (s == 1) one = rate;
        printf("| %d | %.2f | %s%.2fx | %.1f |\n", s, rate, one ? "" : "? ", one ? rate / one : 0,
               dt / steps * 1e3);
        fflush(stdout);
    }
    for (int i = 0; i < most; i++) lmoe_context_free(ctx[i]);
    lmoe_model_free(model);
    return 0;
}
