/* test_limits.c - hostile values, one catalogue: each must give a clear status and a message that
 * names the problem, or (where the value cannot be checked cheaply) be contained so that the host
 * keeps running and every token id stays in range.
 *
 *   hyperparameters: zero, negative, huge (products that would overflow size_t), experts used >
 *     experts, non-finite floats;
 *   weights: NaN and infinity (norms refused at load; matrices contained during generation);
 *   contexts of 0 tokens (the model's own size) and of 2^30 + 1, 2^31 and 2^32 - 1 tokens;
 *   prompts made of invalid UTF-8, which the byte-fallback pieces must carry through unchanged.
 * Duplicate and empty vocabulary pieces are in test_tokenizer and test_bad_input; malformed GGUF
 * structure (counts, offsets, string lengths, tensor sizes that overflow) in test_bad_input. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"
#include "mem.h"
#include "test_util.h"
#include "tiny_model.h"

/* Builds the tiny model with o and loads it from a 32-byte-aligned copy; returns the status, *m
 * on success. The copy must outlive the model: free(*buf) after lmoe_model_free (a failed load
 * frees it and leaves *buf NULL). */
static lmoe_status load_tiny(const tiny_opts *o, uint8_t **buf, lmoe_model **m) {
    uint8_t *bytes = NULL;
    size_t size = 0;
    *m = NULL;
    *buf = NULL;
    lmoe_status st = tiny_model_build(o, &bytes, &size);
    CHECK_MSG(st == LMOE_OK, "cannot build the tiny model: %s", lmoe_last_error());
    if (st == LMOE_OK) *buf = aligned_alloc(32, (size + 31) / 32 * 32);
    if (*buf) memcpy(*buf, bytes, size);
    mem_free(bytes);
    if (!*buf) return LMOE_ERR_INTERNAL;
    st = lmoe_model_load_from_memory(*buf, size, NULL, m);
    if (st != LMOE_OK) {
        free(*buf);
        *buf = NULL;
    }
    return st;
}

/* Expects the model with these keys to be refused with status and a message containing word. */
static void expect_refused(const char *label, const tiny_key *keys, size_t n_keys,
                           lmoe_status status, const char *word) {
    tiny_opts o = {0};
    o.keys = keys;
    o.n_keys = n_keys;
    uint8_t *buf;
    lmoe_model *m;
    lmoe_status st = load_tiny(&o, &buf, &m);
    CHECK_MSG(st == status && strstr(lmoe_last_error(), word) != NULL,
              "%s: status %d (%s), expected %d naming '%s'", label, (int)st, lmoe_last_error(),
              (int)status, word);
    CHECK_MSG(st != LMOE_OK || m == NULL, "%s: a refused load left a model", label);
    lmoe_model_free(m);
    free(buf);
}

#define KEY_U32(k, v) {(k), TINY_U32, (int64_t)(v), 0}
#define KEY_I32(k, v) {(k), TINY_I32, (int64_t)(v), 0}
#define KEY_F32(k, v) {(k), TINY_F32, 0, (v)}
#define ONE(label, key, status, word)                                                               \
    do {                                                                                            \
        const tiny_key k_[] = {key};                                                                \
        expect_refused(label, k_, 1, status, word);                                                 \
    } while (0)

