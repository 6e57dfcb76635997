/* test_checkpoint.c - the Hugging Face checkpoint readers (tools/convert/checkpoint.h): hand-built
 * safetensors files and torch.save zips (bytes written by torch_writer.c, field by field, the way
 * torch and the safetensors library write them), the tiny LLaMA-MoE checkpoints in
 * ../shared/models, and bad inputs that must each fail with a given status and a message naming
 * the problem. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "error.h"
#include "json.h"
#include "test_util.h"
#include "torch_writer.h"

/* The status and message of the last call, for bad-input checks. */
#define CHECK_FAILS(expr, want_status, word)                                                       \
    do {                                                                                           \
        lmoe_status got_ = (expr);                                                                 \
        CHECK_MSG(got_ == (want_status), "%s -> %d, want %d (%s)", #expr, (int)got_,               \
                  (int)(want_status), lmoe_last_error());                                          \
        CHECK_MSG(strstr(lmoe_last_error(), (word)) != NULL, "%s: message '%s' lacks '%s'", #expr, \
                  lmoe_last_error(), (word));                                                      \
    } while (0)

static float bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint16_t u16_at(const void *data, size_t i) {
    uint16_t v;
    memcpy(&v, (const uint8_t *)data + 2 * i, 2);
    return v;
}

static float f32_at(const void *data, size_t i) {
    float v;
    memcpy(&v, (const uint8_t *)data + 4 * i, 4);
    return v;
}

static int shape_is(const ckpt_tensor *t, uint32_t n, uint64_t d0, uint64_t d1) {
    if (!t || t->n_dims != n) return 0;
    if (n >= 1 && t->shape[0] != d0) return 0;
    if (n >= 2 && t->shape[1] != d1) return 0;
    return 1;
}

static const ckpt_tensor *file_find(const ckpt_file *f, const char *name) {
    for (size_t i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * safetensors, built by hand
 * ------------------------------------------------------------------------------------------- */

/* 6 floats 0..5, then 4 bf16 (1, 2, -1, 0.5). */
static const uint8_t *st_data(size_t *len) {
    static uint8_t data[32];
    for (int i = 0; i < 6; i++) {
        float f = (float)i;
        memcpy(data + 4 * i, &f, 4);
    }
    const uint16_t bf[4] = {0x3F80, 0x4000, 0xBF80, 0x3F00};
    memcpy(data + 24, bf, 8);
    *len = sizeof data;
    return data;
}

static const char ST_GOOD[] =
    "{\"__metadata__\":{\"format\":\"pt\"},"
    "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
    "\"e\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[32,32]}}";

static void test_safetensors_good(void) {
    size_t data_len;
    const uint8_t *data = st_data(&data_len);
    tw_bytes b = tw_make_safetensors(ST_GOOD, data, data_len);
    ckpt_file f;
    CHECK_OK(safetensors_parse(b.data, b.len, &f));
    CHECK(f.n_tensors == 3);
    CHECK(f.owns_map == 0 && f.map.data == b.data && f.map.size == b.len);
    const ckpt_tensor *w = file_find(&f, "w"), *bt = file_find(&f, "b"), *e = file_find(&f, "e");
    CHECK(w && w->type == GGML_TYPE_F32 && shape_is(w, 2, 2, 3) && w->n_bytes == 24);
    CHECK(w && f32_at(w->data, 0) == 0.0f && f32_at(w->data, 5) == 5.0f);
    CHECK(bt && bt->type == GGML_TYPE_BF16 && shape_is(bt, 1, 4, 0) && bt->n_bytes == 8);
    CHECK(bt && bf16_to_f32(u16_at(bt->data, 2)) == -1.0f &&
          bf16_to_f32(u16_at(bt->data, 3)) == 0.5f);
    CHECK(e && e->type == GGML_TYPE_F16 && shape_is(e, 2, 0, 5) && e->n_bytes == 0);
    CHECK(f.tensors[0].name && strcmp(f.tensors[0].name, "w") == 0); /* header order kept */
    ckpt_file_close(&f);
    CHECK(f.tensors == NULL && f.n_tensors == 0);
    ckpt_file_close(&f); /* twice is harmless */

    /* only metadata: a file with no tensors is valid */
    tw_bytes empty = tw_make_safetensors("{\"__metadata__\":{}}", NULL, 0);
    CHECK_OK(safetensors_parse(empty.data, empty.len, &f));
    CHECK(f.n_tensors == 0);
    ckpt_file_close(&f);
    tw_bytes_free(&empty);

    /* every truncation fails cleanly */
    int all_bad = 1;
    for (size_t len = 0; len < b.len; len++) {
        lmoe_status st = safetensors_parse(b.data, len, &f);
        if (st != LMOE_ERR_BAD_FILE) {
            all_bad = 0;
            fprintf(stderr, "safetensors truncated to %zu: status %d\n", len, (int)st);
        }
        CHECK(f.tensors == NULL && f.n_tensors == 0);
    }
    CHECK(all_bad);
    tw_bytes_free(&b);
}

static lmoe_status st_try(const char *json, size_t data_len) {
    size_t len;
    const uint8_t *data = st_data(&len);
    tw_bytes b = tw_make_safetensors(json, data, data_len < len ? data_len : len);
    ckpt_file f;
    lmoe_status st = safetensors_parse(b.data, b.len, &f);
    if (st == LMOE_OK) ckpt_file_close(&f);
    CHECK(f.tensors == NULL && f.n_tensors == 0);
    tw_bytes_free(&b);
    return st;
}

static void test_safetensors_bad(void) {
    ckpt_file f;
    const lmoe_status BAD = LMOE_ERR_BAD_FILE, UNSUP = LMOE_ERR_UNSUPPORTED;
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[16,24]}}", 32),
                BAD, "overlap");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]}}", 28),
                BAD, "not inside the data section");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[32,8]}}", 32),
                BAD, "data_offsets");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 32),
                UNSUP, "'I64'");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 32),
                BAD, "span 20 bytes");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 32),
                BAD, "shape[0]");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 32),
                BAD, "shape[0]");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],"
                       "\"data_offsets\":[0,4]}}", 32),
                BAD, "overflows");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],"
                       "\"data_offsets\":[0,4]}}", 32),
                UNSUP, "dimensions");
    CHECK_FAILS(st_try("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 32), BAD, "dtype");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 32), BAD, "shape");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 32), BAD, "data_offsets");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 32), BAD,
                "data_offsets");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":\"0\"}}", 32), BAD,
                "data_offsets");
    CHECK_FAILS(st_try("{\"a\":[1]}", 32), BAD, "not an object");
    CHECK_FAILS(st_try("[1]", 32), BAD, "not a JSON object");
    CHECK_FAILS(st_try("{\"a\":", 32), BAD, "not valid JSON");
    CHECK_FAILS(st_try("{\"__metadata__\":[]}", 32), BAD, "__metadata__");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 32), BAD,
                "multiple");
    CHECK_FAILS(st_try("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 32),
                BAD, "twice");

    /* header length larger than the file, and over the sanity cap */
    size_t len;
    const uint8_t *data = st_data(&len);
    tw_bytes b = tw_make_safetensors(ST_GOOD, data, len);
    uint8_t saved[8];
    memcpy(saved, b.data, 8);
    b.data[0] = 0x00, b.data[1] = 0x10; /* 4096 > file */
    CHECK_FAILS(safetensors_parse(b.data, b.len, &f), BAD, "runs past the end");
    memset(b.data, 0xFF, 8);
    CHECK_FAILS(safetensors_parse(b.data, b.len, &f), BAD, "runs past the end");
    memcpy(b.data, saved, 8);
    CHECK_OK(safetensors_parse(b.data, b.len, &f));
    ckpt_file_close(&f);
    tw_bytes_free(&b);
    CHECK_FAILS(safetensors_parse("", 0, &f), BAD, "shorter than");
    CHECK_FAILS(safetensors_parse(NULL, 0, &f), BAD, "shorter than");

    CHECK_FAILS(safetensors_open(test_tmp_path("no-such-file.safetensors"), &f), LMOE_ERR_IO,
                "no-such-file");

    /* a header length inside the file but over the 100 MB cap: a sparse file, mapped */
    const char *path = test_tmp_path("ckpt_huge_header.safetensors");
    FILE *fp = fopen(path, "wb");
    CHECK(fp != NULL);
    if (fp) {
        uint8_t len_field[8] = {0x01, 0xE1, 0xF5, 0x05, 0, 0, 0, 0}; /* 100000001 */
        CHECK(fwrite(len_field, 1, 8, fp) == 8);
        CHECK(ftruncate(fileno(fp), 8 + 100000001 + 8) == 0);
        fclose(fp);
        CHECK_FAILS(safetensors_open(path, &f), BAD, "limit");
        CHECK(strstr(lmoe_last_error(), "ckpt_huge_header.safetensors: ") != NULL);
        unlink(path);
    }
}

