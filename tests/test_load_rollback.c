/* test_load_rollback.c - models loaded from a file descriptor and from memory, and rolling the KV
 * cache back:
 *   - lmoe_model_load_from_fd and lmoe_model_load_from_memory give the same model as
 *     lmoe_model_load (same info, same logits bit for bit after the same tokens); the fd may be
 *     closed right after loading; a buffer that is not 32-byte aligned, a NULL or empty buffer,
 *     a negative fd, a pipe and a truncated file's bytes are refused with a message;
 *   - lmoe_context_truncate(n) followed by evaluating the removed tokens again gives the logits of
 *     the uninterrupted run, bit for bit; keeping more tokens than the cache holds is refused; after
 *     a truncation that removed tokens the logits are invalid until the next eval.
 * Model: stories260K converted from ../shared/models. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "llamamoe.h"
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

int main(void) {
    test_require_models();
    const char *path = test_stories_gguf("load_rollback.gguf");
    CHECK(path != NULL);
    if (path) {
        test_sources(path);
        test_truncate(path);
    }
    return test_finish("test_load_rollback");
}
