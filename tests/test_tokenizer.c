/* test_tokenizer.c - the LLaMA SentencePiece tokenizer against reference data: SentencePiece's own
 * encodings of 231 strings under the LLaMA-2 and tok512 models, llama2.c run.c's encodings under
 * the converted tokenizer.bin files, llama.cpp's 46 vocabulary tests on its vocab-only GGUF, a GGUF
 * round trip, the importers on truncated and corrupted files, and the edge cases of the API
 * (invalid UTF-8, long input, small buffers, bad ids, vocabulary validation). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "json.h"
#include "mem.h"
#include "test_util.h"
#include "tokenizer_import.h"
#include "vocab.h"

#define SPACE_SYMBOL "\xE2\x96\x81"

/* ------------------------------------------------------------------------------------------------
 * helpers
 * ---------------------------------------------------------------------------------------------- */

static bool load_spm(const char *relative, lmoe_vocab *vocab) {
    size_t size;
    char *data = test_read_file(test_model_path(relative), &size);
    CHECK_MSG(data != NULL, "cannot read %s", relative);
    if (!data) return false;
    lmoe_status st = spm_model_read(data, size, vocab);
    free(data); /* the vocabulary holds copies */
    CHECK_OK(st);
    return st == LMOE_OK;
}

static bool load_bin(const char *relative, uint32_t n_vocab, lmoe_vocab *vocab) {
    size_t size;
    char *data = test_read_file(test_model_path(relative), &size);
    CHECK_MSG(data != NULL, "cannot read %s", relative);
    if (!data) return false;
    lmoe_status st = llama2c_tokenizer_read(data, size, n_vocab, vocab);
    free(data);
    CHECK_OK(st);
    return st == LMOE_OK;
}

/* Encodes into a malloc'd array (asks for the size first, which exercises BUFFER_TOO_SMALL). */
static lmoe_token *encode(const lmoe_vocab *vocab, const char *text, size_t len, bool add_bos,
                          size_t *n) {
    size_t needed = 0;
    lmoe_status st = vocab_encode(vocab, text, len, add_bos, NULL, 0, &needed);
    CHECK_MSG(st == LMOE_OK || st == LMOE_ERR_BUFFER_TOO_SMALL, "encode -> %d (%s)", (int)st,
              lmoe_last_error());
    CHECK(st == LMOE_OK ? needed == 0 : needed > 0);
    lmoe_token *ids = malloc((needed ? needed : 1) * sizeof *ids);
    *n = 0;
    if (!ids) return NULL;
    CHECK_OK(vocab_encode(vocab, text, len, add_bos, ids, needed, n));
    CHECK(*n == needed);
    return ids;
}

/* Decodes into a malloc'd buffer (size asked first). */
static char *decode(const lmoe_vocab *vocab, const lmoe_token *ids, size_t n_ids, size_t *len) {
    size_t needed = 0;
    lmoe_status st = vocab_decode(vocab, ids, n_ids, NULL, 0, &needed);
    CHECK(st == LMOE_OK || st == LMOE_ERR_BUFFER_TOO_SMALL);
    char *text = malloc(needed + 1);
    *len = 0;
    if (!text) return NULL;
    CHECK_OK(vocab_decode(vocab, ids, n_ids, text, needed, len));
    CHECK(*len == needed);
    return text;
}

static bool ids_equal(const lmoe_token *a, size_t na, const lmoe_token *b, size_t nb) {
    return na == nb && (na == 0 || memcmp(a, b, na * sizeof *a) == 0);
}

static bool encodes_to(const lmoe_vocab *vocab, const char *text, size_t len, bool add_bos,
                       const lmoe_token *want, size_t n_want) {
    size_t n;
    lmoe_token *ids = encode(vocab, text, len, add_bos, &n);
    bool same = ids && ids_equal(ids, n, want, n_want);
    free(ids);
    return same;
}

static void print_ids(const char *label, const lmoe_token *ids, size_t n) {
    fprintf(stderr, "  %s:", label);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

static int hex_nibble(char c) {
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

/* ------------------------------------------------------------------------------------------------
 * the *-spm-vectors.jsonl files
 * ---------------------------------------------------------------------------------------------- */

typedef struct tok_vector {
    int id;
    char *text;              /* the exact bytes, from utf8_hex */
    size_t text_len;
    lmoe_token *ids;         /* SentencePiece's encoding with BOS */
    size_t n_ids;
    char *decoded;           /* SentencePiece's decoding of ids */
    size_t decoded_len;
} tok_vector;

typedef struct vector_file {
    tok_vector *v;
    size_t n;
} vector_file;

static lmoe_token *json_ids(const json_value *arr, size_t *n) {
    *n = 0;
    if (!arr || arr->kind != JSON_ARRAY) return NULL;
    lmoe_token *ids = malloc((arr->n_items ? arr->n_items : 1) * sizeof *ids);
    if (!ids) return NULL;
    for (size_t i = 0; i < arr->n_items; i++) ids[i] = (lmoe_token)arr->items[i].number;
    *n = arr->n_items;
    return ids;
}

static bool vector_from_json(const json_value *obj, tok_vector *t) {
    const json_value *id = json_get(obj, "id"), *hex = json_get(obj, "utf8_hex");
    const json_value *decoded = json_get(obj, "decoded");
    if (!id || !hex || hex->kind != JSON_STRING || hex->str_len % 2 || !decoded ||
        decoded->kind != JSON_STRING)
        return false;
    t->id = (int)id->number;
    t->text_len = hex->str_len / 2;
    t->text = malloc(t->text_len + 1);
    t->decoded = malloc(decoded->str_len + 1);
    t->ids = json_ids(json_get(obj, "ids"), &t->n_ids);
    if (!t->text || !t->decoded || !t->ids) return false;
    for (size_t i = 0; i < t->text_len; i++)
        t->text[i] = (char)(hex_nibble(hex->str[2 * i]) * 16 + hex_nibble(hex->str[2 * i + 1]));
    memcpy(t->decoded, decoded->str, decoded->str_len);
    t->decoded_len = decoded->str_len;
    return true;
}

/* Calls fn on each parsed line of a .jsonl file; returns the number of lines. */
static size_t for_each_json_line(const char *relative, void (*fn)(const json_value *, void *),
                                 void *user) {
    size_t size, n = 0;
    char *data = test_read_file(test_model_path(relative), &size);
    CHECK_MSG(data != NULL, "cannot read %s", relative);
    if (!data) return 0;
    for (size_t pos = 0; pos < size;) {
        const char *nl = memchr(data + pos, '\n', size - pos);
        size_t end = nl ? (size_t)(nl - data) : size;
        if (end > pos) {
            json_value *obj = json_parse(data + pos, end - pos);
            CHECK_MSG(obj != NULL, "%s: line %zu is not JSON", relative, n + 1);
            if (obj) fn(obj, user);
            json_free(obj);
            n++;
        }
        pos = end + 1;
    }
    free(data);
    return n;
}

static void add_vector(const json_value *obj, void *user) {
    vector_file *f = user;
    tok_vector *v = realloc(f->v, (f->n + 1) * sizeof *v);
    CHECK(v != NULL);
    if (!v) return;
    f->v = v;
    memset(&v[f->n], 0, sizeof v[f->n]);
    CHECK_MSG(vector_from_json(obj, &v[f->n]), "bad vector line %zu", f->n);
    f->n++;
}

static void free_vectors(vector_file *f) {
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].text);
        free(f->v[i].ids);
        free(f->v[i].decoded);
    }
    free(f->v);
    f->v = NULL;
    f->n = 0;
}