/* ---------------------------------------------------------------------------------------------
 * torch.save zips, built by hand
 * ------------------------------------------------------------------------------------------- */

static tw_bytes make_state_dict_pickle(const tw_tensor *t, size_t n, int proto4) {
    return tw_make_pickle(t, n, proto4, 0);
}

/* Storage "0": 6 floats 0..5. Storage "1": 4 bf16 (1, 2, -1, 0.5). */
static const float STORAGE0[6] = {0, 1, 2, 3, 4, 5};
static const uint16_t STORAGE1[4] = {0x3F80, 0x4000, 0xBF80, 0x3F00};

/* A shard "archive/..." with the given pickle and the two storages. */
static tw_bytes make_torch_zip(const tw_bytes *pkl, const tw_zip_opts *o,
                               uint16_t storage_method) {
    static const char version[] = "3\n";
    tw_zip_record recs[] = {
        {"archive/data.pkl", pkl->data, pkl->len, 0},
        {"archive/data/0", STORAGE0, sizeof STORAGE0, storage_method},
        {"archive/data/1", STORAGE1, sizeof STORAGE1, 0},
        {"archive/version", version, 2, 0},
    };
    return tw_make_zip(recs, 4, o);
}

static const tw_tensor SPEC_A = {"a", 0, "0", 6, 0, 2, {2, 3}, {3, 1}};

static lmoe_status torch_try(const tw_tensor *t, size_t n, const tw_zip_opts *o) {
    tw_bytes pkl = make_state_dict_pickle(t, n, 0);
    tw_bytes zip = make_torch_zip(&pkl, o, 0);
    ckpt_file f;
    lmoe_status st = pytorch_zip_parse(zip.data, zip.len, &f);
    if (st == LMOE_OK) ckpt_file_close(&f);
    CHECK(f.tensors == NULL && f.n_tensors == 0);
    tw_bytes_free(&pkl);
    tw_bytes_free(&zip);
    return st;
}

/* A zip whose data.pkl is the given raw pickle bytes. */
static lmoe_status raw_pickle_try(const void *pkl_bytes, size_t len) {
    tw_bytes pkl = {0};
    tw_put(&pkl, pkl_bytes, len);
    tw_zip_opts o = {.zip64_end = 1, .align = 1};
    tw_bytes zip = make_torch_zip(&pkl, &o, 0);
    ckpt_file f;
    lmoe_status st = pytorch_zip_parse(zip.data, zip.len, &f);
    if (st == LMOE_OK) ckpt_file_close(&f);
    tw_bytes_free(&pkl);
    tw_bytes_free(&zip);
    return st;
}

