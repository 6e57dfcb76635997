/* tokenizer.c - LLaMA's SentencePiece BPE over an lmoe_vocab: encoding (normalise, split into
 * characters, merge adjacent pairs by piece score, byte fallback) and decoding.
 *
 * The reference is SentencePiece itself (normalizer.cc, bpe_model.cc, sentencepiece_processor.cc
 * of v0.1.97, the version that produced the test vectors). Deliberate differences, all on input
 * that SentencePiece itself rewrites:
 *   - invalid UTF-8: SentencePiece's normaliser replaces each bad byte by U+FFFD; we keep the byte
 *     as a one-byte unit, so it is encoded by byte fallback and decodes back to itself (what
 *     llama.cpp does, and what lmoe_tokenize promises);
 *   - byte tokens decode to their raw bytes (SentencePiece turns an invalid byte run into U+FFFD);
 *   - UNUSED pieces are never merged into (SentencePiece merges into them and then splits them
 *     again, which can change later merges; LLaMA vocabularies have no UNUSED pieces);
 *   - the unknown token decodes to SentencePiece's default surface " \xE2\x81\x87 " (" ⁇ "); a model's
 *     own unk_surface is not stored in the vocabulary.
 * Only the "identity" normaliser exists here (LLaMA's); the converters refuse other ones. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "mem.h"
#include "vocab.h"

#define SPACE_SYMBOL "\xE2\x96\x81" /* U+2581, SentencePiece's visible space */
#define SPACE_SYMBOL_LEN 3
#define UNK_SURFACE " \xE2\x81\x87 "
#define NONE SIZE_MAX

static bool starts_with_space_symbol(const char *text, size_t len) {
    return len >= SPACE_SYMBOL_LEN && memcmp(text, SPACE_SYMBOL, SPACE_SYMBOL_LEN) == 0;
}

/* ------------------------------------------------------------------------------------------------
 * normalisation
 * ---------------------------------------------------------------------------------------------- */

static size_t put_space_symbol(char *out, size_t n) {
    memcpy(out + n, SPACE_SYMBOL, SPACE_SYMBOL_LEN);
    return n + SPACE_SYMBOL_LEN;
}

/* SentencePiece's Normalize() for the identity rule set: with remove_extra_whitespaces, leading
 * spaces go, runs of spaces become one, and trailing U+2581 go (that includes a literal U+2581 in
 * the input and the dummy prefix, so "\xE2\x96\x81" alone normalises to nothing); the dummy prefix
 * is added to any text that is not empty after the leading spaces went; every space becomes U+2581.
 * out has room for 3 * len + 3 bytes. Returns the normalised length. */
static size_t normalize(const lmoe_vocab *vocab, const char *text, size_t len, char *out) {
    bool squeeze = vocab->remove_extra_whitespaces;
    size_t i = 0, n = 0;
    if (squeeze)
        while (i < len && text[i] == ' ') i++;
    if (i == len) return 0;
    if (vocab->add_space_prefix) n = put_space_symbol(out, n);
    bool prev_space = false;
    for (; i < len; i++) {
        if (text[i] != ' ') {
            out[n++] = text[i];
            prev_space = false;
        } else if (!(squeeze && prev_space)) {
            n = put_space_symbol(out, n);
            prev_space = true;
        }
    }
    if (squeeze)
        while (n >= SPACE_SYMBOL_LEN &&
               memcmp(out + n - SPACE_SYMBOL_LEN, SPACE_SYMBOL, SPACE_SYMBOL_LEN) == 0)
            n -= SPACE_SYMBOL_LEN;
    return n;
}

/* Length of the UTF-8 character at s (RFC 3629: no overlong forms, no surrogates, at most
 * U+10FFFF). An invalid or truncated sequence is a unit of its first byte alone. */
static size_t utf8_unit_len(const unsigned char *s, size_t n) {
    unsigned c = s[0], lo = 0x80, hi = 0xBF;
    size_t len;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 1;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 1;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 1;
    return len;
}

