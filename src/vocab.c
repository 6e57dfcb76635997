/* vocab.c - the SentencePiece vocabulary: validation, the piece -> id hash table, and reading and
 * writing the tokenizer.ggml.* keys of a GGUF file. The tokenizer itself is in tokenizer.c.
 *
 * Duplicate pieces: SentencePiece refuses a model in which two pieces have the same text, and so do
 * we for every token that is not UNUSED (the LLaMA-2 and tok512 vocabularies have none). UNUSED
 * tokens may repeat a piece, because they are never produced by encoding; lookup then finds the
 * non-UNUSED token, or else the lowest UNUSED id. */
#include "vocab.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "mem.h"

/* ------------------------------------------------------------------------------------------------
 * hash table: open addressing with linear probing over the piece bytes
 * ---------------------------------------------------------------------------------------------- */

/* FNV-1a, folded to 32 bits so the low bits used by the mask see every input byte. */
static uint32_t piece_hash(const char *text, size_t len) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)text[i];
        h *= 1099511628211ull;
    }
    return (uint32_t)(h ^ (h >> 32));
}

static bool piece_eq(const vocab_piece *p, const char *text, size_t len) {
    return p->len == len && memcmp(p->text, text, len) == 0;
}

int32_t vocab_find(const lmoe_vocab *vocab, const char *text, size_t len) {
    if (!vocab->hash_slots || len == 0 || len > vocab->max_piece_len) return -1;
    for (uint32_t i = piece_hash(text, len) & vocab->hash_mask;; i = (i + 1) & vocab->hash_mask) {
        uint32_t slot = vocab->hash_slots[i];
        if (slot == 0) return -1;
        if (piece_eq(&vocab->pieces[slot - 1], text, len)) return (int32_t)(slot - 1);
    }
}

/* Inserts token id, or resolves a collision with an equal piece (see the banner comment). */
static lmoe_status hash_insert(lmoe_vocab *vocab, uint32_t id) {
    const vocab_piece *p = &vocab->pieces[id];
    uint32_t i = piece_hash(p->text, p->len) & vocab->hash_mask;
    for (;; i = (i + 1) & vocab->hash_mask) {
        uint32_t slot = vocab->hash_slots[i];
        if (slot == 0) break;
        uint32_t other = slot - 1;
        if (!piece_eq(&vocab->pieces[other], p->text, p->len)) continue;
        bool other_unused = vocab->types[other] == VOCAB_TYPE_UNUSED;
        bool this_unused = vocab->types[id] == VOCAB_TYPE_UNUSED;
        RETURN_ERROR_IF(!other_unused && !this_unused, LMOE_ERR_BAD_FILE,
                        "tokenizer.ggml.tokens[%u]: piece '%.*s' duplicates token %u", id,
                        (int)(p->len > 64 ? 64 : p->len), p->text, other);
        if (other_unused && !this_unused) vocab->hash_slots[i] = id + 1;
        return LMOE_OK;
    }
    vocab->hash_slots[i] = id + 1;
    return LMOE_OK;
}

static lmoe_status build_hash(lmoe_vocab *vocab) {
    uint64_t capacity = 1; /* up to 2^32: 64-bit so that the doubling cannot wrap */
    while (capacity < 2 * (uint64_t)vocab->n_tokens) capacity *= 2;
    if (capacity <= SIZE_MAX / sizeof *vocab->hash_slots)
        vocab->hash_slots = mem_calloc((size_t)capacity, sizeof *vocab->hash_slots);
    RETURN_ERROR_IF(!vocab->hash_slots, LMOE_ERR_OUT_OF_MEMORY,
                    "out of memory for the hash table of %u tokens", vocab->n_tokens);
    vocab->hash_mask = (uint32_t)(capacity - 1);
    for (uint32_t id = 0; id < vocab->n_tokens; id++) {
        if (vocab->pieces[id].len == 0) continue; /* allowed for control/unknown/unused only */
        FORWARD_IF_ERROR(hash_insert(vocab, id));
    }
    return LMOE_OK;
}

