/* seedgen_regress.c - `seedgen regress MODEL.gguf DIR`: the hand-made hostile inputs of
 * tests/fuzz-regress/, one folder per fuzz target, each file named for what it is (a huge count,
 * an offset past the end, a forbidden global, ...). They were written once with this command and
 * are kept in the repository; the regression test replays them through every target. Each must
 * be refused cleanly by its reader; none may be larger than 4 KiB. MODEL is the converted
 * stories260K (fuzz_state's model: a state is only read by the model that wrote it). */
#define _POSIX_C_SOURCE 200809L /* mkdir */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "seedgen.h"

#define MAX_REGRESS_BYTES 4096

static const char *g_dir;
static int g_rc;

/* Writes b as DIR/target/name and frees it. */
static void emit(const char *target, const char *name, tw_bytes *b) {
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/%s", g_dir, target);
    if (mkdir(sub, 0755) != 0 && errno != EEXIST) {
        perror(sub);
        g_rc = 1;
    }
    if (b->len > MAX_REGRESS_BYTES) {
        fprintf(stderr, "seedgen: %s/%s is %zu bytes, over %d\n", target, name, b->len,
                MAX_REGRESS_BYTES);
        g_rc = 1;
    }
    g_rc |= write_in(sub, name, b);
}

/* A literal (sizeof, so embedded NULs count). */
#define EMIT_RAW(target, name, literal)                                                            \
    do {                                                                                           \
        tw_bytes b_ = {0};                                                                         \
        tw_put(&b_, literal, sizeof literal - 1);                                                  \
        emit(target, name, &b_);                                                                   \
    } while (0)

/* ---------------------------------------------------------------------------------------------
 * GGUF (fuzz_gguf_model): header, key/values, tensor infos
 * ------------------------------------------------------------------------------------------- */

static tw_bytes gguf_header_bytes(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    tw_bytes b = {0};
    tw_put_str(&b, "GGUF");
    tw_put_le(&b, version, 4);
    tw_put_le(&b, n_tensors, 8);
    tw_put_le(&b, n_kv, 8);
    return b;
}

static void put_gguf_string(tw_bytes *b, const char *s) {
    tw_put_le(b, strlen(s), 8);
    tw_put_str(b, s);
}

/* A tensor info: name, n_dims, dims, type, offset. */
static void put_tensor_info(tw_bytes *b, const char *name, uint32_t n_dims, const uint64_t *dims,
                        uint32_t type, uint64_t offset) {
    put_gguf_string(b, name);
    tw_put_le(b, n_dims, 4);
    for (uint32_t d = 0; d < n_dims; d++) tw_put_le(b, dims[d], 8);
    tw_put_le(b, type, 4);
    tw_put_le(b, offset, 8);
}

