/* llamamoe-cli - generate text from a prompt, streaming it to stdout. Uses only the public API.
 *
 *   llamamoe-cli -m MODEL.gguf -p PROMPT -n N [--temp T] [--top-k K] [--top-p P] [--min-p P]
 *                [--repeat-penalty R] [--seed S] [-t THREADS] [-c N_CTX] [--stop TEXT]...
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_args.h"
#include "llamamoe.h"

#define MAX_STOPS 16

typedef struct cli_options {
    const char *model_path;
    const char *prompt;
    int n_predict;
    int n_threads;
    unsigned n_ctx;
    int verbose;
    int routing;             /* print expert usage after generation */
    int chat;                /* Vicuna v1.1 chat: -p is one user turn, else turns from stdin */
    lmoe_sampler_params sampling;
    const char *stops[MAX_STOPS];
    size_t n_stops;
} cli_options;

static void usage(FILE *out) {
    fprintf(out,
            "usage: llamamoe-cli -m MODEL.gguf [-p PROMPT] [options]\n"
            "  -m, --model PATH        GGUF model file\n"
            "  -p, --prompt TEXT       prompt (default: empty, i.e. start from BOS)\n"
            "  -n, --n-predict N       tokens to generate (default 256)\n"
            "      --temp T            temperature, 0 = greedy (default 1.0)\n"
            "      --top-k K           keep the K most probable tokens, 0 = off (default 0)\n"
            "      --top-p P           nucleus sampling, 1 = off (default 0.9)\n"
            "      --min-p P           drop tokens below P x the top probability (default 0)\n"
            "      --repeat-penalty R  penalise recent tokens, 1 = off (default 1)\n"
            "  -s, --seed S            RNG seed (default: from the clock; printed on stderr)\n"
            "  -t, --threads N         threads (default: one per CPU)\n"
            "  -c, --ctx-size N        context size in tokens (default: the model's)\n"
            "      --stop TEXT         stop when TEXT is generated (repeatable)\n"
            "      --routing           print each layer's expert usage after generation (MoE)\n"
            "      --chat              chat in the model's recorded format (Vicuna v1.1 for\n"
            "                          LLaMA-MoE SFT models): -p is one user turn, without -p\n"
            "                          each line of stdin is a turn\n"
            "  -v, --verbose           log what the library does to stderr\n");
}