/* ------------------------------------------------------------------------------------------------
 * validation
 * ---------------------------------------------------------------------------------------------- */

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of a "<0xNN>" piece, or -1 if the text has another form. */
static int byte_piece_value(const char *text, size_t len) {
    if (len != 6 || memcmp(text, "<0x", 3) != 0 || text[5] != '>') return -1;
    int hi = hex_digit(text[3]), lo = hex_digit(text[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

static lmoe_status check_special_id(const lmoe_vocab *vocab, int32_t id, const char *what) {
    RETURN_ERROR_IF(id < -1 || (id >= 0 && (uint32_t)id >= vocab->n_tokens), LMOE_ERR_BAD_FILE,
                    "tokenizer.ggml.%s = %d is outside the vocabulary of %u tokens", what, id,
                    vocab->n_tokens);
    return LMOE_OK;
}

static lmoe_status check_token(lmoe_vocab *vocab, uint32_t id) {
    int32_t type = vocab->types[id];
    vocab_piece *p = &vocab->pieces[id];
    if (p->len == 0 && !p->text) p->text = ""; /* decoding forms text + 0: never from NULL */
    RETURN_ERROR_IF(type < VOCAB_TYPE_NORMAL || type > VOCAB_TYPE_BYTE, LMOE_ERR_BAD_FILE,
                    "tokenizer.ggml.token_type[%u]: type %d is not one of 1..6", id, type);
    RETURN_ERROR_IF(!isfinite(vocab->scores[id]), LMOE_ERR_BAD_FILE,
                    "tokenizer.ggml.scores[%u]: score is not a finite number", id);
    RETURN_ERROR_IF(p->len > 0 && !p->text, LMOE_ERR_INVALID_ARGUMENT,
                    "tokenizer.ggml.tokens[%u]: NULL piece text", id);
    bool may_be_empty = type == VOCAB_TYPE_CONTROL || type == VOCAB_TYPE_UNKNOWN ||
                        type == VOCAB_TYPE_UNUSED;
    RETURN_ERROR_IF(p->len == 0 && !may_be_empty, LMOE_ERR_BAD_FILE,
                    "tokenizer.ggml.tokens[%u]: empty piece", id);
    if (p->len > vocab->max_piece_len) vocab->max_piece_len = p->len;
    if (type != VOCAB_TYPE_BYTE) return LMOE_OK;

    int byte = byte_piece_value(p->text, p->len);
    RETURN_ERROR_IF(byte < 0, LMOE_ERR_BAD_FILE,
                    "tokenizer.ggml.tokens[%u]: byte token '%.*s' is not of the form <0xNN>", id,
                    (int)(p->len > 16 ? 16 : p->len), p->text);
    RETURN_ERROR_IF(vocab->byte_ids[byte] >= 0, LMOE_ERR_BAD_FILE,
                    "tokenizer.ggml.tokens[%u]: byte 0x%02X already has token %d", id, byte,
                    vocab->byte_ids[byte]);
    vocab->byte_ids[byte] = (int32_t)id;
    return LMOE_OK;
}

static lmoe_status finish(lmoe_vocab *vocab) {
    RETURN_ERROR_IF(vocab->n_tokens < 1 || vocab->n_tokens >= (1u << 31), LMOE_ERR_BAD_FILE,
                    "tokenizer.ggml.tokens: %u tokens (expected 1 .. 2^31-1)", vocab->n_tokens);
    RETURN_ERROR_IF(!vocab->pieces || !vocab->scores || !vocab->types, LMOE_ERR_INVALID_ARGUMENT,
                    "vocabulary arrays not filled");
    FORWARD_IF_ERROR(check_special_id(vocab, vocab->bos_id, "bos_token_id"));
    FORWARD_IF_ERROR(check_special_id(vocab, vocab->eos_id, "eos_token_id"));
    FORWARD_IF_ERROR(check_special_id(vocab, vocab->unk_id, "unknown_token_id"));
    for (int b = 0; b < 256; b++) vocab->byte_ids[b] = -1;
    vocab->max_piece_len = 0;
    for (uint32_t id = 0; id < vocab->n_tokens; id++) FORWARD_IF_ERROR(check_token(vocab, id));
    return build_hash(vocab);
}

lmoe_status vocab_finish(lmoe_vocab *vocab) {
    RETURN_ERROR_IF(!vocab, LMOE_ERR_INVALID_ARGUMENT, "vocab_finish: NULL vocabulary");
    mem_free(vocab->hash_slots); /* a second call rebuilds */
    vocab->hash_slots = NULL;
    lmoe_status st = finish(vocab);
    if (st != LMOE_OK) {
        mem_free(vocab->hash_slots);
        vocab->hash_slots = NULL;
        vocab->hash_mask = 0;
    }
    return st;
}

lmoe_status vocab_alloc(lmoe_vocab *vocab, uint32_t n_tokens, size_t storage_size) {
    vocab->n_tokens = n_tokens;
    vocab->pieces = mem_calloc(n_tokens, sizeof *vocab->pieces);
    vocab->scores = mem_calloc(n_tokens, sizeof *vocab->scores);
    vocab->types = mem_calloc(n_tokens, sizeof *vocab->types);
    vocab->storage = mem_alloc(storage_size);
    if (!vocab->pieces || !vocab->scores || !vocab->types || !vocab->storage) {
        vocab_free(vocab);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "out of memory for a vocabulary of %u tokens",
                          n_tokens);
    }
    return LMOE_OK;
}

void vocab_free(lmoe_vocab *vocab) {
    if (!vocab) return;
    mem_free(vocab->pieces);
    mem_free(vocab->scores);
    mem_free(vocab->types);
    mem_free(vocab->storage);
    mem_free(vocab->hash_slots);
    memset(vocab, 0, sizeof *vocab);
}

/* ------------------------------------------------------------------------------------------------
 * GGUF: tokenizer.ggml.*
 * ---------------------------------------------------------------------------------------------- */

/* mem_alloc(n * size), or NULL when the product does not fit in size_t (32-bit hosts). */
static void *alloc_array(uint64_t n, size_t size) {
    if (n == 0 || n > SIZE_MAX / size) return NULL;
    return mem_alloc((size_t)n * size);
}

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_BOS "tokenizer.ggml.bos_token_id"
#define KEY_EOS "tokenizer.ggml.eos_token_id"
#define KEY_UNK "tokenizer.ggml.unknown_token_id"
#define KEY_ADD_BOS "tokenizer.ggml.add_bos_token"
#define KEY_SPACE_PREFIX "tokenizer.ggml.add_space_prefix"
#define KEY_EXTRA_SPACES "tokenizer.ggml.remove_extra_whitespaces"
#define KEY_STOP_ON_BOS "llamamoe.stop_on_bos"

static lmoe_status load_model_kind(const gguf_file *file) {
    gguf_str kind;
    RETURN_ERROR_IF(!gguf_find_kv(file, KEY_MODEL), LMOE_ERR_BAD_FILE,
                    "GGUF: key '" KEY_MODEL "' is missing (the file has no tokenizer)");
    FORWARD_IF_ERROR(gguf_get_str(file, KEY_MODEL, &kind));
    RETURN_ERROR_IF(!gguf_str_eq(kind, "llama"), LMOE_ERR_UNSUPPORTED,
                    "GGUF: " KEY_MODEL " is '%.*s'; only 'llama' (SentencePiece BPE) is supported",
                    (int)(kind.len > 64 ? 64 : kind.len), kind.ptr);
    return LMOE_OK;
}

static lmoe_status load_pieces(lmoe_vocab *vocab, const gguf_file *file) {
    const gguf_kv *kv;
    FORWARD_IF_ERROR(gguf_get_array(file, KEY_TOKENS, GGUF_TYPE_STRING, &kv));
    RETURN_ERROR_IF(kv->n_elems < 1 || kv->n_elems >= (1u << 31), LMOE_ERR_BAD_FILE,
                    "GGUF: " KEY_TOKENS " has %llu entries (expected 1 .. 2^31-1)",
                    (unsigned long long)kv->n_elems);
    vocab->n_tokens = (uint32_t)kv->n_elems;
    gguf_str *strs = alloc_array(kv->n_elems, sizeof *strs);
    vocab->pieces = alloc_array(kv->n_elems, sizeof *vocab->pieces);
    if (!strs || !vocab->pieces) {
        mem_free(strs);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "out of memory for %u tokens", vocab->n_tokens);
    }
    gguf_array_strings(kv, strs);
    for (uint32_t i = 0; i < vocab->n_tokens; i++) {
        if (strs[i].len > UINT32_MAX) {
            mem_free(strs);
            return lmoe_error(LMOE_ERR_BAD_FILE, "GGUF: " KEY_TOKENS "[%u] is too long", i);
        }
        vocab->pieces[i].text = strs[i].ptr;
        vocab->pieces[i].len = (uint32_t)strs[i].len;
    }
    mem_free(strs);
    return LMOE_OK;
}

/* An optional array with one entry per token; absent -> found = false. */
static lmoe_status find_token_array(const gguf_file *file, const char *key, gguf_type type,
                                    uint32_t n_tokens, const gguf_kv **out) {
    *out = NULL;
    if (!gguf_find_kv(file, key)) return LMOE_OK;
    FORWARD_IF_ERROR(gguf_get_array(file, key, type, out));
    RETURN_ERROR_IF((*out)->n_elems != n_tokens, LMOE_ERR_BAD_FILE,
                    "GGUF: %s has %llu entries but " KEY_TOKENS " has %u", key,
                    (unsigned long long)(*out)->n_elems, n_tokens);
    return LMOE_OK;
}

static lmoe_status load_scores_types(lmoe_vocab *vocab, const gguf_file *file) {
    const gguf_kv *scores, *types;
    FORWARD_IF_ERROR(find_token_array(file, KEY_SCORES, GGUF_TYPE_FLOAT32, vocab->n_tokens, &scores));
    FORWARD_IF_ERROR(find_token_array(file, KEY_TYPES, GGUF_TYPE_INT32, vocab->n_tokens, &types));
    vocab->scores = alloc_array(vocab->n_tokens, sizeof *vocab->scores);
    vocab->types = alloc_array(vocab->n_tokens, sizeof *vocab->types);
    RETURN_ERROR_IF(!vocab->scores || !vocab->types, LMOE_ERR_OUT_OF_MEMORY,
                    "out of memory for %u tokens", vocab->n_tokens);
    for (uint32_t i = 0; i < vocab->n_tokens; i++) {
        vocab->scores[i] = scores ? gguf_array_f32(scores, i) : 0.0f;
        vocab->types[i] = types ? gguf_array_i32(types, i) : VOCAB_TYPE_NORMAL;
    }
    return LMOE_OK;
}

/* A special token id: absent -> fallback if it is inside the vocabulary, else -1. UINT32_MAX is
 * what vocab_write_gguf stores for "none" (-1). */
static lmoe_status load_special_id(const gguf_file *file, const char *key, uint32_t fallback,
                                   uint32_t n_tokens, int32_t *out) {
    uint32_t id = fallback < n_tokens ? fallback : UINT32_MAX;
    FORWARD_IF_ERROR(gguf_get_u32_opt(file, key, &id));
    if (id == UINT32_MAX) {
        *out = -1;
        return LMOE_OK;
    }
    RETURN_ERROR_IF(id >= n_tokens, LMOE_ERR_BAD_FILE,
                    "GGUF: %s = %u is outside the vocabulary of %u tokens", key, id, n_tokens);
    *out = (int32_t)id;
    return LMOE_OK;
}

static lmoe_status load_flags(lmoe_vocab *vocab, const gguf_file *file) {
    uint32_t n = vocab->n_tokens;
    FORWARD_IF_ERROR(load_special_id(file, KEY_BOS, 1, n, &vocab->bos_id));
    FORWARD_IF_ERROR(load_special_id(file, KEY_EOS, 2, n, &vocab->eos_id));
    FORWARD_IF_ERROR(load_special_id(file, KEY_UNK, 0, n, &vocab->unk_id));
    vocab->add_bos = true;
    vocab->add_space_prefix = true;
    vocab->remove_extra_whitespaces = false;
    vocab->stop_on_bos = false;
    FORWARD_IF_ERROR(gguf_get_bool_opt(file, KEY_ADD_BOS, &vocab->add_bos));
    FORWARD_IF_ERROR(gguf_get_bool_opt(file, KEY_SPACE_PREFIX, &vocab->add_space_prefix));
    FORWARD_IF_ERROR(gguf_get_bool_opt(file, KEY_EXTRA_SPACES, &vocab->remove_extra_whitespaces));
    FORWARD_IF_ERROR(gguf_get_bool_opt(file, KEY_STOP_ON_BOS, &vocab->stop_on_bos));
    return LMOE_OK;
}

static lmoe_status load_gguf(lmoe_vocab *vocab, const gguf_file *file) {
    FORWARD_IF_ERROR(load_model_kind(file));
    FORWARD_IF_ERROR(load_pieces(vocab, file));
    FORWARD_IF_ERROR(load_scores_types(vocab, file));
    FORWARD_IF_ERROR(load_flags(vocab, file));
    return vocab_finish(vocab);
}

lmoe_status vocab_load_gguf(lmoe_vocab *vocab, const gguf_file *file) {
    RETURN_ERROR_IF(!vocab || !file, LMOE_ERR_INVALID_ARGUMENT, "vocab_load_gguf: NULL argument");
    memset(vocab, 0, sizeof *vocab);
    lmoe_status st = load_gguf(vocab, file);
    if (st != LMOE_OK) vocab_free(vocab);
    return st;
}

static lmoe_status write_pieces(const lmoe_vocab *vocab, gguf_writer *w) {
    const char **strs = alloc_array(vocab->n_tokens, sizeof *strs);
    uint32_t *lens = alloc_array(vocab->n_tokens, sizeof *lens);
    if (!strs || !lens) {
        mem_free(strs);
        mem_free(lens);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "out of memory for %u tokens", vocab->n_tokens);
    }
    for (uint32_t i = 0; i < vocab->n_tokens; i++) {
        strs[i] = vocab->pieces[i].len ? vocab->pieces[i].text : "";
        lens[i] = vocab->pieces[i].len;
    }
    lmoe_status st = gguf_writer_set_str_array(w, KEY_TOKENS, strs, lens, vocab->n_tokens);
    mem_free(strs);
    mem_free(lens);
    return st;
}