/* ------------------------------------------------------------------------------------------------
 * BPE: a doubly linked list of symbols and a max-heap of candidate merges. A merge absorbs the
 * right symbol into the left one; heap entries that no longer describe two live neighbours are
 * recognised by their length and skipped when popped (lazy invalidation), so the whole encoding is
 * O(n log n).
 * ---------------------------------------------------------------------------------------------- */

typedef struct bpe_symbol {
    size_t start, len;       /* bytes of the normalised text; len 0 = merged away */
    size_t prev, next;       /* neighbours, NONE at the ends */
    bool frozen;             /* a user-defined piece: never merged */
} bpe_symbol;

typedef struct bpe_pair {
    float score;             /* score of the merged piece: higher merges first */
    size_t left, right;      /* symbol indices */
    size_t len;              /* bytes of the merged piece, to detect stale entries */
} bpe_pair;

typedef struct bpe_state {
    const lmoe_vocab *vocab;
    const char *text;        /* normalised text */
    bpe_symbol *symbols;
    size_t n_symbols;
    bpe_pair *heap;
    size_t heap_len, heap_cap;
} bpe_state;

/* Heap order: higher score first; equal scores go to the leftmost pair (SentencePiece's rule). */
static bool pair_before(const bpe_pair *a, const bpe_pair *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(bpe_state *s, bpe_pair pair) {
    size_t i = s->heap_len++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_before(&pair, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = pair;
}

static bpe_pair heap_pop(bpe_state *s) {
    bpe_pair top = s->heap[0], last = s->heap[--s->heap_len];
    size_t i = 0, n = s->heap_len;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && pair_before(&s->heap[child + 1], &s->heap[child])) child++;
        if (!pair_before(&s->heap[child], &last)) break;
        s->heap[i] = s->heap[child];
        i = child;
    }
    if (n > 0) s->heap[i] = last;
    return top;
}

/* Queues the merge of symbols left and right if their concatenation is a piece that SentencePiece
 * merges into (normal or user-defined). */
static void try_pair(bpe_state *s, size_t left, size_t right) {
    if (left == NONE || right == NONE) return;
    const bpe_symbol *l = &s->symbols[left], *r = &s->symbols[right];
    if (l->frozen || r->frozen) return;
    size_t len = l->len + r->len;
    int32_t id = vocab_find(s->vocab, s->text + l->start, len);
    if (id < 0) return;
    int32_t type = s->vocab->types[id];
    if (type != VOCAB_TYPE_NORMAL && type != VOCAB_TYPE_USER_DEFINED) return;
    if (s->heap_len == s->heap_cap) return; /* cannot happen: see heap_cap in bpe_encode */
    bpe_pair pair = {s->vocab->scores[id], left, right, len};
    heap_push(s, pair);
}

static void merge_all(bpe_state *s) {
    while (s->heap_len > 0) {
        bpe_pair top = heap_pop(s);
        bpe_symbol *l = &s->symbols[top.left], *r = &s->symbols[top.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != top.len) continue; /* stale */
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next != NONE) s->symbols[r->next].prev = top.left;
        try_pair(s, l->prev, top.left);
        try_pair(s, top.left, l->next);
    }
}

/* The longest user-defined piece, 0 if there is none. A scan per encode (O(n_tokens), microseconds)
 * keeps this out of the shared vocabulary struct. */
static size_t max_user_defined_len(const lmoe_vocab *vocab) {
    size_t max_len = 0;
    for (uint32_t id = 0; id < vocab->n_tokens; id++)
        if (vocab->types[id] == VOCAB_TYPE_USER_DEFINED && vocab->pieces[id].len > max_len)
            max_len = vocab->pieces[id].len;
    return max_len;
}

/* Length of the longest user-defined piece at the start of text, or 0. */
static size_t match_user_defined(const lmoe_vocab *vocab, const char *text, size_t n,
                                 size_t max_len) {
    for (size_t len = n < max_len ? n : max_len; len > 0; len--) {
        int32_t id = vocab_find(vocab, text, len);
        if (id >= 0 && vocab->types[id] == VOCAB_TYPE_USER_DEFINED) return len;
    }
    return 0;
}