static const tok_vector *find_vector(const vector_file *f, int id) {
    for (size_t i = 0; i < f->n; i++)
        if (f->v[i].id == id) return &f->v[i];
    return NULL;
}

/* a, b: SentencePiece's encoding and decoding of every vector. */
static void check_spm_vectors(const char *name, const lmoe_vocab *vocab, const vector_file *f) {
    int encode_ok = 0, decode_ok = 0;
    for (size_t i = 0; i < f->n; i++) {
        const tok_vector *t = &f->v[i];
        size_t n, len;
        lmoe_token *ids = encode(vocab, t->text, t->text_len, true, &n);
        bool same = ids && ids_equal(ids, n, t->ids, t->n_ids);
        CHECK_MSG(same, "%s vector %d: encoding differs", name, t->id);
        if (!same && ids) {
            print_ids("got ", ids, n);
            print_ids("want", t->ids, t->n_ids);
        }
        encode_ok += same;
        char *text = decode(vocab, t->ids, t->n_ids, &len);
        bool same_text = text && len == t->decoded_len && memcmp(text, t->decoded, len) == 0;
        CHECK_MSG(same_text, "%s vector %d: decoding '%.*s' differs from '%s'", name, t->id,
                  (int)len, text ? text : "", t->decoded);
        decode_ok += same_text;
        free(ids);
        free(text);
    }
    CHECK(f->n == 231);
    printf("%s: %d/%zu encodings and %d/%zu decodings match SentencePiece\n", name, encode_ok, f->n,
           decode_ok, f->n);
}

/* ------------------------------------------------------------------------------------------------
 * c: llama2.c run.c encodings with the converted tokenizer.bin vocabularies
 * ---------------------------------------------------------------------------------------------- */

typedef struct run_check {
    const char *tokenizer;           /* which lines: "llama2-tokenizer.bin" or "tok512.bin" */
    const lmoe_vocab *bin_vocab;     /* converted from that file */
    const lmoe_vocab *spm_plain;     /* its tokenizer.model with remove_extra_whitespaces off */
    const vector_file *vectors;
    int lines, same, excepted, excepted_as_sentencepiece;
} run_check;

/* run.c reads C strings (stops at NUL) and has no U+2581 piece (tokenizer.bin stores it as a
 * space); our library treats NUL as data and U+2581 as SentencePiece does. */
static bool run_c_differs(const tok_vector *t) {
    for (size_t i = 0; i < t->text_len; i++) {
        if (t->text[i] == 0) return true;
        if (i + 3 <= t->text_len && memcmp(t->text + i, SPACE_SYMBOL, 3) == 0) return true;
    }
    return false;
}

static void check_run_line(const json_value *obj, void *user) {
    run_check *rc = user;
    const json_value *tok = json_get(obj, "tokenizer"), *id = json_get(obj, "id");
    if (!tok || tok->kind != JSON_STRING || strcmp(tok->str, rc->tokenizer) != 0) return;
    const tok_vector *t = id ? find_vector(rc->vectors, (int)id->number) : NULL;
    CHECK_MSG(t != NULL, "%s: no vector for id", rc->tokenizer);
    if (!t) return;
    size_t n_run, n;
    lmoe_token *run_ids = json_ids(json_get(obj, "ids"), &n_run);
    lmoe_token *ids = encode(rc->bin_vocab, t->text, t->text_len, true, &n);
    rc->lines++;
    if (!run_c_differs(t)) {
        bool same = ids && run_ids && ids_equal(ids, n, run_ids, n_run);
        CHECK_MSG(same, "%s vector %d: encoding differs from run.c", rc->tokenizer, t->id);
        rc->same += same;
    } else {
        /* SentencePiece's answer, under the same normalisation as tokenizer.bin (none) */
        size_t n_plain;
        lmoe_token *plain = encode(rc->spm_plain, t->text, t->text_len, true, &n_plain);
        CHECK_MSG(ids && plain && ids_equal(ids, n, plain, n_plain),
                  "%s vector %d: encoding differs from SentencePiece", rc->tokenizer, t->id);
        rc->excepted++;
        rc->excepted_as_sentencepiece += ids && ids_equal(ids, n, t->ids, t->n_ids);
        free(plain);
    }
    free(run_ids);
    free(ids);
}

/* tok512.model removes extra whitespace, so for the tok512 lines the exact SentencePiece ids hold
 * for the excepted strings except "\xE2\x96\x81" alone, which that normaliser strips to nothing;
 * sp_matches says how many of the 5 must equal the vector file's ids. */
static void check_run_encode(const char *tokenizer, const lmoe_vocab *bin_vocab,
                             const lmoe_vocab *spm_vocab, const vector_file *vectors,
                             int sp_matches) {
    lmoe_vocab plain = *spm_vocab; /* shallow copy: only a flag differs; not freed */
    plain.remove_extra_whitespaces = false;
    run_check rc = {tokenizer, bin_vocab, &plain, vectors, 0, 0, 0, 0};
    for_each_json_line("tokenizer-tests/llama2c-run-encode.jsonl", check_run_line, &rc);
    CHECK(rc.lines == 231);
    CHECK_MSG(rc.excepted == 5, "%s: %d lines excepted from the run.c comparison, expected 5",
              tokenizer, rc.excepted);
    CHECK(rc.same == rc.lines - rc.excepted);
    CHECK_MSG(rc.excepted_as_sentencepiece == sp_matches,
              "%s: %d excepted lines equal SentencePiece's ids, expected %d", tokenizer,
              rc.excepted_as_sentencepiece, sp_matches);
    printf("%s: %d/%d lines match run.c, %d excepted (NUL or U+2581), %d of them equal the "
           "SentencePiece vector\n", tokenizer, rc.same, rc.lines, rc.excepted,
           rc.excepted_as_sentencepiece);

    /* the converted .bin and the .model (same normalisation) agree on every string */
    int agree = 0;
    for (size_t i = 0; i < vectors->n; i++) {
        size_t n1, n2;
        const tok_vector *t = &vectors->v[i];
        lmoe_token *a = encode(bin_vocab, t->text, t->text_len, true, &n1);
        lmoe_token *b = encode(&plain, t->text, t->text_len, true, &n2);
        agree += a && b && ids_equal(a, n1, b, n2);
        free(a);
        free(b);
    }
    CHECK_MSG((size_t)agree == vectors->n, "%s: .bin and .model vocabularies disagree on %zu",
              tokenizer, vectors->n - (size_t)agree);
}