static void test_hparams(void) {
    const lmoe_status BAD = LMOE_ERR_BAD_FILE;
    /* zero sizes */
    ONE("block_count 0", KEY_U32("llama.block_count", 0), BAD, "llama.block_count");
    ONE("embedding_length 0", KEY_U32("llama.embedding_length", 0), BAD, "embedding_length");
    ONE("feed_forward_length 0", KEY_U32("llama.feed_forward_length", 0), BAD,
        "feed_forward_length");
    ONE("head_count 0", KEY_U32("llama.attention.head_count", 0), BAD, "head_count");
    ONE("head_count_kv 0", KEY_U32("llama.attention.head_count_kv", 0), BAD, "head_count_kv");
    ONE("context_length 0", KEY_U32("llama.context_length", 0), BAD, "context_length");
    /* negative sizes (a signed type where an unsigned one belongs) */
    ONE("block_count -1", KEY_I32("llama.block_count", -1), BAD, "llama.block_count");
    ONE("head_count -2", KEY_I32("llama.attention.head_count", -2), BAD, "head_count");
    ONE("embedding_length INT32_MIN", KEY_I32("llama.embedding_length", INT32_MIN), BAD,
        "embedding_length");
    /* huge sizes: n_layer * n_ctx * n_embd_kv and n_vocab * n_embd would overflow 32-bit
     * arithmetic, and the scratch sizes would exceed any memory; refused before any allocation */
    ONE("block_count 2^32-1", KEY_U32("llama.block_count", UINT32_MAX), BAD, "block_count");
    ONE("embedding_length 2^31", KEY_U32("llama.embedding_length", 1u << 31), BAD,
        "embedding_length");
    ONE("feed_forward_length 2^32-1", KEY_U32("llama.feed_forward_length", UINT32_MAX), BAD,
        "feed_forward_length");
    ONE("head_count 2^31", KEY_U32("llama.attention.head_count", 1u << 31), BAD, "head_count");
    ONE("vocab_size 2^32-1", KEY_U32("llama.vocab_size", UINT32_MAX), BAD, "vocab");
    /* sizes in range but not matching the tensors */
    ONE("embedding_length 16", KEY_U32("llama.embedding_length", 16), BAD, "token_embd.weight");
    ONE("block_count 2", KEY_U32("llama.block_count", 2), BAD, "blk.1.");
    /* non-finite or non-positive floats */
    ONE("rope.freq_base NaN", KEY_F32("llama.rope.freq_base", NAN), BAD, "rope.freq_base");
    ONE("rope.freq_base -1", KEY_F32("llama.rope.freq_base", -1.0f), BAD, "rope.freq_base");
    ONE("rope.freq_base inf", KEY_F32("llama.rope.freq_base", INFINITY), BAD, "rope.freq_base");
    ONE("rms_epsilon 0", KEY_F32("llama.attention.layer_norm_rms_epsilon", 0.0f), BAD,
        "layer_norm_rms_epsilon");
    /* experts: checked before any expert tensor is looked for */
    const tiny_key used_gt[] = {KEY_U32("llama.expert_count", 4),
                                KEY_U32("llama.expert_used_count", 5)};
    expect_refused("expert_used_count > expert_count", used_gt, 2, BAD, "larger than expert_count");
    const tiny_key zero_experts[] = {KEY_U32("llama.expert_count", 0),
                                     KEY_U32("llama.expert_used_count", 0)};
    expect_refused("expert_count 0", zero_experts, 2, BAD, "expert_count");
    const tiny_key zero_used[] = {KEY_U32("llama.expert_count", 4),
                                  KEY_U32("llama.expert_used_count", 0)};
    expect_refused("expert_used_count 0", zero_used, 2, BAD, "expert_used_count");
    const tiny_key huge_experts[] = {KEY_U32("llama.expert_count", UINT32_MAX),
                                     KEY_U32("llama.expert_used_count", 2)};
    expect_refused("expert_count 2^32-1", huge_experts, 2, BAD, "expert_count");
    const tiny_key no_used[] = {KEY_U32("llama.expert_count", 4)};
    expect_refused("expert_used_count missing", no_used, 1, BAD, "expert_used_count");
}

/* ------------------------------------------------------------------------------------------------
 * non-finite weights
 * ---------------------------------------------------------------------------------------------- */

typedef struct token_check {
    int n_tokens, n_out_of_range;
} token_check;

static int on_token(void *user, lmoe_token token) {
    token_check *c = user;
    c->n_tokens++;
    if (token < 0 || token >= TINY_N_VOCAB) c->n_out_of_range++;
    return 0;
}

