/* fuzz_spm.c - libFuzzer target: the input is a SentencePiece tokenizer.model (a ModelProto in
 * protobuf wire format), read by spm_model_read (tools/convert/tokenizer_import.c) and finished
 * by vocab_finish (src/vocab.c). A refused model must leave the vocabulary empty. An accepted one
 * must satisfy what src/vocab.h promises the tokenizer:
 *   - 1 .. 2^31-1 tokens, the arrays present, bos/eos/unk -1 or in range;
 *   - every type SentencePiece's 1..6, every score finite, every piece readable to its length
 *     (ASan checks the bytes) and no longer than max_piece_len;
 *   - byte_ids[b] is -1 or a BYTE token whose text is "<0xNN>" with NN == b;
 *   - the hash table has room (capacity a power of two >= 2 n_tokens) and finds every non-empty
 *     piece, as itself or as a token with the same text (duplicates are allowed for UNUSED only);
 * and then tokenizes a fixed short text with it: ids in range, and the ids decode. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_import.h"

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static void check_vocab(const lmoe_vocab *v) {
    FUZZ_CHECK(v->n_tokens >= 1 && v->n_tokens < (1u << 31));
    FUZZ_CHECK(v->pieces && v->scores && v->types && v->hash_slots);
    int32_t n = (int32_t)v->n_tokens;
    FUZZ_CHECK(v->bos_id >= -1 && v->bos_id < n);
    FUZZ_CHECK(v->eos_id >= -1 && v->eos_id < n);
    FUZZ_CHECK(v->unk_id >= -1 && v->unk_id < n);
    volatile char sink = 0;
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        const vocab_piece *p = &v->pieces[id];
        FUZZ_CHECK(v->types[id] >= VOCAB_TYPE_NORMAL && v->types[id] <= VOCAB_TYPE_BYTE);
        FUZZ_CHECK(isfinite(v->scores[id]));
        FUZZ_CHECK(p->len == 0 || p->text != NULL);
        FUZZ_CHECK(p->len <= v->max_piece_len);
        for (uint32_t i = 0; i < p->len; i++) sink ^= p->text[i];
    }
    (void)sink;
    for (int b = 0; b < 256; b++) {
        int32_t id = v->byte_ids[b];
        if (id < 0) {
            FUZZ_CHECK(id == -1);
            continue;
        }
        FUZZ_CHECK(id < n && v->types[id] == VOCAB_TYPE_BYTE);
        const vocab_piece *p = &v->pieces[id];
        FUZZ_CHECK(p->len == 6 && memcmp(p->text, "<0x", 3) == 0 && p->text[5] == '>');
        FUZZ_CHECK(hex_value(p->text[3]) * 16 + hex_value(p->text[4]) == b);
    }
    uint64_t capacity = (uint64_t)v->hash_mask + 1;
    FUZZ_CHECK((capacity & (capacity - 1)) == 0 && capacity >= 2 * (uint64_t)v->n_tokens);
    for (uint32_t id = 0; id < v->n_tokens; id++) {
        const vocab_piece *p = &v->pieces[id];
        if (p->len == 0) continue;
        int32_t found = vocab_find(v, p->text, p->len);
        FUZZ_CHECK(found >= 0 && found < n);
        const vocab_piece *q = &v->pieces[found];
        FUZZ_CHECK(q->len == p->len && memcmp(q->text, p->text, p->len) == 0);
        FUZZ_CHECK((uint32_t)found == id || v->types[id] == VOCAB_TYPE_UNUSED ||
                   v->types[found] == VOCAB_TYPE_UNUSED);
    }
}

/* ASCII, two spaces, an accented letter, SentencePiece's space marker, and an invalid byte: with
 * the dummy prefix and byte fallback it normalises to at most 3 x its length + 3 bytes, and each
 * byte becomes at most one token. */
static const char TEXT[] = "Hi  there, caf\xc3\xa9 \xe2\x96\x81 \xff!";
#define MAX_TOKENS (3 * sizeof TEXT + 8)

static void check_tokenize(const lmoe_vocab *v) {
    lmoe_token toks[MAX_TOKENS];
    size_t n = 0;
    lmoe_status st = vocab_encode(v, TEXT, sizeof TEXT - 1, true, toks, MAX_TOKENS, &n);
    if (st == LMOE_ERR_INVALID_ARGUMENT) {
        /* only when a character has neither a piece, byte pieces, nor an unknown token */
        FUZZ_CHECK(v->unk_id < 0);
        return;
    }
    FUZZ_CHECK(st == LMOE_OK && n <= MAX_TOKENS);
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(toks[i] >= 0 && (uint32_t)toks[i] < v->n_tokens);
    size_t len = 0;
    st = vocab_decode(v, toks, n, NULL, 0, &len);
    FUZZ_CHECK(st == LMOE_OK || st == LMOE_ERR_BUFFER_TOO_SMALL);
    char *out = malloc(len ? len : 1);
    if (!out) return;
    size_t len2 = 0;
    FUZZ_CHECK(vocab_decode(v, toks, n, out, len, &len2) == LMOE_OK && len2 == len);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lmoe_vocab v;
    if (spm_model_read(data, size, &v) != LMOE_OK) {
        FUZZ_CHECK(v.n_tokens == 0 && v.pieces == NULL && v.storage == NULL &&
                   v.hash_slots == NULL);
        return 0;
    }
    check_vocab(&v);
    check_tokenize(&v);
    vocab_free(&v);
    return 0;
}