/* ------------------------------------------------------------------------------------------------
 * d: llama.cpp's ggml-vocab-llama-spm.gguf tests and a GGUF round trip
 * ---------------------------------------------------------------------------------------------- */

#define GGML_SEPARATOR "\n__ggml_vocab_test__\n"
#define MAX_CASES 64

typedef struct ggml_cases {
    char *inp, *out;                 /* the two files */
    const char *text[MAX_CASES];
    size_t text_len[MAX_CASES];
    lmoe_token *ids[MAX_CASES];
    size_t n_ids[MAX_CASES];
    size_t n;
} ggml_cases;

static const char *find_bytes(const char *hay, size_t hay_len, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= hay_len; i++)
        if (memcmp(hay + i, needle, n) == 0) return hay + i;
    return NULL;
}

static size_t parse_out_line(const char *line, size_t len, lmoe_token **ids) {
    size_t n = 0;
    *ids = malloc((len / 2 + 1) * sizeof **ids);
    if (!*ids) return 0;
    char *copy = malloc(len + 1), *p = copy;
    if (!copy) return 0;
    memcpy(copy, line, len);
    copy[len] = 0;
    for (;;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) break;
        (*ids)[n++] = (lmoe_token)v;
        p = end;
    }
    free(copy);
    return n;
}

static bool read_ggml_cases(ggml_cases *c) {
    size_t inp_size, out_size;
    memset(c, 0, sizeof *c);
    c->inp = test_read_file(test_model_path("tokenizer-tests/ggml-vocab-llama-spm.gguf.inp"),
                            &inp_size);
    c->out = test_read_file(test_model_path("tokenizer-tests/ggml-vocab-llama-spm.gguf.out"),
                            &out_size);
    CHECK(c->inp && c->out);
    if (!c->inp || !c->out) return false;
    const char *p = c->inp, *end = c->inp + inp_size, *sep;
    while ((sep = find_bytes(p, (size_t)(end - p), GGML_SEPARATOR)) && c->n < MAX_CASES) {
        c->text[c->n] = p;
        c->text_len[c->n++] = (size_t)(sep - p);
        p = sep + strlen(GGML_SEPARATOR);
    }
    CHECK(p == end);
    size_t line = 0;
    for (const char *q = c->out; q < c->out + out_size && line < c->n; line++) {
        const char *nl = memchr(q, '\n', (size_t)(c->out + out_size - q));
        size_t len = nl ? (size_t)(nl - q) : (size_t)(c->out + out_size - q);
        c->n_ids[line] = parse_out_line(q, len, &c->ids[line]);
        q += len + 1;
    }
    CHECK(line == c->n);
    return c->n == 46;
}

static void free_ggml_cases(ggml_cases *c) {
    for (size_t i = 0; i < c->n; i++) free(c->ids[i]);
    free(c->inp);
    free(c->out);
}

static void check_ggml_cases(const char *name, const lmoe_vocab *vocab, const ggml_cases *c) {
    int ok = 0;
    for (size_t i = 0; i < c->n; i++) {
        bool same = encodes_to(vocab, c->text[i], c->text_len[i], false, c->ids[i], c->n_ids[i]);
        CHECK_MSG(same, "%s: case %zu ('%.*s') differs", name, i, (int)c->text_len[i], c->text[i]);
        ok += same;
    }
    printf("%s: %d/%zu llama.cpp vocabulary tests pass\n", name, ok, c->n);
}

static bool vocabs_equal(const lmoe_vocab *a, const lmoe_vocab *b) {
    if (a->n_tokens != b->n_tokens || a->bos_id != b->bos_id || a->eos_id != b->eos_id ||
        a->unk_id != b->unk_id || a->add_bos != b->add_bos ||
        a->add_space_prefix != b->add_space_prefix ||
        a->remove_extra_whitespaces != b->remove_extra_whitespaces ||
        a->stop_on_bos != b->stop_on_bos)
        return false;
    for (uint32_t i = 0; i < a->n_tokens; i++) {
        if (a->pieces[i].len != b->pieces[i].len || a->scores[i] != b->scores[i] ||
            a->types[i] != b->types[i] ||
            memcmp(a->pieces[i].text, b->pieces[i].text, a->pieces[i].len) != 0)
            return false;
    }
    return true;
}

static void test_ggml_vocab(const lmoe_vocab *llama2) {
    ggml_cases cases;
    CHECK(read_ggml_cases(&cases));

    gguf_file *file = NULL;
    CHECK_OK(gguf_open(test_model_path("tokenizer-tests/ggml-vocab-llama-spm.gguf"), &file));
    if (file) {
        lmoe_vocab vocab;
        CHECK_OK(vocab_load_gguf(&vocab, file));
        check_ggml_cases("ggml-vocab-llama-spm.gguf", &vocab, &cases);
        /* llama.cpp's file stores the same vocabulary as tokenizer.model (the README checks it) */
        CHECK(vocab.n_tokens == 32000 && vocabs_equal(&vocab, llama2));
        vocab_free(&vocab);
        gguf_close(file);
    }

    /* round trip: write the tokenizer.model vocabulary, read it back */
    gguf_writer *w = NULL;
    uint8_t *bytes = NULL;
    size_t n_bytes = 0;
    CHECK_OK(gguf_writer_create(&w));
    if (w) {
        CHECK_OK(vocab_write_gguf(llama2, w));
        CHECK_OK(gguf_writer_write_memory(w, &bytes, &n_bytes));
        gguf_writer_free(w);
    }
    file = NULL;
    if (bytes) CHECK_OK(gguf_open_memory(bytes, n_bytes, &file));
    if (file) {
        lmoe_vocab vocab;
        CHECK_OK(vocab_load_gguf(&vocab, file));
        CHECK(vocabs_equal(&vocab, llama2));
        check_ggml_cases("GGUF round trip", &vocab, &cases);
        vocab_free(&vocab);
        gguf_close(file);
    }
    mem_free(bytes);
    free_ggml_cases(&cases);
}

