/* seedgen.c - makes the seed inputs of the fuzz targets (run by fuzz/run.sh):
 *   seedgen ckpt OUT.bin             a tiny random llama2.c checkpoint (dim 16, 1 layer, vocab
 *                                    512) for `llamamoe-convert llama2c OUT.bin tok512.bin`: a
 *                                    GGUF small enough (< 64 KiB) to be a whole fuzz_gguf_model seed
 *   seedgen state MODEL.gguf DIR     saved context states of MODEL (n_ctx 16): empty, 3 tokens,
 *                                    16 tokens (full) as DIR/seed0, seed1, seed2 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"

static int write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return perror(path), 1;
    int bad = fwrite(data, 1, size, f) != size;
    bad |= fclose(f) != 0;
    if (bad) perror(path);
    return bad;
}

static int make_ckpt(const char *out) {
    /* legacy llama2.c header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len */
    const int32_t dim = 16, hidden = 32, layers = 1, heads = 2, kv_heads = 2, vocab = 512,
                  seq = 16;
    const int32_t head = dim / heads, kv_dim = head * kv_heads;
    size_t n = (size_t)vocab * dim                                   /* token embedding */
               + (size_t)layers * (dim + dim * dim + 2 * dim * kv_dim + dim * dim) /* attn */
               + (size_t)layers * (dim + 3 * (size_t)hidden * dim)  /* ffn */
               + dim                                                 /* final norm */
               + (size_t)seq * head;                                 /* legacy RoPE tables */
    size_t bytes = 28 + n * 4;
    uint8_t *buf = malloc(bytes);
    if (!buf) return 1;
    int32_t h[7] = {dim, hidden, layers, heads, kv_heads, vocab, seq};
    memcpy(buf, h, sizeof h);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        float v = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.2f;
        memcpy(buf + 28 + i * 4, &v, 4);
    }
    int rc = write_file(out, buf, bytes);
    free(buf);
    return rc;
}

static int save_state(lmoe_context *ctx, const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (lmoe_context_state_save_file(ctx, path) != LMOE_OK) {
        fprintf(stderr, "seedgen: %s: %s\n", path, lmoe_last_error());
        return 1;
    }
    return 0;
}

static int make_states(const char *model_path, const char *dir) {
    lmoe_model *model = NULL;
    if (lmoe_model_load(model_path, NULL, &model) != LMOE_OK) {
        fprintf(stderr, "seedgen: %s: %s\n", model_path, lmoe_last_error());
        return 1;
    }
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 16;
    cp.n_threads = 1;
    lmoe_context *ctx = NULL;
    int rc = 1;
    if (lmoe_context_create(model, &cp, &ctx) != LMOE_OK) goto done;
    if (save_state(ctx, dir, "seed0")) goto done;
    lmoe_token toks[64];
    size_t n = 0;
    static const char text[] = "Once upon a time there was a little girl who liked to play";
    if (lmoe_tokenize(model, text, sizeof text - 1, 1, toks, 64, &n) != LMOE_OK) n = 0;
    if (n > 16) n = 16;
    while (n < 16) toks[n++] = 1; /* pad to a full context */
    if (lmoe_eval(ctx, toks, 3) != LMOE_OK) goto done;
    if (save_state(ctx, dir, "seed1")) goto done;
    if (lmoe_eval(ctx, toks + 3, 13) != LMOE_OK) goto done;
    if (save_state(ctx, dir, "seed2")) goto done;
    rc = 0;
done:
    if (rc) fprintf(stderr, "seedgen: %s\n", lmoe_last_error());
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "ckpt")) return make_ckpt(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "state")) return make_states(argv[2], argv[3]);
    fprintf(stderr, "usage: seedgen ckpt OUT.bin | seedgen state MODEL.gguf DIR\n");
    return 2;
}
