/* test_threads.c - the threading contract of include/llamamoe.h: a loaded model is immutable and
 * may be shared by any number of contexts on any threads; a context (and a sampler) is used by one
 * thread at a time; lmoe_last_error() is thread-local.
 *
 * stories260K is loaded once. Four jobs (two greedy, two sampled with seeds; two through
 * lmoe_generate, two through lmoe_eval + lmoe_sampler_sample/accept) are first run one after the
 * other on the main thread, one context at a time, recording the token ids. Then four threads,
 * released together by a barrier, each create their own context on the same model and repeat their
 * job three times; every run must give exactly the recorded ids. That is done with contexts of one
 * evaluation thread, and again with two (so the contexts' thread pools run concurrently). Before
 * the jobs each thread provokes a different error, waits at a barrier for the others to do the
 * same, and checks that lmoe_last_error() still holds its own message.
 *
 * The worker threads do not use the CHECK macros (their counters are not atomic): they record what
 * they found, and the main thread checks it after joining them. Meant to pass under
 * ThreadSanitizer (-DLLAMAMOE_TSAN=ON). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llamamoe.h"
#include "test_util.h"

#define N_JOBS 4
#define N_GEN 64
#define N_REPEAT 3
#define N_CTX 128
#define ERR_MAX 512

typedef struct job {
    const char *prompt;
    float temperature;  /* 0: greedy */
    uint64_t seed;
    int use_generate;   /* 1: lmoe_generate with on_token; 0: lmoe_eval + sampler loop */
} job;

static const job jobs[N_JOBS] = {
    {"Once upon a time", 0.0f, 0, 1},
    {"The little dog was", 0.0f, 0, 0},
    {"Lily wanted to play", 1.0f, 7, 1},
    {"One day, a big bird", 0.8f, 12345, 0},
};

typedef struct run_result {
    lmoe_status status;
    char error[ERR_MAX];      /* lmoe_last_error() when status is not LMOE_OK */
    lmoe_token ids[N_GEN];
    int n_ids;
} run_result;

static void save_error(char *dst, const char *src) {
    snprintf(dst, ERR_MAX, "%s", src ? src : "(NULL)");
}

static int record_token(void *user, lmoe_token token) {
    run_result *r = user;
    if (r->n_ids < N_GEN) r->ids[r->n_ids++] = token;
    return 0;
}

/* Runs job j on ctx (reset first) with sampler smp (reset first). N_GEN tokens through the eval
 * loop; through lmoe_generate at most N_GEN (it may stop at EOS or BOS). */
static void run_job(lmoe_context *ctx, lmoe_sampler *smp, const job *j, run_result *r) {
    memset(r, 0, sizeof *r);
    lmoe_context_reset(ctx);
    lmoe_sampler_reset(smp);
    if (j->use_generate) {
        lmoe_generate_params gp;
        r->status = lmoe_generate_default_params(&gp, sizeof gp);
        if (r->status == LMOE_OK) {
            gp.max_tokens = N_GEN;
            gp.on_token = record_token;
            gp.user = r;
            r->status = lmoe_generate(ctx, smp, j->prompt, strlen(j->prompt), &gp, NULL, 0);
        }
    } else {
        const lmoe_model *model = lmoe_context_model(ctx);
        lmoe_token prompt[64];
        size_t n_prompt = 0;
        r->status = lmoe_tokenize(model, j->prompt, strlen(j->prompt), 1, prompt, 64, &n_prompt);
        if (r->status == LMOE_OK) r->status = lmoe_eval(ctx, prompt, n_prompt);
        lmoe_model_info info;
        if (r->status == LMOE_OK) r->status = lmoe_model_get_info(model, &info, sizeof info);
        while (r->status == LMOE_OK && r->n_ids < N_GEN) {
            lmoe_token t = -1;
            r->status = lmoe_sampler_sample(smp, lmoe_logits(ctx), info.n_vocab, &t);
            if (r->status != LMOE_OK) break;
            lmoe_sampler_accept(smp, t);
            r->ids[r->n_ids++] = t;
            r->status = lmoe_eval(ctx, &t, 1);
        }
    }
    if (r->status != LMOE_OK) save_error(r->error, lmoe_last_error());
}