/* Bad tokenizer keys in GGUF files: each must be refused with the expected status. */
typedef enum { BAD_MODEL, BAD_NO_MODEL, BAD_SCORES_LEN, BAD_TYPES_KIND, BAD_BOS, BAD_TOKENS_KIND,
               BAD_TYPE_VALUE, BAD_COUNT } gguf_bad_case;

static lmoe_status load_bad_gguf(gguf_bad_case which) {
    const char *tokens[3] = {"<unk>", "<s>", "a"};
    uint32_t lens[3] = {5, 3, 1};
    float scores[3] = {0, 0, -1};
    int32_t types[3] = {VOCAB_TYPE_UNKNOWN, VOCAB_TYPE_CONTROL, VOCAB_TYPE_NORMAL};
    gguf_writer *w = NULL;
    CHECK_OK(gguf_writer_create(&w));
    if (!w) return LMOE_ERR_INTERNAL;
    if (which != BAD_NO_MODEL)
        gguf_writer_set_str(w, "tokenizer.ggml.model", which == BAD_MODEL ? "gpt2" : "llama");
    if (which == BAD_TOKENS_KIND)
        gguf_writer_set_array(w, "tokenizer.ggml.tokens", GGUF_TYPE_FLOAT32, scores, 3);
    else
        gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", tokens, lens, 3);
    gguf_writer_set_array(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores,
                          which == BAD_SCORES_LEN ? 2 : 3);
    if (which == BAD_TYPE_VALUE) types[2] = 9;
    if (which == BAD_TYPES_KIND)
        gguf_writer_set_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_FLOAT32, scores, 3);
    else
        gguf_writer_set_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, 3);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", which == BAD_BOS ? 3 : 1);
    uint8_t *bytes = NULL;
    size_t n_bytes = 0;
    CHECK_OK(gguf_writer_write_memory(w, &bytes, &n_bytes));
    gguf_writer_free(w);
    gguf_file *file = NULL;
    lmoe_status st = LMOE_ERR_INTERNAL;
    if (bytes) CHECK_OK(gguf_open_memory(bytes, n_bytes, &file));
    if (file) {
        lmoe_vocab vocab;
        st = vocab_load_gguf(&vocab, file);
        if (st == LMOE_OK) {
            CHECK(vocab.n_tokens == 3 && vocab.bos_id == 1 && vocab.eos_id == 2 &&
                  vocab.unk_id == 0 && vocab.add_bos && vocab.add_space_prefix &&
                  !vocab.remove_extra_whitespaces && !vocab.stop_on_bos);
        }
        vocab_free(&vocab);
        gguf_close(file);
    }
    mem_free(bytes);
    return st;
}

static void test_bad_gguf(void) {
    static const lmoe_status want[BAD_COUNT] = {
        [BAD_MODEL] = LMOE_ERR_UNSUPPORTED,   [BAD_NO_MODEL] = LMOE_ERR_BAD_FILE,
        [BAD_SCORES_LEN] = LMOE_ERR_BAD_FILE, [BAD_TYPES_KIND] = LMOE_ERR_BAD_FILE,
        [BAD_BOS] = LMOE_ERR_BAD_FILE,        [BAD_TOKENS_KIND] = LMOE_ERR_BAD_FILE,
        [BAD_TYPE_VALUE] = LMOE_ERR_BAD_FILE};
    for (int i = 0; i < BAD_COUNT; i++) {
        lmoe_status st = load_bad_gguf((gguf_bad_case)i);
        CHECK_MSG(st == want[i], "bad GGUF case %d -> %d (%s)", i, (int)st, lmoe_last_error());
    }
    /* the same file, well-formed, loads (no eos key: the default 2 is inside the vocabulary) */
    lmoe_status st = load_bad_gguf(BAD_COUNT);
    CHECK_MSG(st == LMOE_OK, "good GGUF -> %d (%s)", (int)st, lmoe_last_error());
}

/* ------------------------------------------------------------------------------------------------
 * e: importers on broken files
 * ---------------------------------------------------------------------------------------------- */

static void test_truncations(void) {
    size_t bin_size, model_size;
    char *bin = test_read_file(test_model_path("tok512.bin"), &bin_size);
    char *model = test_read_file(test_model_path("tok512.model"), &model_size);
    CHECK(bin && model);
    if (!bin || !model) {
        free(bin);
        free(model);
        return;
    }
    lmoe_vocab vocab;
    int bin_bad = 0, model_bad = 0, model_ok = 0;
    /* every entry of a tokenizer.bin is required, so every truncation is malformed */
    for (size_t len = 0; len < bin_size; len++) {
        char *copy = malloc(len ? len : 1); /* exact size, so valgrind sees any overread */
        memcpy(copy, bin, len);
        lmoe_status st = llama2c_tokenizer_read(copy, len, 512, &vocab);
        bin_bad += st == LMOE_ERR_BAD_FILE;
        vocab_free(&vocab);
        free(copy);
    }
    CHECK_MSG((size_t)bin_bad == bin_size, "%d of %zu tok512.bin truncations are BAD_FILE",
              bin_bad, bin_size);
    /* a ModelProto cut at a field boundary can still parse; anything else must be refused */
    for (size_t len = 0; len < model_size; len++) {
        char *copy = malloc(len ? len : 1);
        memcpy(copy, model, len);
        lmoe_status st = spm_model_read(copy, len, &vocab);
        CHECK_MSG(st == LMOE_OK || st == LMOE_ERR_BAD_FILE, "tok512.model cut at %zu -> %d", len,
                  (int)st);
        model_bad += st == LMOE_ERR_BAD_FILE;
        model_ok += st == LMOE_OK;
        vocab_free(&vocab);
        free(copy);
    }
    CHECK(model_bad > 0 && model_bad + model_ok == (int)model_size);
    CHECK(spm_model_read(model, 0, &vocab) == LMOE_ERR_BAD_FILE);
    CHECK(spm_model_read(model, model_size / 2, &vocab) == LMOE_ERR_BAD_FILE);
    printf("truncations: tok512.bin %d/%zu refused; tok512.model %d refused, %d parse\n", bin_bad,
           bin_size, model_bad, model_ok);

    /* wrong vocabulary size: trailing bytes, or missing entries */
    CHECK(llama2c_tokenizer_read(bin, bin_size, 511, &vocab) == LMOE_ERR_BAD_FILE);
    CHECK(llama2c_tokenizer_read(bin, bin_size, 513, &vocab) == LMOE_ERR_BAD_FILE);
    CHECK(llama2c_tokenizer_read(bin, bin_size, 0, &vocab) == LMOE_ERR_INVALID_ARGUMENT);

    /* one byte overwritten at every position: never a crash or a leak */
    int corrupt_ok = 0;
    for (size_t pos = 0; pos < model_size; pos++) {
        char saved = model[pos];
        model[pos] = (char)0xFF;
        lmoe_status st = spm_model_read(model, model_size, &vocab);
        corrupt_ok += st == LMOE_OK;
        vocab_free(&vocab);
        model[pos] = saved;
    }
    for (size_t pos = 0; pos < bin_size; pos++) {
        char saved = bin[pos];
        bin[pos] = (char)0x7F;
        lmoe_status st = llama2c_tokenizer_read(bin, bin_size, 512, &vocab);
        corrupt_ok += st == LMOE_OK;
        vocab_free(&vocab);
        bin[pos] = saved;
    }
    printf("corruptions: %d of %zu still parse\n", corrupt_ok, model_size + bin_size);
    free(bin);
    free(model);
}

