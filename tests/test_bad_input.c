/* test_bad_input.c - bad input through the public API: malformed, truncated and hostile GGUF files,
 * models whose tensors do not match their hyperparameters, contexts asked to hold too much, and
 * NULL or malformed arguments to every public function. Each case checks the exact status and
 * that lmoe_last_error() names the problem.
 *
 * The bad files are made from a small valid model that this test writes with the library's own
 * GGUF writer, then patched at fields located by name (the layout of GGUF v3 is known: see
 * src/gguf.h). Every crafted file is written to the test scratch folder as bad-gguf-NAME.gguf, so a
 * failing case can be inspected (and later kept as a regression corpus). */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "llamamoe.h"
#include "mem.h"
#include "model.h"
#include "test_util.h"
#include "tiny_model.h"

/* Checks status and that the error text contains word. */
#define CHECK_STATUS(expr, status, word)                                                            \
    do {                                                                                            \
        lmoe_status check_status_st_ = (expr);                                                      \
        CHECK_MSG(check_status_st_ == (status), "%s -> %d %s (%s), expected %d", #expr,             \
                  (int)check_status_st_, lmoe_status_string(check_status_st_), lmoe_last_error(),   \
                  (int)(status));                                                                   \
        CHECK_MSG(strstr(lmoe_last_error(), (word)) != NULL, "%s: error '%s' lacks '%s'", #expr,    \
                  lmoe_last_error(), (word));                                                       \
    } while (0)

/* Placeholders that a failing constructor must overwrite with NULL. */
static char sentinel_bytes[64];
#define SENTINEL ((void *)sentinel_bytes)

/* The default valid model, built once. */
static uint8_t *good;
static size_t good_size;

/* A fresh copy of the valid model to patch. */
static uint8_t *good_copy(void) {
    uint8_t *p = malloc(good_size);
    if (!p) abort();
    memcpy(p, good, good_size);
    return p;
}

/* ------------------------------------------------------------------------------------------------
 * locating fields: a key or tensor name is stored as u64 length + bytes; return the offset just
 * after the name (a key's u32 value type, a tensor's u32 n_dims)
 * ---------------------------------------------------------------------------------------------- */

static size_t after_name(const uint8_t *buf, size_t size, const char *name) {
    uint64_t len = strlen(name);
    for (size_t p = 0; p + 8 + len <= size; p++) {
        if (memcmp(buf + p + 8, name, len) != 0) continue;
        uint64_t stored;
        memcpy(&stored, buf + p, 8);
        if (stored == len) return p + 8 + len;
    }
    fprintf(stderr, "after_name: '%s' not found\n", name);
    abort();
}

/* Offset of a key's u64 length field, of its u32 type field, and of its value. */
static size_t key_len_at(const uint8_t *buf, size_t size, const char *key) {
    return after_name(buf, size, key) - strlen(key) - 8;
}
static size_t key_type_at(const uint8_t *buf, size_t size, const char *key) {
    return after_name(buf, size, key);
}
static size_t key_value_at(const uint8_t *buf, size_t size, const char *key) {
    return after_name(buf, size, key) + 4;
}

/* Tensor info fields. */
static size_t tensor_dims_at(const uint8_t *buf, size_t size, const char *name) {
    return after_name(buf, size, name);
}
static size_t tensor_ne_at(const uint8_t *buf, size_t size, const char *name, uint32_t d) {
    return after_name(buf, size, name) + 4 + 8 * (size_t)d;
}
static size_t tensor_type_at(const uint8_t *buf, size_t size, const char *name) {
    size_t p = after_name(buf, size, name);
    uint32_t n_dims;
    memcpy(&n_dims, buf + p, 4);
    return p + 4 + 8 * (size_t)n_dims;
}
static size_t tensor_offset_at(const uint8_t *buf, size_t size, const char *name) {
    return tensor_type_at(buf, size, name) + 4;
}

static void poke32(uint8_t *buf, size_t at, uint32_t v) { memcpy(buf + at, &v, 4); }
static void poke64(uint8_t *buf, size_t at, uint64_t v) { memcpy(buf + at, &v, 8); }
static uint64_t peek64(const uint8_t *buf, size_t at) {
    uint64_t v;
    memcpy(&v, buf + at, 8);
    return v;
}

/* ------------------------------------------------------------------------------------------------
 * loading a crafted file through the public API
 * ---------------------------------------------------------------------------------------------- */

static char path_buf[4096];

/* Writes bytes to the scratch folder as bad-gguf-NAME.gguf; returns the path (static buffer). */
static const char *write_case(const char *name, const void *bytes, size_t size) {
    char file[256];
    snprintf(file, sizeof file, "bad-gguf-%s.gguf", name);
    snprintf(path_buf, sizeof path_buf, "%s", test_tmp_path(file));
    if (test_write_file(path_buf, bytes, size) != 0) {
        fprintf(stderr, "cannot write %s\n", path_buf);
        abort();
    }
    return path_buf;
}

/* Writes the case, loads it, and checks the status, the message and that *out was set to NULL. */
static void expect_load(const char *name, const uint8_t *bytes, size_t size, lmoe_status want,
                        const char *word) {
    const char *path = write_case(name, bytes, size);
    lmoe_model *m = SENTINEL;
    lmoe_status st = lmoe_model_load(path, NULL, &m);
    CHECK_MSG(st == want, "case %s: status %d %s (%s), expected %d", name, (int)st,
              lmoe_status_string(st), lmoe_last_error(), (int)want);
    CHECK_MSG(strstr(lmoe_last_error(), word) != NULL, "case %s: error '%s' lacks '%s'", name,
              lmoe_last_error(), word);
    CHECK_MSG(m == NULL, "case %s: *out not NULL after failure", name);
    if (getenv("TEST_VERBOSE")) /* a table of every case and its message */
        printf("%-28s %-16s %s\n", name, lmoe_status_string(st), lmoe_last_error());
    if (st == LMOE_OK && m != SENTINEL) lmoe_model_free(m);
}

