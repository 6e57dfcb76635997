/* llamamoe-perplexity - perplexity of a model on a text file. Uses only the public API.
 *
 *   llamamoe-perplexity -m MODEL.gguf -f TEXT [-c N_CTX] [-t THREADS] [--chunk N]
 *
 * The file is tokenized as one text (BOS first) and cut into consecutive windows of N_CTX tokens
 * (default: the model's training context, at most 512). Each window is evaluated from an empty
 * context, one token at a time; every token of the window after the first is scored with the
 * log-softmax of the logits at the position before it. The first token of a window is context
 * only. Perplexity = exp(mean negative log-likelihood over the scored tokens).
 *
 * stderr: progress (percent and running perplexity, about every 10%) and timing.
 * stdout: one line, `perplexity: P tokens: N` (N = tokens scored).
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
            "  -c, --ctx-size N        window size in tokens, >= 2 (default: the model's\n"
            "                          context, at most %d)\n"
            "  -t, --threads N         threads (default: one per CPU)\n"
            "      --chunk N           score only the first N windows (default: all)\n"
            "  -v, --verbose           log what the library does to stderr\n"
            "prints `perplexity: P tokens: N` on stdout (N = tokens scored: every token of a\n"
            "window but its first); progress goes to stderr.\n",
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

typedef struct ppl_result {
    double nll_sum;
    size_t n_scored;
} ppl_result;

/* Scores tokens[0..n) in windows of n_ctx tokens (at most max_chunks windows when nonzero). */
static lmoe_status score(lmoe_context *ctx, int32_t n_vocab, const lmoe_token *tokens, size_t n,
                         size_t n_ctx, long max_chunks, ppl_result *res) {
    size_t n_windows = 0, to_score = 0;
    for (size_t start = 0; start + 1 < n && (max_chunks == 0 || (long)n_windows < max_chunks);
         start += n_ctx) {
        size_t len = n - start < n_ctx ? n - start : n_ctx;
        n_windows++;
        to_score += len - 1;
    }
    fprintf(stderr, "scoring %zu tokens in %zu window%s of up to %zu tokens\n", to_score, n_windows,
            n_windows == 1 ? "" : "s", n_ctx);
    res->nll_sum = 0;
    res->n_scored = 0;
    int next_report = 10; /* percent */
    size_t w = 0;
    for (size_t start = 0; w < n_windows; start += n_ctx, w++) {
        size_t len = n - start < n_ctx ? n - start : n_ctx;
        lmoe_context_reset(ctx);
        /* the window's last token is only a target: its own logits are never needed */
        for (size_t i = 0; i + 1 < len; i++) {
            lmoe_status st = lmoe_eval(ctx, &tokens[start + i], 1);
            if (st != LMOE_OK) return st;
            const float *logits = lmoe_logits(ctx);
            if (!logits) return LMOE_ERR_INTERNAL;
            res->nll_sum += token_nll(logits, n_vocab, tokens[start + i + 1]);
            res->n_scored++;
            if (res->n_scored * 100 >= (size_t)next_report * to_score) {
                int percent = (int)(res->n_scored * 100 / to_score) / 10 * 10;
                fprintf(stderr, "[%3d%%] %zu/%zu tokens, window %zu/%zu, perplexity %.4f\n",
                        percent, res->n_scored, to_score, w + 1, n_windows,
                        exp(res->nll_sum / (double)res->n_scored));
                next_report = percent + 10;
            }
        }
    }
    return LMOE_OK;
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
    lmoe_model *model = NULL;
    lmoe_context *ctx = NULL;
    lmoe_token *tokens = NULL;
    lmoe_model_info info;
    size_t n_tokens = 0;
    int usage_error = 0;
    ppl_result res = {0, 0};
    double t0 = 0, t1 = 0;
    const char *what = "loading the model";
    lmoe_status st = lmoe_model_load(o->model_path, &mp, &model);
    if (st == LMOE_OK)
        what = "reading the model info", st = lmoe_model_get_info(model, &info, sizeof info);
    if (st == LMOE_OK) {
        what = "tokenizing the text";
        st = lmoe_tokenize(model, text, text_len, 1, NULL, 0, &n_tokens);
        if (st == LMOE_ERR_BUFFER_TOO_SMALL) {
            tokens = malloc((n_tokens ? n_tokens : 1) * sizeof *tokens);
            st = tokens ? lmoe_tokenize(model, text, text_len, 1, tokens, n_tokens, &n_tokens)
                        : LMOE_ERR_OUT_OF_MEMORY;
        }
    }
    if (st == LMOE_OK && n_tokens < 2) {
        fprintf(stderr, "llamamoe-perplexity: %s gives %zu token%s: nothing to score\n",
                o->text_path, n_tokens, n_tokens == 1 ? "" : "s");
        usage_error = 1;
    }
    if (st == LMOE_OK && !usage_error) {
        unsigned n_ctx = o->n_ctx;
        if (n_ctx == 0)
            n_ctx = info.n_ctx_train > 0 && info.n_ctx_train < DEFAULT_MAX_CTX
                        ? (unsigned)info.n_ctx_train : DEFAULT_MAX_CTX;
        if (info.n_ctx_train > 0 && n_ctx > (unsigned)info.n_ctx_train)
            fprintf(stderr, "llamamoe-perplexity: warning: windows of %u tokens are longer than "
                    "the model's training context (%d)\n", n_ctx, info.n_ctx_train);
        cp.n_ctx = n_ctx;
        cp.n_threads = o->n_threads;
        what = "creating the context";
        st = lmoe_context_create(model, &cp, &ctx);
        if (st == LMOE_OK) {
            fprintf(stderr, "%s: %zu bytes, %zu tokens (BOS included)\n", o->text_path, text_len,
                    n_tokens);
            what = "evaluating";
            t0 = now_seconds();
            st = score(ctx, info.n_vocab, tokens, n_tokens, n_ctx, o->max_chunks, &res);
            t1 = now_seconds();
        }
    }
    if (st == LMOE_OK && !usage_error) {
        double ppl = exp(res.nll_sum / (double)res.n_scored);
        fprintf(stderr, "%zu tokens scored in %.2f s (%.1f tokens/s); mean NLL %.6f\n",
                res.n_scored, t1 - t0, t1 > t0 ? res.n_scored / (t1 - t0) : 0.0,
                res.nll_sum / (double)res.n_scored);
        printf("perplexity: %.6f tokens: %zu\n", ppl, res.n_scored);
        fflush(stdout);
    }
    if (st != LMOE_OK)
        fprintf(stderr, "llamamoe-perplexity: error %s: %s (%s)\n", what, lmoe_last_error(),
                lmoe_status_string(st));
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    free(tokens);
    free(text);
    return st == LMOE_OK && !usage_error ? 0 : 1;
}

int main(int argc, char **argv) {
    ppl_options o = {0};
    if (parse_args(argc, argv, &o) != 0) return 2;
    return run(&o);
}
