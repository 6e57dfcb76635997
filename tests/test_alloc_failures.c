/* test_alloc_failures.c - makes every allocation of a whole session fail in turn.
 *
 * The session loads a model, creates two contexts and a sampler, tokenizes, generates, saves and
 * restores a state, evaluates two streams and generates step by step, then frees everything. It
 * runs through an allocator (lmoe_set_allocator) that fails its N-th call, for every N from 1 to
 * the number of calls a clean session makes, in two modes: only the N-th call fails (a transient
 * failure), and every call from the N-th on fails (memory stays exhausted). Each time:
 *   - the first call that fails returns LMOE_ERR_OUT_OF_MEMORY with a message saying so, and only
 *     when an allocation really failed;
 *   - after everything is freed, no block is alive (nothing leaked);
 *   - a session that succeeds despite a failed allocation produced exactly the clean output;
 *   - a generation step that failed on a transient failure, retried, continues as if nothing had
 *     happened (the API promises that a failed step loses only that step's work).
 * It runs on stories260K (dense) and on the tiny LLaMA-MoE 2/8 checkpoint (routed experts). */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf.h"
#include "llamamoe.h"
#include "test_util.h"

/* ------------------------------------------------------------------------------------------------
 * The failing allocator (atomic: the library may allocate on any of its threads)
 * ---------------------------------------------------------------------------------------------- */

typedef struct failing_allocator {
    atomic_long n_calls;  /* alloc and resize calls so far */
    atomic_long n_failed; /* calls made to fail */
    atomic_long live;     /* blocks handed out and not released */
    long fail_at;         /* 1-based call that fails; 0: none */
    bool keep_failing;    /* every call after fail_at fails too */
} failing_allocator;

static bool should_fail(failing_allocator *fa) {
    long call = atomic_fetch_add(&fa->n_calls, 1) + 1;
    bool fail = fa->fail_at > 0 && (call == fa->fail_at || (fa->keep_failing && call > fa->fail_at));
    if (fail) atomic_fetch_add(&fa->n_failed, 1);
    return fail;
}

static void *fa_alloc(void *user, size_t size) {
    failing_allocator *fa = user;
    if (should_fail(fa)) return NULL;
    void *p = malloc(size);
    if (p) atomic_fetch_add(&fa->live, 1);
    return p;
}

static void *fa_resize(void *user, void *ptr, size_t size) {
    return should_fail(user) ? NULL : realloc(ptr, size);
}

static void fa_release(void *user, void *ptr) {
    failing_allocator *fa = user;
    atomic_fetch_sub(&fa->live, 1);
    free(ptr);
}

static void fa_arm(failing_allocator *fa, long fail_at, bool keep_failing) {
    atomic_store(&fa->n_calls, 0);
    atomic_store(&fa->n_failed, 0);
    fa->fail_at = fail_at;
    fa->keep_failing = keep_failing;
}

/* ------------------------------------------------------------------------------------------------
 * The session
 * ---------------------------------------------------------------------------------------------- */

#define OUT_MAX 2048

typedef struct session_out {
    char text[OUT_MAX];    /* what lmoe_generate and the step-wise generation produced */
    size_t len;
    float logits_sum;      /* of both streams after lmoe_eval_streams */
    int n_retried_steps;   /* generation steps that failed and were retried */
} session_out;

typedef struct session_model {
    const char *label;
    const char *path;      /* loaded from a path ... */
    const void *bytes;     /* ... or, when set, from this 32-byte-aligned buffer */
    size_t size;
} session_model;

static int collect_text(void *user, const char *text, size_t len, lmoe_token token) {
    (void)token;
    session_out *o = user;
    if (o->len + len < OUT_MAX) {
        memcpy(o->text + o->len, text, len);
        o->len += len;
    }
    return 0;
}

static void append(session_out *o, const char *text, size_t len) { collect_text(o, text, len, 0); }