static void check_state_dict(const ckpt_file *f) {
    const ckpt_tensor *a = file_find(f, "a"), *b = file_find(f, "b"), *c = file_find(f, "c");
    CHECK(f->n_tensors == 3);
    CHECK(a && a->type == GGML_TYPE_F32 && shape_is(a, 2, 2, 3) && a->n_bytes == 24);
    CHECK(a && f32_at(a->data, 0) == 0.0f && f32_at(a->data, 4) == 4.0f);
    /* b shares storage 0 from element 3 */
    CHECK(b && b->type == GGML_TYPE_F32 && shape_is(b, 1, 3, 0) && b->n_bytes == 12);
    CHECK(b && a && (const uint8_t *)b->data == (const uint8_t *)a->data + 12);
    CHECK(b && f32_at(b->data, 0) == 3.0f && f32_at(b->data, 2) == 5.0f);
    CHECK(c && c->type == GGML_TYPE_BF16 && c->n_dims == 4 && c->shape[0] == 1 &&
          c->shape[1] == 2 && c->shape[2] == 1 && c->shape[3] == 2 && c->n_bytes == 8);
    CHECK(c && bf16_to_f32(u16_at(c->data, 2)) == -1.0f && bf16_to_f32(u16_at(c->data, 3)) == 0.5f);
    CHECK(f->n_tensors == 3 && strcmp(f->tensors[0].name, "a") == 0 &&
          strcmp(f->tensors[2].name, "c") == 0); /* dict order kept */
}

static void test_torch_good(void) {
    const tw_tensor specs[] = {
        SPEC_A,
        {"b", 0, "0", 6, 3, 1, {3}, {1}},
        /* a size-1 dim may have any stride (torch writes what the view had) */
        {"c", 2, "1", 4, 0, 4, {1, 2, 1, 2}, {99, 2, 7, 1}},
    };
    const tw_zip_opts variants[] = {
        {.zip64_end = 1, .align = 1}, /* torch 1.13 */
        {.align = 1},                 /* no zip64 end records */
        {.zip64_end = 1, .zip64_extra = 1, .align = 1},
    };
    for (int proto4 = 0; proto4 < 2; proto4++) {
        for (size_t v = 0; v < 2 * sizeof variants / sizeof variants[0]; v++) {
            int as_parameter = v % 2;
            tw_bytes pkl = tw_make_pickle(specs, 3, proto4, as_parameter);
            tw_bytes zip = make_torch_zip(&pkl, &variants[v / 2], 0);
            ckpt_file f;
            lmoe_status st = pytorch_zip_parse(zip.data, zip.len, &f);
            CHECK_MSG(st == LMOE_OK, "proto4 %d variant %zu: %s", proto4, v, lmoe_last_error());
            if (st == LMOE_OK) check_state_dict(&f);
            ckpt_file_close(&f);
            tw_bytes_free(&pkl);
            tw_bytes_free(&zip);
        }
    }

    /* many tensors: memo indices past 255 use LONG_BINPUT / LONG_BINGET */
    tw_tensor many[40];
    char names[40][16];
    for (int i = 0; i < 40; i++) {
        snprintf(names[i], sizeof names[i], "t%d", i);
        many[i] = (tw_tensor){names[i], 0, "0", 6, i % 6, 1, {1}, {1}};
    }
    tw_bytes pkl = make_state_dict_pickle(many, 40, 0);
    tw_zip_opts o = {.zip64_end = 1, .align = 1};
    tw_bytes zip = make_torch_zip(&pkl, &o, 0);
    ckpt_file f;
    CHECK_OK(pytorch_zip_parse(zip.data, zip.len, &f));
    CHECK(f.n_tensors == 40);
    for (size_t i = 0; i < f.n_tensors; i++)
        CHECK(f32_at(f.tensors[i].data, 0) == (float)(i % 6));
    ckpt_file_close(&f);
    tw_bytes_free(&pkl);
    tw_bytes_free(&zip);

    /* a file on disk, through the map */
    pkl = make_state_dict_pickle(&SPEC_A, 1, 0);
    zip = make_torch_zip(&pkl, &o, 0);
    const char *path = test_tmp_path("ckpt_one.bin");
    CHECK(test_write_file(path, zip.data, zip.len) == 0);
    CHECK_OK(pytorch_zip_open(path, &f));
    CHECK(f.owns_map == 1 && f.n_tensors == 1 && f.map.size == zip.len);
    ckpt_file_close(&f);
    tw_bytes_free(&pkl);
    tw_bytes_free(&zip);
}

static void test_torch_truncated(void) {
    tw_bytes pkl = make_state_dict_pickle(&SPEC_A, 1, 0);
    tw_zip_opts o = {.zip64_end = 1, .align = 1};
    tw_bytes zip = make_torch_zip(&pkl, &o, 0);
    ckpt_file f;
    int all_bad = 1;
    for (size_t len = 0; len < zip.len; len++) {
        lmoe_status st = pytorch_zip_parse(zip.data, len, &f);
        if (st != LMOE_ERR_BAD_FILE) {
            all_bad = 0;
            fprintf(stderr, "zip truncated to %zu of %zu: status %d (%s)\n", len, zip.len, (int)st,
                    lmoe_last_error());
        }
        CHECK(f.tensors == NULL);
    }
    CHECK(all_bad);
    /* every truncation of the pickle itself, inside an intact zip */
    all_bad = 1;
    for (size_t len = 0; len < pkl.len; len++) {
        lmoe_status st = raw_pickle_try(pkl.data, len);
        if (st != LMOE_ERR_BAD_FILE) {
            all_bad = 0;
            fprintf(stderr, "pickle truncated to %zu: status %d (%s)\n", len, (int)st,
                    lmoe_last_error());
        }
    }
    CHECK(all_bad);
    tw_bytes_free(&pkl);
    tw_bytes_free(&zip);
}

/* A literal pickle (sizeof, so embedded NULs count). */
#define RAW(literal) raw_pickle_try(literal, sizeof literal - 1)