/* Builds a model with options and expects it to fail to load. */
static void expect_model(const char *name, const tiny_opts *o, lmoe_status want,
                         const char *word) {
    uint8_t *buf = NULL;
    size_t size = 0;
    lmoe_status st = tiny_model_build(o, &buf, &size);
    CHECK_MSG(st == LMOE_OK, "case %s: cannot build: %s", name, lmoe_last_error());
    if (st == LMOE_OK) expect_load(name, buf, size, want, word);
    mem_free(buf);
}

/* ------------------------------------------------------------------------------------------------
 * the cases
 * ---------------------------------------------------------------------------------------------- */

static void test_good_model_loads(void) {
    const char *path = write_case("valid", good, good_size);
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    CHECK(m != NULL);
    lmoe_model_info info;
    memset(&info, 0xAB, sizeof info);
    if (m) CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
    CHECK(info.has_weights == 1 && info.n_vocab == TINY_N_VOCAB && info.n_embd == TINY_N_EMBD &&
          info.n_layer == 1 && info.n_head == 2 && info.n_head_kv == 1 && info.n_ff == TINY_N_FF);
    lmoe_model_free(m);
}

static void test_not_gguf(void) {
    expect_load("empty", (const uint8_t *)"", 0, LMOE_ERR_BAD_FILE, "empty");

    lmoe_model *m = SENTINEL;
    CHECK_STATUS(lmoe_model_load(test_tmp_path("bad-gguf-does-not-exist.gguf"), NULL, &m),
                 LMOE_ERR_IO, "cannot open");
    CHECK(m == NULL);
    CHECK(strstr(lmoe_last_error(), "bad-gguf-does-not-exist.gguf") != NULL);

    const char *dir = test_tmp_path("bad-gguf-a-directory.gguf");
    mkdir(dir, 0700);
    m = SENTINEL;
    CHECK_STATUS(lmoe_model_load(dir, NULL, &m), LMOE_ERR_IO, "not a regular file");
    CHECK(m == NULL);
    /* the failed open just above left errno at ENOENT: it must not leak into this message */
    CHECK_MSG(strstr(lmoe_last_error(), "No such file") == NULL, "%s", lmoe_last_error());

    static const char text[] = "Once upon a time there was a file that was not a model.\n";
    expect_load("text", (const uint8_t *)text, sizeof text - 1, LMOE_ERR_BAD_FILE, "not a GGUF");
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0, 0, 13,
                                  'I', 'H', 'D', 'R', 0, 0, 0, 1, 0, 0, 0, 1, 8, 6, 0, 0, 0};
    expect_load("png", png, sizeof png, LMOE_ERR_BAD_FILE, "not a GGUF");
    expect_load("ggu", (const uint8_t *)"GGU", 3, LMOE_ERR_BAD_FILE, "not a GGUF");
    expect_load("ggml-magic", (const uint8_t *)"ggmlxxxxxxxxxxxxxxxxxxxxxxxx", 28,
                LMOE_ERR_BAD_FILE, "not a GGUF");
}

/* A message about a file cut short: it says what did not fit. */
static bool names_truncation(const char *msg) {
    static const char *const words[] = {"left in the file", "past the end", "larger than the file",
                                        "is empty", "not a GGUF file"};
    if (!strstr(msg, "GGUF")) return false;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strstr(msg, words[i])) return true;
    return false;
}

/* The valid model cut at every length from 0 to its full size: only the full file loads. Through
 * a file (public API) and through an exactly-sized heap copy (so that a read past the end is seen
 * by sanitizers and valgrind, which a page-rounded map would hide). */
static void test_truncations(void) {
    const char *path = write_case("truncated", good, good_size);
    int n_bad = 0;
    for (size_t len = good_size + 1; len-- > 0;) {
        CHECK(truncate(path, (off_t)len) == 0);
        lmoe_model *m = SENTINEL;
        lmoe_status st = lmoe_model_load(path, NULL, &m);
        bool ok = len == good_size ? (st == LMOE_OK && m != NULL)
                                   : (st == LMOE_ERR_BAD_FILE && m == NULL &&
                                      names_truncation(lmoe_last_error()));
        if (!ok && n_bad++ < 10)
            fprintf(stderr, "truncated to %zu of %zu bytes: status %d (%s)\n", len, good_size,
                    (int)st, st == LMOE_OK ? "loaded" : lmoe_last_error());
        if (st == LMOE_OK && m != SENTINEL) lmoe_model_free(m);
    }
    CHECK_MSG(n_bad == 0, "%d truncation lengths misbehaved (file)", n_bad);

    n_bad = 0;
    for (size_t len = 0; len <= good_size; len++) {
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, good, len);
        gguf_file *f = SENTINEL;
        lmoe_status st = gguf_open_memory(copy, len, &f);
        lmoe_model *m = NULL;
        if (st == LMOE_OK) st = model_load_from_gguf(f, false, &m);
        else if (f != NULL) n_bad++;
        bool ok = len == good_size ? st == LMOE_OK
                                   : st == LMOE_ERR_BAD_FILE && names_truncation(lmoe_last_error());
        if (!ok && n_bad++ < 10)
            fprintf(stderr, "memory truncated to %zu of %zu bytes: status %d (%s)\n", len,
                    good_size, (int)st, st == LMOE_OK ? "loaded" : lmoe_last_error());
        model_free(m);
        free(copy);
    }
    CHECK_MSG(n_bad == 0, "%d truncation lengths misbehaved (memory)", n_bad);
}

