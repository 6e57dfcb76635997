/* llamamoe-perplexity - perplexity of a model on a text file, optionally compared token by token
 * with a reference model (e.g. a quantised rewrite against its f32 original). Uses only the public
 * API.
 *
 *   llamamoe-perplexity -m MODEL.gguf -f TEXT [--ref REF.gguf] [-c N_CTX] [-t THREADS] [--chunk N]
 *
 * The file is tokenized as one text (BOS first) and cut into consecutive windows of N_CTX tokens
 * (default: the model's training context, at most 512). Each window is evaluated from an empty
 * context, one token at a time; every token of the window after the first is scored with the
 * log-softmax of the logits at the position before it. The first token of a window is context
 * only. Perplexity = exp(mean negative log-likelihood over the scored tokens).
 *
 * --ref REF.gguf: REF is evaluated on the same tokens in a context of its own (same window size and
 * threads; the two take turns every REF_BLOCK positions, MODEL's logits kept meanwhile). The text
 * is tokenized with MODEL's vocabulary; REF must have the same n_vocab and tokenize the text to the
 * same ids, or the tool stops with an error naming both files. At every scored position it also
 * computes, from the two models' logits: top-1 agreement (argmax of MODEL's == argmax of REF's,
 * lowest id on ties) and KL(p_ref || p_model) = sum_v p_ref(v) (log p_ref(v) - log p_model(v)) in
 * nats, in double with log-sum-exp.
 *
 * stderr: progress (percent and running perplexity, with --ref also the running agreement and mean
 * KL, about every 10%) and timing.
 * stdout: `perplexity: P tokens: N` (N = tokens scored); with --ref a second line
 * `reference: perplexity R top1-agreement A kl-mean K kl-max M` (R = REF's perplexity on the same
 * tokens, A = fraction of positions whose argmaxes agree, K / M = mean / largest KL per token).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_args.h"
#include "llamamoe.h"

#define DEFAULT_MAX_CTX 512

typedef struct ppl_options {
    const char *model_path;
    const char *text_path;
    const char *ref_path;    /* NULL: no reference model */
    unsigned n_ctx;          /* 0: min(model context, DEFAULT_MAX_CTX) */
    int n_threads;           /* 0: one per CPU */
    long max_chunks;         /* 0: every window */
    int verbose;
} ppl_options;

static void usage(FILE *out) {
    fprintf(out,
            "usage: llamamoe-perplexity -m MODEL.gguf -f TEXT [options]\n"
            "  -m, --model PATH        GGUF model file\n"
            "  -f, --file PATH         text file to score (tokenized as one text, BOS first)\n"
            "      --ref PATH          reference GGUF model with the same vocabulary: also report\n"
            "                          its perplexity, top-1 agreement with it and\n"
            "                          KL(p_ref || p_model) per token\n"
            "  -c, --ctx-size N        window size in tokens, >= 2 (default: the model's\n"
            "                          context, at most %d)\n"
            "  -t, --threads N         threads (default: one per CPU)\n"
            "      --chunk N           score only the first N windows (default: all)\n"
            "  -v, --verbose           log what the library does to stderr\n"
            "prints `perplexity: P tokens: N` on stdout (N = tokens scored: every token of a\n"
            "window but its first); with --ref also\n"
            "`reference: perplexity R top1-agreement A kl-mean K kl-max M` (A a fraction, K and M\n"
            "in nats per token); progress goes to stderr.\n",
            DEFAULT_MAX_CTX);
}