static void test_torch_bad(void) {
    const lmoe_status BAD = LMOE_ERR_BAD_FILE, UNSUP = LMOE_ERR_UNSUPPORTED;
    tw_zip_opts o = {.zip64_end = 1, .align = 1};

    /* globals that run code */
    static const char os_system[] =
        "\x80\x02" "cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02R.";
    CHECK_FAILS(raw_pickle_try(os_system, sizeof os_system - 1), UNSUP, "global 'os.system'");
    CHECK(strstr(lmoe_last_error(), "runs no code") &&
          strstr(lmoe_last_error(), "pickle in archive/data.pkl"));
    static const char eval4[] = "\x80\x04\x8c\x08" "builtins\x94\x8c\x04" "eval\x94\x93.";
    CHECK_FAILS(raw_pickle_try(eval4, sizeof eval4 - 1), UNSUP, "global 'builtins.eval'");
    static const char rebuild_from_type[] = "\x80\x02" "ctorch._tensor\n_rebuild_from_type_v2\n.";
    CHECK_FAILS(raw_pickle_try(rebuild_from_type, sizeof rebuild_from_type - 1), UNSUP,
                "torch._tensor._rebuild_from_type_v2");

    /* opcodes outside the set: INST, OBJ, 0xff; and an unknown protocol */
    CHECK_FAILS(RAW("\x80\x02}q\x00\xff."), UNSUP, "opcode 0xff");
    CHECK(strstr(lmoe_last_error(), "at byte 5:") != NULL);
    CHECK_FAILS(RAW("\x80\x02(ios\nsystem\n."), UNSUP, "opcode 0x69");
    CHECK_FAILS(RAW("\x80\x06}."), UNSUP, "protocol 6");

    /* malformed pickles */
    CHECK_FAILS(RAW("\x80\x02}"), BAD, "without STOP");
    CHECK_FAILS(RAW("\x80\x02."), BAD, "empty stack");
    CHECK_FAILS(RAW("\x80\x02}(X\x01\x00\x00\x00" "as."), BAD, "SETITEM");
    CHECK_FAILS(RAW("\x80\x02h\x05."), BAD, "never put");
    CHECK_FAILS(RAW("\x80\x02}r\xff\xff\xff\xff."), UNSUP, "memo index");
    CHECK_FAILS(RAW("\x80\x02X\xff\xff\xff\x7f."), BAD, "runs past the end");
    CHECK_FAILS(RAW("\x80\x02]q\x00(K\x01t."), UNSUP, "not a dict");
    CHECK_FAILS(RAW("\x80\x02}(X\x01\x00\x00\x00" "aK\x01u."), UNSUP,
                "'a' is not a tensor");
    CHECK_FAILS(RAW("\x80\x02}(K\x01K\x01u."), UNSUP, "not a string");
    CHECK_FAILS(RAW("\x80\x02t."), BAD, "without a MARK");
    CHECK_FAILS(RAW("\x80\x02\x8a\x09" "123456789."), UNSUP, "LONG1");
    CHECK_FAILS(RAW("\x80\x02" "ctorch\nFloatStorage\n)R."), UNSUP,
                "calls a storage type");
    CHECK_FAILS(RAW("\x80\x02" "ccollections\nOrderedDict"), BAD, "newline");
    {   /* a million nested MARKs stop at the cap, not in a crash */
        size_t n = (1u << 20) + 8;
        char *deep = malloc(n + 3);
        deep[0] = (char)0x80, deep[1] = 2;
        memset(deep + 2, '(', n);
        deep[n + 2] = '.';
        CHECK_FAILS(raw_pickle_try(deep, n + 3), UNSUP, "MARK");
        free(deep);
    }

    /* tensors that are not a plain block of their storage */
    tw_tensor t = SPEC_A;
    t.stride[0] = 1, t.stride[1] = 2;
    CHECK_FAILS(torch_try(&t, 1, &o), UNSUP, "non-contiguous");
    CHECK(strstr(lmoe_last_error(), "(2, 3)") && strstr(lmoe_last_error(), "(1, 2)"));
    t = SPEC_A;
    t.numel = 7; /* the record holds 6 floats */
    CHECK_FAILS(torch_try(&t, 1, &o), BAD, "storage '0' of 7 elements needs 28 bytes");
    t = SPEC_A;
    t.offset = 1; /* elements [1, 7) of 6 */
    CHECK_FAILS(torch_try(&t, 1, &o), BAD, "storage of 6 elements");
    t = SPEC_A;
    t.key = "9";
    CHECK_FAILS(torch_try(&t, 1, &o), BAD, "archive/data/9");
    t = SPEC_A;
    t.size[0] = -2;
    CHECK_FAILS(torch_try(&t, 1, &o), BAD, "size[0]");
    t = SPEC_A;
    t.n_dims = 1;
    t.size[0] = 6, t.stride[0] = 1; /* fine; then a duplicate name */
    tw_tensor dup[2] = {t, t};
    CHECK_OK(torch_try(&t, 1, &o));
    CHECK_FAILS(torch_try(dup, 2, &o), BAD, "appears twice");

    /* zip problems */
    tw_bytes pkl = make_state_dict_pickle(&SPEC_A, 1, 0);
    ckpt_file f;
    tw_bytes zip = make_torch_zip(&pkl, &o, 8); /* data/0 marked deflate */
    CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), UNSUP, "compressed (method 8)");
    tw_bytes_free(&zip);
    {
        tw_zip_record recs[] = {{"archive/data.pkl", pkl.data, pkl.len, 8}};
        zip = tw_make_zip(recs, 1, &o);
        CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), UNSUP, "compressed");
        tw_bytes_free(&zip);
    }
    {
        tw_zip_record recs[] = {{"archive/other.pkl", pkl.data, pkl.len, 0}};
        zip = tw_make_zip(recs, 1, &o);
        CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), BAD, "data.pkl");
        tw_bytes_free(&zip);
    }
    {
        tw_zip_record recs[] = {{"a/data.pkl", pkl.data, pkl.len, 0},
                                {"b/data.pkl", pkl.data, pkl.len, 0}};
        zip = tw_make_zip(recs, 2, &o);
        CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), BAD, "two pickles");
        tw_bytes_free(&zip);
    }
    {
        tw_zip_record recs[] = {{"archive/data.pkl", pkl.data, pkl.len, 0},
                       {"archive/data/0", STORAGE0, sizeof STORAGE0, 0},
                       {"archive/data/0", STORAGE0, sizeof STORAGE0, 0}};
        zip = tw_make_zip(recs, 3, &o);
        CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), BAD, "two records are named");
        tw_bytes_free(&zip);
    }
    /* a record whose size, or local header offset, points past the file */
    tw_zip_opts big = o;
    big.force_size_record = 1;
    big.force_size = 1u << 30;
    zip = make_torch_zip(&pkl, &big, 0);
    CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), BAD, "run past the end");
    tw_bytes_free(&zip);
    big.force_size = 0;
    big.force_offset = 1ull << 40; /* needs the zip64 extra field */
    zip = make_torch_zip(&pkl, &big, 0);
    CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), BAD, "local header");
    tw_bytes_free(&zip);
    big.force_offset = 3; /* inside the file, but no local header there */
    zip = make_torch_zip(&pkl, &big, 0);
    CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), BAD, "local header");
    tw_bytes_free(&zip);
    /* central directory offset past the end record */
    zip = make_torch_zip(&pkl, &o, 0);
    memcpy(zip.data + zip.len - 6, "\xff\xff\xff\x7f", 4);
    /* (the zip64 record rules when present: break that one) */
    size_t eocd64 = zip.len - 22 - 20 - 56;
    CHECK(memcmp(zip.data + eocd64, "PK\x06\x06", 4) == 0);
    memcpy(zip.data + eocd64 + 48, "\xff\xff\xff\x7f\0\0\0\0", 8);
    CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), BAD, "central directory");
    tw_bytes_free(&zip);
    /* storages are read in place, so they must be aligned to their element (torch aligns to 64) */
    {
        tw_bytes pad = {0};
        tw_put(&pad, pkl.data, pkl.len);
        int n_ok = 0, n_refused = 0;
        for (int shift = 0; shift < 4; shift++) {
            tw_zip_opts plain = {0};
            zip = make_torch_zip(&pad, &plain, 0);
            lmoe_status st = pytorch_zip_parse(zip.data, zip.len, &f);
            const ckpt_tensor *at = st == LMOE_OK ? file_find(&f, "a") : NULL;
            CHECK_MSG(st == LMOE_OK ? at && ((const uint8_t *)at->data - zip.data) % 4 == 0
                                    : st == UNSUP && strstr(lmoe_last_error(), "not a multiple"),
                      "shift %d: %d %s", shift, (int)st, lmoe_last_error());
            n_ok += st == LMOE_OK;
            n_refused += st == UNSUP;
            ckpt_file_close(&f);
            tw_bytes_free(&zip);
            tw_put_u8(&pad, 0); /* bytes after STOP are never read: still valid, data moves */
        }
        CHECK(n_ok == 1 && n_refused == 3);
        tw_bytes_free(&pad);
    }
    /* torch >= 2.1 writes a byteorder record: "little" is read, "big" refused */
    for (int big_endian = 0; big_endian < 2; big_endian++) {
        tw_zip_record recs[] = {{"archive/data.pkl", pkl.data, pkl.len, 0},
                       {"archive/byteorder", big_endian ? "big" : "little", big_endian ? 3 : 6, 0},
                       {"archive/data/0", STORAGE0, sizeof STORAGE0, 0},
                       {"archive/.data/serialization_id", "1234", 4, 8}};
        zip = tw_make_zip(recs, 4, &o);
        if (big_endian) {
            CHECK_FAILS(pytorch_zip_parse(zip.data, zip.len, &f), UNSUP, "not little-endian");
        } else {
            CHECK_OK(pytorch_zip_parse(zip.data, zip.len, &f));
            CHECK(f.n_tensors == 1);
            ckpt_file_close(&f);
        }
        tw_bytes_free(&zip);
    }
    /* a legacy torch.save file is recognised */
    CHECK_FAILS(pytorch_zip_parse(pkl.data, pkl.len, &f), UNSUP, "legacy");
    CHECK_FAILS(pytorch_zip_parse("PK", 2, &f), BAD, "too short");
    tw_bytes_free(&pkl);
}