static void regress_gguf(void) {
    const char *T = "fuzz_gguf_model";
    EMIT_RAW(T, "truncated-header", "GGUF\x03\x00\x00\x00\x01");
    tw_bytes b = gguf_header_bytes(1, 0, 0);
    emit(T, "version-1", &b);
    b = gguf_header_bytes(3, 1ull << 63, 0);
    emit(T, "n-tensors-2pow63", &b);
    b = gguf_header_bytes(3, 0, UINT64_MAX);
    emit(T, "n-kv-2pow64-1", &b);
    b = gguf_header_bytes(3, 0, 1);
    tw_put_le(&b, UINT64_MAX, 8); /* key length */
    tw_put_str(&b, "general.name");
    emit(T, "key-length-2pow64-1", &b);
    b = gguf_header_bytes(3, 0, 1);
    put_gguf_string(&b, "general.name");
    tw_put_le(&b, GGUF_TYPE_STRING, 4);
    tw_put_le(&b, 1ull << 40, 8);
    tw_put_str(&b, "tiny");
    emit(T, "string-value-past-end", &b);
    b = gguf_header_bytes(3, 0, 1);
    put_gguf_string(&b, "tokenizer.ggml.tokens");
    tw_put_le(&b, GGUF_TYPE_ARRAY, 4);
    tw_put_le(&b, GGUF_TYPE_STRING, 4);
    tw_put_le(&b, 1ull << 62, 8);
    put_gguf_string(&b, "<unk>");
    emit(T, "string-array-count-2pow62", &b);
    b = gguf_header_bytes(3, 0, 1);
    put_gguf_string(&b, "nested");
    tw_put_le(&b, GGUF_TYPE_ARRAY, 4);
    tw_put_le(&b, GGUF_TYPE_ARRAY, 4);
    tw_put_le(&b, 2, 8);
    emit(T, "array-of-arrays", &b);
    b = gguf_header_bytes(3, 0, 1);
    put_gguf_string(&b, "general.name");
    tw_put_le(&b, 0xFFFFFFFFu, 4);
    emit(T, "value-type-2pow32-1", &b);
    b = gguf_header_bytes(3, 1, 1);
    put_gguf_string(&b, "general.alignment");
    tw_put_le(&b, GGUF_TYPE_UINT32, 4);
    tw_put_le(&b, 0, 4);
    const uint64_t dims16[1] = {16};
    put_tensor_info(&b, "a", 1, dims16, GGML_TYPE_F32, 0);
    emit(T, "alignment-0", &b);
    b = gguf_header_bytes(3, 1, 0);
    put_tensor_info(&b, "token_embd.weight", 1, dims16, GGML_TYPE_F32, 1ull << 60);
    for (int i = 0; i < 128; i++) tw_put_u8(&b, 0); /* a data section, so the offset is read */
    emit(T, "tensor-offset-2pow60", &b);
    b = gguf_header_bytes(3, 1, 0);
    put_gguf_string(&b, "a");
    tw_put_le(&b, 0xFFFFFFFFu, 4);
    for (int i = 0; i < 64; i++) tw_put_u8(&b, 0); /* room for the dims a small count would have */
    emit(T, "tensor-n-dims-2pow32-1", &b);
    b = gguf_header_bytes(3, 1, 0);
    const uint64_t huge[4] = {1ull << 32, 1ull << 32, 1ull << 32, 1ull << 32};
    put_tensor_info(&b, "a", 4, huge, GGML_TYPE_F32, 0);
    emit(T, "tensor-dims-product-overflows", &b);
    b = gguf_header_bytes(3, 1, 0);
    put_tensor_info(&b, "a", 1, dims16, 0xFFFF, 0);
    emit(T, "tensor-type-65535", &b);
}

/* ---------------------------------------------------------------------------------------------
 * saved states (fuzz_state): variants of a real empty state. fuzz_state fixes the checksum of
 * each input on its second pass, so the header checks behind it are reached.
 * ------------------------------------------------------------------------------------------- */

static void state_variant(const uint8_t *state, size_t size, size_t at, uint32_t value,
                          const char *name) {
    tw_bytes b = {0};
    tw_put(&b, state, size);
    memcpy(b.data + at, &value, 4);
    emit("fuzz_state", name, &b);
}

static void regress_state(const char *model_path) {
    lmoe_model *model;
    lmoe_context *ctx;
    if (open_model(model_path, &model, &ctx)) {
        g_rc = 1;
        return;
    }
    size_t size = lmoe_context_state_size(ctx);
    uint8_t *state = malloc(size);
    if (!state || lmoe_context_state_save(ctx, state, size, NULL) != LMOE_OK) {
        fprintf(stderr, "seedgen: cannot save a state: %s\n", lmoe_last_error());
        g_rc = 1;
    } else {
        /* offsets from src/state.c's layout comment */
        state_variant(state, size, 12, 0xFFFFFFFFu, "n-tokens-2pow32-1");
        state_variant(state, size, 12, 17, "n-tokens-over-n-ctx");
        state_variant(state, size, 12, 1, "n-tokens-1-without-payload");
        state_variant(state, size, 8, 2, "version-2");
        state_variant(state, size, 16, 0xFFFFFFFFu, "n-layer-2pow32-1");
        state_variant(state, size, 36, 2, "flags-2");
        tw_bytes b = {0};
        tw_put(&b, state, size - 1);
        emit("fuzz_state", "truncated-by-one", &b);
        tw_put(&b, state, 48);
        emit("fuzz_state", "header-only", &b);
    }
    free(state);
    lmoe_context_free(ctx);
    lmoe_model_free(model);
}