static int parse_args(int argc, char **argv, ppl_options *o) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
            o->verbose = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "llamamoe-perplexity: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        long n;
        int bad = 0;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model_path = v;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) o->text_path = v;
        else if (!strcmp(a, "--ref")) o->ref_path = v;
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size"))
            bad = cli_parse_long(v, 2, 1L << 30, &n) || ((o->n_ctx = (unsigned)n), 0);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            bad = cli_parse_long(v, 1, 512, &n) || ((o->n_threads = (int)n), 0);
        else if (!strcmp(a, "--chunk"))
            bad = cli_parse_long(v, 1, 1L << 30, &o->max_chunks);
        else {
            fprintf(stderr, "llamamoe-perplexity: unknown option %s\n", a);
            usage(stderr);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "llamamoe-perplexity: bad value '%s' for %s\n", v, a);
            return -1;
        }
    }
    if (!o->model_path || !o->text_path) {
        fprintf(stderr, "llamamoe-perplexity: -m MODEL and -f TEXT are required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

/* Reads a whole file into a malloc'd buffer (NUL appended, not counted); NULL + errno on error. */
static char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap + 1);
    int read_errno = 0;
    while (buf) {
        errno = 0;
        size_t got = fread(buf + len, 1, cap - len, f);
        read_errno = errno;
        len += got;
        if (len < cap) break;
        char *p = realloc(buf, cap * 2 + 1);
        if (!p) {
            free(buf);
            buf = NULL;
            errno = ENOMEM;
            break;
        }
        buf = p;
        cap *= 2;
    }
    int failed = buf && ferror(f);
    fclose(f);
    if (failed) {
        free(buf);
        errno = read_errno ? read_errno : EIO; /* e.g. EISDIR for a folder */
        return NULL;
    }
    if (!buf) return NULL;
    buf[len] = 0;
    *size = len;
    return buf;
}

static void log_to_stderr(void *user, lmoe_log_level level, const char *message) {
    (void)user;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "llamamoe [%s] %s\n", names[level & 3], message);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* -log softmax(logits)[target], in double precision. */
static double token_nll(const float *logits, int32_t n_vocab, lmoe_token target) {
    double max = logits[0];
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - max);
    return -((double)logits[target] - max - log(sum));
}

/* log(sum_v exp(logits[v])) in double, shifted by the largest logit so that no exp overflows. */
static double log_sum_exp(const float *logits, int32_t n_vocab) {
    double max = logits[0];
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - max);
    return max + log(sum);
}

/* The id of the largest logit; the lowest id on ties (as greedy sampling picks). */
static int32_t argmax(const float *logits, int32_t n_vocab) {
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

/* KL(p_ref || p_model) in nats, p = softmax(logits). Identical logits give exactly 0: every term's
 * two log-probabilities are then computed the same way. */
static double kl_divergence(const float *ref, const float *model, int32_t n_vocab) {
    double lse_ref = log_sum_exp(ref, n_vocab), lse_model = log_sum_exp(model, n_vocab);
    double kl = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        double log_p_ref = (double)ref[i] - lse_ref;
        kl += exp(log_p_ref) * (log_p_ref - ((double)model[i] - lse_model));
    }
    return kl;
}

typedef struct ppl_result {
    double nll_sum;
    size_t n_scored;
    /* with a reference model only */
    double ref_nll_sum;
    size_t n_agree;          /* positions where both argmaxes are the same token */
    double kl_sum, kl_max;
} ppl_result;

/* Positions one model evaluates before the other takes over: after each switch the idle context's
 * workers keep spinning for a moment, which costs a lot when the models switch every token. */
#define REF_BLOCK 32

/* Adds one scored position to res and prints progress about every 10%. */
static void count_position(ppl_result *res, double nll, int has_ref, size_t to_score, size_t w,
                           size_t n_windows, int *next_report) {
    res->nll_sum += nll;
    res->n_scored++;
    if (res->n_scored * 100 < (size_t)*next_report * to_score) return;
    int percent = (int)(res->n_scored * 100 / to_score) / 10 * 10;
    double count = (double)res->n_scored;
    fprintf(stderr, "[%3d%%] %zu/%zu tokens, window %zu/%zu, perplexity %.4f", percent,
            res->n_scored, to_score, w + 1, n_windows, exp(res->nll_sum / count));
    if (has_ref)
        fprintf(stderr, ", top-1 agreement %.4f, KL %.6f", (double)res->n_agree / count,
                res->kl_sum / count);
    fputc('\n', stderr);
    *next_report = percent + 10;
}