/* ---------------------------------------------------------------------------------------------
 * folders and index files
 * ------------------------------------------------------------------------------------------- */

static const char *make_dir(const char *name) {
    static char path[4096];
    snprintf(path, sizeof path, "%s", test_tmp_path(name));
    mkdir(path, 0755);
    /* start empty: remove what an earlier run left */
    const char *files[] = {"model.safetensors.index.json", "pytorch_model.bin.index.json",
                           "model.safetensors", "pytorch_model.bin", "a.safetensors",
                           "b.safetensors", "a.bin", "b.bin"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", path, files[i]);
        unlink(p);
    }
    return path;
}

static void write_in(const char *dir, const char *name, const void *data, size_t len) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    CHECK_MSG(test_write_file(p, data, len) == 0, "cannot write %s", p);
}

static void write_str_in(const char *dir, const char *name, const char *s) {
    write_in(dir, name, s, strlen(s));
}

/* Two safetensors shards: a.safetensors {x, y}, b.safetensors {z}. */
static void write_st_shards(const char *dir) {
    const float v[4] = {1, 2, 3, 4};
    tw_bytes a =
        tw_make_safetensors("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                            "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                            v, 12);
    tw_bytes b =
        tw_make_safetensors("{\"z\":{\"dtype\":\"F32\",\"shape\":[1,1],\"data_offsets\":[0,4]}}",
                            v + 3, 4);
    write_in(dir, "a.safetensors", a.data, a.len);
    write_in(dir, "b.safetensors", b.data, b.len);
    tw_bytes_free(&a);
    tw_bytes_free(&b);
}

typedef struct progress_log {
    size_t calls, last_index, last_count;
    char last_path[4096];
} progress_log;

static void on_progress(void *user, size_t index, size_t count, const char *path) {
    progress_log *log = user;
    log->calls++;
    log->last_index = index;
    log->last_count = count;
    snprintf(log->last_path, sizeof log->last_path, "%s", path);
}

static const char INDEX_OK[] =
    "{\"metadata\": {\"total_size\": 16}, \"weight_map\": {\"z\": \"b.safetensors\", "
    "\"x\": \"a.safetensors\", \"y\": \"a.safetensors\"}}";