/* Length of the symbol at pos: a user-defined piece (*frozen) or else one UTF-8 character. */
static size_t symbol_len(const bpe_state *s, size_t pos, size_t text_len, size_t max_ud,
                         bool *frozen) {
    size_t len = max_ud ? match_user_defined(s->vocab, s->text + pos, text_len - pos, max_ud) : 0;
    *frozen = len > 0;
    return len ? len : utf8_unit_len((const unsigned char *)s->text + pos, text_len - pos);
}

/* Splits the normalised text into symbols; with s->symbols NULL only counts them. */
static size_t split_symbols(bpe_state *s, size_t text_len, size_t max_ud) {
    size_t pos = 0, n = 0;
    while (pos < text_len) {
        bool frozen;
        size_t len = symbol_len(s, pos, text_len, max_ud, &frozen);
        if (s->symbols) {
            bpe_symbol sym = {pos, len, n == 0 ? NONE : n - 1, n + 1, frozen};
            s->symbols[n] = sym;
        }
        n++;
        pos += len;
    }
    if (s->symbols && n > 0) s->symbols[n - 1].next = NONE;
    return n;
}

/* ------------------------------------------------------------------------------------------------
 * output of ids
 * ---------------------------------------------------------------------------------------------- */

typedef struct token_sink {
    lmoe_token *tokens;
    size_t max_tokens;
    size_t n;                /* ids produced, also those that did not fit */
} token_sink;

static void put_token(token_sink *sink, int32_t id) {
    if (sink->n < sink->max_tokens) sink->tokens[sink->n] = id;
    sink->n++;
}

/* A final symbol: its piece if it has one, else its bytes as byte pieces, else the unknown token
 * (SentencePiece's byte fallback happens after the merges, as here). */
static lmoe_status emit_symbol(const lmoe_vocab *vocab, const char *text, size_t len,
                               size_t offset, token_sink *sink) {
    int32_t id = vocab_find(vocab, text, len);
    if (id >= 0 && id != vocab->unk_id) {
        put_token(sink, id);
        return LMOE_OK;
    }
    bool have_bytes = true;
    for (size_t i = 0; i < len; i++)
        if (vocab->byte_ids[(unsigned char)text[i]] < 0) have_bytes = false;
    if (have_bytes) {
        for (size_t i = 0; i < len; i++) put_token(sink, vocab->byte_ids[(unsigned char)text[i]]);
        return LMOE_OK;
    }
    RETURN_ERROR_IF(vocab->unk_id < 0, LMOE_ERR_INVALID_ARGUMENT,
                    "tokenize: the character at normalised byte offset %zu is not in the "
                    "vocabulary, which has neither byte pieces nor an unknown token", offset);
    put_token(sink, vocab->unk_id);
    return LMOE_OK;
}

static lmoe_status bpe_encode(const lmoe_vocab *vocab, const char *text, size_t len,
                              token_sink *sink) {
    if (len == 0) return LMOE_OK;
    bpe_state s = {vocab, text, NULL, 0, NULL, 0, 0};
    size_t max_ud = max_user_defined_len(vocab);
    size_t n = split_symbols(&s, len, max_ud); /* counting pass */
    /* n symbols start n-1 pairs and allow at most n-1 merges, each queueing at most 2 pairs */
    RETURN_ERROR_IF(n > SIZE_MAX / (3 * sizeof(bpe_pair)), LMOE_ERR_OUT_OF_MEMORY,
                    "tokenize: text of %zu characters is too long", n);
    s.symbols = mem_alloc(n * sizeof *s.symbols);
    s.heap = mem_alloc(3 * n * sizeof *s.heap);
    if (!s.symbols || !s.heap) {
        mem_free(s.symbols);
        mem_free(s.heap);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "tokenize: out of memory for %zu characters", n);
    }
    s.n_symbols = split_symbols(&s, len, max_ud);
    s.heap_cap = 3 * n;
    for (size_t i = 1; i < s.n_symbols; i++) try_pair(&s, i - 1, i);
    merge_all(&s);
    lmoe_status st = LMOE_OK;
    for (size_t i = 0; i != NONE && st == LMOE_OK; i = s.symbols[i].next)
        st = emit_symbol(vocab, text + s.symbols[i].start, s.symbols[i].len, s.symbols[i].start, sink);
    mem_free(s.symbols);
    mem_free(s.heap);
    return st;
}