/* ---------------------------------------------------------------------------------------------
 * text (fuzz_tokenizer)
 * ------------------------------------------------------------------------------------------- */

static void regress_text(void) {
    const char *T = "fuzz_tokenizer";
    EMIT_RAW(T, "invalid-utf8", "\xff\xfe \xc0\x80 \xed\xa0\x80 \x80\x80 \xf8\x88\x80\x80\x80");
    EMIT_RAW(T, "truncated-utf8-at-end", "ok \xf0\x9f\x98");
    EMIT_RAW(T, "space-marker-alone", "\xe2\x96\x81");
    EMIT_RAW(T, "nul-bytes", "\0a\0\0b\0");
    EMIT_RAW(T, "piece-names-as-text", "<s></s><unk><0x41>\xe2\x96\x81<0xFF>");
    tw_bytes b = {0};
    for (int i = 0; i < 2000; i++) tw_put_u8(&b, i % 50 == 49 ? '\n' : ' ');
    emit(T, "2000-spaces", &b);
}

/* ---------------------------------------------------------------------------------------------
 * safetensors (fuzz_safetensors)
 * ------------------------------------------------------------------------------------------- */

static void st_json(const char *name, const char *json, size_t data_len) {
    static const uint8_t zeros[64];
    tw_bytes b = tw_make_safetensors(json, zeros, data_len);
    emit("fuzz_safetensors", name, &b);
}

static void regress_safetensors(void) {
    const char *T = "fuzz_safetensors";
    EMIT_RAW(T, "truncated-length", "\x10\x00\x00\x00\x00");
    EMIT_RAW(T, "header-length-2pow64-1", "\xff\xff\xff\xff\xff\xff\xff\xff{}");
    EMIT_RAW(T, "header-length-past-end", "\x00\x10\x00\x00\x00\x00\x00\x00{}      ");
    EMIT_RAW(T, "header-length-0", "\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04");
    st_json("offsets-past-end",
            "{\"w\":{\"dtype\":\"F32\",\"shape\":[262144],\"data_offsets\":[0,1048576]}}", 16);
    st_json("offsets-1e300", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}",
            16);
    st_json("offsets-over-2pow53",
            "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],"
            "\"data_offsets\":[9007199254740993,9007199254740997]}}", 16);
    st_json("shape-product-overflows",
            "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
            "\"data_offsets\":[0,0]}}", 16);
    st_json("tensors-overlap",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16);
    st_json("misaligned-f32", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}",
            16);
    st_json("names-equal-up-to-nul",
            "{\"a\\u0000x\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
            "\"a\\u0000y\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}}", 16);
    char deep[1024];
    size_t n = (size_t)snprintf(deep, sizeof deep, "{\"a\":");
    for (int i = 0; i < 300; i++) deep[n++] = '[';
    deep[n] = 0;
    st_json("nesting-300", deep, 0);
}

/* ---------------------------------------------------------------------------------------------
 * torch.save zips (fuzz_pytorch)
 * ------------------------------------------------------------------------------------------- */

static const tw_zip_opts TORCH113 = {.zip64_end = 1, .align = 1};

static void torch_spec(const char *name, tw_tensor t) {
    tw_bytes pkl = tw_make_pickle(&t, 1, 0, 0);
    tw_bytes zip = torch_zip("archive", &pkl, 0, &TORCH113);
    tw_bytes_free(&pkl);
    emit("fuzz_pytorch", name, &zip);
}

static void torch_pickle(const char *name, const void *pkl_bytes, size_t len) {
    tw_bytes pkl = {0};
    tw_put(&pkl, pkl_bytes, len);
    tw_bytes zip = torch_zip("archive", &pkl, 0, &TORCH113);
    tw_bytes_free(&pkl);
    emit("fuzz_pytorch", name, &zip);
}
#define TORCH_PICKLE(name, literal) torch_pickle(name, literal, sizeof literal - 1)