/* -1 ("none") is stored as UINT32_MAX, which vocab_load_gguf reads back as -1. */
static uint32_t special_id_value(int32_t id) { return id < 0 ? UINT32_MAX : (uint32_t)id; }

lmoe_status vocab_write_gguf(const lmoe_vocab *vocab, gguf_writer *w) {
    RETURN_ERROR_IF(!vocab || !w || !vocab->pieces || !vocab->scores || !vocab->types,
                    LMOE_ERR_INVALID_ARGUMENT, "vocab_write_gguf: NULL or unfilled argument");
    FORWARD_IF_ERROR(gguf_writer_set_str(w, KEY_MODEL, "llama"));
    FORWARD_IF_ERROR(write_pieces(vocab, w));
    FORWARD_IF_ERROR(gguf_writer_set_array(w, KEY_SCORES, GGUF_TYPE_FLOAT32, vocab->scores,
                                           vocab->n_tokens));
    FORWARD_IF_ERROR(gguf_writer_set_array(w, KEY_TYPES, GGUF_TYPE_INT32, vocab->types,
                                           vocab->n_tokens));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY_BOS, special_id_value(vocab->bos_id)));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY_EOS, special_id_value(vocab->eos_id)));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, KEY_UNK, special_id_value(vocab->unk_id)));
    FORWARD_IF_ERROR(gguf_writer_set_bool(w, KEY_ADD_BOS, vocab->add_bos));
    FORWARD_IF_ERROR(gguf_writer_set_bool(w, KEY_SPACE_PREFIX, vocab->add_space_prefix));
    FORWARD_IF_ERROR(gguf_writer_set_bool(w, KEY_EXTRA_SPACES, vocab->remove_extra_whitespaces));
    FORWARD_IF_ERROR(gguf_writer_set_bool(w, KEY_STOP_ON_BOS, vocab->stop_on_bos));
    return LMOE_OK;
}
