/* fuzz_gguf_model.c - libFuzzer target: the input is a GGUF file. Loads it from memory (the GGUF
 * reader and every model validation), and when it loads: model info, metadata, tokenization, and
 * for a small model with weights one evaluated token. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* lmoe_model_load_from_memory wants 32-byte alignment; aligned_alloc wants a size that is a
     * multiple of the alignment. The copy is exactly as readable as the input plus padding; the
     * padding is zeroed so the library's reads past `size` (if any) are at least deterministic
     * and the sanitizers still catch reads past the rounded size. */
    size_t cap = (size + 31) & ~(size_t)31;
    if (cap == 0) cap = 32;
    uint8_t *buf = aligned_alloc(32, cap);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    memset(buf + size, 0, cap - size);

    lmoe_model_params mp;
    lmoe_model_default_params(&mp, sizeof mp);
    lmoe_model *model = NULL;
    if (lmoe_model_load_from_memory(buf, size, &mp, &model) != LMOE_OK) {
        free(buf);
        return 0;
    }

    lmoe_model_info info;
    if (lmoe_model_get_info(model, &info, sizeof info) == LMOE_OK) {
        char meta[64];
        lmoe_model_meta_string(model, "general.architecture", meta, sizeof meta, NULL);
        lmoe_model_meta_string(model, "general.name", meta, sizeof meta, NULL);

        static const char text[] = "Once upon a time, \xc3\xa9t\xc3\xa9 \xff!";
        lmoe_token toks[64];
        size_t n = 0;
        if (lmoe_tokenize(model, text, sizeof text - 1, 1, toks, 64, &n) == LMOE_OK && n <= 64) {
            char out[256];
            size_t len = 0;
            lmoe_detokenize(model, toks, n, out, sizeof out, &len);
        }

        int small = info.n_embd <= 256 && info.n_layer <= 4 && info.n_vocab <= 4096 &&
                    info.n_ff <= 1024 && info.n_expert <= 16;
        if (info.has_weights && small) {
            lmoe_context_params cp;
            lmoe_context_default_params(&cp, sizeof cp);
            cp.n_ctx = 8;
            cp.n_threads = 1;
            lmoe_context *ctx = NULL;
            if (lmoe_context_create(model, &cp, &ctx) == LMOE_OK) {
                lmoe_token bos = lmoe_token_bos(model);
                if (bos < 0 || bos >= info.n_vocab) bos = 0;
                if (lmoe_eval(ctx, &bos, 1) == LMOE_OK) {
                    const float *logits = lmoe_logits(ctx);
                    if (!logits) __builtin_trap(); /* eval succeeded: logits must exist */
                    volatile float sink = 0;
                    for (int32_t i = 0; i < info.n_vocab; i++) sink += logits[i];
                    (void)sink;
                }
                lmoe_context_free(ctx);
            }
        }
    }
    lmoe_model_free(model);
    free(buf);
    return 0;
}