static void regress_pytorch(void) {
    const char *T = "fuzz_pytorch";
    const tw_tensor good = {"w", TW_FLOAT, "0", 6, 0, 2, {2, 3}, {3, 1}};
    tw_bytes pkl = tw_make_pickle(&good, 1, 0, 0);

    /* the container */
    tw_bytes zip = torch_zip("archive", &pkl, 0, &TORCH113);
    /* the end record (22 bytes) follows the ZIP64 locator (20), which follows the ZIP64 end
     * record (56) */
    size_t eocd = zip.len - 22, eocd64 = eocd - 20 - 56;
    memcpy(zip.data + eocd + 16, "\xff\xff\xff\x7f", 4);                 /* central dir offset */
    memcpy(zip.data + eocd64 + 48, "\xff\xff\xff\x7f\0\0\0\0", 8);       /* and its ZIP64 twin */
    emit(T, "central-directory-outside-file", &zip);
    zip = torch_zip("archive", &pkl, 0, &TORCH113);
    memcpy(zip.data + eocd - 12, "\0\0\0\0\0\0\0\x80", 8); /* ZIP64 locator: record at 2^63 */
    emit(T, "zip64-locator-at-2pow63", &zip);
    EMIT_RAW(T, "end-record-claims-65535-entries",
             "PK\x05\x06\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\0\0\0\0\0\0");
    tw_zip_opts o = TORCH113;
    o.force_size_record = 1;
    o.force_offset = 1ull << 40;
    zip = torch_zip("archive", &pkl, 0, &o);
    emit(T, "local-header-offset-2pow40", &zip);
    o.force_offset = 0;
    o.force_size = 1u << 30;
    zip = torch_zip("archive", &pkl, 0, &o);
    emit(T, "record-size-past-end", &zip);
    zip = torch_zip("archive", &pkl, 0, &TORCH113);
    zip.len = 100;
    emit(T, "truncated-to-100-bytes", &zip);
    tw_bytes_free(&pkl);

    /* the pickle */
    TORCH_PICKLE("global-os-system",
                 "\x80\x02" "cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02R.");
    TORCH_PICKLE("global-builtins-eval-proto4",
                 "\x80\x04\x8c\x08" "builtins\x94\x8c\x04" "eval\x94\x93.");
    TORCH_PICKLE("memo-index-2pow32-1", "\x80\x02}r\xff\xff\xff\xff.");
    TORCH_PICKLE("binunicode-length-past-end", "\x80\x02X\xff\xff\xff\x7f.");
    TORCH_PICKLE("long1-9-bytes", "\x80\x02\x8a\x09" "123456789.");
    char marks[3000];
    marks[0] = (char)0x80, marks[1] = 2;
    memset(marks + 2, '(', sizeof marks - 3);
    marks[sizeof marks - 1] = '.';
    torch_pickle("3000-marks", marks, sizeof marks);
    EMIT_RAW(T, "legacy-pickle-not-zip", "\x80\x02}q\x00.");

    /* the tensors */
    tw_tensor t = good;
    t.numel = INT64_C(1) << 62;
    torch_spec("storage-numel-2pow62", t);
    t = good;
    t.size[0] = -2;
    torch_spec("size-negative", t);
    t = good;
    t.stride[0] = 1, t.stride[1] = 2;
    torch_spec("stride-not-contiguous", t);
    t = good;
    t.offset = INT64_MAX;
    torch_spec("storage-offset-2pow63-1", t);
    t = good;
    t.key = "9";
    torch_spec("storage-record-missing", t);
}

/* ---------------------------------------------------------------------------------------------
 * SentencePiece models (fuzz_spm)
 * ------------------------------------------------------------------------------------------- */

typedef struct spm_bad {
    int piece_type;              /* type of the last piece */
    float piece_score;
    const char *piece_text;
    int64_t model_type, unk_id, bos_id;
    int no_trainer_spec, charsmap;
} spm_bad;

/* <unk>, <s>, </s>, then one more piece as given; BPE with byte_fallback unless changed. */
static void spm_model(const char *name, spm_bad o) {
    tw_bytes m = {0};
    pb_piece(&m, "<unk>", 0, 2);
    pb_piece(&m, "<s>", 0, 3);
    pb_piece(&m, "</s>", 0, 3);
    pb_piece(&m, o.piece_text, o.piece_score, o.piece_type);
    if (!o.no_trainer_spec) {
        tw_bytes t = {0};
        pb_int(&t, 3, o.model_type);
        pb_int(&t, 35, 1);
        pb_int(&t, 40, o.unk_id);
        pb_int(&t, 41, o.bos_id);
        pb_len(&m, 2, t.data, t.len);
        tw_bytes_free(&t);
    }
    if (o.charsmap) {
        tw_bytes n = {0};
        pb_len(&n, 1, "nmt_nfkc", 8);
        pb_len(&n, 2, "\x01\x02\x03\x04", 4);
        pb_len(&m, 3, n.data, n.len);
        tw_bytes_free(&n);
    }
    emit("fuzz_spm", name, &m);
}