/* Scores tokens[0..n) in windows of n_ctx tokens (at most max_chunks windows when nonzero); with
 * ref_ctx (may be NULL) also compares each position's logits with the reference model's, using
 * saved (REF_BLOCK * n_vocab floats) for the model's. *what names the step that failed. */
static lmoe_status score_windows(lmoe_context *ctx, lmoe_context *ref_ctx, float *saved,
                                 int32_t n_vocab, const lmoe_token *tokens, size_t n,
                                 size_t n_ctx, long max_chunks, ppl_result *res,
                                 const char **what) {
    size_t n_windows = 0, to_score = 0;
    for (size_t start = 0; start + 1 < n && (max_chunks == 0 || (long)n_windows < max_chunks);
         start += n_ctx) {
        size_t len = n - start < n_ctx ? n - start : n_ctx;
        n_windows++;
        to_score += len - 1;
    }
    fprintf(stderr, "scoring %zu tokens in %zu window%s of up to %zu tokens%s\n", to_score,
            n_windows, n_windows == 1 ? "" : "s", n_ctx,
            ref_ctx ? ", against the reference model" : "");
    *res = (ppl_result){0};
    int next_report = 10; /* percent */
    size_t w = 0;
    for (size_t start = 0; w < n_windows; start += n_ctx, w++) {
        size_t len = n - start < n_ctx ? n - start : n_ctx;
        lmoe_context_reset(ctx);
        if (ref_ctx) lmoe_context_reset(ref_ctx);
        /* the window's last token is only a target: its own logits are never needed */
        for (size_t block = 0; block + 1 < len; block += REF_BLOCK) {
            size_t n_pos = len - 1 - block < REF_BLOCK ? len - 1 - block : REF_BLOCK;
            const lmoe_token *in = &tokens[start + block]; /* in[k + 1] is position k's target */
            double nll[REF_BLOCK];
            *what = "evaluating";
            for (size_t k = 0; k < n_pos; k++) {
                lmoe_status st = lmoe_eval(ctx, &in[k], 1);
                if (st != LMOE_OK) return st;
                const float *logits = lmoe_logits(ctx);
                if (!logits) return LMOE_ERR_INTERNAL;
                nll[k] = token_nll(logits, n_vocab, in[k + 1]);
                if (ref_ctx) memcpy(saved + k * (size_t)n_vocab, logits, n_vocab * sizeof *saved);
            }
            *what = "evaluating the reference model";
            for (size_t k = 0; k < n_pos; k++) {
                if (ref_ctx) {
                    lmoe_status st = lmoe_eval(ref_ctx, &in[k], 1);
                    if (st != LMOE_OK) return st;
                    const float *ref_logits = lmoe_logits(ref_ctx);
                    if (!ref_logits) return LMOE_ERR_INTERNAL;
                    const float *logits = saved + k * (size_t)n_vocab;
                    res->ref_nll_sum += token_nll(ref_logits, n_vocab, in[k + 1]);
                    res->n_agree += argmax(logits, n_vocab) == argmax(ref_logits, n_vocab);
                    double kl = kl_divergence(ref_logits, logits, n_vocab);
                    res->kl_sum += kl;
                    if (res->n_scored == 0 || kl > res->kl_max) res->kl_max = kl;
                }
                count_position(res, nll[k], ref_ctx != NULL, to_score, w, n_windows,
                               &next_report);
            }
        }
    }
    return LMOE_OK;
}

static lmoe_status score(lmoe_context *ctx, lmoe_context *ref_ctx, int32_t n_vocab,
                         const lmoe_token *tokens, size_t n, size_t n_ctx, long max_chunks,
                         ppl_result *res, const char **what) {
    float *saved = NULL;
    if (ref_ctx) {
        *what = "allocating the logits buffer";
        saved = malloc(REF_BLOCK * (size_t)n_vocab * sizeof *saved);
        if (!saved) return LMOE_ERR_OUT_OF_MEMORY;
    }
    lmoe_status st = score_windows(ctx, ref_ctx, saved, n_vocab, tokens, n, n_ctx, max_chunks,
                                   res, what);
    free(saved);
    return st;
}