/* The step-wise generation; a step that fails is retried once when the failure was transient. */
static lmoe_status generate_stepwise(lmoe_context *ctx, lmoe_sampler *smp, bool retry,
                                     session_out *o) {
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = 6;
    static const char *const stops[] = {"zebra"};
    gp.stop_strings = stops;
    gp.n_stop_strings = 1;
    lmoe_generation *gen = NULL;
    lmoe_status st = lmoe_generation_start(ctx, smp, " The dog", 8, &gp, &gen);
    lmoe_stop_reason stopped = LMOE_STOP_NONE;
    for (int i = 0; st == LMOE_OK && stopped == LMOE_STOP_NONE && i < 64; i++) {
        const char *text = NULL;
        size_t len = 0;
        st = lmoe_generation_step(gen, &text, &len, &stopped);
        if (st == LMOE_ERR_OUT_OF_MEMORY && retry) {
            o->n_retried_steps++;
            st = lmoe_generation_step(gen, &text, &len, &stopped);
        }
        if (st == LMOE_OK) append(o, text, len);
    }
    lmoe_generation_free(gen);
    return st;
}

/* Runs the session; returns the first failure (LMOE_OK if none). Everything is freed either way. */
static lmoe_status run_session(const session_model *sm, bool retry_steps, session_out *o) {
    memset(o, 0, sizeof *o);
    lmoe_model *m = NULL;
    lmoe_context *ctx = NULL, *ctx2 = NULL;
    lmoe_sampler *smp = NULL;
    void *state = NULL;
    lmoe_status st = sm->bytes ? lmoe_model_load_from_memory(sm->bytes, sm->size, NULL, &m)
                               : lmoe_model_load(sm->path, NULL, &m);
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 48;
    cp.n_threads = 2;
    cp.n_batch = 8;
    if (st == LMOE_OK) st = lmoe_context_create(m, &cp, &ctx);
    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = 0.8f;
    sp.top_k = 40;
    sp.repeat_penalty = 1.1f;
    sp.seed = 7;
    if (st == LMOE_OK) st = lmoe_sampler_create(&sp, &smp);
    lmoe_token ids[32];
    size_t n_ids = 0;
    static const char prompt[] = "Once upon a time, \xff a cat";
    if (st == LMOE_OK) st = lmoe_tokenize(m, prompt, sizeof prompt - 1, 1, ids, 32, &n_ids);
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = 8;
    gp.on_text = collect_text;
    gp.user = o;
    if (st == LMOE_OK) st = lmoe_generate(ctx, smp, prompt, sizeof prompt - 1, &gp, NULL, 0);
    /* the state goes through the caller's memory, not the library's */
    size_t state_size = st == LMOE_OK ? lmoe_context_state_size(ctx) : 0;
    if (st == LMOE_OK) {
        state = malloc(state_size);
        st = state ? lmoe_context_state_save(ctx, state, state_size, NULL) : LMOE_ERR_INTERNAL;
    }
    if (st == LMOE_OK) st = lmoe_context_create(m, &cp, &ctx2);
    if (st == LMOE_OK) st = lmoe_context_state_load(ctx2, state, state_size);
    if (st == LMOE_OK) {
        lmoe_context *both[2] = {ctx, ctx2};
        lmoe_token next[2] = {ids[1], ids[2]};
        st = lmoe_eval_streams(both, next, 2);
    }
    if (st == LMOE_OK) {
        lmoe_model_info info;
        st = lmoe_model_get_info(m, &info, sizeof info);
        for (int32_t i = 0; st == LMOE_OK && i < info.n_vocab; i++)
            o->logits_sum += lmoe_logits(ctx)[i] + lmoe_logits(ctx2)[i];
    }
    if (st == LMOE_OK) st = generate_stepwise(ctx2, smp, retry_steps, o);
    free(state);
    lmoe_sampler_free(smp);
    lmoe_context_free(ctx2);
    lmoe_context_free(ctx);
    lmoe_model_free(m);
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * The loops
 * ---------------------------------------------------------------------------------------------- */

static bool same_output(const session_out *a, const session_out *b) {
    return a->len == b->len && memcmp(a->text, b->text, a->len) == 0 &&
           a->logits_sum == b->logits_sum;
}

static void check_model(failing_allocator *fa, const session_model *sm) {
    session_out clean, o;
    fa_arm(fa, 0, false);
    lmoe_status st = run_session(sm, false, &clean);
    CHECK_MSG(st == LMOE_OK, "%s: clean session: %s", sm->label, lmoe_last_error());
    if (st != LMOE_OK) return;
    long n_calls = atomic_load(&fa->n_calls);
    CHECK_MSG(atomic_load(&fa->live) == 0, "%s: %ld blocks leaked by a clean session", sm->label,
              atomic_load(&fa->live));
    CHECK_MSG(clean.len > 0, "%s: the clean session generated no text", sm->label);

    for (int keep_failing = 0; keep_failing <= 1; keep_failing++) {
        int n_bad = 0, n_absorbed = 0, n_retried = 0;
        long n;
        for (n = 1; n <= n_calls; n++) {
            fa_arm(fa, n, keep_failing);
            st = run_session(sm, !keep_failing, &o);
            long failed = atomic_load(&fa->n_failed), live = atomic_load(&fa->live);
            bool ok = live == 0 && failed > 0;
            if (st == LMOE_OK) {
                ok = ok && same_output(&o, &clean);
                n_absorbed++;
            } else {
                ok = ok && st == LMOE_ERR_OUT_OF_MEMORY &&
                     strstr(lmoe_last_error(), "out of memory") != NULL;
            }
            n_retried += o.n_retried_steps;
            if (!ok && n_bad++ < 10)
                fprintf(stderr, "%s: allocation %ld of %ld failing (%s): status %d (%s), %ld "
                        "failed, %ld blocks leaked, output %s\n", sm->label, n, n_calls,
                        keep_failing ? "and all after" : "only", (int)st, lmoe_last_error(),
                        failed, live, st == LMOE_OK && !same_output(&o, &clean) ? "differs" : "ok");
            atomic_store(&fa->live, 0);
        }
        CHECK_MSG(n_bad == 0, "%s: %d of %ld injected failures misbehaved (%s)", sm->label, n_bad,
                  n_calls, keep_failing ? "persistent" : "transient");
        test_summary("%s: %ld allocations, each failed in turn %s: all gave LMOE_ERR_OUT_OF_MEMORY "
                     "or the clean output (%d absorbed, %d steps retried), no leak", sm->label,
                     n_calls, keep_failing ? "for good" : "once", n_absorbed, n_retried);
    }
}

/* A whole file into a 32-byte-aligned buffer (lmoe_model_load_from_memory needs the alignment). */
static void *read_aligned(const char *path, size_t *size) {
    char *bytes = test_read_file(path, size);
    if (!bytes) return NULL;
    void *aligned = aligned_alloc(32, (*size + 31) / 32 * 32);
    if (aligned) memcpy(aligned, bytes, *size);
    free(bytes);
    return aligned;
}

int main(void) {
    test_require_models();
    const char *stories = test_stories_gguf("alloc-stories260K.gguf");
    CHECK_MSG(stories != NULL, "cannot convert stories260K");
    static char moe[4096];
    test_fmt(moe, sizeof moe, "%s", test_tmp_path("alloc-tiny-llama-moe-2_8.gguf"));
    hf_options ho = {0};
    lmoe_status st = hf_convert(test_model_path("tiny-llama-moe-2_8"), moe, &ho);
    CHECK_MSG(st == LMOE_OK, "cannot convert tiny-llama-moe-2_8: %s", lmoe_last_error());
    if (!stories || st != LMOE_OK) return test_finish("test_alloc_failures");

    failing_allocator fa = {0};
    lmoe_allocator a = {fa_alloc, fa_resize, fa_release, &fa};
    CHECK_OK(lmoe_set_allocator(&a));

    session_model dense = {"stories260K", stories, NULL, 0};
    check_model(&fa, &dense);
    size_t moe_size = 0;
    void *moe_bytes = read_aligned(moe, &moe_size);
    CHECK_MSG(moe_bytes != NULL, "cannot read %s", moe);
    if (moe_bytes) {
        session_model routed = {"tiny-llama-moe-2_8 (from memory)", NULL, moe_bytes, moe_size};
        check_model(&fa, &routed);
    }
    free(moe_bytes);

    /* switching allocators is refused while a block of the current one is alive */
    lmoe_sampler *smp = NULL;
    fa_arm(&fa, 0, false);
    CHECK_OK(lmoe_sampler_create(NULL, &smp));
    CHECK(lmoe_set_allocator(NULL) == LMOE_ERR_MISUSE);
    CHECK(strstr(lmoe_last_error(), "alive") != NULL);
    lmoe_sampler_free(smp);
    lmoe_allocator incomplete = {fa_alloc, NULL, fa_release, &fa};
    CHECK(lmoe_set_allocator(&incomplete) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK_OK(lmoe_set_allocator(NULL));
    CHECK(atomic_load(&fa.live) == 0);

    test_summary_print();
    return test_finish("test_alloc_failures");
}