static void test_patched_layout(void) {
    uint8_t *b;

    /* tensor data extending past the end of the file (offset moved by one aligned step) */
    b = good_copy();
    size_t at = tensor_offset_at(b, good_size, "blk.0.ffn_down.weight");
    poke64(b, at, peek64(b, at) + 32);
    expect_load("tensor-past-end", b, good_size, LMOE_ERR_BAD_FILE, "extends past the end");
    CHECK(strstr(lmoe_last_error(), "blk.0.ffn_down.weight") != NULL);
    poke64(b, at, UINT64_MAX - 31); /* aligned, and offset + size would wrap */
    expect_load("tensor-offset-wraps", b, good_size, LMOE_ERR_BAD_FILE, "extends past the end");
    free(b);

    /* a key's length far larger than the file */
    b = good_copy();
    poke64(b, key_len_at(b, good_size, "general.architecture"), 1ull << 62);
    expect_load("key-length-huge", b, good_size, LMOE_ERR_BAD_FILE, "string length");
    free(b);
    /* a string value's length far larger than the file */
    b = good_copy();
    poke64(b, key_value_at(b, good_size, "general.architecture"), 1ull << 62);
    expect_load("string-length-huge", b, good_size, LMOE_ERR_BAD_FILE, "larger than");
    free(b);
    /* a tensor name's length larger than the file */
    b = good_copy();
    poke64(b, tensor_dims_at(b, good_size, "output_norm.weight") - strlen("output_norm.weight") - 8,
           1ull << 62);
    expect_load("tensor-name-length-huge", b, good_size, LMOE_ERR_BAD_FILE, "tensor name");
    free(b);

    /* an array count larger than the file: strings, then numbers */
    b = good_copy();
    poke64(b, key_value_at(b, good_size, "tokenizer.ggml.tokens") + 4, 1ull << 60);
    expect_load("string-array-count-huge", b, good_size, LMOE_ERR_BAD_FILE,
                "tokenizer.ggml.tokens");
    free(b);
    b = good_copy();
    poke64(b, key_value_at(b, good_size, "tokenizer.ggml.scores") + 4, UINT64_MAX);
    expect_load("number-array-count-huge", b, good_size, LMOE_ERR_BAD_FILE,
                "tokenizer.ggml.scores");
    free(b);

    /* key and tensor counts larger than the file can hold */
    b = good_copy();
    poke64(b, 16, 1ull << 40);
    expect_load("key-count-huge", b, good_size, LMOE_ERR_BAD_FILE, "metadata key count");
    poke64(b, 16, UINT64_MAX);
    expect_load("key-count-max", b, good_size, LMOE_ERR_BAD_FILE, "metadata key count");
    poke64(b, 16, (good_size - 24) / 13 + 1);
    expect_load("key-count-just-too-big", b, good_size, LMOE_ERR_BAD_FILE, "metadata key count");
    free(b);
    b = good_copy();
    poke64(b, 8, 1ull << 40);
    expect_load("tensor-count-huge", b, good_size, LMOE_ERR_BAD_FILE, "tensor count");
    poke64(b, 8, UINT64_MAX);
    expect_load("tensor-count-max", b, good_size, LMOE_ERR_BAD_FILE, "tensor count");
    free(b);

    /* an unsupported tensor type: 3 is q4_1 */
    b = good_copy();
    poke32(b, tensor_type_at(b, good_size, "blk.0.attn_k.weight"), 3);
    expect_load("tensor-type-q4_1", b, good_size, LMOE_ERR_UNSUPPORTED, "element type 3");
    CHECK(strstr(lmoe_last_error(), "blk.0.attn_k.weight") != NULL);
    poke32(b, tensor_type_at(b, good_size, "blk.0.attn_k.weight"), 0xFFFFFFFFu);
    expect_load("tensor-type-huge", b, good_size, LMOE_ERR_UNSUPPORTED, "element type");
    free(b);
    /* a supported tensor type that this version cannot run (f16 with the f32 byte size kept:
     * the size check passes, the binding refuses) */
    b = good_copy();
    at = tensor_ne_at(b, good_size, "blk.0.attn_norm.weight", 0);
    poke64(b, at, 16);
    poke32(b, tensor_type_at(b, good_size, "blk.0.attn_norm.weight"), GGML_TYPE_F16);
    expect_load("tensor-type-f16-weight", b, good_size, LMOE_ERR_UNSUPPORTED, "f32");
    CHECK(strstr(lmoe_last_error(), "blk.0.attn_norm.weight") != NULL);
    free(b);

    /* unknown metadata value types */
    b = good_copy();
    poke32(b, key_type_at(b, good_size, "llama.block_count"), 99);
    expect_load("value-type-unknown", b, good_size, LMOE_ERR_BAD_FILE, "value type 99");
    CHECK(strstr(lmoe_last_error(), "llama.block_count") != NULL);
    poke32(b, key_type_at(b, good_size, "llama.block_count"), GGUF_TYPE_COUNT);
    expect_load("value-type-13", b, good_size, LMOE_ERR_BAD_FILE, "not a GGUF type");
    free(b);
    b = good_copy();
    poke32(b, key_value_at(b, good_size, "tokenizer.ggml.scores"), 77);
    expect_load("array-elem-type-unknown", b, good_size, LMOE_ERR_BAD_FILE, "element type 77");
    poke32(b, key_value_at(b, good_size, "tokenizer.ggml.scores"), GGUF_TYPE_ARRAY);
    expect_load("array-nested", b, good_size, LMOE_ERR_BAD_FILE, "nested");
    free(b);
    /* a known type where another was expected (same size, so the file still parses) */
    b = good_copy();
    poke32(b, key_type_at(b, good_size, "llama.block_count"), GGUF_TYPE_FLOAT32);
    expect_load("hparam-wrong-type", b, good_size, LMOE_ERR_BAD_FILE, "llama.block_count");
    CHECK(strstr(lmoe_last_error(), "expected an integer") != NULL);
    free(b);
    b = good_copy();
    poke32(b, key_value_at(b, good_size, "tokenizer.ggml.token_type"), GGUF_TYPE_FLOAT32);
    expect_load("token-type-array-wrong-type", b, good_size, LMOE_ERR_BAD_FILE,
                "tokenizer.ggml.token_type");
    free(b);

    /* a misaligned tensor offset */
    b = good_copy();
    at = tensor_offset_at(b, good_size, "blk.0.attn_output.weight");
    poke64(b, at, peek64(b, at) + 4);
    expect_load("tensor-offset-misaligned", b, good_size, LMOE_ERR_BAD_FILE, "alignment");
    CHECK(strstr(lmoe_last_error(), "blk.0.attn_output.weight") != NULL);
    free(b);

    /* a key twice: eos_token_id renamed to bos_token_id (same length) */
    b = good_copy();
    at = after_name(b, good_size, "tokenizer.ggml.eos_token_id") - strlen("eos_token_id");
    memcpy(b + at, "bos", 3);
    expect_load("duplicate-key", b, good_size, LMOE_ERR_BAD_FILE, "appears twice");
    CHECK(strstr(lmoe_last_error(), "tokenizer.ggml.bos_token_id") != NULL);
    free(b);
    /* a tensor twice: attn_v renamed to attn_k (same length and shape) */
    b = good_copy();
    at = after_name(b, good_size, "blk.0.attn_v.weight") - strlen("v.weight");
    b[at] = 'k';
    expect_load("duplicate-tensor", b, good_size, LMOE_ERR_BAD_FILE, "appears twice");
    CHECK(strstr(lmoe_last_error(), "blk.0.attn_k.weight") != NULL);
    free(b);

    /* tensor dimension counts 0 and 5 */
    b = good_copy();
    poke32(b, tensor_dims_at(b, good_size, "blk.0.ffn_up.weight"), 0);
    expect_load("tensor-dims-0", b, good_size, LMOE_ERR_BAD_FILE, "dimensions");
    poke32(b, tensor_dims_at(b, good_size, "blk.0.ffn_up.weight"), 5);
    expect_load("tensor-dims-5", b, good_size, LMOE_ERR_BAD_FILE, "dimensions");
    free(b);
    /* a zero dimension */
    b = good_copy();
    poke64(b, tensor_ne_at(b, good_size, "blk.0.ffn_up.weight", 1), 0);
    expect_load("tensor-dim-zero", b, good_size, LMOE_ERR_BAD_FILE, "dimension 1 is 0");
    free(b);

    /* huge dimensions: the element count overflows (2^40 x 2^40), the byte count overflows
     * (2^31 x 2^31 f32 = 2^64 bytes), and a size that fits 64 bits but not the file */
    b = good_copy();
    poke64(b, tensor_ne_at(b, good_size, "blk.0.attn_q.weight", 0), 1ull << 40);
    poke64(b, tensor_ne_at(b, good_size, "blk.0.attn_q.weight", 1), 1ull << 40);
    expect_load("tensor-elements-overflow", b, good_size, LMOE_ERR_BAD_FILE, "overflows");
    CHECK(strstr(lmoe_last_error(), "blk.0.attn_q.weight") != NULL);
    poke64(b, tensor_ne_at(b, good_size, "blk.0.attn_q.weight", 0), 1ull << 31);
    poke64(b, tensor_ne_at(b, good_size, "blk.0.attn_q.weight", 1), 1ull << 31);
    expect_load("tensor-bytes-overflow", b, good_size, LMOE_ERR_BAD_FILE, "overflows");
    poke64(b, tensor_ne_at(b, good_size, "blk.0.attn_q.weight", 0), 1ull << 20);
    poke64(b, tensor_ne_at(b, good_size, "blk.0.attn_q.weight", 1), 1ull << 20);
    expect_load("tensor-bigger-than-file", b, good_size, LMOE_ERR_BAD_FILE,
                "extends past the end");
    free(b);

    /* general.alignment that is not a power of two, or too large: the key llama.block_count is
     * renamed to general.alignment (both 17 bytes) and given the value */
    b = good_copy();
    memcpy(b + after_name(b, good_size, "llama.block_count") - 17, "general.alignment", 17);
    poke32(b, key_value_at(b, good_size, "general.alignment"), 3);
    expect_load("alignment-not-power-of-two", b, good_size, LMOE_ERR_BAD_FILE,
                "general.alignment");
    poke32(b, key_value_at(b, good_size, "general.alignment"), 1u << 30);
    expect_load("alignment-huge", b, good_size, LMOE_ERR_BAD_FILE, "power of two");
    free(b);
}