/* Tokenizes text with model's vocabulary (BOS first) into a malloc'd array (*out, *n). */
static lmoe_status tokenize_all(const lmoe_model *model, const char *text, size_t text_len,
                                lmoe_token **out, size_t *n) {
    *out = NULL;
    lmoe_status st = lmoe_tokenize(model, text, text_len, 1, NULL, 0, n);
    if (st != LMOE_ERR_BUFFER_TOO_SMALL) return st;
    *out = malloc((*n ? *n : 1) * sizeof **out);
    return *out ? lmoe_tokenize(model, text, text_len, 1, *out, *n, n) : LMOE_ERR_OUT_OF_MEMORY;
}

/* Checks that the reference model has the model's vocabulary size and tokenizes the text to the
 * same ids: the comparison is only meaningful position by position. Returns 1 after printing a
 * mismatch. */
static int check_ref_vocab(const ppl_options *o, const lmoe_model_info *info,
                           const lmoe_model_info *ref_info, const lmoe_token *tokens,
                           size_t n_tokens, const lmoe_token *ref_tokens, size_t n_ref_tokens) {
    if (ref_info->n_vocab != info->n_vocab) {
        fprintf(stderr, "llamamoe-perplexity: vocabulary mismatch: %s has %d tokens, the "
                "reference %s has %d\n", o->model_path, info->n_vocab, o->ref_path,
                ref_info->n_vocab);
        return 1;
    }
    size_t i = 0;
    while (i < n_tokens && i < n_ref_tokens && tokens[i] == ref_tokens[i]) i++;
    if (i == n_tokens && i == n_ref_tokens) return 0;
    fprintf(stderr, "llamamoe-perplexity: vocabulary mismatch: %s and the reference %s tokenize "
            "%s differently (%zu and %zu tokens; first difference at token %zu: id %d and %d)\n",
            o->model_path, o->ref_path, o->text_path, n_tokens, n_ref_tokens, i,
            i < n_tokens ? tokens[i] : -1, i < n_ref_tokens ? ref_tokens[i] : -1);
    return 1;
}