/* Generates up to 12 tokens from prompt in a fresh context of n_ctx tokens (0: the model's),
 * counting the tokens and those out of range into *c. */
static lmoe_status generate_checked(const lmoe_model *m, uint32_t n_ctx,
                                    const lmoe_sampler_params *sp, const char *prompt,
                                    size_t prompt_len, token_check *c,
                                    lmoe_generate_result *res) {
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = n_ctx;
    lmoe_context *ctx = NULL;
    lmoe_sampler *smp = NULL;
    lmoe_status st = lmoe_context_create(m, &cp, &ctx);
    if (st == LMOE_OK) st = lmoe_sampler_create(sp, &smp);
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = 12;
    gp.on_token = on_token;
    gp.user = c;
    *c = (token_check){0, 0};
    if (st == LMOE_OK) st = lmoe_generate(ctx, smp, prompt, prompt_len, &gp, res, sizeof *res);
    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
    return st;
}

/* The tiny model with every element of one tensor set to value. */
static lmoe_status load_poisoned(const char *tensor, float value, uint8_t **buf, lmoe_model **m) {
    tiny_opts o = {0};
    o.poison_tensor = tensor;
    o.poison_value = value;
    return load_tiny(&o, buf, m);
}

/* Generates greedily and sampled from a model with poisoned weights: must finish normally. */
static void expect_contained(const char *tensor, float value) {
    uint8_t *buf;
    lmoe_model *m;
    lmoe_status st = load_poisoned(tensor, value, &buf, &m);
    CHECK_MSG(st == LMOE_OK, "%s = %g: load: %s", tensor, (double)value, lmoe_last_error());
    for (int sampled = 0; st == LMOE_OK && sampled <= 1; sampled++) {
        lmoe_sampler_params sp;
        lmoe_sampler_default_params(&sp, sizeof sp);
        sp.temperature = sampled ? 0.9f : 0.0f;
        sp.top_k = sampled ? 5 : 0;
        sp.repeat_penalty = 1.2f;
        token_check c;
        lmoe_generate_result res;
        lmoe_status gst = generate_checked(m, 0, &sp, "ab c", 4, &c, &res);
        CHECK_MSG(gst == LMOE_OK, "%s = %g: generate: %s", tensor, (double)value,
                  lmoe_last_error());
        CHECK_MSG(c.n_tokens > 0 && c.n_out_of_range == 0, "%s = %g: %d tokens, %d out of range",
                  tensor, (double)value, c.n_tokens, c.n_out_of_range);
    }
    lmoe_model_free(m);
    free(buf);
}

static void expect_refused_weights(const char *tensor, float value) {
    uint8_t *buf;
    lmoe_model *m;
    lmoe_status st = load_poisoned(tensor, value, &buf, &m);
    CHECK_MSG(st == LMOE_ERR_BAD_FILE && strstr(lmoe_last_error(), tensor) &&
                  strstr(lmoe_last_error(), "finite"),
              "%s = %g: status %d (%s), expected LMOE_ERR_BAD_FILE naming the tensor", tensor,
              (double)value, (int)st, lmoe_last_error());
    lmoe_model_free(m);
    free(buf);
}

static void test_weights(void) {
    static const char *const norms[] = {"output_norm.weight", "blk.0.attn_norm.weight",
                                        "blk.0.ffn_norm.weight"};
    static const char *const matrices[] = {"token_embd.weight", "blk.0.attn_q.weight",
                                           "blk.0.attn_v.weight", "blk.0.ffn_down.weight"};
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t v = 0; v < 3; v++) {
        for (size_t i = 0; i < 3; i++) expect_refused_weights(norms[i], bad[v]);
        for (size_t i = 0; i < 4; i++) expect_contained(matrices[i], bad[v]);
    }
    expect_contained("blk.0.ffn_up.weight", 3e38f); /* finite, but the products overflow */
}