static void test_bad_hparams(void) {
    tiny_opts o = {0};
    o.q_rows = 9;
    expect_model("shape-attn-q-8x9", &o, LMOE_ERR_BAD_FILE, "blk.0.attn_q.weight");
    CHECK(strstr(lmoe_last_error(), "shape") != NULL);

    o = (tiny_opts){0};
    o.omit_tensor = "blk.0.ffn_down.weight";
    expect_model("missing-tensor", &o, LMOE_ERR_BAD_FILE, "blk.0.ffn_down.weight");
    CHECK(strstr(lmoe_last_error(), "missing") != NULL);
    o.omit_tensor = "token_embd.weight";
    expect_model("missing-token-embd", &o, LMOE_ERR_BAD_FILE, "token_embd.weight");

    o = (tiny_opts){0};
    o.arch = "gpt2";
    expect_model("arch-gpt2", &o, LMOE_ERR_UNSUPPORTED, "gpt2");

    o = (tiny_opts){0};
    o.n_head = 3;
    expect_model("head-count-3", &o, LMOE_ERR_BAD_FILE, "head_count");
    o.n_head = 8; /* head dim 1: odd, RoPE needs pairs */
    expect_model("head-dim-odd", &o, LMOE_ERR_BAD_FILE, "odd");
    o.n_head = 2;
    o.n_head_kv = 3;
    expect_model("head-count-kv-3", &o, LMOE_ERR_BAD_FILE, "head_count_kv");

    o = (tiny_opts){0};
    o.rms_eps = NAN;
    expect_model("rms-eps-nan", &o, LMOE_ERR_BAD_FILE, "layer_norm_rms_epsilon");
    o.rms_eps = -1.0f;
    expect_model("rms-eps-negative", &o, LMOE_ERR_BAD_FILE, "layer_norm_rms_epsilon");
    o.rms_eps = INFINITY;
    expect_model("rms-eps-inf", &o, LMOE_ERR_BAD_FILE, "layer_norm_rms_epsilon");

    /* values patched into the valid file */
    uint8_t *b = good_copy();
    poke32(b, key_value_at(b, good_size, "llama.context_length"), 0);
    expect_load("context-length-0", b, good_size, LMOE_ERR_BAD_FILE, "llama.context_length");
    free(b);
    b = good_copy();
    poke32(b, key_value_at(b, good_size, "llama.attention.head_count_kv"), 0);
    expect_load("head-count-kv-0", b, good_size, LMOE_ERR_BAD_FILE,
                "llama.attention.head_count_kv");
    free(b);
    b = good_copy();
    poke32(b, key_value_at(b, good_size, "llama.block_count"), 2);
    expect_load("block-count-2", b, good_size, LMOE_ERR_BAD_FILE, "blk.1.attn_norm.weight");
    free(b);
    b = good_copy();
    poke32(b, key_value_at(b, good_size, "llama.embedding_length"), 1u << 30);
    expect_load("embedding-length-huge", b, good_size, LMOE_ERR_BAD_FILE,
                "llama.embedding_length");
    free(b);

    /* tokenizer problems */
    b = good_copy();
    poke32(b, key_value_at(b, good_size, "tokenizer.ggml.bos_token_id"), 100000);
    expect_load("bos-id-outside-vocab", b, good_size, LMOE_ERR_BAD_FILE,
                "tokenizer.ggml.bos_token_id");
    free(b);
    b = good_copy();
    size_t at = key_value_at(b, good_size, "tokenizer.ggml.token_type") + 12;
    poke32(b, at + 4 * 5, 7);
    expect_load("token-type-7", b, good_size, LMOE_ERR_BAD_FILE, "token_type");
    free(b);
    b = good_copy();
    memcpy(b + key_value_at(b, good_size, "tokenizer.ggml.model") + 8, "gpt2!", 5);
    expect_load("tokenizer-model-unknown", b, good_size, LMOE_ERR_UNSUPPORTED, "gpt2!");
    free(b);
    b = good_copy();
    /* rename the key so that the tokenizer is missing */
    memcpy(b + after_name(b, good_size, "tokenizer.ggml.model") - 5, "MODEL", 5);
    expect_load("tokenizer-missing", b, good_size, LMOE_ERR_BAD_FILE, "tokenizer.ggml.model");
    free(b);
    b = good_copy();
    /* two normal tokens with the same text: "b" (id 261) becomes "a" */
    {
        size_t tokens = key_value_at(b, good_size, "tokenizer.ggml.tokens") + 12;
        size_t p = tokens;
        for (int i = 0; i < 261; i++) p += 8 + peek64(b, p);
        CHECK(peek64(b, p) == 1 && b[p + 8] == 'b');
        b[p + 8] = 'a';
        expect_load("token-duplicate", b, good_size, LMOE_ERR_BAD_FILE, "duplicates");
    }
    free(b);
}