static void test_set_safetensors(void) {
    const char *dir = make_dir("ckpt_set_st");
    write_st_shards(dir);
    write_str_in(dir, "model.safetensors.index.json", INDEX_OK);
    ckpt_set set;
    progress_log log = {0};
    CHECK_OK(ckpt_set_open_dir(dir, &set, on_progress, &log));
    CHECK(set.n_files == 2 && log.calls == 2 && log.last_index == 1 && log.last_count == 2);
    CHECK(strstr(log.last_path, "/b.safetensors") != NULL); /* sorted: a, then b */
    const ckpt_tensor *z = ckpt_set_find(&set, "z"), *x = ckpt_set_find(&set, "x");
    CHECK(z && shape_is(z, 2, 1, 1) && f32_at(z->data, 0) == 4.0f);
    CHECK(x && f32_at(x->data, 1) == 2.0f);
    CHECK(z && set.n_files == 2 && z >= set.files[1].tensors &&
          z < set.files[1].tensors + set.files[1].n_tensors);
    CHECK(ckpt_set_find(&set, "nope") == NULL && ckpt_set_find(&set, NULL) == NULL);
    ckpt_set_close(&set);
    CHECK(set.files == NULL && set.n_files == 0);
    ckpt_set_close(&set);

    /* the index names a tensor its shard does not have */
    write_str_in(dir, "model.safetensors.index.json",
                 "{\"weight_map\": {\"x\": \"a.safetensors\", \"w\": \"a.safetensors\"}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE,
                "tensor 'w' in shard 'a.safetensors'");
    CHECK(set.files == NULL && set.n_files == 0);
    write_str_in(dir, "model.safetensors.index.json",
                 "{\"weight_map\": {\"x\": \"b.safetensors\", \"z\": \"b.safetensors\", "
                 "\"y\": \"a.safetensors\"}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE,
                "it is in shard 'a.safetensors'");
    /* ... a missing shard */
    write_str_in(dir, "model.safetensors.index.json",
                 "{\"weight_map\": {\"x\": \"a.safetensors\", \"q\": \"missing.safetensors\"}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_IO, "missing.safetensors");
    /* ... a shard outside the folder */
    write_str_in(dir, "model.safetensors.index.json",
                 "{\"weight_map\": {\"x\": \"../ckpt_set_st/a.safetensors\"}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE, "../ckpt_set_st");
    write_str_in(dir, "model.safetensors.index.json", "{\"weight_map\": {\"x\": \"..\"}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE, "plain file name");
    write_str_in(dir, "model.safetensors.index.json", "{\"weight_map\": {\"x\": \"/etc/passwd\"}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE, "plain file name");
    /* ... malformed index files */
    write_str_in(dir, "model.safetensors.index.json", "{\"weight_map\": {\"x\": 3}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE, "not a string");
    write_str_in(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE, "weight_map");
    write_str_in(dir, "model.safetensors.index.json", "{\"weight_map\": {}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE, "no tensors");
    write_str_in(dir, "model.safetensors.index.json", "{\"weight_map\": ");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE, "JSON");
    /* ... a tensor in two shards */
    const float v = 1;
    tw_bytes dup = tw_make_safetensors(
        "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", &v, 4);
    write_in(dir, "b.safetensors", dup.data, dup.len);
    tw_bytes_free(&dup);
    write_str_in(dir, "model.safetensors.index.json",
                 "{\"weight_map\": {\"x\": \"a.safetensors\", \"y\": \"b.safetensors\"}}");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_BAD_FILE, "in two shards");
    /* ... a bad shard: its path is in the message */
    write_str_in(dir, "b.safetensors", "garbage!");
    write_str_in(dir, "model.safetensors.index.json", INDEX_OK);
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, on_progress, &log), LMOE_ERR_BAD_FILE,
                "b.safetensors: safetensors");
    CHECK(set.files == NULL);

    /* no index: the single file */
    dir = make_dir("ckpt_set_single");
    const float w[2] = {7, 8};
    tw_bytes one = tw_make_safetensors(
        "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", w, 8);
    write_in(dir, "model.safetensors", one.data, one.len);
    tw_bytes_free(&one);
    log.calls = 0;
    CHECK_OK(ckpt_set_open_dir(dir, &set, on_progress, &log));
    CHECK(set.n_files == 1 && log.calls == 1 && log.last_count == 1);
    const ckpt_tensor *wt = ckpt_set_find(&set, "w");
    CHECK(wt && f32_at(wt->data, 1) == 8.0f);
    ckpt_set_close(&set);

    dir = make_dir("ckpt_set_empty");
    CHECK_FAILS(ckpt_set_open_dir(dir, &set, NULL, NULL), LMOE_ERR_IO, "no weights found in");
    CHECK(strstr(lmoe_last_error(), "pytorch_model.bin") != NULL);
    CHECK_FAILS(ckpt_set_open_dir(test_tmp_path("ckpt_no_such_dir"), &set, NULL, NULL),
                LMOE_ERR_IO, "cannot open folder");
    write_str_in(dir, "model.safetensors.index.json", "{}");
    CHECK_FAILS(ckpt_set_open_dir(test_tmp_path("ckpt_set_empty/model.safetensors.index.json"),
                                  &set, NULL, NULL),
                LMOE_ERR_IO, "not a folder");
}

static void test_set_torch(void) {
    const char *dir = make_dir("ckpt_set_torch");
    const tw_tensor a[] = {SPEC_A, {"b", 0, "0", 6, 3, 1, {3}, {1}}};
    const tw_tensor c[] = {{"c", 2, "1", 4, 0, 1, {4}, {1}}};
    tw_zip_opts o = {.zip64_end = 1, .align = 1};
    tw_bytes pa = make_state_dict_pickle(a, 2, 0), pc = make_state_dict_pickle(c, 1, 0);
    tw_bytes za = make_torch_zip(&pa, &o, 0), zc = make_torch_zip(&pc, &o, 0);
    write_in(dir, "a.bin", za.data, za.len);
    write_in(dir, "b.bin", zc.data, zc.len);
    write_str_in(dir, "pytorch_model.bin.index.json",
                 "{\"metadata\": {\"total_size\": 44}, \"weight_map\": {\"a\": \"a.bin\", "
                 "\"b\": \"a.bin\", \"c\": \"b.bin\"}}");
    ckpt_set set;
    CHECK_OK(ckpt_set_open_dir(dir, &set, NULL, NULL));
    const ckpt_tensor *ct = ckpt_set_find(&set, "c"), *bt = ckpt_set_find(&set, "b");
    CHECK(set.n_files == 2 && ct && bt);
    CHECK(ct && ct->type == GGML_TYPE_BF16 && bf16_to_f32(u16_at(ct->data, 1)) == 2.0f);
    CHECK(bt && f32_at(bt->data, 0) == 3.0f);
    uint64_t total = 0;
    for (size_t f = 0; f < set.n_files; f++)
        for (size_t t = 0; t < set.files[f].n_tensors; t++)
            total += set.files[f].tensors[t].n_bytes;
    CHECK(total == 44);
    ckpt_set_close(&set);

    /* a pytorch_model.bin alone */
    dir = make_dir("ckpt_set_torch_single");
    write_in(dir, "pytorch_model.bin", za.data, za.len);
    CHECK_OK(ckpt_set_open_dir(dir, &set, NULL, NULL));
    CHECK(set.n_files == 1 && set.files[0].n_tensors == 2);
    ckpt_set_close(&set);
    tw_bytes_free(&pa);
    tw_bytes_free(&pc);
    tw_bytes_free(&za);
    tw_bytes_free(&zc);
}

/* ---------------------------------------------------------------------------------------------
 * the tiny LLaMA-MoE checkpoints
 * ------------------------------------------------------------------------------------------- */

typedef struct moe_dims {
    const char *folder;
    uint64_t hidden, experts, expert_size, head_dim;
    int layers;
    size_t n_tensors;
    uint64_t total_size;
} moe_dims;

static uint64_t index_total_size(const char *folder, const char *index_name) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", test_model_path(folder), index_name);
    size_t len;
    char *text = test_read_file(path, &len);
    json_value *root = text ? json_parse(text, len) : NULL;
    const json_value *total = json_get(json_get(root, "metadata"), "total_size");
    uint64_t v = total && total->kind == JSON_NUMBER ? (uint64_t)total->number : 0;
    json_free(root);
    free(text);
    return v;
}

static void expect_shape(const ckpt_set *set, const char *name, uint32_t n, uint64_t d0,
                         uint64_t d1) {
    const ckpt_tensor *t = ckpt_set_find(set, name);
    CHECK_MSG(t && t->type == GGML_TYPE_BF16 && shape_is(t, n, d0, d1) &&
                  t->n_bytes == 2 * d0 * (n == 2 ? d1 : 1),
              "%s: missing, or not BF16 [%llu, %llu]", name, (unsigned long long)d0,
              (unsigned long long)d1);
}

/* Every tensor the README lists, with its shape. */
static void check_moe_tensors(const ckpt_set *set, const moe_dims *m) {
    const uint64_t H = m->hidden, E = m->experts, s = m->expert_size;
    char name[256];
    expect_shape(set, "model.embed_tokens.weight", 2, 32000, H);
    expect_shape(set, "lm_head.weight", 2, 32000, H);
    expect_shape(set, "model.norm.weight", 1, H, 0);
    for (int L = 0; L < m->layers; L++) {
        static const char *const attn[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        for (int i = 0; i < 4; i++) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight", L, attn[i]);
            expect_shape(set, name, 2, H, H);
        }
        snprintf(name, sizeof name, "model.layers.%d.self_attn.rotary_emb.inv_freq", L);
        expect_shape(set, name, 1, m->head_dim / 2, 0);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.gate_network.0.weight", L);
        expect_shape(set, name, 2, E, H);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.gate_network.2.weight", L);
        expect_shape(set, name, 2, E, E);
        snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight_noise.weight", L);
        expect_shape(set, name, 2, E, H);
        for (uint64_t j = 0; j < E; j++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.calculator.experts.weight_gate.%llu",
                     L, (unsigned long long)j);
            expect_shape(set, name, 2, s, H);
            snprintf(name, sizeof name, "model.layers.%d.mlp.calculator.experts.weight_up.%llu",
                     L, (unsigned long long)j);
            expect_shape(set, name, 2, s, H);
            snprintf(name, sizeof name, "model.layers.%d.mlp.calculator.experts.weight_down.%llu",
                     L, (unsigned long long)j);
            expect_shape(set, name, 2, H, s);
        }
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", L);
        expect_shape(set, name, 1, H, 0);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", L);
        expect_shape(set, name, 1, H, 0);
    }
}