/* A tiny hand-made ModelProto, to hit each refusal of the reader. */
typedef struct pb_buf {
    uint8_t data[512];
    size_t len;
} pb_buf;

static void pb_put(pb_buf *b, const void *bytes, size_t n) {
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

static void pb_put_varint(pb_buf *b, uint64_t v) {
    do {
        uint8_t byte = (uint8_t)(v & 0x7F);
        v >>= 7;
        if (v) byte |= 0x80;
        pb_put(b, &byte, 1);
    } while (v);
}

static void pb_put_key(pb_buf *b, uint32_t field, unsigned wire) {
    pb_put_varint(b, (uint64_t)field << 3 | wire);
}

static void pb_put_message(pb_buf *b, uint32_t field, const pb_buf *m) {
    pb_put_key(b, field, 2);
    pb_put_varint(b, m->len);
    pb_put(b, m->data, m->len);
}

static void pb_put_piece(pb_buf *b, const char *text, float score, uint64_t type) {
    pb_buf m = {{0}, 0};
    pb_put_key(&m, 1, 2);
    pb_put_varint(&m, strlen(text));
    pb_put(&m, text, strlen(text));
    pb_put_key(&m, 2, 5);
    pb_put(&m, &score, 4); /* little-endian host assumed in this test */
    pb_put_key(&m, 3, 0);
    pb_put_varint(&m, type);
    pb_put_message(b, 1, &m);
}

typedef enum { SPM_GOOD, SPM_UNIGRAM, SPM_CHARSMAP, SPM_BAD_TYPE, SPM_DUPLICATE, SPM_EMPTY_PIECE,
               SPM_GROUP, SPM_LONG_LENGTH, SPM_FIELD_ZERO, SPM_NO_TRAINER, SPM_BAD_BOS,
               SPM_BYTE_NO_FALLBACK, SPM_WRONG_WIRE, SPM_CASES } spm_case;

static lmoe_status read_synthetic_spm(spm_case which, lmoe_vocab *vocab) {
    pb_buf b = {{0}, 0}, trainer = {{0}, 0}, normalizer = {{0}, 0};
    pb_put_piece(&b, "<unk>", 0, 2);
    pb_put_piece(&b, "<s>", 0, 3);
    pb_put_piece(&b, "</s>", 0, 3);
    pb_put_piece(&b, "<0x41>", 0, 6);
    pb_put_piece(&b, SPACE_SYMBOL, -1, 1);
    pb_put_piece(&b, "a", -2, which == SPM_BAD_TYPE ? 7 : 1);
    pb_put_piece(&b, which == SPM_DUPLICATE ? "a" : "b", -3, 1);
    pb_put_piece(&b, which == SPM_EMPTY_PIECE ? "" : "ab", -4, 1);
    pb_put_key(&trainer, 3, 0);
    pb_put_varint(&trainer, which == SPM_UNIGRAM ? 1 : 2);
    pb_put_key(&trainer, 35, 0);
    pb_put_varint(&trainer, which == SPM_BYTE_NO_FALLBACK ? 0 : 1);
    pb_put_key(&trainer, 43, 0); /* pad_id = -1: a 10-byte varint */
    pb_put_varint(&trainer, UINT64_MAX);
    pb_put_key(&trainer, 41, 0);
    pb_put_varint(&trainer, which == SPM_BAD_BOS ? 8 : 1);
    if (which == SPM_WRONG_WIRE) {
        pb_put_key(&trainer, 42, 5);
        pb_put(&trainer, "\0\0\0\0", 4);
    }
    if (which != SPM_NO_TRAINER) pb_put_message(&b, 2, &trainer);
    pb_put_key(&normalizer, 1, 2);
    pb_put_varint(&normalizer, 8);
    pb_put(&normalizer, which == SPM_CHARSMAP ? "nmt_nfkc" : "identity", 8);
    if (which == SPM_CHARSMAP) {
        pb_put_key(&normalizer, 2, 2);
        pb_put_varint(&normalizer, 3);
        pb_put(&normalizer, "xyz", 3);
    }
    pb_put_key(&normalizer, 4, 0);
    pb_put_varint(&normalizer, 0);
    pb_put_message(&b, 3, &normalizer);
    pb_put_key(&b, 99, 1); /* an unknown fixed64 field: skipped */
    pb_put(&b, "12345678", 8);
    if (which == SPM_GROUP) pb_put_key(&b, 7, 3);
    if (which == SPM_LONG_LENGTH) {
        pb_put_key(&b, 7, 2);
        pb_put_varint(&b, 1000);
    }
    if (which == SPM_FIELD_ZERO) {
        pb_put_key(&b, 0, 0);
        pb_put_varint(&b, 0);
    }
    return spm_model_read(b.data, b.len, vocab);
}

static void test_synthetic_spm(void) {
    static const lmoe_status want[SPM_CASES] = {
        [SPM_GOOD] = LMOE_OK,
        [SPM_UNIGRAM] = LMOE_ERR_UNSUPPORTED,
        [SPM_CHARSMAP] = LMOE_ERR_UNSUPPORTED,
        [SPM_BAD_TYPE] = LMOE_ERR_BAD_FILE,
        [SPM_DUPLICATE] = LMOE_ERR_BAD_FILE,
        [SPM_EMPTY_PIECE] = LMOE_ERR_BAD_FILE,
        [SPM_GROUP] = LMOE_ERR_BAD_FILE,
        [SPM_LONG_LENGTH] = LMOE_ERR_BAD_FILE,
        [SPM_FIELD_ZERO] = LMOE_ERR_BAD_FILE,
        [SPM_NO_TRAINER] = LMOE_ERR_BAD_FILE,
        [SPM_BAD_BOS] = LMOE_ERR_BAD_FILE,
        [SPM_BYTE_NO_FALLBACK] = LMOE_ERR_BAD_FILE,
        [SPM_WRONG_WIRE] = LMOE_ERR_BAD_FILE,
    };
    for (int i = 0; i < SPM_CASES; i++) {
        lmoe_vocab vocab;
        lmoe_status st = read_synthetic_spm((spm_case)i, &vocab);
        CHECK_MSG(st == want[i], "synthetic tokenizer.model case %d -> %d (%s)", i, (int)st,
                  lmoe_last_error());
        if (i == SPM_GOOD && st == LMOE_OK) {
            CHECK(vocab.n_tokens == 8 && vocab.unk_id == 0 && vocab.bos_id == 1 &&
                  vocab.eos_id == 2 && vocab.add_space_prefix && !vocab.remove_extra_whitespaces);
            CHECK(vocab.byte_ids[0x41] == 3 && vocab.byte_ids[0x42] == -1);
            /* "ab" merges; 'A' is not a piece but has a byte piece; 'B' has neither: unk */
            lmoe_token want_ids[] = {1, 4, 7, 3, 0};
            CHECK(encodes_to(&vocab, "abAB", 4, true, want_ids, 5));
        }
        if (i == SPM_BAD_TYPE || i == SPM_GROUP || i == SPM_LONG_LENGTH)
            CHECK_MSG(strstr(lmoe_last_error(), "byte") != NULL, "no offset in '%s'",
                      lmoe_last_error());
        vocab_free(&vocab);
    }
}

/* ------------------------------------------------------------------------------------------------
 * e: edge cases of the API, with the LLaMA-2 vocabulary
 * ---------------------------------------------------------------------------------------------- */

static void check_round_trip(const lmoe_vocab *vocab, const char *text, size_t len) {
    size_t n, out_len;
    lmoe_token *ids = encode(vocab, text, len, true, &n);
    char *out = ids ? decode(vocab, ids, n, &out_len) : NULL;
    CHECK_MSG(out && out_len == len && memcmp(out, text, len) == 0,
              "round trip of %zu bytes fails", len);
    free(ids);
    free(out);
}

static void test_invalid_utf8(const lmoe_vocab *llama2) {
    /* normalised "\xE2\x96\x81\xff\xfe\xE2\x96\x81a\xE2\x96\x81\xc3": ▁, bytes, ▁a, ▁, byte */
    const char text[] = "\xff\xfe a \xc3";
    lmoe_token want[] = {29871, 3 + 0xFF, 3 + 0xFE, 263, 29871, 3 + 0xC3};
    CHECK(encodes_to(llama2, text, sizeof text - 1, false, want, 6));
    check_round_trip(llama2, text, sizeof text - 1);
    static const char *const bad[] = {
        "\xc0\x80 overlong", "surrogate \xed\xa0\x80", "cut \xe2\x96", "\xf8\x88\x80\x80\x80",
        "\x80\x80 lone continuations", "max \xf4\x8f\xbf\xbf and past \xf4\x90\x80\x80",
        "x\xe2\x96 mixed \xef\xbf\xbd \xe2\x96\x82",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        check_round_trip(llama2, bad[i], strlen(bad[i]));
    const char nul[] = "a\0b\0";
    check_round_trip(llama2, nul, sizeof nul - 1);
}

/* A pseudo-random mix of words, digits, punctuation, CJK and emoji (an LCG keeps it repeatable). */
static char *make_long_text(size_t len) {
    static const char *const words[] = {
        "the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dog", ". ", ", ",
        "1234 ", "\n", "\t", "  ", "\xe4\xb8\xad\xe6\x96\x87 ", "\xf0\x9f\x98\x80", "naïve ",
        "tokenization ", "(x) ", "Once upon a time ",
    };
    char *text = malloc(len);
    if (!text) return NULL;
    uint64_t state = 12345;
    size_t pos = 0;
    text[pos++] = 'A'; /* starts with a non-space, so decoding gives the text back */
    while (pos < len) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        const char *w = words[(state >> 33) % (sizeof words / sizeof words[0])];
        size_t n = strlen(w);
        if (n > len - pos) n = len - pos;
        memcpy(text + pos, w, n);
        pos += n;
    }
    return text;
}

static void test_long_inputs(const lmoe_vocab *llama2, const lmoe_vocab *tok512) {
    const size_t len = 100 * 1000;
    char *text = make_long_text(len);
    CHECK(text != NULL);
    if (!text) return;
    /* the cut at the end may split a UTF-8 character: that byte falls back, and still round-trips */
    check_round_trip(llama2, text, len);
    size_t n;
    lmoe_token *ids = encode(tok512, text, len, true, &n); /* squeezes spaces: no round trip */
    CHECK(ids && n > 1000);
    free(ids);
    memset(text, 'a', len);
    check_round_trip(llama2, text, len);
    memset(text, ' ', len);
    ids = encode(llama2, text, len, false, &n);
    CHECK(ids && n > 0 && n < len); /* "▁▁" and longer runs of U+2581 are pieces */
    free(ids);
    ids = encode(tok512, text, len, true, &n);
    CHECK(ids && n == 1);              /* squeezed to nothing: only BOS */
    free(ids);
    free(text);
}

static void test_buffers_and_ids(const lmoe_vocab *llama2) {
    lmoe_token ids[8];
    size_t n = 99, len = 99;
    char buf[64];
    CHECK(vocab_encode(llama2, "Hello world", 11, true, ids, 2, &n) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 3 && ids[0] == 1 && ids[1] == 15043);
    CHECK(vocab_encode(llama2, "Hello world", 11, true, NULL, 0, &n) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(n == 3);
    CHECK_OK(vocab_encode(llama2, "Hello world", 11, true, ids, 3, &n));
    CHECK(n == 3 && ids[2] == 3186);
    CHECK_OK(vocab_encode(llama2, "", 0, false, NULL, 0, &n));
    CHECK(n == 0);
    CHECK_OK(vocab_encode(llama2, NULL, 0, true, ids, 8, &n));
    CHECK(n == 1 && ids[0] == 1);
    CHECK(vocab_encode(llama2, NULL, 3, true, ids, 8, &n) == LMOE_ERR_INVALID_ARGUMENT);

    CHECK(vocab_decode(llama2, ids, 3, buf, 5, &len) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(len == 11 && memcmp(buf, "Hello", 5) == 0);
    CHECK_OK(vocab_decode(llama2, ids, 3, buf, 11, &len));
    CHECK(len == 11 && memcmp(buf, "Hello world", 11) == 0);
    lmoe_token bad[] = {15043, 32000};
    CHECK(vocab_decode(llama2, bad, 2, buf, sizeof buf, &len) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "32000") != NULL);
    bad[1] = -1;
    CHECK(vocab_decode(llama2, bad, 2, buf, sizeof buf, &len) == LMOE_ERR_INVALID_ARGUMENT);

    /* the unknown token decodes to SentencePiece's surface " ⁇ " */
    lmoe_token unk[] = {1, 0, 15043};
    CHECK_OK(vocab_decode(llama2, unk, 3, buf, sizeof buf, &len));
    CHECK(len == 11 && memcmp(buf, " \xE2\x81\x87  Hello", 11) == 0);

    /* token_to_piece */
    CHECK_OK(vocab_token_to_piece(llama2, 15043, false, buf, sizeof buf, &len));
    CHECK(len == 6 && memcmp(buf, " Hello", 6) == 0);
    CHECK_OK(vocab_token_to_piece(llama2, 15043, true, buf, sizeof buf, &len));
    CHECK(len == 5 && memcmp(buf, "Hello", 5) == 0);
    CHECK_OK(vocab_token_to_piece(llama2, 1, false, buf, sizeof buf, &len));
    CHECK(len == 0);
    CHECK_OK(vocab_token_to_piece(llama2, 3 + '\n', true, buf, sizeof buf, &len));
    CHECK(len == 1 && buf[0] == '\n');
    CHECK_OK(vocab_token_to_piece(llama2, 0, false, buf, sizeof buf, &len));
    CHECK(len == 5 && memcmp(buf, " \xE2\x81\x87 ", 5) == 0);
    CHECK(vocab_token_to_piece(llama2, 15043, false, buf, 3, &len) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(len == 6);
    CHECK(vocab_token_to_piece(llama2, 15043, false, NULL, 0, &len) == LMOE_ERR_BUFFER_TOO_SMALL);
    CHECK(vocab_token_to_piece(llama2, 32000, false, buf, sizeof buf, &len) ==
          LMOE_ERR_INVALID_ARGUMENT);
    CHECK(vocab_token_to_piece(llama2, -5, false, buf, sizeof buf, &len) ==
          LMOE_ERR_INVALID_ARGUMENT);
    CHECK(vocab_find(llama2, SPACE_SYMBOL "Hello", 8) == 15043);
    CHECK(vocab_find(llama2, "no such piece", 13) == -1);
    CHECK(vocab_find(llama2, "", 0) == -1);
}

/* ------------------------------------------------------------------------------------------------
 * vocabulary validation and BPE rules on small hand-made vocabularies
 * ---------------------------------------------------------------------------------------------- */

typedef struct small_token {
    const char *text;
    int32_t type;
    float score;
} small_token;

static lmoe_status make_vocab(const small_token *t, uint32_t n, lmoe_vocab *v) {
    memset(v, 0, sizeof *v);
    lmoe_status st = vocab_alloc(v, n, 0);
    if (st != LMOE_OK) return st;
    for (uint32_t i = 0; i < n; i++) {
        v->pieces[i].text = t[i].text;
        v->pieces[i].len = (uint32_t)strlen(t[i].text);
        v->types[i] = t[i].type;
        v->scores[i] = t[i].score;
    }
    v->unk_id = 0;
    v->bos_id = 1;
    v->eos_id = 2;
    v->add_bos = v->add_space_prefix = true;
    return vocab_finish(v);
}

enum { N = VOCAB_TYPE_NORMAL, UNK = VOCAB_TYPE_UNKNOWN, CTL = VOCAB_TYPE_CONTROL,
       UD = VOCAB_TYPE_USER_DEFINED, UNUSED = VOCAB_TYPE_UNUSED, BYTE = VOCAB_TYPE_BYTE };

static void test_validation(void) {
    lmoe_vocab v;
    small_token dup[] = {{"<unk>", UNK, 0}, {"<s>", CTL, 0}, {"</s>", CTL, 0}, {"a", N, -1},
                         {"a", N, -2}};
    CHECK(make_vocab(dup, 5, &v) == LMOE_ERR_BAD_FILE);
    CHECK(strstr(lmoe_last_error(), "tokens[4]") != NULL);
    vocab_free(&v);
    dup[4].type = UNUSED; /* an unused duplicate is tolerated; lookup finds the used one */
    CHECK_OK(make_vocab(dup, 5, &v));
    CHECK(vocab_find(&v, "a", 1) == 3);
    vocab_free(&v);
    dup[3].type = UNUSED;
    dup[4].type = N;
    CHECK_OK(make_vocab(dup, 5, &v));
    CHECK(vocab_find(&v, "a", 1) == 4);
    vocab_free(&v);

    small_token empty[] = {{"", UNK, 0}, {"", CTL, 0}, {"</s>", CTL, 0}, {"", N, 0}};
    CHECK(make_vocab(empty, 4, &v) == LMOE_ERR_BAD_FILE);
    CHECK(strstr(lmoe_last_error(), "tokens[3]: empty piece") != NULL);
    vocab_free(&v);
    CHECK_OK(make_vocab(empty, 3, &v)); /* empty control/unknown pieces are allowed */
    vocab_free(&v);

    small_token bad_type[] = {{"<unk>", UNK, 0}, {"<s>", CTL, 0}, {"</s>", CTL, 0}, {"x", 0, 0}};
    CHECK(make_vocab(bad_type, 4, &v) == LMOE_ERR_BAD_FILE);
    vocab_free(&v);
    small_token bad_score[] = {{"<unk>", UNK, 0}, {"<s>", CTL, 0}, {"</s>", CTL, 0},
                               {"x", N, NAN}};
    CHECK(make_vocab(bad_score, 4, &v) == LMOE_ERR_BAD_FILE);
    vocab_free(&v);
    small_token bad_byte[] = {{"<unk>", UNK, 0}, {"<s>", CTL, 0}, {"</s>", CTL, 0},
                              {"<0xZZ>", BYTE, 0}};
    CHECK(make_vocab(bad_byte, 4, &v) == LMOE_ERR_BAD_FILE);
    vocab_free(&v);
    small_token two_ids[] = {{"<unk>", UNK, 0}, {"<s>", CTL, 0}, {"</s>", CTL, 0},
                             {"<0x0a>", BYTE, 0}, {"<0x0A>", BYTE, 0}};
    CHECK(make_vocab(two_ids, 5, &v) == LMOE_ERR_BAD_FILE);
    vocab_free(&v);
    CHECK(make_vocab(two_ids, 2, &v) == LMOE_ERR_BAD_FILE); /* eos 2 outside 2 tokens */
    vocab_free(&v);
    CHECK(make_vocab(two_ids, 0, &v) != LMOE_OK);
    vocab_free(&v);
}

static void test_bpe_rules(void) {
    lmoe_vocab v;
    /* ties go to the leftmost pair; control pieces are never merged into */
    small_token t[] = {{"<unk>", UNK, 0},    {"<s>", CTL, 0},      {"</s>", CTL, 0},
                       {SPACE_SYMBOL, N, -1}, {"a", N, -2},        {"b", N, -3},
                       {"aa", N, -4},        {"ab", CTL, 10},      {"<x>", UD, -9},
                       {"<", N, -5},         {"x", N, -6},         {">", N, -7},
                       {"<0x62>", BYTE, 0},  {"<x", N, -8}};
    CHECK_OK(make_vocab(t, 14, &v));
    lmoe_token aaa[] = {3, 6, 4};
    CHECK(encodes_to(&v, "aaa", 3, false, aaa, 3));
    lmoe_token ab[] = {3, 4, 5};
    CHECK(encodes_to(&v, "ab", 2, false, ab, 3));
    /* "<x>" is user-defined: matched whole and frozen (so "<x" never forms) */
    lmoe_token ud[] = {3, 4, 8, 5, 13};
    CHECK(encodes_to(&v, "a<x>b<x", 7, false, ud, 5));
    vocab_free(&v);

    /* without byte pieces or an unknown token, unknown text cannot be encoded */
    memset(&v, 0, sizeof v);
    CHECK_OK(vocab_alloc(&v, 1, 0));
    if (v.pieces) {
        v.pieces[0].text = "a";
        v.pieces[0].len = 1;
        v.types[0] = N;
        v.bos_id = v.eos_id = v.unk_id = -1;
        v.add_space_prefix = false;
        CHECK_OK(vocab_finish(&v));
        size_t n;
        lmoe_token ids[4];
        CHECK_OK(vocab_encode(&v, "aa", 2, true, ids, 4, &n));
        CHECK(n == 2 && ids[0] == 0 && ids[1] == 0); /* no BOS in this vocabulary */
        CHECK(vocab_encode(&v, "ab", 2, false, ids, 4, &n) == LMOE_ERR_INVALID_ARGUMENT);
    }
    vocab_free(&v);
    vocab_free(NULL);
}

/* ------------------------------------------------------------------------------------------------
 * the JSON reader the vectors go through
 * ---------------------------------------------------------------------------------------------- */

static void test_json(void) {
    const char good[] = "{\"a\": [1, -2.5e3, true, false, null, \"x\\u0000y\"], "
                        "\"s\": \"\\ud83d\\ude00\\u00e9\\n\\\"\", \"e\": {}, \"z\": []}";
    json_value *v = json_parse(good, sizeof good - 1);
    CHECK(v && v->kind == JSON_OBJECT && v->n_items == 4);
    const json_value *a = json_get(v, "a"), *str = json_get(v, "s");
    CHECK(a && a->kind == JSON_ARRAY && a->n_items == 6);
    if (a && a->n_items == 6) {
        CHECK(a->items[0].number == 1 && a->items[1].number == -2500);
        CHECK(a->items[2].boolean && !a->items[3].boolean && a->items[4].kind == JSON_NULL);
        CHECK(a->items[5].str_len == 3 && memcmp(a->items[5].str, "x\0y", 3) == 0);
    }
    CHECK(str && str->str_len == 8 && memcmp(str->str, "\xf0\x9f\x98\x80\xc3\xa9\n\"", 8) == 0);
    CHECK(json_get(v, "missing") == NULL && json_get(a, "a") == NULL);
    /* every proper prefix of the document is malformed */
    for (size_t len = 0; len + 1 < sizeof good; len++) {
        json_value *cut = json_parse(good, len);
        CHECK_MSG(cut == NULL, "prefix of %zu bytes parsed", len);
        json_free(cut);
    }
    json_free(v);
    static const char *const bad[] = {
        "", "[1,]", "{\"a\" 1}", "[01]", "\"\\ud800\"", "\"\\udc00\"", "\"\\x\"", "\"a\nb\"",
        "[1] 2", "tru", "-", "1.", "1e", "{1: 2}", "[\"\\u12\"]", "nul",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_value *b = json_parse(bad[i], strlen(bad[i]));
        CHECK_MSG(b == NULL, "'%s' parsed", bad[i]);
        json_free(b);
    }
    char deep[2000];
    memset(deep, '[', sizeof deep);
    CHECK(json_parse(deep, sizeof deep) == NULL); /* nesting is limited, not recursed into */
    json_free(NULL);
}

/* ------------------------------------------------------------------------------------------------ */

int main(void) {
    test_require_models();
    lmoe_vocab llama2, tok512, llama2_bin, tok512_bin;
    bool have = load_spm("llama2-tokenizer.model", &llama2);
    have &= load_spm("tok512.model", &tok512);
    have &= load_bin("llama2-tokenizer.bin", 32000, &llama2_bin);
    have &= load_bin("tok512.bin", 512, &tok512_bin);
    if (!have) return test_finish("test_tokenizer");
    CHECK(llama2.n_tokens == 32000 && !llama2.remove_extra_whitespaces && llama2.add_space_prefix);
    CHECK(tok512.n_tokens == 512 && tok512.remove_extra_whitespaces);
    CHECK(llama2_bin.stop_on_bos && llama2_bin.bos_id == 1 && llama2_bin.eos_id == 2 &&
          llama2_bin.unk_id == 0 && llama2_bin.types[1] == VOCAB_TYPE_CONTROL &&
          llama2_bin.types[3] == VOCAB_TYPE_BYTE && llama2_bin.types[0] == VOCAB_TYPE_UNKNOWN);
    CHECK(llama2.max_piece_len == llama2_bin.max_piece_len && llama2.max_piece_len > 27);

    vector_file llama2_vectors = {NULL, 0}, tok512_vectors = {NULL, 0};
    for_each_json_line("tokenizer-tests/llama2-spm-vectors.jsonl", add_vector, &llama2_vectors);
    for_each_json_line("tokenizer-tests/tok512-spm-vectors.jsonl", add_vector, &tok512_vectors);

    check_spm_vectors("llama2-tokenizer.model", &llama2, &llama2_vectors);          /* a */
    check_spm_vectors("tok512.model", &tok512, &tok512_vectors);                    /* b */
    check_run_encode("llama2-tokenizer.bin", &llama2_bin, &llama2, &llama2_vectors, 5); /* c */
    check_run_encode("tok512.bin", &tok512_bin, &tok512, &tok512_vectors, 4);
    test_ggml_vocab(&llama2);                                                       /* d */
    test_bad_gguf();
    test_truncations();                                                             /* e */
    test_synthetic_spm();
    test_invalid_utf8(&llama2);
    test_long_inputs(&llama2, &tok512);
    test_buffers_and_ids(&llama2);
    test_validation();
    test_bpe_rules();
    test_json();

    free_vectors(&llama2_vectors);
    free_vectors(&tok512_vectors);
    vocab_free(&llama2);
    vocab_free(&tok512);
    vocab_free(&llama2_bin);
    vocab_free(&tok512_bin);
    return test_finish("test_tokenizer");
}