/* A file with a vocabulary and no tensors, and a full model loaded with vocab_only. */
static void test_vocab_only(void) {
    tiny_opts o = {0};
    o.no_tensors = true;
    uint8_t *buf = NULL;
    size_t size = 0;
    CHECK_OK(tiny_model_build(&o, &buf, &size));
    const char *path = write_case("vocab-only", buf, size);
    mem_free(buf);
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    if (!m) return;
    lmoe_model_info info;
    CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
    CHECK(info.has_weights == 0 && info.n_vocab == TINY_N_VOCAB);
    lmoe_token toks[16];
    size_t n = 0;
    CHECK_OK(lmoe_tokenize(m, "a b", 3, 1, toks, 16, &n));
    CHECK(n == 3 && toks[0] == 1 && toks[1] == 259 + 4 && toks[2] == 259 + 5);
    lmoe_context *ctx = SENTINEL;
    CHECK_STATUS(lmoe_context_create(m, NULL, &ctx), LMOE_ERR_MISUSE, "vocabulary");
    CHECK(ctx == NULL);
    lmoe_model_free(m);

    lmoe_model_params mp;
    CHECK_OK(lmoe_model_default_params(&mp, sizeof mp));
    mp.vocab_only = 1;
    path = write_case("valid", good, good_size);
    m = NULL;
    CHECK_OK(lmoe_model_load(path, &mp, &m));
    if (!m) return;
    CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
    CHECK(info.has_weights == 0);
    ctx = SENTINEL;
    CHECK_STATUS(lmoe_context_create(m, NULL, &ctx), LMOE_ERR_MISUSE, "vocabulary");
    CHECK(ctx == NULL);
    lmoe_model_free(m);
}

static int count_tokens(void *user, lmoe_token token) {
    (void)token;
    ++*(int *)user;
    return 0;
}