static lmoe_status make_sampler(const job *j, lmoe_sampler **out) {
    lmoe_sampler_params sp;
    lmoe_status st = lmoe_sampler_default_params(&sp, sizeof sp);
    if (st != LMOE_OK) return st;
    sp.temperature = j->temperature;
    sp.seed = j->seed;
    return lmoe_sampler_create(&sp, out);
}

static lmoe_status make_context(const lmoe_model *model, int n_threads, lmoe_context **out) {
    lmoe_context_params cp;
    lmoe_status st = lmoe_context_default_params(&cp, sizeof cp);
    if (st != LMOE_OK) return st;
    cp.n_ctx = N_CTX;
    cp.n_threads = n_threads;
    return lmoe_context_create(model, &cp, out);
}

/* ---- the worker threads ---- */

typedef struct worker {
    int index;                 /* thread and job number */
    int n_threads;             /* evaluation threads of its context */
    const lmoe_model *model;   /* shared by all */
    const run_result *expect;  /* the single-threaded run of its job (read only) */
    pthread_barrier_t *barrier;
    /* results, read by the main thread after pthread_join */
    lmoe_status provoked_status; /* status of the call that was meant to fail */
    char provoked[ERR_MAX];      /* lmoe_last_error() right after it */
    char after_barrier[ERR_MAX]; /* lmoe_last_error() after every thread provoked its error */
    char after_jobs[ERR_MAX];    /* lmoe_last_error() after the (successful) jobs */
    lmoe_status setup_status;
    char setup_error[ERR_MAX];
    int runs_ok;                 /* repeats whose ids equal expect exactly */
    run_result last;             /* the last repeat (or the first that differed) */
} worker;