static int parse_args(int argc, char **argv, cli_options *o) {
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
        if (strcmp(a, "--routing") == 0) {
            o->routing = 1;
            continue;
        }
        if (strcmp(a, "--chat") == 0) {
            o->chat = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "llamamoe-cli: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++i];
        long n;
        int bad = 0;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model_path = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict"))
            bad = cli_parse_long(v, 0, 1 << 30, &n) || ((o->n_predict = (int)n), 0);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            bad = cli_parse_long(v, 1, 512, &n) || ((o->n_threads = (int)n), 0);
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size"))
            bad = cli_parse_long(v, 1, 1L << 30, &n) || ((o->n_ctx = (unsigned)n), 0);
        else if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o->sampling.seed = strtoull(v, &end, 10);
            bad = errno || end == v || *end;
        } else if (!strcmp(a, "--temp")) bad = cli_parse_float(v, &o->sampling.temperature);
        else if (!strcmp(a, "--top-p")) bad = cli_parse_float(v, &o->sampling.top_p);
        else if (!strcmp(a, "--min-p")) bad = cli_parse_float(v, &o->sampling.min_p);
        else if (!strcmp(a, "--repeat-penalty")) bad = cli_parse_float(v, &o->sampling.repeat_penalty);
        else if (!strcmp(a, "--top-k"))
            bad = cli_parse_long(v, 0, 1 << 30, &n) || ((o->sampling.top_k = (int32_t)n), 0);
        else if (!strcmp(a, "--stop")) {
            if (o->n_stops == MAX_STOPS) {
                fprintf(stderr, "llamamoe-cli: at most %d --stop strings\n", MAX_STOPS);
                return -1;
            }
            o->stops[o->n_stops++] = v;
        } else {
            fprintf(stderr, "llamamoe-cli: unknown option %s\n", a);
            usage(stderr);
            return -1;
        }
        if (bad) {
            fprintf(stderr, "llamamoe-cli: bad value '%s' for %s\n", v, a);
            return -1;
        }
    }
    if (!o->model_path) {
        fprintf(stderr, "llamamoe-cli: -m MODEL is required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

static int print_text(void *user, const char *text, size_t len, lmoe_token token) {
    (void)user;
    (void)token;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static void log_to_stderr(void *user, lmoe_log_level level, const char *message) {
    (void)user;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "llamamoe [%s] %s\n", names[level & 3], message);
}

static const char *stop_reason_name(lmoe_stop_reason r) {
    switch (r) {
    case LMOE_STOP_EOS: return "end of sequence";
    case LMOE_STOP_BOS: return "BOS (start of a new text)";
    case LMOE_STOP_STRING: return "stop string";
    case LMOE_STOP_MAX_TOKENS: return "token limit";
    case LMOE_STOP_CALLBACK: return "callback";
    case LMOE_STOP_NONE: break;
    }
    return "error";
}

static void print_stats(const lmoe_generate_result *res) {
    fprintf(stderr, "prompt: %u tokens in %.1f ms (%.1f tokens/s); generation: %u tokens in "
            "%.1f ms (%.1f tokens/s); stopped on: %s\n", res->n_prompt_tokens, res->prompt_ms,
            res->prompt_ms > 0 ? res->n_prompt_tokens * 1e3 / res->prompt_ms : 0.0,
            res->n_generated, res->generate_ms,
            res->generate_ms > 0 ? res->n_generated * 1e3 / res->generate_ms : 0.0,
            stop_reason_name(res->stop_reason));
}

/* Per layer: how often each expert was chosen, as a share of that layer's selections. */
static lmoe_status print_routing(const lmoe_model *model, const lmoe_context *ctx) {
    lmoe_model_info info;
    lmoe_status st = lmoe_model_get_info(model, &info, sizeof info);
    if (st != LMOE_OK) return st;
    if (info.n_expert == 0) {
        fprintf(stderr, "routing: the model is dense (no experts)\n");
        return LMOE_OK;
    }
    size_t n = (size_t)info.n_layer * (size_t)info.n_expert;
    uint64_t *counts = malloc(n * sizeof *counts);
    if (!counts) return LMOE_ERR_OUT_OF_MEMORY;
    st = lmoe_context_expert_counts(ctx, counts, n);
    if (st == LMOE_OK) {
        fprintf(stderr, "expert usage (%% of each layer's selections; %d of %d experts per token)\n",
                info.n_expert_used, info.n_expert);
        fprintf(stderr, "layer");
        for (int e = 0; e < info.n_expert; e++) fprintf(stderr, " %5d", e);
        fprintf(stderr, "\n");
        for (int l = 0; l < info.n_layer; l++) {
            uint64_t total = 0;
            for (int e = 0; e < info.n_expert; e++) total += counts[(size_t)l * info.n_expert + e];
            fprintf(stderr, "%5d", l);
            for (int e = 0; e < info.n_expert; e++)
                fprintf(stderr, " %5.1f", total ? 100.0 * counts[(size_t)l * info.n_expert + e] / total : 0.0);
            fprintf(stderr, "\n");
        }
    }
    free(counts);
    return st;
}

#define VICUNA_SYSTEM                                                                              \
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives " \
    "helpful, detailed, and polite answers to the user's questions."

/* One chat turn in Vicuna v1.1: the first turn carries the system text; a finished assistant
 * turn ends with </s> (EOS), which is evaluated before the next user turn. */
static lmoe_status chat_turn(lmoe_context *ctx, lmoe_sampler *sampler, lmoe_generate_params *gp,
                             const char *message, lmoe_generate_result *res) {
    size_t len = strlen(message) + sizeof VICUNA_SYSTEM + 32;
    char *prompt = malloc(len);
    if (!prompt) return LMOE_ERR_OUT_OF_MEMORY;
    if (lmoe_context_n_tokens(ctx) == 0)
        snprintf(prompt, len, "%s USER: %s ASSISTANT:", VICUNA_SYSTEM, message);
    else
        snprintf(prompt, len, "USER: %s ASSISTANT:", message);
    lmoe_status st = lmoe_generate(ctx, sampler, prompt, strlen(prompt), gp, res, sizeof *res);
    free(prompt);
    fputc('\n', stdout);
    fflush(stdout);
    if (st == LMOE_OK && res->stop_reason == LMOE_STOP_EOS) {
        lmoe_token eos = lmoe_token_eos(lmoe_context_model(ctx));
        st = lmoe_eval(ctx, &eos, 1);
    }
    return st;
}

static int has_vicuna_format(const lmoe_model *model) {
    char format[64];
    return lmoe_model_meta_string(model, "llamamoe.chat_format", format, sizeof format, NULL) ==
               LMOE_OK &&
           strcmp(format, "vicuna_v1.1") == 0;
}

static lmoe_status run_chat(const cli_options *o, lmoe_context *ctx, lmoe_sampler *sampler,
                            lmoe_generate_params *gp) {
    lmoe_generate_result res = {0};
    if (o->prompt) {
        lmoe_status st = chat_turn(ctx, sampler, gp, o->prompt, &res);
        print_stats(&res);
        return st;
    }
    char line[8192];
    lmoe_status st = LMOE_OK;
    while (st == LMOE_OK && fputs("> ", stderr) >= 0 && fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0]) continue;
        st = chat_turn(ctx, sampler, gp, line, &res);
    }
    return st;
}