static int run(const ppl_options *o) {
    size_t text_len = 0;
    char *text = read_file(o->text_path, &text_len);
    if (!text) {
        fprintf(stderr, "llamamoe-perplexity: cannot read %s: %s\n", o->text_path, strerror(errno));
        return 1;
    }
    if (text_len == 0) {
        fprintf(stderr, "llamamoe-perplexity: %s is empty: nothing to score\n", o->text_path);
        free(text);
        return 1;
    }

    lmoe_model_params mp;
    lmoe_context_params cp;
    lmoe_model_default_params(&mp, sizeof mp);
    lmoe_context_default_params(&cp, sizeof cp);
    if (o->verbose) {
        mp.log_fn = cp.log_fn = log_to_stderr;
        mp.log_level = cp.log_level = LMOE_LOG_DEBUG;
    }
    lmoe_model *model = NULL, *ref = NULL;
    lmoe_context *ctx = NULL, *ref_ctx = NULL;
    lmoe_token *tokens = NULL, *ref_tokens = NULL;
    lmoe_model_info info, ref_info;
    size_t n_tokens = 0, n_ref_tokens = 0;
    int usage_error = 0;
    ppl_result res = {0};
    double t0 = 0, t1 = 0;
    const char *what = "loading the model";
    lmoe_status st = lmoe_model_load(o->model_path, &mp, &model);
    if (st == LMOE_OK)
        what = "reading the model info", st = lmoe_model_get_info(model, &info, sizeof info);
    if (st == LMOE_OK)
        what = "tokenizing the text", st = tokenize_all(model, text, text_len, &tokens, &n_tokens);
    if (st == LMOE_OK && n_tokens < 2) {
        fprintf(stderr, "llamamoe-perplexity: %s gives %zu token%s: nothing to score\n",
                o->text_path, n_tokens, n_tokens == 1 ? "" : "s");
        usage_error = 1;
    }
    if (st == LMOE_OK && !usage_error && o->ref_path) {
        what = "loading the reference model";
        st = lmoe_model_load(o->ref_path, &mp, &ref);
        if (st == LMOE_OK)
            what = "reading the reference model's info",
            st = lmoe_model_get_info(ref, &ref_info, sizeof ref_info);
        if (st == LMOE_OK)
            what = "tokenizing the text with the reference model",
            st = tokenize_all(ref, text, text_len, &ref_tokens, &n_ref_tokens);
        if (st == LMOE_OK)
            usage_error = check_ref_vocab(o, &info, &ref_info, tokens, n_tokens, ref_tokens,
                                          n_ref_tokens);
    }
    if (st == LMOE_OK && !usage_error) {
        unsigned n_ctx = o->n_ctx;
        if (n_ctx == 0)
            n_ctx = info.n_ctx_train > 0 && info.n_ctx_train < DEFAULT_MAX_CTX
                        ? (unsigned)info.n_ctx_train : DEFAULT_MAX_CTX;
        if (info.n_ctx_train > 0 && n_ctx > (unsigned)info.n_ctx_train)
            fprintf(stderr, "llamamoe-perplexity: warning: windows of %u tokens are longer than "
                    "the model's training context (%d)\n", n_ctx, info.n_ctx_train);
        if (ref && ref_info.n_ctx_train > 0 && n_ctx > (unsigned)ref_info.n_ctx_train)
            fprintf(stderr, "llamamoe-perplexity: warning: windows of %u tokens are longer than "
                    "the reference model's training context (%d)\n", n_ctx,
                    ref_info.n_ctx_train);
        cp.n_ctx = n_ctx;
        cp.n_threads = o->n_threads;
        what = "creating the context";
        st = lmoe_context_create(model, &cp, &ctx);
        if (st == LMOE_OK && ref)
            what = "creating the reference model's context",
            st = lmoe_context_create(ref, &cp, &ref_ctx);
        if (st == LMOE_OK) {
            fprintf(stderr, "%s: %zu bytes, %zu tokens (BOS included)\n", o->text_path, text_len,
                    n_tokens);
            t0 = now_seconds();
            st = score(ctx, ref_ctx, info.n_vocab, tokens, n_tokens, n_ctx, o->max_chunks, &res,
                       &what);
            t1 = now_seconds();
        }
    }
    if (st == LMOE_OK && !usage_error) {
        double count = (double)res.n_scored;
        fprintf(stderr, "%zu tokens scored in %.2f s (%.1f tokens/s%s); mean NLL %.6f\n",
                res.n_scored, t1 - t0, t1 > t0 ? res.n_scored / (t1 - t0) : 0.0,
                ref ? ", both models" : "", res.nll_sum / count);
        printf("perplexity: %.6f tokens: %zu\n", exp(res.nll_sum / count), res.n_scored);
        if (ref)
            printf("reference: perplexity %.6f top1-agreement %.6f kl-mean %.6f kl-max %.6f\n",
                   exp(res.ref_nll_sum / count), (double)res.n_agree / count, res.kl_sum / count,
                   res.kl_max);
        fflush(stdout);
    }
    if (st != LMOE_OK) {
        /* name the file when the step was about the reference model */
        int about_ref = o->ref_path && strstr(what, "reference");
        fprintf(stderr, "llamamoe-perplexity: error %s%s%s: %s (%s)\n", what,
                about_ref ? " " : "", about_ref ? o->ref_path : "", lmoe_last_error(),
                lmoe_status_string(st));
    }
    lmoe_context_free(ref_ctx);
    lmoe_context_free(ctx);
    lmoe_model_free(ref);
    lmoe_model_free(model);
    free(ref_tokens);
    free(tokens);
    free(text);
    return st == LMOE_OK && !usage_error ? 0 : 1;
}

int main(int argc, char **argv) {
    ppl_options o = {0};
    if (parse_args(argc, argv, &o) != 0) return 2;
    return run(&o);
}