static void regress_spm(void) {
    const char *T = "fuzz_spm";
    /* the wire format */
    EMIT_RAW(T, "length-varint-2pow40-past-end", "\x0a\x80\x80\x80\x80\x80\x20" "abc");
    EMIT_RAW(T, "varint-11-bytes", "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01");
    EMIT_RAW(T, "field-number-0", "\x02\x01x");
    EMIT_RAW(T, "wire-type-7", "\x0f\x01");
    /* a piece message whose string runs past the message but not past the file (a BPE
     * TrainerSpec follows, so the first pass, which does not open pieces, accepts it) */
    EMIT_RAW(T, "string-past-its-message", "\x0a\x04\x0a\x05" "ab" "\x12\x02\x18\x02");
    /* the model */
    const spm_bad ok = {.piece_type = 1, .piece_text = "\xe2\x96\x81" "a", .model_type = 2,
                        .unk_id = 0, .bos_id = 1};
    spm_bad o = ok;
    o.piece_type = 7;
    spm_model("piece-type-7", o);
    o = ok;
    o.unk_id = 1000;
    spm_model("unk-id-1000-of-4", o);
    o = ok;
    o.bos_id = -5;
    spm_model("bos-id-minus-5", o);
    o = ok;
    o.model_type = 1;
    spm_model("unigram-model", o);
    o = ok;
    o.no_trainer_spec = 1;
    spm_model("no-trainer-spec", o);
    o = ok;
    o.charsmap = 1;
    spm_model("precompiled-charsmap", o);
    o = ok;
    o.piece_type = 6, o.piece_text = "<0xZZ>";
    spm_model("byte-piece-0xZZ", o);
    o = ok;
    o.piece_text = "<s>";
    spm_model("duplicate-piece", o);
    o = ok;
    o.piece_score = NAN;
    spm_model("score-nan", o);
    o = ok;
    o.piece_text = "";
    spm_model("empty-normal-piece", o);
}

/* ---------------------------------------------------------------------------------------------
 * JSON (fuzz_json)
 * ------------------------------------------------------------------------------------------- */

static void json_nesting(const char *name, int depth) {
    tw_bytes b = {0};
    for (int i = 0; i < depth; i++) tw_put_u8(&b, '[');
    for (int i = 0; i < depth; i++) tw_put_u8(&b, ']');
    emit("fuzz_json", name, &b);
}

static void regress_json(void) {
    const char *T = "fuzz_json";
    json_nesting("nesting-256-accepted", 256);
    json_nesting("nesting-257-refused", 257);
    EMIT_RAW(T, "lone-high-surrogate", "[\"\\ud800\"]");
    EMIT_RAW(T, "surrogates-reversed", "[\"\\udc00\\ud800\"]");
    EMIT_RAW(T, "truncated-escape", "[\"\\u12");
    EMIT_RAW(T, "number-1e99999", "[1e99999, -1e-99999, 0.0000000000000000000000001]");
    EMIT_RAW(T, "keys-equal-up-to-nul", "{\"a\\u0000x\": 1, \"a\\u0000y\": 2, \"a\": 3}");
    EMIT_RAW(T, "raw-control-in-string", "[\"a\tb\"]");
    EMIT_RAW(T, "trailing-garbage", "{} x");
    EMIT_RAW(T, "leading-zero", "[0123]");
    EMIT_RAW(T, "empty", "");
}

int seedgen_regress(const char *model_path, const char *dir) {
    g_dir = dir;
    g_rc = 0;
    regress_gguf();
    regress_state(model_path);
    regress_text();
    regress_safetensors();
    regress_pytorch();
    regress_spm();
    regress_json();
    return g_rc;
}