lmoe_status vocab_encode(const lmoe_vocab *vocab, const char *text, size_t text_len, bool add_bos,
                         lmoe_token *tokens, size_t max_tokens, size_t *n_tokens) {
    RETURN_ERROR_IF(!vocab || !n_tokens || (!text && text_len > 0) || (!tokens && max_tokens > 0),
                    LMOE_ERR_INVALID_ARGUMENT, "tokenize: NULL argument");
    RETURN_ERROR_IF(text_len > (SIZE_MAX - SPACE_SYMBOL_LEN) / SPACE_SYMBOL_LEN,
                    LMOE_ERR_OUT_OF_MEMORY, "tokenize: text of %zu bytes is too long", text_len);
    char *normalized = mem_alloc(SPACE_SYMBOL_LEN * text_len + SPACE_SYMBOL_LEN);
    RETURN_ERROR_IF(!normalized, LMOE_ERR_OUT_OF_MEMORY, "tokenize: out of memory for %zu bytes",
                    text_len);
    size_t normalized_len = text_len ? normalize(vocab, text, text_len, normalized) : 0;
    token_sink sink = {tokens, max_tokens, 0};
    if (add_bos && vocab->bos_id >= 0) put_token(&sink, vocab->bos_id);
    lmoe_status st = bpe_encode(vocab, normalized, normalized_len, &sink);
    mem_free(normalized);
    if (st != LMOE_OK) return st;
    *n_tokens = sink.n;
    RETURN_ERROR_IF(sink.n > max_tokens, LMOE_ERR_BUFFER_TOO_SMALL,
                    "tokenize: %zu tokens do not fit in a buffer of %zu", sink.n, max_tokens);
    return LMOE_OK;
}

/* ------------------------------------------------------------------------------------------------
 * decoding
 * ---------------------------------------------------------------------------------------------- */

typedef struct text_sink {
    char *buf;
    size_t size;
    size_t len;              /* bytes produced, also those that did not fit */
} text_sink;

static void put_bytes(text_sink *sink, const char *bytes, size_t n) {
    if (sink->len < sink->size) {
        size_t room = sink->size - sink->len;
        memcpy(sink->buf + sink->len, bytes, n < room ? n : room);
    }
    sink->len += n;
}

/* Piece text with every U+2581 turned back into a space. */
static void put_piece_text(text_sink *sink, const char *text, size_t len) {
    size_t i = 0, run = 0;
    while (i + run < len) {
        if (starts_with_space_symbol(text + i + run, len - i - run)) {
            put_bytes(sink, text + i, run);
            put_bytes(sink, " ", 1);
            i += run + SPACE_SYMBOL_LEN;
            run = 0;
        } else {
            run++;
        }
    }
    put_bytes(sink, text + i, run);
}

