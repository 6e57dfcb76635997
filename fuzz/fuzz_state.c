/* fuzz_state.c - libFuzzer target: the input is a saved context state (lmoe_context_state_save).
 * The model comes from $LMOE_FUZZ_MODEL (stories260K converted to GGUF; fuzz/run.sh makes it) and
 * is loaded once, with one context of n_ctx 16. Each input is restored twice: as given (mostly
 * stopped by the checksum) and with its trailing FNV-1a checksum recomputed, so that mutations
 * reach the header and payload checks behind it. After a successful restore one token is
 * evaluated: a restored state must always be usable. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#define FUZZ_N_CTX 16

static lmoe_model *g_model;
static lmoe_context *g_ctx;
static int32_t g_n_vocab;

static void init_once(void) {
    if (g_ctx) return;
    g_model = fuzz_load_env_model(0);
    lmoe_model_info info;
    if (lmoe_model_get_info(g_model, &info, sizeof info) != LMOE_OK || !info.has_weights) abort();
    g_n_vocab = info.n_vocab;
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = FUZZ_N_CTX;
    cp.n_threads = 1;
    if (lmoe_context_create(g_model, &cp, &g_ctx) != LMOE_OK) abort();
}

/* the checksum state.c appends: FNV-1a 64 of every byte before it, in native byte order */
static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static void try_load(const uint8_t *buf, size_t size) {
    lmoe_context_reset(g_ctx);
    if (lmoe_context_state_load(g_ctx, buf, size) != LMOE_OK) {
        /* a refused state leaves the (reset) context empty */
        if (lmoe_context_n_tokens(g_ctx) != 0) __builtin_trap();
        return;
    }
    uint32_t n = lmoe_context_n_tokens(g_ctx);
    if (n > FUZZ_N_CTX) __builtin_trap();
    const float *logits = lmoe_logits(g_ctx);
    if (logits) {
        volatile float sink = 0;
        for (int32_t i = 0; i < g_n_vocab; i++) sink += logits[i];
        (void)sink;
    }
    lmoe_token tok = lmoe_token_bos(g_model);
    if (tok < 0) tok = 0;
    lmoe_status st = lmoe_eval(g_ctx, &tok, 1);
    if (st == LMOE_OK) {
        if (!lmoe_logits(g_ctx) || lmoe_context_n_tokens(g_ctx) != n + 1) __builtin_trap();
    } else if (!(st == LMOE_ERR_CONTEXT_FULL && n == FUZZ_N_CTX)) {
        __builtin_trap(); /* a restored state that is not full must take one more token */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    init_once();
    try_load(data, size);
    if (size >= 8) {
        /* exact-size heap copy so ASan sees any read past the end */
        uint8_t *copy = malloc(size);
        if (!copy) return 0;
        memcpy(copy, data, size);
        uint64_t h = fnv1a(copy, size - 8);
        memcpy(copy + size - 8, &h, 8);
        try_load(copy, size);
        free(copy);
    }
    return 0;
}