static void check_moe_common(const ckpt_set *set, const moe_dims *m, const char *index_name) {
    size_t n = 0;
    uint64_t bytes_total = 0;
    int all_bf16 = 1;
    for (size_t f = 0; f < set->n_files; f++)
        for (size_t t = 0; t < set->files[f].n_tensors; t++) {
            n++;
            bytes_total += set->files[f].tensors[t].n_bytes;
            all_bf16 &= set->files[f].tensors[t].type == GGML_TYPE_BF16;
        }
    CHECK_MSG(n == m->n_tensors, "%s: %zu tensors", m->folder, n);
    CHECK(all_bf16);
    CHECK(set->n_files == 2);
    CHECK_MSG(bytes_total == m->total_size, "%s: %llu bytes", m->folder,
              (unsigned long long)bytes_total);
    CHECK(index_total_size(m->folder, index_name) == m->total_size);
    check_moe_tensors(set, m);

    /* shard 2 starts at layer 1's weight_up.0 (README) */
    const ckpt_tensor *up = ckpt_set_find(set, "model.layers.1.mlp.calculator.experts.weight_up.0");
    CHECK(up && set->n_files == 2 && up >= set->files[1].tensors &&
          up < set->files[1].tensors + set->files[1].n_tensors);
    const ckpt_tensor *gate =
        ckpt_set_find(set, "model.layers.1.mlp.calculator.experts.weight_gate.0");
    CHECK(gate && gate >= set->files[0].tensors &&
          gate < set->files[0].tensors + set->files[0].n_tensors);

    /* inv_freq[i] = 1/10000^(2i/head_dim), stored bf16 */
    const ckpt_tensor *inv = ckpt_set_find(set, "model.layers.0.self_attn.rotary_emb.inv_freq");
    if (inv) {
        CHECK(u16_at(inv->data, 0) == 0x3F80);
        float f1 = bf16_to_f32(u16_at(inv->data, 1));
        CHECK_MSG(f1 > 0.315f && f1 < 0.318f, "inv_freq[1] = %g", f1);
    }
    /* RMSNorm weights are 1 + 0.1 N(0,1): all in (0.3, 1.7) if the bytes are the right ones */
    int sane = 1;
    for (int L = 0; L < m->layers; L++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", L);
        const ckpt_tensor *w = ckpt_set_find(set, name);
        for (uint64_t i = 0; w && i < m->hidden; i++) {
            float v = bf16_to_f32(u16_at(w->data, i));
            sane &= v > 0.3f && v < 1.7f;
        }
    }
    CHECK(sane);
}