/* Makes one call fail, a different one in each thread. */
static lmoe_status provoke_error(int index, const lmoe_model *model) {
    char text[64];
    size_t n = 0;
    switch (index % 4) {
    case 0: { /* NULL output pointer with room for tokens */
        return lmoe_tokenize(model, "abc", 3, 1, NULL, 16, &n);
    }
    case 1: { /* a metadata key that does not exist; the message names it */
        snprintf(text, sizeof text, "no.such.key.thread%d", index);
        char buf[16];
        return lmoe_model_meta_string(model, text, buf, sizeof buf, &n);
    }
    case 2: { /* a file that does not exist; the message names it */
        snprintf(text, sizeof text, "/nonexistent/test_threads-%d.gguf", index);
        lmoe_model *m = NULL;
        lmoe_status st = lmoe_model_load(text, NULL, &m);
        lmoe_model_free(m);
        return st;
    }
    default: { /* a bad sampler parameter */
        lmoe_sampler_params sp;
        lmoe_sampler_default_params(&sp, sizeof sp);
        sp.top_p = 2.0f;
        lmoe_sampler *s = NULL;
        lmoe_status st = lmoe_sampler_create(&sp, &s);
        lmoe_sampler_free(s);
        return st;
    }
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    const job *j = &jobs[w->index];
    pthread_barrier_wait(w->barrier);
    w->provoked_status = provoke_error(w->index, w->model);
    save_error(w->provoked, lmoe_last_error());
    pthread_barrier_wait(w->barrier); /* every thread has now set its own last error */
    save_error(w->after_barrier, lmoe_last_error());

    lmoe_context *ctx = NULL;
    lmoe_sampler *smp = NULL;
    w->setup_status = make_context(w->model, w->n_threads, &ctx);
    if (w->setup_status == LMOE_OK) w->setup_status = make_sampler(j, &smp);
    if (w->setup_status != LMOE_OK) {
        save_error(w->setup_error, lmoe_last_error());
    } else {
        for (int rep = 0; rep < N_REPEAT; rep++) {
            run_job(ctx, smp, j, &w->last);
            const run_result *want = w->expect;
            if (w->last.status == LMOE_OK && w->last.n_ids == want->n_ids &&
                memcmp(w->last.ids, want->ids, sizeof(lmoe_token) * (size_t)want->n_ids) == 0)
                w->runs_ok++;
            else
                break;
        }
        save_error(w->after_jobs, lmoe_last_error());
    }
    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
    return NULL;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void first_difference(const run_result *got, const run_result *want) {
    int n = got->n_ids < want->n_ids ? got->n_ids : want->n_ids;
    for (int i = 0; i < n; i++) {
        if (got->ids[i] != want->ids[i]) {
            fprintf(stderr, "  first difference at token %d: %d instead of %d\n", i,
                    (int)got->ids[i], (int)want->ids[i]);
            return;
        }
    }
    fprintf(stderr, "  %d tokens instead of %d\n", got->n_ids, want->n_ids);
}

static void run_threads(const lmoe_model *model, const run_result *expect, int n_threads) {
    worker workers[N_JOBS];
    pthread_t tids[N_JOBS];
    int started[N_JOBS] = {0};
    pthread_barrier_t barrier;
    if (pthread_barrier_init(&barrier, NULL, N_JOBS) != 0) {
        CHECK_MSG(0, "pthread_barrier_init failed");
        return;
    }
    double t0 = now_ms();
    int n_started = 0;
    for (int i = 0; i < N_JOBS; i++) {
        memset(&workers[i], 0, sizeof workers[i]);
        workers[i].index = i;
        workers[i].n_threads = n_threads;
        workers[i].model = model;
        workers[i].expect = &expect[i];
        workers[i].barrier = &barrier;
        started[i] = pthread_create(&tids[i], NULL, worker_main, &workers[i]) == 0;
        CHECK_MSG(started[i], "pthread_create failed for thread %d", i);
        n_started += started[i];
    }
    if (n_started != N_JOBS) {
        /* the started threads wait at the barrier forever; nothing sensible is left to do */
        fprintf(stderr, "test_threads: could not start all threads\n");
        test_finish("test_threads");
        _Exit(1);
    }
    for (int i = 0; i < N_JOBS; i++) pthread_join(tids[i], NULL);
    double ms = now_ms() - t0;
    pthread_barrier_destroy(&barrier);

    const char *kinds[4] = {"tokenize(NULL tokens)", "meta_string(no such key)",
                            "model_load(no such file)", "sampler_create(top_p 2)"};
    for (int i = 0; i < N_JOBS; i++) {
        const worker *w = &workers[i];
        /* the error this thread provoked, intact after the others provoked theirs */
        CHECK_MSG(w->provoked_status != LMOE_OK && w->provoked[0] != '\0',
                  "thread %d: %s did not fail with a message (status %d)", i, kinds[i % 4],
                  (int)w->provoked_status);
        CHECK_MSG(strcmp(w->after_barrier, w->provoked) == 0,
                  "thread %d: lmoe_last_error() changed from \"%s\" to \"%s\" while other threads "
                  "failed", i, w->provoked, w->after_barrier);
        for (int k = 0; k < i; k++)
            CHECK_MSG(strcmp(workers[k].provoked, w->provoked) != 0,
                      "threads %d and %d provoked the same message \"%s\"", k, i, w->provoked);
        if (i % 4 == 1 || i % 4 == 2) {
            char tag[32];
            snprintf(tag, sizeof tag, i % 4 == 1 ? "thread%d" : "test_threads-%d", i);
            CHECK_MSG(strstr(w->provoked, tag) != NULL, "thread %d: message \"%s\" lacks \"%s\"", i,
                      w->provoked, tag);
        }
        /* the jobs: the single-threaded ids, every time */
        CHECK_MSG(w->setup_status == LMOE_OK, "thread %d: context or sampler: status %d (%s)", i,
                  (int)w->setup_status, w->setup_error);
        if (w->setup_status != LMOE_OK) continue;
        CHECK_MSG(w->runs_ok == N_REPEAT,
                  "thread %d (n_threads %d, job %d): %d of %d runs gave the single-threaded ids; "
                  "the last: status %d (%s)", i, n_threads, i, w->runs_ok, N_REPEAT,
                  (int)w->last.status, w->last.error);
        if (w->runs_ok != N_REPEAT && w->last.status == LMOE_OK)
            first_difference(&w->last, w->expect);
        /* successful calls (lmoe_generate's included) leave the last error alone */
        CHECK_MSG(strcmp(w->after_jobs, w->provoked) == 0,
                  "thread %d: lmoe_last_error() is \"%s\" after successful jobs, was \"%s\"",
                  i, w->after_jobs, w->provoked);
    }
    test_summary("%d threads x %d runs x %d tokens, n_threads %d per context: %.0f ms", N_JOBS,
                 N_REPEAT, N_GEN, n_threads, ms);
}

int main(void) {
    test_require_models();
    const char *path = test_stories_gguf("test_threads-stories260K.gguf");
    CHECK(path != NULL);
    if (!path) return test_finish("test_threads");
    lmoe_model *model = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &model));
    if (!model) return test_finish("test_threads");

    /* The reference: one job at a time on this thread, each with a context of its own. */
    run_result expect[N_JOBS];
    double t0 = now_ms();
    for (int i = 0; i < N_JOBS; i++) {
        lmoe_context *ctx = NULL;
        lmoe_sampler *smp = NULL;
        CHECK_OK(make_context(model, 1, &ctx));
        CHECK_OK(make_sampler(&jobs[i], &smp));
        memset(&expect[i], 0, sizeof expect[i]);
        expect[i].status = LMOE_ERR_INTERNAL;
        if (ctx && smp) run_job(ctx, smp, &jobs[i], &expect[i]);
        CHECK_MSG(expect[i].status == LMOE_OK, "job %d: status %d (%s)", i, (int)expect[i].status,
                  expect[i].error);
        /* the eval loop always makes N_GEN tokens; lmoe_generate may stop early at EOS/BOS */
        CHECK_MSG(expect[i].n_ids > 0 && (jobs[i].use_generate || expect[i].n_ids == N_GEN),
                  "job %d: %d tokens", i, expect[i].n_ids);
        /* the same job again on the same thread gives the same ids (else comparing is moot) */
        run_result again;
        if (ctx && smp) {
            run_job(ctx, smp, &jobs[i], &again);
            CHECK_MSG(again.n_ids == expect[i].n_ids &&
                          memcmp(again.ids, expect[i].ids,
                                 sizeof(lmoe_token) * (size_t)again.n_ids) == 0,
                      "job %d is not reproducible on one thread", i);
        }
        lmoe_sampler_free(smp);
        lmoe_context_free(ctx);
    }
    /* the jobs are really different: no two give the same ids */
    for (int i = 0; i < N_JOBS; i++)
        for (int k = 0; k < i; k++)
            CHECK_MSG(expect[i].n_ids != expect[k].n_ids ||
                          memcmp(expect[i].ids, expect[k].ids,
                                 sizeof(lmoe_token) * (size_t)expect[i].n_ids) != 0,
                      "jobs %d and %d gave the same tokens", k, i);
    test_summary("reference, one job at a time: %.0f ms (tokens per job: %d %d %d %d)",
                 now_ms() - t0, expect[0].n_ids, expect[1].n_ids, expect[2].n_ids,
                 expect[3].n_ids);

    /* The main thread's own last error, which the workers' failures must not touch. */
    lmoe_token dummy[4];
    size_t n = 0;
    CHECK(lmoe_tokenize(model, NULL, 5, 1, dummy, 4, &n) == LMOE_ERR_INVALID_ARGUMENT);
    char main_error[ERR_MAX];
    save_error(main_error, lmoe_last_error());
    CHECK(main_error[0] != '\0');

    if (test_failures == 0) {
        run_threads(model, expect, 1);
        run_threads(model, expect, 2);
    }
    CHECK_MSG(strcmp(lmoe_last_error(), main_error) == 0,
              "main thread's lmoe_last_error() changed from \"%s\" to \"%s\"", main_error,
              lmoe_last_error());

    lmoe_model_free(model);
    test_summary_print();
    return test_finish("test_threads");
}
