/* vocab.h - a SentencePiece vocabulary (pieces, scores, token types, special ids, normaliser flags)
 * and the LLaMA tokenizer over it. Filled from a GGUF file by the model loader, or by a converter
 * from a llama2.c tokenizer.bin or a SentencePiece tokenizer.model. */
#ifndef LMOE_VOCAB_H
#define LMOE_VOCAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "llamamoe.h"

/* Token types as stored in tokenizer.ggml.token_type (SentencePiece's numbering + 1). */
enum {
    VOCAB_TYPE_NORMAL = 1,
    VOCAB_TYPE_UNKNOWN = 2,
    VOCAB_TYPE_CONTROL = 3,
    VOCAB_TYPE_USER_DEFINED = 4,
    VOCAB_TYPE_UNUSED = 5,
    VOCAB_TYPE_BYTE = 6
};

typedef struct vocab_piece {
    const char *text;        /* UTF-8, spaces written as U+2581; not NUL-terminated */
    uint32_t len;
} vocab_piece;

typedef struct lmoe_vocab {
    uint32_t n_tokens;
    vocab_piece *pieces;     /* [n_tokens], owned; text points into the file map or into storage */
    float *scores;           /* [n_tokens], owned: BPE merge priority, higher merges first */
    int32_t *types;          /* [n_tokens], owned: VOCAB_TYPE_* */
    char *storage;           /* owned piece text when not pointing into a map, else NULL */
    int32_t bos_id, eos_id, unk_id; /* -1 when absent */
    bool add_bos;            /* tokenizer.ggml.add_bos_token (default true) */
    bool add_space_prefix;   /* SentencePiece add_dummy_prefix (default true) */
    bool remove_extra_whitespaces; /* SentencePiece normaliser flag (default false) */
    bool stop_on_bos;        /* generation stops on BOS (llama2.c models; llamamoe.stop_on_bos) */

    /* Built by vocab_finish(): */
    int32_t byte_ids[256];   /* id of the <0xNN> piece for each byte, -1 if missing */
    uint32_t *hash_slots;    /* open-addressing table of ids + 1 (0 = empty), owned */
    uint32_t hash_mask;      /* capacity - 1 (capacity a power of two) */
    uint32_t max_piece_len;
} lmoe_vocab;

/* Validates the filled arrays (ids in range, no empty or duplicate normal pieces, special ids
 * valid) and builds the lookup tables. Call once after filling pieces/scores/types and flags. */
lmoe_status vocab_finish(lmoe_vocab *vocab);
/* Allocates zeroed pieces, scores and types for n_tokens, and storage_size bytes of storage,
 * through the library's allocator: vocab_free releases them (also on failure). */
lmoe_status vocab_alloc(lmoe_vocab *vocab, uint32_t n_tokens, size_t storage_size);
void vocab_free(lmoe_vocab *vocab);

/* Reads tokenizer.ggml.* from a GGUF file; piece text points into the file, which must outlive
 * the vocabulary. Only tokenizer.ggml.model "llama" is accepted. Calls vocab_finish. */
lmoe_status vocab_load_gguf(lmoe_vocab *vocab, const gguf_file *file);
/* Writes tokenizer.ggml.* keys. */
lmoe_status vocab_write_gguf(const lmoe_vocab *vocab, gguf_writer *w);

/* Id of a piece (UTF-8 with U+2581 for spaces) or -1. */
int32_t vocab_find(const lmoe_vocab *vocab, const char *text, size_t len);

/* Encoding and decoding; semantics as lmoe_tokenize / lmoe_detokenize / lmoe_token_to_piece. */
lmoe_status vocab_encode(const lmoe_vocab *vocab, const char *text, size_t text_len, bool add_bos,
                         lmoe_token *tokens, size_t max_tokens, size_t *n_tokens);
lmoe_status vocab_decode(const lmoe_vocab *vocab, const lmoe_token *tokens, size_t n_tokens,
                         char *buf, size_t buf_size, size_t *len);
lmoe_status vocab_token_to_piece(const lmoe_vocab *vocab, lmoe_token token,
                                 bool strip_leading_space, char *buf, size_t buf_size, size_t *len);

#endif
