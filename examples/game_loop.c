/* game_loop.c - generate text inside a simulated 60 fps game loop without missing frames.
 *
 *   game_loop -m MODEL.gguf [-p PROMPT] [-n MAX_TOKENS] [-t THREADS] [-w WORK_MS]
 *
 * Each frame has a budget of 16.7 ms. The frame first does its "game work" (here a sleep of
 * WORK_MS, default 4 ms; every 30th frame is a heavy one that sleeps 15 ms). Then, if the time left
 * in the frame is at least the running estimate of what one step costs, the generation advances by
 * one step (lmoe_generation_step: one prompt token evaluated, or one token sampled and evaluated)
 * and prints the text it released. Otherwise generation skips this frame. Finally the loop sleeps
 * until the next frame starts. At the end it reports frames, steps, the frames that skipped
 * generation and the worst frame time.
 *
 * Shows: step-wise generation (lmoe_generation_start / _step / _free), the same generation as
 * lmoe_generate (stop conditions included) with the caller deciding when each token is made.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llamamoe.h"

#define FRAME_MS (1000.0 / 60.0) /* 16.7 ms */
#define HEAVY_EVERY 30           /* every 30th frame does heavy game work ... */
#define HEAVY_WORK_MS 15.0       /* ... that leaves too little time for a token */
#define RESERVE_MS 2.0           /* kept free in every frame for the OS's sleep/wake-up jitter */

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static void sleep_ms(double ms) {
    if (ms <= 0) return;
    struct timespec t = {(time_t)(ms / 1e3), (long)((ms - (double)(time_t)(ms / 1e3) * 1e3) * 1e6)};
    while (nanosleep(&t, &t) != 0) {} /* resume after a signal */
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s -m MODEL.gguf [-p PROMPT] [-n MAX_TOKENS] [-t THREADS] [-w WORK_MS]\n"
            "  generates at most one token per 60 fps frame, only when the frame has time left\n",
            argv0);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *prompt = "Once upon a time";
    long max_tokens = 100, n_threads = 1; /* a game keeps most cores for itself */
    double work_ms = 4.0;
    for (int i = 1; i < argc; i += 2) { /* options come as pairs: -x VALUE */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!v || a[0] != '-' || a[1] == '\0' || a[2] != '\0') { usage(argv[0]); return 2; }
        switch (a[1]) {
        case 'm': model_path = v; break;
        case 'p': prompt = v; break;
        case 'n': max_tokens = strtol(v, &end, 10); break;
        case 't': n_threads = strtol(v, &end, 10); break;
        case 'w': work_ms = strtod(v, &end); break;
        default: usage(argv[0]); return 2;
        }
        if (end && (*end != '\0' || end == v)) { usage(argv[0]); return 2; }
    }
    if (!model_path || max_tokens < 0 || n_threads < 0 || !(work_ms >= 0 && work_ms < FRAME_MS)) {
        usage(argv[0]);
        return 2;
    }

    lmoe_model *model = NULL;
    lmoe_context *ctx = NULL;
    lmoe_sampler *sampler = NULL;
    lmoe_generation *gen = NULL;
    int rc = 1;

    lmoe_status st = lmoe_model_load(model_path, NULL, &model);
    if (st != LMOE_OK) goto fail;
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_threads = (int32_t)n_threads;
    if ((st = lmoe_context_create(model, &cp, &ctx)) != LMOE_OK) goto fail;
    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = 0.8f;
    if ((st = lmoe_sampler_create(&sp, &sampler)) != LMOE_OK) goto fail;

    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = (int32_t)max_tokens;
    /* nothing is evaluated yet: the prompt is evaluated one token per step, in the frames */
    if ((st = lmoe_generation_start(ctx, sampler, prompt, strlen(prompt), &gp, &gen)) != LMOE_OK)
        goto fail;
    fputs(prompt, stdout);
    fflush(stdout);

    /* The loop. est_step_ms is a running average of what one step costs; it starts at 0 so the
     * first frame measures it. A step is made only if it fits, with a 25% margin, into what is
     * left of the frame after RESERVE_MS. */
    double est_step_ms = 0, worst_frame_ms = 0;
    long frames = 0, steps = 0, skipped = 0, over_budget = 0;
    lmoe_stop_reason stopped = LMOE_STOP_NONE;
    double next_frame = now_ms();
    while (stopped == LMOE_STOP_NONE) {
        double frame_start = next_frame;
        next_frame += FRAME_MS;
        frames++;

        /* the game's own work */
        sleep_ms(frames % HEAVY_EVERY == 0 ? HEAVY_WORK_MS : work_ms);

        double left = next_frame - now_ms();
        if (est_step_ms * 1.25 > left - RESERVE_MS) {
            skipped++; /* not enough time this frame: leave the text as it is */
        } else {
            double t0 = now_ms();
            const char *text = NULL;
            size_t len = 0;
            st = lmoe_generation_step(gen, &text, &len, &stopped);
            if (st == LMOE_ERR_CONTEXT_FULL) break; /* the context is full: the text ends */
            if (st != LMOE_OK) goto fail;
            fwrite(text, 1, len, stdout); /* the text grows by what this step released */
            fflush(stdout);
            steps++;
            double cost = now_ms() - t0;
            est_step_ms = est_step_ms == 0 ? cost : 0.8 * est_step_ms + 0.2 * cost;
        }

        /* wait for the next frame (if this one overran, start the next at once) */
        double now = now_ms();
        if (now < next_frame) sleep_ms(next_frame - now);
        else next_frame = now;
        double frame_ms = now_ms() - frame_start;
        if (frame_ms > worst_frame_ms) worst_frame_ms = frame_ms;
        if (frame_ms > FRAME_MS + 0.5) over_budget++; /* late by more than half a millisecond */
    }
    static const char *const why[] = {"the context is full", "end of text (EOS)",
                                      "end of text (BOS)", "a stop string",
                                      "the maximum number of tokens (-n)", "a callback"};
    putchar('\n');
    fflush(stdout);
    fprintf(stderr,
            "stopped: %s\nframes %ld, steps %ld, frames that skipped generation %ld, "
            "worst frame %.2f ms (budget %.2f ms), frames late by > 0.5 ms %ld, one step ~%.3f ms\n",
            why[stopped <= LMOE_STOP_CALLBACK ? stopped : 0], frames, steps, skipped,
            worst_frame_ms, FRAME_MS, over_budget, est_step_ms);
    rc = 0;
    goto out;

fail:
    fprintf(stderr, "error: %s (%s)\n", lmoe_last_error(), lmoe_status_string(st));
out:
    lmoe_generation_free(gen);
    lmoe_sampler_free(sampler);
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    return rc;
}