/* Contexts asked to hold more than they can, and token ids outside the vocabulary. */
static void test_context_limits(void) {
    const char *path = write_case("valid", good, good_size);
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    if (!m) return;
    lmoe_context_params cp;
    CHECK_OK(lmoe_context_default_params(&cp, sizeof cp));
    cp.n_ctx = 4;
    cp.n_threads = 1;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    lmoe_sampler_params sp;
    CHECK_OK(lmoe_sampler_default_params(&sp, sizeof sp));
    lmoe_sampler *smp = NULL;
    CHECK_OK(lmoe_sampler_create(&sp, &smp));
    if (!ctx || !smp) {
        lmoe_sampler_free(smp);
        lmoe_context_free(ctx);
        lmoe_model_free(m);
        return;
    }
    CHECK(lmoe_context_n_ctx(ctx) == 4);
    CHECK(lmoe_context_model(ctx) == m);

    /* a prompt longer than the context: nothing is evaluated, no callback runs */
    static const char prompt[] = "a b c a b c a b c ab ab";
    lmoe_generate_params gp;
    CHECK_OK(lmoe_generate_default_params(&gp, sizeof gp));
    gp.max_tokens = 4;
    int n_cb = 0;
    gp.on_token = count_tokens;
    gp.user = &n_cb;
    lmoe_generate_result res;
    memset(&res, 0xAB, sizeof res);
    CHECK_STATUS(lmoe_generate(ctx, smp, prompt, sizeof prompt - 1, &gp, &res, sizeof res),
                 LMOE_ERR_CONTEXT_FULL, "prompt");
    CHECK(lmoe_context_n_tokens(ctx) == 0);
    CHECK(lmoe_logits(ctx) == NULL);
    CHECK(n_cb == 0);
    CHECK(res.stop_reason == LMOE_STOP_NONE && res.n_prompt_tokens == 0 && res.n_generated == 0);

    /* an empty prompt with BOS off on an empty context: nothing to generate from */
    gp.add_bos = 0;
    CHECK_STATUS(lmoe_generate(ctx, smp, "", 0, &gp, NULL, 0), LMOE_ERR_MISUSE, "empty");
    gp.add_bos = 1;

    /* eval past n_ctx: refused, and the context is unchanged */
    lmoe_token three[3] = {1, 259 + 4, 259 + 5};
    CHECK_OK(lmoe_eval(ctx, three, 3));
    CHECK(lmoe_context_n_tokens(ctx) == 3);
    const float *logits = lmoe_logits(ctx);
    CHECK(logits != NULL);
    float saved[TINY_N_VOCAB];
    if (logits) memcpy(saved, logits, sizeof saved);
    lmoe_token two[2] = {259 + 1, 259 + 2};
    CHECK_STATUS(lmoe_eval(ctx, two, 2), LMOE_ERR_CONTEXT_FULL, "do not fit");
    CHECK(lmoe_context_n_tokens(ctx) == 3);
    CHECK(lmoe_logits(ctx) == logits);
    if (logits) CHECK(memcmp(lmoe_logits(ctx), saved, sizeof saved) == 0);

    /* token ids outside the vocabulary: refused, context unchanged */
    lmoe_token bad_hi[1] = {TINY_N_VOCAB};
    CHECK_STATUS(lmoe_eval(ctx, bad_hi, 1), LMOE_ERR_INVALID_ARGUMENT, "outside the vocabulary");
    lmoe_token bad_neg[1] = {-1};
    CHECK_STATUS(lmoe_eval(ctx, bad_neg, 1), LMOE_ERR_INVALID_ARGUMENT, "outside the vocabulary");
    lmoe_token mixed[1] = {INT32_MAX};
    CHECK_STATUS(lmoe_eval(ctx, mixed, 1), LMOE_ERR_INVALID_ARGUMENT, "outside the vocabulary");
    CHECK(lmoe_context_n_tokens(ctx) == 3);
    CHECK(lmoe_logits(ctx) == logits);
    if (logits) CHECK(memcmp(lmoe_logits(ctx), saved, sizeof saved) == 0);

    /* the last slot fills; then nothing fits, and a prompt of one token is refused too */
    lmoe_token one[1] = {259 + 1};
    CHECK_OK(lmoe_eval(ctx, one, 1));
    CHECK(lmoe_context_n_tokens(ctx) == 4);
    CHECK_STATUS(lmoe_eval(ctx, one, 1), LMOE_ERR_CONTEXT_FULL, "do not fit");
    CHECK(lmoe_context_n_tokens(ctx) == 4);
    n_cb = 0;
    CHECK_STATUS(lmoe_generate(ctx, smp, "a", 1, &gp, NULL, 0), LMOE_ERR_CONTEXT_FULL, "prompt");
    CHECK(lmoe_context_n_tokens(ctx) == 4 && n_cb == 0);
    CHECK_OK(lmoe_eval(ctx, one, 0)); /* zero tokens always fit */

    /* a sampler asked about a vocabulary of the wrong size */
    lmoe_token t = 0;
    CHECK_STATUS(lmoe_sampler_sample(smp, saved, 0, &t), LMOE_ERR_INVALID_ARGUMENT, "n_vocab");

    /* a context larger than the limit */
    lmoe_context *big = SENTINEL;
    cp.n_ctx = UINT32_MAX;
    CHECK_STATUS(lmoe_context_create(m, &cp, &big), LMOE_ERR_INVALID_ARGUMENT, "n_ctx");
    CHECK(big == NULL);
    cp.n_ctx = 4;
    cp.n_threads = -1;
    big = SENTINEL;
    CHECK_STATUS(lmoe_context_create(m, &cp, &big), LMOE_ERR_INVALID_ARGUMENT, "n_threads");
    CHECK(big == NULL);

    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
    lmoe_model_free(m);
}