/* The first values, read from the same files by Python's zipfile / json modules. */
static void check_values(const ckpt_set *set, const uint16_t embed[4], const uint16_t head[4],
                         uint16_t head_last) {
    const ckpt_tensor *e = ckpt_set_find(set, "model.embed_tokens.weight");
    const ckpt_tensor *h = ckpt_set_find(set, "lm_head.weight");
    for (size_t i = 0; i < 4; i++) {
        CHECK(e && u16_at(e->data, i) == embed[i]);
        CHECK(h && u16_at(h->data, i) == head[i]);
    }
    CHECK(h && u16_at(h->data, h->n_bytes / 2 - 1) == head_last);
}

static void test_tiny_4_16(void) {
    static const moe_dims m = {"tiny-llama-moe-4_16", 64, 16, 16, 16, 2, 119, 8464032};
    ckpt_set set;
    progress_log log = {0};
    CHECK_OK(ckpt_set_open_dir(test_model_path(m.folder), &set, on_progress, &log));
    CHECK(log.calls == 2 && strstr(log.last_path, "pytorch_model-00002-of-00002.bin"));
    check_moe_common(&set, &m, "pytorch_model.bin.index.json");
    /* the shapes the brief names */
    expect_shape(&set, "model.layers.0.mlp.calculator.experts.weight_gate.0", 2, 16, 64);
    expect_shape(&set, "model.layers.0.mlp.calculator.experts.weight_down.3", 2, 64, 16);
    expect_shape(&set, "model.layers.0.mlp.gate.gate_network.0.weight", 2, 16, 64);
    expect_shape(&set, "model.layers.0.mlp.gate.gate_network.2.weight", 2, 16, 16);
    CHECK(set.n_files == 2 && set.files[0].n_tensors > 0 &&
          strcmp(set.files[0].tensors[0].name, "model.embed_tokens.weight") == 0);
    static const uint16_t embed[4] = {0x3c87, 0xbbc3, 0x3cd3, 0xbc24};
    static const uint16_t head[4] = {0x3d1f, 0xbbd2, 0xbca1, 0x3cca};
    check_values(&set, embed, head, 0x3d30);
    ckpt_set_close(&set);

    /* the real shard, cut short in memory: never a crash, always BAD_FILE */
    file_map map;
    CHECK_OK(file_map_open(test_model_path("tiny-llama-moe-4_16/pytorch_model-00001-of-00002.bin"),
                           &map));
    if (map.data) {
        ckpt_file f;
        CHECK_OK(pytorch_zip_parse(map.data, map.size, &f));
        CHECK(f.n_tensors == 85 - 2); /* 85 records: data.pkl, version and 83 storages */
        ckpt_file_close(&f);
        const size_t cuts[] = {0, 1, 21, 22, 4096, 10000, map.size / 2, map.size - 4096,
                               map.size - 200, map.size - 98, map.size - 23, map.size - 22,
                               map.size - 1};
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            lmoe_status st = pytorch_zip_parse(map.data, cuts[i], &f);
            CHECK_MSG(st == LMOE_ERR_BAD_FILE, "real shard cut to %zu: %d (%s)", cuts[i], (int)st,
                      lmoe_last_error());
        }
        file_map_close(&map);
    }
}

static void test_tiny_2_8(void) {
    static const moe_dims m = {"tiny-llama-moe-2_8", 96, 8, 48, 16, 3, 105, 13183728};
    ckpt_set set;
    CHECK_OK(ckpt_set_open_dir(test_model_path(m.folder), &set, NULL, NULL));
    check_moe_common(&set, &m, "model.safetensors.index.json");
    static const uint16_t embed[4] = {0xbcef, 0xbd06, 0x3c28, 0x3d10};
    static const uint16_t head[4] = {0x3bd8, 0x3c9b, 0x3c43, 0x3c03};
    check_values(&set, embed, head, 0x3d15);
    ckpt_set_close(&set);

    file_map map;
    CHECK_OK(file_map_open(test_model_path("tiny-llama-moe-2_8/model-00002-of-00002.safetensors"),
                           &map));
    if (map.data) {
        ckpt_file f;
        const size_t cuts[] = {0, 7, 8, 100, map.size / 2, map.size - 1};
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
            CHECK_MSG(safetensors_parse(map.data, cuts[i], &f) == LMOE_ERR_BAD_FILE,
                      "real safetensors cut to %zu: %s", cuts[i], lmoe_last_error());
        file_map_close(&map);
    }
}

int main(void) {
    test_safetensors_good();
    test_safetensors_bad();
    test_torch_good();
    test_torch_truncated();
    test_torch_bad();
    test_set_safetensors();
    test_set_torch();
    if (test_require_models()) {
        test_tiny_4_16();
        test_tiny_2_8();
    }
    return test_finish("test_checkpoint");
}
