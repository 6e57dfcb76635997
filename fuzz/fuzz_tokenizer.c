/* fuzz_tokenizer.c - libFuzzer target: the input is text (any bytes: invalid UTF-8, NUL, control
 * characters). Tokenizes it with the vocabulary of $LMOE_FUZZ_MODEL (loaded once, vocab_only) and
 * checks what must always hold:
 *   - every token id is inside the vocabulary;
 *   - a too-small buffer reports the same count (LMOE_ERR_BUFFER_TOO_SMALL);
 *   - detokenize(tokenize(x)) == x byte for byte. Checked for the stories260K/tok512 vocabulary
 *     (no whitespace normalisation; the dummy-prefix space is removed again by decoding; bytes not
 *     in the vocabulary, invalid UTF-8 included, go through byte fallback). Set
 *     LMOE_FUZZ_NO_ROUNDTRIP=1 for a vocabulary that normalises text. Not checked when the input
 *     holds U+2581 itself (SentencePiece's space marker: it decodes to a space, as in
 *     SentencePiece).
 *   - with add_bos, the same tokens after BOS, and the same decoded text. */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

static lmoe_model *g_model;
static int32_t g_n_vocab;
static int g_roundtrip = 1;

static void init_once(void) {
    if (g_model) return;
    g_model = fuzz_load_env_model(1);
    lmoe_model_info info;
    if (lmoe_model_get_info(g_model, &info, sizeof info) != LMOE_OK) abort();
    g_n_vocab = info.n_vocab;
    const char *e = getenv("LMOE_FUZZ_NO_ROUNDTRIP");
    if (e && *e && *e != '0') g_roundtrip = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    init_once();
    const char *text = (const char *)data;

    size_t need = 0;
    lmoe_status st = lmoe_tokenize(g_model, text, size, 0, NULL, 0, &need);
    if (st != LMOE_OK && st != LMOE_ERR_BUFFER_TOO_SMALL) __builtin_trap();
    if (st == LMOE_OK && need != 0) __builtin_trap();
    /* at most a dummy prefix plus one byte token per byte */
    if (need > size + 1) __builtin_trap();

    lmoe_token *toks = malloc((need + 1) * sizeof *toks);
    if (!toks) return 0;
    size_t n = 0;
    if (lmoe_tokenize(g_model, text, size, 0, toks, need, &n) != LMOE_OK || n != need)
        __builtin_trap();
    for (size_t i = 0; i < n; i++)
        if (toks[i] < 0 || toks[i] >= g_n_vocab) __builtin_trap();

    size_t len = 0;
    st = lmoe_detokenize(g_model, toks, n, NULL, 0, &len);
    if (st != LMOE_OK && st != LMOE_ERR_BUFFER_TOO_SMALL) __builtin_trap();
    char *out = malloc(len ? len : 1);
    if (!out) { free(toks); return 0; }
    size_t len2 = 0;
    if (lmoe_detokenize(g_model, toks, n, out, len, &len2) != LMOE_OK || len2 != len)
        __builtin_trap();
    int has_marker = size >= 3 && memmem(data, size, "\xe2\x96\x81", 3) != NULL;
    if (g_roundtrip && !has_marker && (len != size || (size && memcmp(out, data, size) != 0))) __builtin_trap();

    /* with BOS: the same ids after it, decoding to the same text */
    lmoe_token bos = lmoe_token_bos(g_model);
    if (bos >= 0) {
        lmoe_token *tb = malloc((need + 1) * sizeof *tb);
        size_t nb = 0;
        if (tb) {
            if (lmoe_tokenize(g_model, text, size, 1, tb, need + 1, &nb) != LMOE_OK ||
                nb != n + 1 || tb[0] != bos || memcmp(tb + 1, toks, n * sizeof *toks) != 0)
                __builtin_trap();
            char *outb = malloc(len + 1);
            size_t lenb = 0;
            if (outb) {
                if (lmoe_detokenize(g_model, tb, nb, outb, len + 1, &lenb) != LMOE_OK ||
                    lenb != len || (len && memcmp(outb, out, len) != 0))
                    __builtin_trap();
                free(outb);
            }
            free(tb);
        }
    }
    free(out);
    free(toks);
    return 0;
}