/* NULL arguments to every public function that takes pointers. */
static void test_null_arguments(void) {
    const char *path = write_case("valid", good, good_size);
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(path, NULL, &m));
    lmoe_context_params cp;
    CHECK_OK(lmoe_context_default_params(&cp, sizeof cp));
    cp.n_threads = 1;
    cp.n_ctx = 8;
    lmoe_context *ctx = NULL;
    if (m) CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    lmoe_sampler_params sp;
    CHECK_OK(lmoe_sampler_default_params(&sp, sizeof sp));
    lmoe_sampler *smp = NULL;
    CHECK_OK(lmoe_sampler_create(&sp, &smp));
    if (!m || !ctx || !smp) {
        lmoe_sampler_free(smp);
        lmoe_context_free(ctx);
        lmoe_model_free(m);
        return;
    }
    const lmoe_status INVAL = LMOE_ERR_INVALID_ARGUMENT;

    /* params defaults */
    CHECK_STATUS(lmoe_model_default_params(NULL, sizeof(lmoe_model_params)), INVAL, "NULL");
    CHECK_STATUS(lmoe_context_default_params(NULL, sizeof(lmoe_context_params)), INVAL, "NULL");
    CHECK_STATUS(lmoe_sampler_default_params(NULL, sizeof(lmoe_sampler_params)), INVAL, "NULL");
    CHECK_STATUS(lmoe_generate_default_params(NULL, sizeof(lmoe_generate_params)), INVAL, "NULL");
    lmoe_model_params mp;
    CHECK_STATUS(lmoe_model_default_params(&mp, 0), INVAL, "smaller");
    CHECK_STATUS(lmoe_model_default_params(&mp, sizeof(size_t)), INVAL, "smaller");

    /* model */
    lmoe_model *mo = SENTINEL;
    CHECK_STATUS(lmoe_model_load(NULL, NULL, &mo), INVAL, "path is NULL");
    CHECK(mo == NULL);
    CHECK_STATUS(lmoe_model_load(path, NULL, NULL), INVAL, "out is NULL");
    lmoe_model_info info;
    CHECK_STATUS(lmoe_model_get_info(NULL, &info, sizeof info), INVAL, "NULL");
    CHECK_STATUS(lmoe_model_get_info(m, NULL, sizeof info), INVAL, "NULL");
    CHECK_STATUS(lmoe_model_get_info(m, &info, 8), INVAL, "info_size");
    char buf[64];
    size_t len = 0;
    CHECK_STATUS(lmoe_model_meta_string(NULL, "general.name", buf, sizeof buf, &len), INVAL,
                 "NULL");
    CHECK_STATUS(lmoe_model_meta_string(m, NULL, buf, sizeof buf, &len), INVAL, "NULL");
    CHECK_STATUS(lmoe_model_meta_string(m, "general.name", NULL, 5, &len), INVAL, "NULL");
    CHECK_STATUS(lmoe_model_meta_string(m, "no.such.key", buf, sizeof buf, &len), INVAL,
                 "no.such.key");
    CHECK_OK(lmoe_model_meta_string(m, "general.name", buf, sizeof buf, NULL));
    CHECK(strcmp(buf, "tiny") == 0);
    CHECK_STATUS(lmoe_model_meta_string(m, "general.name", buf, 4, &len),
                 LMOE_ERR_BUFFER_TOO_SMALL, "general.name");
    CHECK(len == 4);
    CHECK(lmoe_token_bos(NULL) == -1 && lmoe_token_eos(NULL) == -1);
    CHECK(lmoe_token_bos(m) == 1 && lmoe_token_eos(m) == 2);

    /* tokenizer */
    lmoe_token toks[8];
    size_t n = 0;
    CHECK_STATUS(lmoe_tokenize(NULL, "a", 1, 1, toks, 8, &n), INVAL, "NULL");
    CHECK_STATUS(lmoe_tokenize(m, NULL, 1, 1, toks, 8, &n), INVAL, "text is NULL");
    CHECK_STATUS(lmoe_tokenize(m, "a", 1, 1, NULL, 8, &n), INVAL, "tokens is NULL");
    CHECK_STATUS(lmoe_tokenize(m, "a", 1, 1, toks, 8, NULL), INVAL, "NULL");
    CHECK_OK(lmoe_tokenize(m, NULL, 0, 1, toks, 8, &n)); /* NULL text of length 0 is "" */
    CHECK(n == 1 && toks[0] == 1);
    CHECK_STATUS(lmoe_tokenize(m, "a b", 3, 1, NULL, 0, &n), LMOE_ERR_BUFFER_TOO_SMALL, "");
    CHECK(n == 3);
    CHECK_STATUS(lmoe_detokenize(NULL, toks, 1, buf, sizeof buf, &len), INVAL, "NULL");
    CHECK_STATUS(lmoe_detokenize(m, NULL, 1, buf, sizeof buf, &len), INVAL, "tokens is NULL");
    CHECK_STATUS(lmoe_detokenize(m, toks, 1, NULL, 10, &len), INVAL, "buf is NULL");
    CHECK_STATUS(lmoe_detokenize(m, toks, 1, buf, sizeof buf, NULL), INVAL, "NULL");
    CHECK_OK(lmoe_detokenize(m, NULL, 0, NULL, 0, &len));
    CHECK(len == 0);
    CHECK_STATUS(lmoe_token_to_piece(NULL, 5, 0, buf, sizeof buf, &len), INVAL, "NULL");
    CHECK_STATUS(lmoe_token_to_piece(m, 5, 0, NULL, 10, &len), INVAL, "buf is NULL");
    CHECK_STATUS(lmoe_token_to_piece(m, 5, 0, buf, sizeof buf, NULL), INVAL, "NULL");

    /* context */
    lmoe_context *c = SENTINEL;
    CHECK_STATUS(lmoe_context_create(NULL, NULL, &c), INVAL, "model is NULL");
    CHECK(c == NULL);
    CHECK_STATUS(lmoe_context_create(m, NULL, NULL), INVAL, "out is NULL");
    lmoe_token one[1] = {1};
    CHECK_STATUS(lmoe_eval(NULL, one, 1), INVAL, "ctx is NULL");
    CHECK_STATUS(lmoe_eval(ctx, NULL, 1), INVAL, "tokens is NULL");
    CHECK(lmoe_context_n_tokens(ctx) == 0);
    CHECK(lmoe_context_n_tokens(NULL) == 0 && lmoe_context_n_ctx(NULL) == 0);
    CHECK(lmoe_context_model(NULL) == NULL && lmoe_logits(NULL) == NULL);
    lmoe_context_reset(NULL);

    /* sampler */
    lmoe_sampler *s = NULL;
    CHECK_OK(lmoe_sampler_create(NULL, &s)); /* the header: NULL params are the defaults */
    CHECK(s != NULL);
    lmoe_sampler_free(s);
    CHECK_STATUS(lmoe_sampler_create(&sp, NULL), INVAL, "out is NULL");
    float logits[4] = {0, 1, 2, 3};
    lmoe_token t = 0;
    CHECK_STATUS(lmoe_sampler_sample(NULL, logits, 4, &t), INVAL, "sampler is NULL");
    CHECK_STATUS(lmoe_sampler_sample(smp, NULL, 4, &t), INVAL, "logits is NULL");
    CHECK_STATUS(lmoe_sampler_sample(smp, logits, 4, NULL), INVAL, "token is NULL");
    lmoe_sampler_reset(NULL);
    lmoe_sampler_accept(NULL, 3);
    lmoe_sampler_params bad_sp = sp;
    bad_sp.top_p = NAN;
    s = SENTINEL;
    CHECK_STATUS(lmoe_sampler_create(&bad_sp, &s), INVAL, "top_p");
    CHECK(s == NULL);

    /* generation */
    lmoe_generate_params gp;
    CHECK_OK(lmoe_generate_default_params(&gp, sizeof gp));
    gp.max_tokens = 1;
    lmoe_generate_result res;
    CHECK_STATUS(lmoe_generate(NULL, smp, "a", 1, &gp, &res, sizeof res), INVAL, "NULL");
    CHECK_STATUS(lmoe_generate(ctx, NULL, "a", 1, &gp, &res, sizeof res), INVAL, "NULL");
    CHECK_STATUS(lmoe_generate(ctx, smp, NULL, 1, &gp, &res, sizeof res), INVAL,
                 "prompt is NULL");
    CHECK_STATUS(lmoe_generate(ctx, smp, "a", 1, &gp, &res, 4), INVAL, "result_size");
    gp.n_stop_strings = 1;
    CHECK_STATUS(lmoe_generate(ctx, smp, "a", 1, &gp, NULL, 0), INVAL, "stop_strings is NULL");
    const char *const stops[1] = {NULL};
    gp.stop_strings = stops;
    CHECK_STATUS(lmoe_generate(ctx, smp, "a", 1, &gp, NULL, 0), INVAL, "stop string 0");
    gp.n_stop_strings = 0;
    gp.stop_strings = NULL;
    gp.max_tokens = -1;
    CHECK_STATUS(lmoe_generate(ctx, smp, "a", 1, &gp, NULL, 0), INVAL, "max_tokens");
    CHECK(lmoe_context_n_tokens(ctx) == 0);

    /* free functions take NULL */
    lmoe_model_free(NULL);
    lmoe_context_free(NULL);
    lmoe_sampler_free(NULL);

    /* strings never NULL */
    CHECK(lmoe_last_error() != NULL);
    CHECK(lmoe_status_string((lmoe_status)12345) != NULL);
    CHECK(strcmp(lmoe_status_string(LMOE_ERR_BAD_FILE), "malformed file") == 0);

    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
    lmoe_model_free(m);
}

