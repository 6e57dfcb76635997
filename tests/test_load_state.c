/* test_load_state.c - models loaded from a file descriptor and from memory, rolling the KV cache
 * back, and saving and restoring a context's state:
 *   - lmoe_model_load_from_fd and lmoe_model_load_from_memory give the same model as
 *     lmoe_model_load (same info, same logits bit for bit after the same tokens); the fd may be
 *     closed right after loading; a buffer that is not 32-byte aligned, a NULL or empty buffer,
 *     a negative fd, a pipe and a truncated file's bytes are refused with a message;
 *   - lmoe_context_truncate(n) followed by evaluating the removed tokens again gives the logits of
 *     the uninterrupted run, bit for bit; keeping more tokens than the cache holds is refused; after
 *     a truncation that removed tokens the logits are invalid until the next eval;
 *   - lmoe_context_shift(1, 10) on a full context leaves layer 0's cache (which depends only on
 *     each token and its position) as a fresh context that never saw the 10 dropped tokens has
 *     it: values equal, keys within 1e-5 (their RoPE is undone and redone in float); evaluation
 *     continues; bad counts are refused. (Deeper layers still carry what the dropped tokens
 *     contributed: that is what a context shift is.)
 *   - a context's state saved to memory and to a file and restored into another context (of a
 *     larger n_ctx) continues exactly as the original: the restored logits, and the logits after
 *     more tokens, are bit for bit the original's; a state that is too large for the context, from
 *     another model, truncated, or with one byte changed is refused and leaves the context as it
 *     was; a too small buffer reports the size needed.
 * Model: stories260K converted from ../shared/models. */
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "context.h"
#include "llamamoe.h"
#include "quantize.h"
#include "test_util.h"

static lmoe_model_info info_of(const lmoe_model *m) {
    lmoe_model_info info;
    memset(&info, 0, sizeof info);
    CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
    return info;
}

/* Evaluates tokens one at a time (so every run takes the same code path, whatever came before). */
static lmoe_status eval_each(lmoe_context *ctx, const lmoe_token *t, size_t n) {
    for (size_t i = 0; i < n; i++) {
        lmoe_status st = lmoe_eval(ctx, &t[i], 1);
        if (st != LMOE_OK) return st;
    }
    return LMOE_OK;
}

/* Logits after evaluating tokens into a fresh context (malloc'd copy). */
static float *logits_after(const lmoe_model *m, const lmoe_token *tokens, size_t n) {
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 64;
    cp.n_threads = 1;
    lmoe_context *ctx = NULL;
    float *out = NULL;
    int32_t n_vocab = info_of(m).n_vocab;
    if (lmoe_context_create(m, &cp, &ctx) == LMOE_OK && eval_each(ctx, tokens, n) == LMOE_OK) {
        out = malloc((size_t)n_vocab * sizeof *out);
        memcpy(out, lmoe_logits(ctx), (size_t)n_vocab * sizeof *out);
    }
    CHECK_MSG(out != NULL, "evaluating: %s", lmoe_last_error());
    lmoe_context_free(ctx);
    return out;
}

static const lmoe_token tokens[] = {1, 403, 407, 261, 378, 436, 369, 261, 300, 348, 424, 412};
#define N_TOKENS (sizeof tokens / sizeof tokens[0])

static void test_sources(const char *path) {
    lmoe_model *by_path = NULL, *by_fd = NULL, *by_mem = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &by_path));
    int fd = open(path, O_RDONLY);
    CHECK(fd >= 0);
    CHECK_OK(lmoe_model_load_from_fd(fd, NULL, &by_fd));
    close(fd); /* the model keeps its own mapping */
    size_t size = 0;
    char *bytes = test_read_file(path, &size);
    void *aligned = bytes ? aligned_alloc(32, (size + 31) / 32 * 32) : NULL;
    if (aligned) memcpy(aligned, bytes, size);
    CHECK_OK(lmoe_model_load_from_memory(aligned, size, NULL, &by_mem));
    if (!by_path || !by_fd || !by_mem) goto done;
    int32_t n_vocab = info_of(by_path).n_vocab;
    CHECK(info_of(by_fd).n_params == info_of(by_path).n_params);
    CHECK(info_of(by_mem).n_layer == info_of(by_path).n_layer);
    float *a = logits_after(by_path, tokens, N_TOKENS), *b = logits_after(by_fd, tokens, N_TOKENS),
          *c = logits_after(by_mem, tokens, N_TOKENS);
    CHECK(a && b && c && memcmp(a, b, (size_t)n_vocab * 4) == 0 &&
          memcmp(a, c, (size_t)n_vocab * 4) == 0);
    free(a);
    free(b);
    free(c);

    /* refusals */
    lmoe_model *m = NULL;
    CHECK(lmoe_model_load_from_memory((char *)aligned + 8, size - 8, NULL, &m) ==
              LMOE_ERR_INVALID_ARGUMENT && !m && strstr(lmoe_last_error(), "aligned"));
    CHECK(lmoe_model_load_from_memory(NULL, 100, NULL, &m) == LMOE_ERR_INVALID_ARGUMENT && !m);
    CHECK(lmoe_model_load_from_memory(aligned, 0, NULL, &m) == LMOE_ERR_INVALID_ARGUMENT && !m);
    CHECK(lmoe_model_load_from_memory(aligned, size / 2, NULL, &m) == LMOE_ERR_BAD_FILE && !m);
    CHECK_MSG(strstr(lmoe_last_error(), "memory buffer") != NULL, "%s", lmoe_last_error());
    CHECK(lmoe_model_load_from_fd(-1, NULL, &m) == LMOE_ERR_INVALID_ARGUMENT && !m);
    int pipe_fds[2];
    if (pipe(pipe_fds) == 0) {
        CHECK(lmoe_model_load_from_fd(pipe_fds[0], NULL, &m) == LMOE_ERR_IO && !m);
        CHECK_MSG(strstr(lmoe_last_error(), "not a regular file") != NULL, "%s", lmoe_last_error());
        close(pipe_fds[0]);
        close(pipe_fds[1]);
    }