static int run(const cli_options *o) {
    lmoe_model_params mp;
    lmoe_context_params cp;
    lmoe_generate_params gp;
    lmoe_model_default_params(&mp, sizeof mp);
    lmoe_context_default_params(&cp, sizeof cp);
    lmoe_generate_default_params(&gp, sizeof gp);
    if (o->verbose) {
        mp.log_fn = cp.log_fn = log_to_stderr;
        mp.log_level = cp.log_level = LMOE_LOG_DEBUG;
    }
    cp.n_threads = o->n_threads;
    cp.n_ctx = o->n_ctx;
    gp.max_tokens = o->n_predict;
    gp.stop_strings = o->stops;
    gp.n_stop_strings = o->n_stops;
    gp.on_text = print_text;

    lmoe_model *model = NULL;
    lmoe_context *ctx = NULL;
    lmoe_sampler *sampler = NULL;
    lmoe_generate_result res = {0};
    const char *what = "loading the model";
    lmoe_status st = lmoe_model_load(o->model_path, &mp, &model);
    if (st == LMOE_OK) what = "creating the context", st = lmoe_context_create(model, &cp, &ctx);
    if (st == LMOE_OK) what = "creating the sampler", st = lmoe_sampler_create(&o->sampling, &sampler);
    int usage_error = st == LMOE_OK && o->chat && !has_vicuna_format(model);
    if (usage_error)
        fprintf(stderr, "llamamoe-cli: the model records no chat format this program knows "
                "(convert an SFT model with: llamamoe-convert hf DIR --chat vicuna -o OUT)\n");
    if (usage_error) {
        /* nothing to run */
    } else if (st == LMOE_OK && o->chat) {
        what = "chatting";
        st = run_chat(o, ctx, sampler, &gp);
    } else if (st == LMOE_OK) {
        const char *prompt = o->prompt ? o->prompt : "";
        fputs(prompt, stdout); /* echo the prompt; generated text continues it */
        fflush(stdout);
        what = "generating";
        st = lmoe_generate(ctx, sampler, prompt, strlen(prompt), &gp, &res, sizeof res);
        fputc('\n', stdout);
        fflush(stdout);
        print_stats(&res);
    }
    if (st == LMOE_OK && o->routing) what = "reading the routing", st = print_routing(model, ctx);
    if (st != LMOE_OK)
        fprintf(stderr, "llamamoe-cli: error %s: %s (%s)\n", what, lmoe_last_error(),
                lmoe_status_string(st));
    lmoe_sampler_free(sampler);
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    return st == LMOE_OK && !usage_error ? 0 : 1;
}

int main(int argc, char **argv) {
    cli_options o = {.n_predict = 256};
    lmoe_sampler_default_params(&o.sampling, sizeof o.sampling);
    o.sampling.seed = (uint64_t)time(NULL);
    if (parse_args(argc, argv, &o) != 0) return 2;
    fprintf(stderr, "seed: %llu\n", (unsigned long long)o.sampling.seed);
    return run(&o);
}