static int hex_value(char c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* A byte token's byte; vocab_finish checked the "<0xNN>" form. */
static char byte_of_token(const lmoe_vocab *vocab, int32_t id) {
    const char *t = vocab->pieces[id].text;
    return (char)(hex_value(t[3]) * 16 + hex_value(t[4]));
}

static lmoe_status check_id(const lmoe_vocab *vocab, lmoe_token id, size_t index) {
    RETURN_ERROR_IF(id < 0 || (uint32_t)id >= vocab->n_tokens, LMOE_ERR_INVALID_ARGUMENT,
                    "detokenize: token %zu is %d, outside the vocabulary of %u tokens", index,
                    (int)id, vocab->n_tokens);
    return LMOE_OK;
}

static lmoe_status finish_text(const text_sink *sink, size_t *len, const char *what) {
    *len = sink->len;
    RETURN_ERROR_IF(sink->len > sink->size, LMOE_ERR_BUFFER_TOO_SMALL,
                    "%s: %zu bytes do not fit in a buffer of %zu", what, sink->len, sink->size);
    return LMOE_OK;
}

/* SentencePiece's Decode(): byte tokens give their byte; control tokens nothing; the unknown token
 * its surface; other pieces their text. While nothing has been output yet ("bos whitespace"), the
 * first piece loses one leading U+2581 (the dummy prefix); with remove_extra_whitespaces every
 * piece loses it until some text appears, since the encoder removed all leading spaces. */
lmoe_status vocab_decode(const lmoe_vocab *vocab, const lmoe_token *tokens, size_t n_tokens,
                         char *buf, size_t buf_size, size_t *len) {
    RETURN_ERROR_IF(!vocab || !len || (!tokens && n_tokens > 0) || (!buf && buf_size > 0),
                    LMOE_ERR_INVALID_ARGUMENT, "detokenize: NULL argument");
    for (size_t i = 0; i < n_tokens; i++) FORWARD_IF_ERROR(check_id(vocab, tokens[i], i));
    bool strip = vocab->add_space_prefix || vocab->remove_extra_whitespaces;
    bool is_bos_ws = true, bos_ws_seen = false;
    text_sink sink = {buf, buf_size, 0};
    for (size_t i = 0; i < n_tokens; i++) {
        lmoe_token id = tokens[i];
        int32_t type = vocab->types[id];
        if (type == VOCAB_TYPE_BYTE) {
            char byte = byte_of_token(vocab, id);
            put_bytes(&sink, &byte, 1);
            continue;
        }
        if (bos_ws_seen || sink.len > 0) is_bos_ws = false;
        bos_ws_seen = false;
        if (type == VOCAB_TYPE_CONTROL) continue;
        if (type == VOCAB_TYPE_UNKNOWN) {
            put_bytes(&sink, UNK_SURFACE, sizeof UNK_SURFACE - 1);
            continue;
        }
        const char *text = vocab->pieces[id].text;
        size_t text_len = vocab->pieces[id].len;
        if (is_bos_ws && strip && starts_with_space_symbol(text, text_len)) {
            text += SPACE_SYMBOL_LEN;
            text_len -= SPACE_SYMBOL_LEN;
            bos_ws_seen = !vocab->remove_extra_whitespaces;
        }
        put_piece_text(&sink, text, text_len);
    }
    return finish_text(&sink, len, "detokenize");
}

lmoe_status vocab_token_to_piece(const lmoe_vocab *vocab, lmoe_token token,
                                 bool strip_leading_space, char *buf, size_t buf_size, size_t *len) {
    RETURN_ERROR_IF(!vocab || !len || (!buf && buf_size > 0), LMOE_ERR_INVALID_ARGUMENT,
                    "token_to_piece: NULL argument");
    RETURN_ERROR_IF(token < 0 || (uint32_t)token >= vocab->n_tokens, LMOE_ERR_INVALID_ARGUMENT,
                    "token_to_piece: token %d is outside the vocabulary of %u tokens", (int)token,
                    vocab->n_tokens);
    text_sink sink = {buf, buf_size, 0};
    int32_t type = vocab->types[token];
    if (type == VOCAB_TYPE_BYTE) {
        char byte = byte_of_token(vocab, token);
        put_bytes(&sink, &byte, 1);
    } else if (type == VOCAB_TYPE_UNKNOWN) {
        put_bytes(&sink, UNK_SURFACE, sizeof UNK_SURFACE - 1);
    } else if (type != VOCAB_TYPE_CONTROL) {
        const char *text = vocab->pieces[token].text;
        size_t text_len = vocab->pieces[token].len;
        if (strip_leading_space && starts_with_space_symbol(text, text_len)) {
            text += SPACE_SYMBOL_LEN;
            text_len -= SPACE_SYMBOL_LEN;
        }
        put_piece_text(&sink, text, text_len);
    }
    return finish_text(&sink, len, "token_to_piece");
}