/* Params structs: struct_size 0 is refused; a larger struct from a newer header is accepted when
 * its unknown tail is zero and refused when it sets something. */
static void test_params_sizes(void) {
    const char *path = write_case("valid", good, good_size);
    lmoe_model *m = NULL;

    struct { lmoe_model_params p; uint64_t extra[2]; } big_mp;
    memset(&big_mp, 0, sizeof big_mp);
    CHECK_OK(lmoe_model_default_params(&big_mp.p, sizeof big_mp));
    CHECK(big_mp.p.struct_size == sizeof big_mp);

    lmoe_model_params mp;
    CHECK_OK(lmoe_model_default_params(&mp, sizeof mp));
    mp.struct_size = 0;
    m = SENTINEL;
    CHECK_STATUS(lmoe_model_load(path, &mp, &m), LMOE_ERR_INVALID_ARGUMENT, "struct_size");
    CHECK(m == NULL);
    mp.struct_size = sizeof mp;

    m = NULL;
    CHECK_OK(lmoe_model_load(path, &big_mp.p, &m)); /* zero tail: fine */
    lmoe_model_free(m);
    big_mp.extra[1] = 1;
    m = SENTINEL;
    CHECK_STATUS(lmoe_model_load(path, &big_mp.p, &m), LMOE_ERR_UNSUPPORTED, "newer header");
    CHECK(m == NULL);

    m = NULL;
    CHECK_OK(lmoe_model_load(path, &mp, &m));
    if (!m) return;

    lmoe_context_params cp;
    CHECK_OK(lmoe_context_default_params(&cp, sizeof cp));
    cp.n_threads = 1;
    cp.struct_size = 0;
    lmoe_context *ctx = SENTINEL;
    CHECK_STATUS(lmoe_context_create(m, &cp, &ctx), LMOE_ERR_INVALID_ARGUMENT, "struct_size");
    CHECK(ctx == NULL);
    struct { lmoe_context_params p; uint64_t extra[2]; } big_cp;
    memset(&big_cp, 0, sizeof big_cp);
    CHECK_OK(lmoe_context_default_params(&big_cp.p, sizeof big_cp));
    big_cp.p.n_threads = 1;
    big_cp.p.n_ctx = 8;
    big_cp.extra[0] = 0xFF;
    ctx = SENTINEL;
    CHECK_STATUS(lmoe_context_create(m, &big_cp.p, &ctx), LMOE_ERR_UNSUPPORTED, "newer header");
    CHECK(ctx == NULL);
    big_cp.extra[0] = 0;
    ctx = NULL;
    CHECK_OK(lmoe_context_create(m, &big_cp.p, &ctx));

    lmoe_sampler_params sp;
    CHECK_OK(lmoe_sampler_default_params(&sp, sizeof sp));
    sp.struct_size = 0;
    lmoe_sampler *smp = SENTINEL;
    CHECK_STATUS(lmoe_sampler_create(&sp, &smp), LMOE_ERR_INVALID_ARGUMENT, "struct_size");
    CHECK(smp == NULL);
    struct { lmoe_sampler_params p; uint64_t extra[2]; } big_sp;
    memset(&big_sp, 0, sizeof big_sp);
    CHECK_OK(lmoe_sampler_default_params(&big_sp.p, sizeof big_sp));
    big_sp.extra[1] = 7;
    smp = SENTINEL;
    CHECK_STATUS(lmoe_sampler_create(&big_sp.p, &smp), LMOE_ERR_UNSUPPORTED, "newer header");
    CHECK(smp == NULL);
    big_sp.extra[1] = 0;
    smp = NULL;
    CHECK_OK(lmoe_sampler_create(&big_sp.p, &smp));

    if (ctx && smp) {
        lmoe_generate_params gp;
        CHECK_OK(lmoe_generate_default_params(&gp, sizeof gp));
        gp.max_tokens = 1;
        gp.struct_size = 0;
        CHECK_STATUS(lmoe_generate(ctx, smp, "a", 1, &gp, NULL, 0), LMOE_ERR_INVALID_ARGUMENT,
                     "struct_size");
        struct { lmoe_generate_params p; uint64_t extra[2]; } big_gp;
        memset(&big_gp, 0, sizeof big_gp);
        CHECK_OK(lmoe_generate_default_params(&big_gp.p, sizeof big_gp));
        big_gp.p.max_tokens = 1;
        big_gp.extra[0] = 1;
        CHECK_STATUS(lmoe_generate(ctx, smp, "a", 1, &big_gp.p, NULL, 0), LMOE_ERR_UNSUPPORTED,
                     "newer header");
        CHECK(lmoe_context_n_tokens(ctx) == 0);
        big_gp.extra[0] = 0;
        CHECK_OK(lmoe_generate(ctx, smp, "a", 1, &big_gp.p, NULL, 0));
        CHECK(lmoe_context_n_tokens(ctx) >= 2);
    }
    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
    lmoe_model_free(m);
}

int main(void) {
    CHECK_OK(tiny_model_build(&(tiny_opts){0}, &good, &good_size));
    if (!good) return test_finish("test_bad_input");
    test_good_model_loads();
    test_not_gguf();
    test_truncations();
    test_patched_layout();
    test_bad_hparams();
    test_vocab_only();
    test_context_limits();
    test_null_arguments();
    test_params_sizes();
    mem_free(good);
    return test_finish("test_bad_input");
}