/* ------------------------------------------------------------------------------------------------
 * context sizes and invalid UTF-8
 * ---------------------------------------------------------------------------------------------- */

static void test_contexts(void) {
    uint8_t *buf;
    lmoe_model *m;
    CHECK_OK(load_tiny(&(tiny_opts){0}, &buf, &m));
    if (!m) return;
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    lmoe_context *ctx = NULL;
    cp.n_ctx = 0; /* the model's own context length (32) */
    CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    CHECK(lmoe_context_n_ctx(ctx) == 32);
    lmoe_context_free(ctx);
    const uint32_t huge[] = {(1u << 30) + 1, 1u << 31, UINT32_MAX};
    for (size_t i = 0; i < 3; i++) {
        cp.n_ctx = huge[i];
        ctx = (lmoe_context *)&cp;
        lmoe_status st = lmoe_context_create(m, &cp, &ctx);
        CHECK_MSG(st == LMOE_ERR_INVALID_ARGUMENT && ctx == NULL &&
                      strstr(lmoe_last_error(), "n_ctx") != NULL,
                  "n_ctx %u: status %d (%s)", huge[i], (int)st, lmoe_last_error());
    }
    cp.n_ctx = 0;
    cp.n_threads = -1;
    CHECK(lmoe_context_create(m, &cp, &ctx) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "n_threads") != NULL);
    lmoe_model_free(m);
    free(buf);
}

/* Invalid UTF-8 goes through the byte pieces: every id in range, and decoding gives the bytes. */
static void test_invalid_utf8(void) {
    uint8_t *buf;
    lmoe_model *m;
    CHECK_OK(load_tiny(&(tiny_opts){0}, &buf, &m));
    if (!m) return;
    static const char *const texts[] = {
        "\x80",                       /* a lone continuation byte */
        "a\xbf\x80z",                 /* two of them */
        "\xc0\xaf",                   /* overlong '/' */
        "\xe0\x80\xaf",               /* overlong, three bytes */
        "\xed\xa0\x80",               /* a UTF-16 surrogate */
        "\xf4\x90\x80\x80",           /* above U+10FFFF */
        "\xf0\x9f\x98",               /* a truncated four-byte sequence */
        "\xff\xfe\xfd",               /* bytes that never occur in UTF-8 */
        "ab \xc3",                    /* cut at the end */
        "\xe2\x96",                   /* the start of U+2581 without its end */
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        size_t len = strlen(texts[i]), n = 0, out_len = 0;
        lmoe_token ids[64];
        char out[128];
        lmoe_status st = lmoe_tokenize(m, texts[i], len, 0, ids, 64, &n);
        CHECK_MSG(st == LMOE_OK, "text %zu: tokenize: %s", i, lmoe_last_error());
        bool in_range = true;
        for (size_t j = 0; j < n; j++) in_range = in_range && ids[j] >= 0 && ids[j] < TINY_N_VOCAB;
        CHECK_MSG(in_range, "text %zu: a token id out of range", i);
        if (st == LMOE_OK) st = lmoe_detokenize(m, ids, n, out, sizeof out, &out_len);
        CHECK_MSG(st == LMOE_OK && out_len == len && memcmp(out, texts[i], len) == 0,
                  "text %zu: decoding gives %zu bytes, not the %zu given", i, out_len, len);
    }
    /* a prompt of every byte value, in generation */
    char all[256];
    for (int i = 0; i < 256; i++) all[i] = (char)(255 - i);
    token_check c;
    lmoe_generate_result res;
    CHECK_OK(generate_checked(m, 300, NULL, all, sizeof all, &c, &res));
    CHECK(res.n_prompt_tokens >= 256 && c.n_tokens > 0 && c.n_out_of_range == 0);
    lmoe_model_free(m);
    free(buf);
}

int main(void) {
    test_hparams();
    test_weights();
    test_contexts();
    test_invalid_utf8();
    return test_finish("test_limits");
}