done:
    lmoe_model_free(by_mem); /* before its buffer */
    lmoe_model_free(by_fd);
    lmoe_model_free(by_path);
    free(aligned);
    free(bytes);
}

static void test_truncate(const char *path) {
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    if (!m) return;
    int32_t n_vocab = info_of(m).n_vocab;
    float *whole = logits_after(m, tokens, N_TOKENS);
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 64;
    cp.n_threads = 1;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    if (ctx && whole) {
        /* a wrong continuation, rolled back to the shared prefix, then the right one */
        static const lmoe_token wrong[] = {1, 403, 407, 261, 378, 300, 300, 300, 300};
        CHECK_OK(eval_each(ctx, wrong, 9));
        CHECK(lmoe_context_truncate(ctx, 10) == LMOE_ERR_INVALID_ARGUMENT);
        CHECK(lmoe_context_n_tokens(ctx) == 9);
        CHECK_OK(lmoe_context_truncate(ctx, 5));
        CHECK(lmoe_context_n_tokens(ctx) == 5 && lmoe_logits(ctx) == NULL);
        CHECK_OK(eval_each(ctx, tokens + 5, N_TOKENS - 5));
        const float *logits = lmoe_logits(ctx);
        CHECK(logits && memcmp(logits, whole, (size_t)n_vocab * 4) == 0);
        /* keeping everything leaves the logits usable */
        CHECK_OK(lmoe_context_truncate(ctx, (uint32_t)N_TOKENS));
        CHECK(lmoe_logits(ctx) != NULL);
        CHECK(lmoe_context_truncate(NULL, 0) == LMOE_ERR_INVALID_ARGUMENT);
    }
    free(whole);
    lmoe_context_free(ctx);
    lmoe_model_free(m);
}

/* Layer 0's cache rows of positions [0, n) of a context (its keys and values depend only on each
 * token and its position, not on the tokens before it). */
static const float *layer0_row(const lmoe_context *ctx, bool values, uint32_t head, uint32_t pos) {
    const llama_hparams *hp = &ctx->model->hp;
    const float *cache = values ? ctx->state.value_cache : ctx->state.key_cache;
    return cache + ((size_t)head * ctx->n_ctx + pos) * hp->head_dim;
}

static void test_shift(const char *path) {
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    if (!m) return;
    lmoe_token ids[30];
    ids[0] = 1;
    for (int i = 1; i < 30; i++) ids[i] = (lmoe_token)(3 + (i * 197) % 500);
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 24;
    cp.n_threads = 1;
    lmoe_context *a = NULL, *b = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &a));
    cp.n_ctx = 32;
    CHECK_OK(lmoe_context_create(m, &cp, &b));
    if (a && b) {
        CHECK_OK(eval_each(a, ids, 24));
        CHECK(lmoe_eval(a, ids + 24, 1) == LMOE_ERR_CONTEXT_FULL);
        CHECK(lmoe_context_shift(a, 20, 5) == LMOE_ERR_INVALID_ARGUMENT);
        CHECK(lmoe_context_shift(a, 25, 0) == LMOE_ERR_INVALID_ARGUMENT);
        CHECK(lmoe_context_shift(NULL, 0, 0) == LMOE_ERR_INVALID_ARGUMENT);
        CHECK_OK(lmoe_context_shift(a, 1, 10));
        CHECK(lmoe_context_n_tokens(a) == 14);
        /* the same tokens without the dropped ones, from scratch: layer 0's cache must match */
        CHECK_OK(eval_each(b, ids, 1));
        CHECK_OK(eval_each(b, ids + 11, 13));
        const llama_hparams *hp = &m->hp;
        float key_err = 0;
        int value_diff = 0;
        for (uint32_t h = 0; h < hp->n_head_kv; h++)
            for (uint32_t pos = 0; pos < 14; pos++) {
                const float *ka = layer0_row(a, false, h, pos), *kb = layer0_row(b, false, h, pos);
                for (uint32_t d = 0; d < hp->head_dim; d++) {
                    float e = fabsf(ka[d] - kb[d]) / (fabsf(kb[d]) + 1.0f);
                    if (!(e <= key_err)) key_err = e;
                }
                value_diff += memcmp(layer0_row(a, true, h, pos), layer0_row(b, true, h, pos),
                                     hp->head_dim * sizeof(float)) != 0;
            }
        CHECK_MSG(key_err < 1e-5f && value_diff == 0, "after shift(1, 10): layer 0 keys differ by "
                  "%g, %d value rows differ", (double)key_err, value_diff);
        test_summary("shift(1, 10): layer 0 keys within %.1e of a fresh context's, values equal",
                     (double)key_err);
        /* and evaluation goes on */
        CHECK_OK(eval_each(a, ids + 24, 6));
        CHECK(lmoe_context_n_tokens(a) == 20 && lmoe_logits(a) != NULL);
    }
    lmoe_context_free(a);
    lmoe_context_free(b);
    lmoe_model_free(m);
}

static void test_state(const char *path, const char *other_model) {
    lmoe_model *m = NULL, *other = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    CHECK_OK(lmoe_model_load(other_model, NULL, &other));
    if (!m || !other) goto out;
    int32_t n_vocab = info_of(m).n_vocab;
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 32;
    cp.n_threads = 1;
    lmoe_context *a = NULL, *b = NULL, *small = NULL, *foreign = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &a));
    cp.n_ctx = 64;
    CHECK_OK(lmoe_context_create(m, &cp, &b));
    cp.n_ctx = 4;
    CHECK_OK(lmoe_context_create(m, &cp, &small));
    cp.n_ctx = 32;
    CHECK_OK(lmoe_context_create(other, &cp, &foreign));
    if (!a || !b || !small || !foreign) goto free_contexts;
    CHECK_OK(eval_each(a, tokens, 8));
    size_t need = 0;
    CHECK(lmoe_context_state_save(a, NULL, 0, &need) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(need == lmoe_context_state_size(a) && need > 8 * 1000);
    unsigned char *state = malloc(need);
    CHECK_OK(lmoe_context_state_save(a, state, need, NULL));
    /* restored into a bigger context: same logits now and after more tokens */
    CHECK_OK(lmoe_context_state_load(b, state, need));
    CHECK(lmoe_context_n_tokens(b) == 8);
    CHECK(lmoe_logits(b) && memcmp(lmoe_logits(b), lmoe_logits(a), (size_t)n_vocab * 4) == 0);
    CHECK_OK(eval_each(a, tokens + 8, N_TOKENS - 8));
    CHECK_OK(eval_each(b, tokens + 8, N_TOKENS - 8));
    CHECK(memcmp(lmoe_logits(b), lmoe_logits(a), (size_t)n_vocab * 4) == 0);
    /* refusals leave the context as it was */
    CHECK(lmoe_context_state_load(small, state, need) == LMOE_ERR_CONTEXT_FULL);
    CHECK(lmoe_context_n_tokens(small) == 0);
    CHECK(lmoe_context_state_load(foreign, state, need) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK_MSG(strstr(lmoe_last_error(), "another model") != NULL, "%s", lmoe_last_error());
    CHECK(lmoe_context_state_load(b, state, need - 1) == LMOE_ERR_BAD_FILE);
    state[need / 2] ^= 0x10;
    CHECK(lmoe_context_state_load(b, state, need) == LMOE_ERR_BAD_FILE);
    CHECK_MSG(strstr(lmoe_last_error(), "checksum") != NULL, "%s", lmoe_last_error());
    state[need / 2] ^= 0x10;
    state[0] = 'X';
    CHECK(lmoe_context_state_load(b, state, need) == LMOE_ERR_BAD_FILE);
    CHECK(lmoe_context_n_tokens(b) == N_TOKENS);
    state[0] = 'L';
    /* through a file */
    char file[4096];
    test_fmt(file, sizeof file, "%s", test_tmp_path("context.state"));
    CHECK_OK(lmoe_context_state_save_file(a, file));
    lmoe_context_reset(b);
    CHECK_OK(lmoe_context_state_load_file(b, file));
    CHECK(lmoe_context_n_tokens(b) == N_TOKENS);
    CHECK(memcmp(lmoe_logits(b), lmoe_logits(a), (size_t)n_vocab * 4) == 0);
    CHECK(lmoe_context_state_load_file(b, test_tmp_path("no-such.state")) == LMOE_ERR_IO);
    free(state);
free_contexts:
    lmoe_context_free(a);
    lmoe_context_free(b);
    lmoe_context_free(small);
    lmoe_context_free(foreign);
out:
    lmoe_model_free(m);
    lmoe_model_free(other);
}

int main(void) {
    test_require_models();
    const char *path = test_stories_gguf("load_state.gguf");
    CHECK(path != NULL);
    if (path) {
        test_sources(path);
        test_truncate(path);
        test_shift(path);
        /* another model with the same shapes: stories260K in f16 */
        char f16[4096];
        test_fmt(f16, sizeof f16, "%s", test_tmp_path("load_state_f16.gguf"));
        quantize_options qo = {.type = GGML_TYPE_F16};
        CHECK_OK(gguf_quantize(path, f16, &qo));
        test_state(path, f16);
    }
    test_summary_print();
    return test_finish("test_load_state");
}
