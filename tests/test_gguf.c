/* test_gguf.c - the GGUF reader and writer: round trips of every metadata type and every tensor
 * type through memory and through a file, the typed getters (conversions, range and type errors,
 * optional keys), version handling, and the real vocabulary-only LLaMA tokenizer file. */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "llamamoe.h"
#include "mem.h"
#include "test_util.h"

/* Checks that a call fails with the given status and that the error text contains word. */
#define CHECK_FAIL(expr, status, word)                                                              \
    do {                                                                                            \
        lmoe_status check_fail_st_ = (expr);                                                        \
        CHECK_MSG(check_fail_st_ == (status), "%s -> %d (%s), expected %d", #expr,                  \
                  (int)check_fail_st_, lmoe_last_error(), (int)(status));                           \
        CHECK_MSG(strstr(lmoe_last_error(), (word)) != NULL, "%s: error '%s' lacks '%s'", #expr,    \
                  lmoe_last_error(), (word));                                                       \
    } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint8_t rand_byte(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint8_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 56);
}

static bool str_is(gguf_str s, const char *bytes, size_t len) {
    return s.len == len && (len == 0 || memcmp(s.ptr, bytes, len) == 0);
}

/* ------------------------------------------------------------------------------------------------
 * the writer's round trip: metadata
 * ---------------------------------------------------------------------------------------------- */

static const uint8_t arr_u8[] = {0, 1, 255};
static const int8_t arr_i8[] = {-128, 0, 127};
static const uint16_t arr_u16[] = {0, 65535, 1234};
static const int16_t arr_i16[] = {-32768, 32767, -1};
static const uint32_t arr_u32[] = {0, 4000000000u, 7};
static const int32_t arr_i32[] = {INT32_MIN, INT32_MAX, -5, 6};
static const float arr_f32[] = {0.5f, -1.25f, 3.0e38f, 1.0e-30f};
static const uint8_t arr_bool[] = {1, 0, 1};
static const uint64_t arr_u64[] = {0, UINT64_MAX, 1ull << 40};
static const int64_t arr_i64[] = {INT64_MIN, INT64_MAX, -2};
static const double arr_f64[] = {1.0 / 3.0, -1e300, 0.0};

typedef struct num_array {
    const char *key;
    gguf_type type;
    const void *data;
    uint64_t n;
    size_t elem_size;
} num_array;

static const num_array num_arrays[] = {
    {"arr.u8", GGUF_TYPE_UINT8, arr_u8, 3, 1},     {"arr.i8", GGUF_TYPE_INT8, arr_i8, 3, 1},
    {"arr.u16", GGUF_TYPE_UINT16, arr_u16, 3, 2},  {"arr.i16", GGUF_TYPE_INT16, arr_i16, 3, 2},
    {"arr.u32", GGUF_TYPE_UINT32, arr_u32, 3, 4},  {"arr.i32", GGUF_TYPE_INT32, arr_i32, 4, 4},
    {"arr.f32", GGUF_TYPE_FLOAT32, arr_f32, 4, 4}, {"arr.bool", GGUF_TYPE_BOOL, arr_bool, 3, 1},
    {"arr.u64", GGUF_TYPE_UINT64, arr_u64, 3, 8},  {"arr.i64", GGUF_TYPE_INT64, arr_i64, 3, 8},
    {"arr.f64", GGUF_TYPE_FLOAT64, arr_f64, 3, 8}, {"arr.empty", GGUF_TYPE_INT32, NULL, 0, 4},
};
#define N_NUM_ARRAYS (sizeof num_arrays / sizeof num_arrays[0])

static const char *const str_items[] = {"", "x", "h\xC3\xA9llo \xE2\x96\x81world", "nul\0inside"};
static const uint32_t str_lens[] = {0, 1, 15, 10};

/* ------------------------------------------------------------------------------------------------
 * the writer's round trip: tensors
 * ---------------------------------------------------------------------------------------------- */

typedef struct tensor_spec {
    const char *name;
    ggml_type type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    size_t n_bytes;          /* computed by hand: elements / block * block bytes */
} tensor_spec;

static const tensor_spec tensor_specs[] = {
    {"t.f32.1d", GGML_TYPE_F32, 1, {5}, 5 * 4},
    {"t.f16.2d", GGML_TYPE_F16, 2, {3, 7}, 21 * 2},
    {"t.bf16.3d", GGML_TYPE_BF16, 3, {2, 3, 4}, 24 * 2},
    {"t.q8_0.4d", GGML_TYPE_Q8_0, 4, {64, 2, 3, 2}, 24 * 34},
    {"t.q4_0.2d", GGML_TYPE_Q4_0, 2, {32, 3}, 3 * 18},
    {"t.f32.4d", GGML_TYPE_F32, 4, {2, 2, 2, 3}, 24 * 4},
    {"t.q4_0.1d", GGML_TYPE_Q4_0, 1, {96}, 3 * 18},
    {"t.q8_0.1d", GGML_TYPE_Q8_0, 1, {32}, 34},
    {"t.f16.3d", GGML_TYPE_F16, 3, {1, 1, 1}, 2},
    {"t.bf16.1d", GGML_TYPE_BF16, 1, {33}, 66},
    {"t.q4_0_r16.3d", LMOE_TYPE_Q4_0_R16, 3, {64, 16, 2}, 2 * 16 * 2 * 18},
    {"t.q8_0_r16.2d", LMOE_TYPE_Q8_0_R16, 2, {32, 32}, 32 * 34},
};
#define N_TENSORS (sizeof tensor_specs / sizeof tensor_specs[0])

static uint8_t *tensor_data[N_TENSORS];

static gguf_writer *make_full_writer(void) {
    gguf_writer *w = NULL;
    CHECK_OK(gguf_writer_create(&w));
    if (!w) return NULL;
    CHECK_OK(gguf_writer_set_str(w, "general.architecture", "test"));
    CHECK_OK(gguf_writer_set_u32(w, "k.u32", 4000000000u));
    CHECK_OK(gguf_writer_set_i32(w, "k.i32", -123456));
    CHECK_OK(gguf_writer_set_f32(w, "k.f32", 0.15625f));
    CHECK_OK(gguf_writer_set_bool(w, "k.true", true));
    CHECK_OK(gguf_writer_set_bool(w, "k.false", false));
    CHECK_OK(gguf_writer_set_str(w, "k.str", "hello \xE2\x96\x81 world"));
    CHECK_OK(gguf_writer_set_str(w, "k.empty_str", ""));
    CHECK_OK(gguf_writer_set_str_n(w, "k.str_nul", "a\0b", 3));
    for (size_t i = 0; i < N_NUM_ARRAYS; i++)
        CHECK_OK(gguf_writer_set_array(w, num_arrays[i].key, num_arrays[i].type,
                                       num_arrays[i].data, num_arrays[i].n));
    CHECK_OK(gguf_writer_set_str_array(w, "arr.str", str_items, str_lens, 4));
    CHECK_OK(gguf_writer_set_str_array(w, "arr.str_empty", NULL, NULL, 0));
    for (size_t i = 0; i < N_TENSORS; i++) {
        const tensor_spec *t = &tensor_specs[i];
        CHECK_OK(gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, tensor_data[i]));
    }
    return w;
}

/* Everything make_full_writer put in, read back from f. */
static void check_full_file(const gguf_file *f) {
    CHECK(f->version == 3);
    CHECK(f->n_kv == 11 + N_NUM_ARRAYS);
    CHECK(f->n_tensors == N_TENSORS);
    CHECK(f->alignment == 32);
    CHECK(f->data_offset % 32 == 0);

    /* keys in the order they were set */
    CHECK(gguf_str_eq(f->kv[0].key, "general.architecture"));
    CHECK(gguf_str_eq(f->kv[1].key, "k.u32"));
    CHECK(gguf_str_eq(f->kv[f->n_kv - 1].key, "arr.str_empty"));

    uint32_t u32 = 0;
    int32_t i32 = 0;
    float f32 = 0;
    bool b = false;
    gguf_str s = {0};
    CHECK_OK(gguf_get_str(f, "general.architecture", &s));
    CHECK(gguf_str_eq(s, "test"));
    CHECK_OK(gguf_get_u32(f, "k.u32", &u32));
    CHECK(u32 == 4000000000u);
    CHECK(gguf_find_kv(f, "k.u32")->type == GGUF_TYPE_UINT32);
    CHECK_OK(gguf_get_i32(f, "k.i32", &i32));
    CHECK(i32 == -123456);
    CHECK(gguf_find_kv(f, "k.i32")->type == GGUF_TYPE_INT32);
    CHECK_OK(gguf_get_f32(f, "k.f32", &f32));
    CHECK(f32 == 0.15625f);
    CHECK_OK(gguf_get_bool(f, "k.true", &b));
    CHECK(b == true);
    CHECK_OK(gguf_get_bool(f, "k.false", &b));
    CHECK(b == false);
    CHECK_OK(gguf_get_str(f, "k.str", &s));
    CHECK(gguf_str_eq(s, "hello \xE2\x96\x81 world"));
    s.ptr = NULL;
    CHECK_OK(gguf_get_str(f, "k.empty_str", &s));
    CHECK(s.len == 0 && s.ptr != NULL);
    CHECK_OK(gguf_get_str(f, "k.str_nul", &s));
    CHECK(str_is(s, "a\0b", 3));

    for (size_t i = 0; i < N_NUM_ARRAYS; i++) {
        const num_array *a = &num_arrays[i];
        const gguf_kv *kv = NULL;
        CHECK_OK(gguf_get_array(f, a->key, a->type, &kv));
        if (!kv) continue;
        CHECK_MSG(kv->type == GGUF_TYPE_ARRAY && kv->elem_type == a->type && kv->n_elems == a->n,
                  "%s: type %d elem %d n %llu", a->key, (int)kv->type, (int)kv->elem_type,
                  (unsigned long long)kv->n_elems);
        if (a->n)
            CHECK_MSG(memcmp(kv->data, a->data, a->n * a->elem_size) == 0, "%s: values differ",
                      a->key);
    }
    const gguf_kv *kv = NULL;
    CHECK_OK(gguf_get_array(f, "arr.f32", GGUF_TYPE_FLOAT32, &kv));
    if (kv)
        for (uint64_t i = 0; i < kv->n_elems; i++) CHECK(gguf_array_f32(kv, i) == arr_f32[i]);
    kv = NULL;
    CHECK_OK(gguf_get_array(f, "arr.i32", GGUF_TYPE_INT32, &kv));
    if (kv)
        for (uint64_t i = 0; i < kv->n_elems; i++) CHECK(gguf_array_i32(kv, i) == arr_i32[i]);

    kv = NULL;
    CHECK_OK(gguf_get_array(f, "arr.str", GGUF_TYPE_STRING, &kv));
    if (kv) {
        CHECK(kv->n_elems == 4);
        gguf_str strs[4];
        gguf_array_strings(kv, strs);
        for (int i = 0; i < 4; i++)
            CHECK_MSG(str_is(strs[i], str_items[i], str_lens[i]), "arr.str[%d]", i);
    }
    kv = NULL;
    CHECK_OK(gguf_get_array(f, "arr.str_empty", GGUF_TYPE_STRING, &kv));
    CHECK(kv && kv->n_elems == 0);

    uint64_t prev_end = 0;
    for (size_t i = 0; i < N_TENSORS; i++) {
        const tensor_spec *spec = &tensor_specs[i];
        const gguf_tensor *t = gguf_find_tensor(f, spec->name);
        CHECK_MSG(t != NULL, "tensor %s missing", spec->name);
        if (!t) continue;
        CHECK(t == &f->tensors[i]); /* in the order they were added */
        CHECK_MSG(t->type == spec->type && t->n_dims == spec->n_dims, "%s: type %d dims %u",
                  spec->name, (int)t->type, t->n_dims);
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
            CHECK_MSG(t->ne[d] == (d < spec->n_dims ? spec->ne[d] : 1), "%s: ne[%u] = %llu",
                      spec->name, d, (unsigned long long)t->ne[d]);
        CHECK_MSG(t->n_bytes == spec->n_bytes, "%s: %llu bytes, expected %zu", spec->name,
                  (unsigned long long)t->n_bytes, spec->n_bytes);
        CHECK_MSG(t->offset % 32 == 0, "%s: offset %llu", spec->name,
                  (unsigned long long)t->offset);
        CHECK(t->offset >= prev_end);
        prev_end = t->offset + t->n_bytes;
        CHECK((const uint8_t *)t->data == f->base + f->data_offset + t->offset);
        CHECK((uintptr_t)t->data % 32 == 0 || !f->mapped); /* the map is page-aligned */
        CHECK(f->data_offset + prev_end <= f->size);
        CHECK_MSG(memcmp(t->data, tensor_data[i], spec->n_bytes) == 0, "%s: data differs",
                  spec->name);
    }
    CHECK(gguf_find_tensor(f, "t.f32") == NULL);
    CHECK(gguf_find_kv(f, "k.u3") == NULL);
}

static void test_round_trip(void) {
    for (size_t i = 0; i < N_TENSORS; i++) {
        tensor_data[i] = malloc(tensor_specs[i].n_bytes);
        for (size_t j = 0; j < tensor_specs[i].n_bytes; j++) tensor_data[i][j] = rand_byte();
    }
    gguf_writer *w = make_full_writer();
    if (!w) return;

    uint8_t *buf = NULL;
    size_t size = 0;
    CHECK_OK(gguf_writer_write_memory(w, &buf, &size));
    CHECK(size > 0 && size % 32 == 0); /* the last tensor is padded too */
    gguf_file *f = NULL;
    CHECK_OK(gguf_open_memory(buf, size, &f));
    if (f) {
        CHECK(f->base == buf && f->size == size && !f->mapped);
        check_full_file(f);
    }
    gguf_close(f);

    /* The same through a file: identical bytes, the same parse, no temporary left behind. */
    char path[4096];
    snprintf(path, sizeof path, "%s", test_tmp_path("gguf-round-trip.gguf"));
    remove(path);
    CHECK_OK(gguf_writer_write(w, path));
    size_t file_size = 0;
    char *file_bytes = test_read_file(path, &file_size);
    CHECK(file_bytes && file_size == size && memcmp(file_bytes, buf, size) == 0);
    free(file_bytes);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    struct stat st;
    CHECK(stat(tmp, &st) != 0);
    f = NULL;
    CHECK_OK(gguf_open(path, &f));
    if (f) {
        CHECK(f->mapped == 1 && f->size == size);
        check_full_file(f);
    }
    gguf_close(f);

    /* Writing the same writer again gives the same bytes. */
    uint8_t *buf2 = NULL;
    size_t size2 = 0;
    CHECK_OK(gguf_writer_write_memory(w, &buf2, &size2));
    CHECK(size2 == size && buf2 && memcmp(buf, buf2, size) == 0);
    mem_free(buf2);

    /* A file in a folder that does not exist cannot be written. */
    CHECK_FAIL(gguf_writer_write(w, test_tmp_path("no-such-dir/x.gguf")), LMOE_ERR_IO,
               "cannot create");

    gguf_writer_free(w);
    mem_free(buf);
    for (size_t i = 0; i < N_TENSORS; i++) free(tensor_data[i]);
}

/* A writer with metadata only: no tensors, no padding, no data section. */
static void test_metadata_only(void) {
    gguf_writer *w = NULL;
    CHECK_OK(gguf_writer_create(&w));
    CHECK_OK(gguf_writer_set_u32(w, "a", 1));
    uint8_t *buf = NULL;
    size_t size = 0;
    CHECK_OK(gguf_writer_write_memory(w, &buf, &size));
    CHECK(size == 24 + 8 + 1 + 4 + 4);
    gguf_file *f = NULL;
    CHECK_OK(gguf_open_memory(buf, size, &f));
    CHECK(f && f->n_tensors == 0 && f->n_kv == 1 && f->tensors == NULL);
    gguf_close(f);
    mem_free(buf);
    gguf_writer_free(w);

    /* An empty writer gives the 24-byte header, which opens. */
    CHECK_OK(gguf_writer_create(&w));
    CHECK_OK(gguf_writer_write_memory(w, &buf, &size));
    CHECK(size == 24);
    f = NULL;
    CHECK_OK(gguf_open_memory(buf, size, &f));
    CHECK(f && f->n_tensors == 0 && f->n_kv == 0);
    gguf_close(f);
    mem_free(buf);
    gguf_writer_free(w);
}

static void test_writer_refusals(void) {
    gguf_writer *w = NULL;
    CHECK_OK(gguf_writer_create(&w));
    static const float data[64];
    uint64_t ne[2] = {4, 2};

    CHECK_OK(gguf_writer_set_u32(w, "dup.key", 1));
    CHECK_FAIL(gguf_writer_set_u32(w, "dup.key", 2), LMOE_ERR_INVALID_ARGUMENT, "dup.key");
    CHECK_FAIL(gguf_writer_set_str(w, "dup.key", "x"), LMOE_ERR_INVALID_ARGUMENT, "twice");
    CHECK_FAIL(gguf_writer_set_array(w, "dup.key", GGUF_TYPE_UINT8, data, 1),
               LMOE_ERR_INVALID_ARGUMENT, "dup.key");
    CHECK_FAIL(gguf_writer_set_str_array(w, "dup.key", NULL, NULL, 0), LMOE_ERR_INVALID_ARGUMENT,
               "dup.key");
    /* the writer always aligns to 32; it refuses to claim another alignment */
    CHECK_FAIL(gguf_writer_set_u32(w, "general.alignment", 64), LMOE_ERR_INVALID_ARGUMENT,
               "general.alignment");
    CHECK_OK(gguf_writer_add_tensor(w, "dup.tensor", GGML_TYPE_F32, 2, ne, data));
    CHECK_FAIL(gguf_writer_add_tensor(w, "dup.tensor", GGML_TYPE_F32, 2, ne, data),
               LMOE_ERR_INVALID_ARGUMENT, "dup.tensor");
    /* A tensor and a key may share a name: they live in different namespaces. */
    CHECK_OK(gguf_writer_add_tensor(w, "dup.key", GGML_TYPE_F32, 1, ne, data));

    CHECK_FAIL(gguf_writer_set_array(w, "strs", GGUF_TYPE_STRING, data, 1),
               LMOE_ERR_INVALID_ARGUMENT, "strs");
    CHECK_FAIL(gguf_writer_set_array(w, "nested", GGUF_TYPE_ARRAY, data, 1),
               LMOE_ERR_INVALID_ARGUMENT, "nested");
    CHECK_FAIL(gguf_writer_set_array(w, "badtype", (gguf_type)99, data, 1),
               LMOE_ERR_INVALID_ARGUMENT, "badtype");
    CHECK_FAIL(gguf_writer_add_tensor(w, "dims0", GGML_TYPE_F32, 0, ne, data),
               LMOE_ERR_INVALID_ARGUMENT, "dims0");
    uint64_t ne5[5] = {1, 1, 1, 1, 1};
    CHECK_FAIL(gguf_writer_add_tensor(w, "dims5", GGML_TYPE_F32, 5, ne5, data),
               LMOE_ERR_INVALID_ARGUMENT, "dims5");
    uint64_t ne_ragged[1] = {33};
    lmoe_status st = gguf_writer_add_tensor(w, "ragged", GGML_TYPE_Q4_0, 1, ne_ragged, data);
    CHECK_MSG(st != LMOE_OK && strstr(lmoe_last_error(), "ragged"), "ragged q4_0 -> %d (%s)",
              (int)st, lmoe_last_error());
    CHECK_FAIL(gguf_writer_add_tensor(w, "q4_1", (ggml_type)3, 1, ne, data), LMOE_ERR_UNSUPPORTED,
               "q4_1");
    uint64_t ne_part_group[2] = {32, 24}; /* q4_0_r16 needs whole groups of 16 rows */
    st = gguf_writer_add_tensor(w, "partgroup", LMOE_TYPE_Q4_0_R16, 2, ne_part_group, data);
    CHECK_MSG(st == LMOE_ERR_BAD_FILE && strstr(lmoe_last_error(), "groups of 16"),
              "q4_0_r16 with 24 rows -> %d (%s)", (int)st, lmoe_last_error());
    st = gguf_writer_add_tensor(w, "partgroup8", LMOE_TYPE_Q8_0_R16, 2, ne_part_group, data);
    CHECK_MSG(st == LMOE_ERR_BAD_FILE && strstr(lmoe_last_error(), "q8_0_r16"),
              "q8_0_r16 with 24 rows -> %d (%s)", (int)st, lmoe_last_error());
    uint64_t ne_zero[2] = {4, 0};
    st = gguf_writer_add_tensor(w, "zero", GGML_TYPE_F32, 2, ne_zero, data);
    CHECK_MSG(st != LMOE_OK && strstr(lmoe_last_error(), "zero"), "zero dim -> %d (%s)", (int)st,
              lmoe_last_error());

    /* The refused calls left nothing behind: one key, two tensors, first values. */
    uint8_t *buf = NULL;
    size_t size = 0;
    CHECK_OK(gguf_writer_write_memory(w, &buf, &size));
    gguf_file *f = NULL;
    CHECK_OK(gguf_open_memory(buf, size, &f));
    if (f) {
        CHECK(f->n_kv == 1 && f->n_tensors == 2);
        uint32_t v = 0;
        CHECK_OK(gguf_get_u32(f, "dup.key", &v));
        CHECK(v == 1);
        CHECK(gguf_str_eq(f->tensors[0].name, "dup.tensor"));
        CHECK(f->tensors[0].ne[0] == 4 && f->tensors[0].ne[1] == 2 && f->tensors[0].n_dims == 2);
        CHECK(gguf_str_eq(f->tensors[1].name, "dup.key"));
    }
    gguf_close(f);
    mem_free(buf);
    gguf_writer_free(w);
    gguf_writer_free(NULL);
}

/* ------------------------------------------------------------------------------------------------
 * scalars of every type and the typed getters (a file built byte by byte: the writer has setters
 * only for the types libllamamoe writes)
 * ---------------------------------------------------------------------------------------------- */

typedef struct bytes {
    uint8_t data[4096];
    size_t size;
} bytes;

static void put(bytes *b, const void *p, size_t n) {
    if (b->size + n > sizeof b->data) abort();
    memcpy(b->data + b->size, p, n);
    b->size += n;
}
static void put32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put64(bytes *b, uint64_t v) { put(b, &v, 8); }
static void put_key(bytes *b, const char *key, gguf_type type) {
    put64(b, strlen(key));
    put(b, key, strlen(key));
    put32(b, type);
}

static void build_scalars(bytes *b, uint64_t *n_kv) {
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    uint32_t u32 = 4000000000u;
    int32_t i32 = -2000000000;
    float f32 = 1.5f;
    uint8_t bool_true = 1;
    uint64_t u64 = 1ull << 40, u64_big = (1ull << 63) + 1, u64_small = 7;
    int64_t i64 = -(1ll << 40), i64_small = 123, i64_neg = -1;
    double f64 = 2.25, f64_huge = 1e300;
    float f32_nan = NAN;

    put(b, "GGUF", 4);
    put32(b, 3);
    put64(b, 0);
    size_t n_kv_at = b->size;
    put64(b, 0);
    uint64_t n = 0;
#define SCALAR(key, type, var) (put_key(b, key, type), put(b, &var, sizeof var), n++)
    SCALAR("k.u8", GGUF_TYPE_UINT8, u8);
    SCALAR("k.i8", GGUF_TYPE_INT8, i8);
    SCALAR("k.u16", GGUF_TYPE_UINT16, u16);
    SCALAR("k.i16", GGUF_TYPE_INT16, i16);
    SCALAR("k.u32", GGUF_TYPE_UINT32, u32);
    SCALAR("k.i32", GGUF_TYPE_INT32, i32);
    SCALAR("k.f32", GGUF_TYPE_FLOAT32, f32);
    SCALAR("k.bool", GGUF_TYPE_BOOL, bool_true);
    SCALAR("k.u64", GGUF_TYPE_UINT64, u64);
    SCALAR("k.u64_big", GGUF_TYPE_UINT64, u64_big);
    SCALAR("k.u64_small", GGUF_TYPE_UINT64, u64_small);
    SCALAR("k.i64", GGUF_TYPE_INT64, i64);
    SCALAR("k.i64_small", GGUF_TYPE_INT64, i64_small);
    SCALAR("k.i64_neg", GGUF_TYPE_INT64, i64_neg);
    SCALAR("k.f64", GGUF_TYPE_FLOAT64, f64);
    SCALAR("k.f64_huge", GGUF_TYPE_FLOAT64, f64_huge);
    SCALAR("k.f32_nan", GGUF_TYPE_FLOAT32, f32_nan);
#undef SCALAR
    put_key(b, "k.str", GGUF_TYPE_STRING);
    put64(b, 5);
    put(b, "hello", 5);
    n++;
    put_key(b, "k.arr", GGUF_TYPE_ARRAY);
    put32(b, GGUF_TYPE_UINT32);
    put64(b, 2);
    put32(b, 1);
    put32(b, 2);
    n++;
    memcpy(b->data + n_kv_at, &n, 8);
    *n_kv = n;
}

static void test_scalars_and_getters(void) {
    static bytes b;
    uint64_t n_kv = 0;
    build_scalars(&b, &n_kv);
    gguf_file *f = NULL;
    CHECK_OK(gguf_open_memory(b.data, b.size, &f));
    if (!f) return;
    CHECK(f->n_kv == n_kv && f->n_tensors == 0);

    /* every scalar type is recognised, with its raw value */
    static const struct { const char *key; gguf_type type; } types[] = {
        {"k.u8", GGUF_TYPE_UINT8},     {"k.i8", GGUF_TYPE_INT8},      {"k.u16", GGUF_TYPE_UINT16},
        {"k.i16", GGUF_TYPE_INT16},    {"k.u32", GGUF_TYPE_UINT32},   {"k.i32", GGUF_TYPE_INT32},
        {"k.f32", GGUF_TYPE_FLOAT32},  {"k.bool", GGUF_TYPE_BOOL},    {"k.u64", GGUF_TYPE_UINT64},
        {"k.i64", GGUF_TYPE_INT64},    {"k.f64", GGUF_TYPE_FLOAT64},  {"k.str", GGUF_TYPE_STRING},
        {"k.arr", GGUF_TYPE_ARRAY},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const gguf_kv *kv = gguf_find_kv(f, types[i].key);
        CHECK_MSG(kv && kv->type == types[i].type, "%s", types[i].key);
    }
    uint64_t raw64 = 0;
    memcpy(&raw64, gguf_find_kv(f, "k.u64")->data, 8);
    CHECK(raw64 == 1ull << 40);
    double rawf64 = 0;
    memcpy(&rawf64, gguf_find_kv(f, "k.f64")->data, 8);
    CHECK(rawf64 == 2.25);

    /* integer getters accept any integer type whose value fits */
    uint32_t u = 0;
    int32_t i = 0;
    CHECK_OK(gguf_get_u32(f, "k.u8", &u));
    CHECK(u == 200);
    CHECK_OK(gguf_get_i32(f, "k.u8", &i));
    CHECK(i == 200);
    CHECK_OK(gguf_get_i32(f, "k.i8", &i));
    CHECK(i == -100);
    CHECK_OK(gguf_get_u32(f, "k.u16", &u));
    CHECK(u == 60000);
    CHECK_OK(gguf_get_i32(f, "k.i16", &i));
    CHECK(i == -30000);
    CHECK_OK(gguf_get_u32(f, "k.u32", &u));
    CHECK(u == 4000000000u);
    CHECK_OK(gguf_get_i32(f, "k.i32", &i));
    CHECK(i == -2000000000);
    CHECK_OK(gguf_get_u32(f, "k.u64_small", &u));
    CHECK(u == 7);
    CHECK_OK(gguf_get_i32(f, "k.u64_small", &i));
    CHECK(i == 7);
    CHECK_OK(gguf_get_u32(f, "k.i64_small", &u));
    CHECK(u == 123);
    CHECK_OK(gguf_get_i32(f, "k.i64_neg", &i));
    CHECK(i == -1);

    /* ... and refuse values that do not fit, naming the key; the output is left alone */
    u = 99;
    i = 99;
    CHECK_FAIL(gguf_get_u32(f, "k.i8", &u), LMOE_ERR_BAD_FILE, "k.i8");
    CHECK_FAIL(gguf_get_u32(f, "k.i16", &u), LMOE_ERR_BAD_FILE, "does not fit in uint32");
    CHECK_FAIL(gguf_get_u32(f, "k.i32", &u), LMOE_ERR_BAD_FILE, "k.i32");
    CHECK_FAIL(gguf_get_i32(f, "k.u32", &i), LMOE_ERR_BAD_FILE, "does not fit in int32");
    CHECK_FAIL(gguf_get_u32(f, "k.u64", &u), LMOE_ERR_BAD_FILE, "k.u64");
    CHECK_FAIL(gguf_get_i32(f, "k.u64", &i), LMOE_ERR_BAD_FILE, "k.u64");
    CHECK_FAIL(gguf_get_u32(f, "k.u64_big", &u), LMOE_ERR_BAD_FILE, "out of range");
    CHECK_FAIL(gguf_get_i32(f, "k.i64", &i), LMOE_ERR_BAD_FILE, "k.i64");
    CHECK_FAIL(gguf_get_u32(f, "k.i64_neg", &u), LMOE_ERR_BAD_FILE, "k.i64_neg");
    CHECK(u == 99 && i == 99);

    /* floats: f32 and f64; not finite is refused */
    float x = 0;
    CHECK_OK(gguf_get_f32(f, "k.f32", &x));
    CHECK(x == 1.5f);
    CHECK_OK(gguf_get_f32(f, "k.f64", &x));
    CHECK(x == 2.25f);
    CHECK_FAIL(gguf_get_f32(f, "k.f64_huge", &x), LMOE_ERR_BAD_FILE, "k.f64_huge");
    CHECK_FAIL(gguf_get_f32(f, "k.f32_nan", &x), LMOE_ERR_BAD_FILE, "finite");

    bool bo = false;
    CHECK_OK(gguf_get_bool(f, "k.bool", &bo));
    CHECK(bo == true);
    gguf_str s = {0};
    CHECK_OK(gguf_get_str(f, "k.str", &s));
    CHECK(gguf_str_eq(s, "hello"));

    /* wrong types: BAD_FILE naming the key and the types */
    CHECK_FAIL(gguf_get_u32(f, "k.str", &u), LMOE_ERR_BAD_FILE, "k.str");
    CHECK_FAIL(gguf_get_u32(f, "k.str", &u), LMOE_ERR_BAD_FILE, "expected an integer");
    CHECK_FAIL(gguf_get_i32(f, "k.f32", &i), LMOE_ERR_BAD_FILE, "k.f32");
    CHECK_FAIL(gguf_get_u32(f, "k.bool", &u), LMOE_ERR_BAD_FILE, "k.bool");
    CHECK_FAIL(gguf_get_f32(f, "k.u32", &x), LMOE_ERR_BAD_FILE, "k.u32");
    CHECK_FAIL(gguf_get_f32(f, "k.str", &x), LMOE_ERR_BAD_FILE, "expected float32");
    CHECK_FAIL(gguf_get_bool(f, "k.u8", &bo), LMOE_ERR_BAD_FILE, "k.u8");
    CHECK_FAIL(gguf_get_bool(f, "k.u8", &bo), LMOE_ERR_BAD_FILE, "expected bool");
    CHECK_FAIL(gguf_get_str(f, "k.u32", &s), LMOE_ERR_BAD_FILE, "k.u32");
    CHECK_FAIL(gguf_get_str(f, "k.u32", &s), LMOE_ERR_BAD_FILE, "expected string");
    CHECK_FAIL(gguf_get_u32(f, "k.arr", &u), LMOE_ERR_BAD_FILE, "k.arr");
    CHECK_FAIL(gguf_get_str(f, "k.arr", &s), LMOE_ERR_BAD_FILE, "array");
    const gguf_kv *kv = NULL;
    CHECK_FAIL(gguf_get_array(f, "k.u32", GGUF_TYPE_UINT32, &kv), LMOE_ERR_BAD_FILE, "k.u32");
    CHECK_FAIL(gguf_get_array(f, "k.arr", GGUF_TYPE_INT32, &kv), LMOE_ERR_BAD_FILE,
               "expected an array of int32");
    CHECK(kv == NULL);
    CHECK_OK(gguf_get_array(f, "k.arr", GGUF_TYPE_UINT32, &kv));
    CHECK(kv && kv->n_elems == 2 && gguf_array_i32(kv, 1) == 2);

    /* absent keys: the plain getters fail naming the key */
    CHECK_FAIL(gguf_get_u32(f, "k.absent", &u), LMOE_ERR_BAD_FILE, "k.absent");
    CHECK_FAIL(gguf_get_i32(f, "k.absent", &i), LMOE_ERR_BAD_FILE, "missing");
    CHECK_FAIL(gguf_get_f32(f, "k.absent", &x), LMOE_ERR_BAD_FILE, "k.absent");
    CHECK_FAIL(gguf_get_bool(f, "k.absent", &bo), LMOE_ERR_BAD_FILE, "k.absent");
    CHECK_FAIL(gguf_get_str(f, "k.absent", &s), LMOE_ERR_BAD_FILE, "k.absent");
    CHECK_FAIL(gguf_get_array(f, "k.absent", GGUF_TYPE_UINT8, &kv), LMOE_ERR_BAD_FILE,
               "k.absent");

    /* the optional getters leave the value alone when the key is absent ... */
    u = 11;
    i = -12;
    x = 13.5f;
    bo = true;
    CHECK_OK(gguf_get_u32_opt(f, "k.absent", &u));
    CHECK_OK(gguf_get_i32_opt(f, "k.absent", &i));
    CHECK_OK(gguf_get_f32_opt(f, "k.absent", &x));
    CHECK_OK(gguf_get_bool_opt(f, "k.absent", &bo));
    CHECK(u == 11 && i == -12 && x == 13.5f && bo == true);
    /* ... read it when present, and still refuse a wrong type or range */
    CHECK_OK(gguf_get_u32_opt(f, "k.u16", &u));
    CHECK(u == 60000);
    CHECK_OK(gguf_get_i32_opt(f, "k.i8", &i));
    CHECK(i == -100);
    CHECK_OK(gguf_get_f32_opt(f, "k.f64", &x));
    CHECK(x == 2.25f);
    bo = false;
    CHECK_OK(gguf_get_bool_opt(f, "k.bool", &bo));
    CHECK(bo == true);
    CHECK_FAIL(gguf_get_u32_opt(f, "k.str", &u), LMOE_ERR_BAD_FILE, "k.str");
    CHECK_FAIL(gguf_get_i32_opt(f, "k.u32", &i), LMOE_ERR_BAD_FILE, "k.u32");
    CHECK_FAIL(gguf_get_f32_opt(f, "k.f32_nan", &x), LMOE_ERR_BAD_FILE, "k.f32_nan");
    CHECK_FAIL(gguf_get_bool_opt(f, "k.i8", &bo), LMOE_ERR_BAD_FILE, "k.i8");
    gguf_close(f);

    /* A bool scalar must be 0 or 1. */
    size_t at = 0;
    for (size_t p = 0; p + 6 <= b.size; p++)
        if (memcmp(b.data + p, "k.bool", 6) == 0) at = p + 6 + 4;
    CHECK(at > 0 && b.data[at] == 1);
    b.data[at] = 2;
    f = NULL;
    CHECK_FAIL(gguf_open_memory(b.data, b.size, &f), LMOE_ERR_BAD_FILE, "k.bool");
    CHECK(f == NULL);
}

/* ------------------------------------------------------------------------------------------------
 * versions and small things
 * ---------------------------------------------------------------------------------------------- */

static void test_versions(void) {
    gguf_writer *w = NULL;
    CHECK_OK(gguf_writer_create(&w));
    static const float data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint64_t ne[1] = {8};
    CHECK_OK(gguf_writer_set_str(w, "general.architecture", "llama"));
    CHECK_OK(gguf_writer_add_tensor(w, "x", GGML_TYPE_F32, 1, ne, data));
    uint8_t *buf = NULL;
    size_t size = 0;
    CHECK_OK(gguf_writer_write_memory(w, &buf, &size));
    gguf_writer_free(w);
    if (!buf) return;
    uint32_t version = 0;
    memcpy(&version, buf + 4, 4);
    CHECK(version == 3);

    gguf_file *f = NULL;
    uint32_t v2 = 2;
    memcpy(buf + 4, &v2, 4);
    CHECK_OK(gguf_open_memory(buf, size, &f));
    CHECK(f && f->version == 2 && f->n_tensors == 1);
    if (f && f->n_tensors == 1) CHECK(memcmp(f->tensors[0].data, data, sizeof data) == 0);
    gguf_close(f);

    /* ... and through a mapped file */
    const char *path = test_tmp_path("gguf-v2.gguf");
    CHECK(test_write_file(path, buf, size) == 0);
    f = NULL;
    CHECK_OK(gguf_open(path, &f));
    CHECK(f && f->version == 2);
    gguf_close(f);

    static const uint32_t bad_versions[] = {0, 1, 4, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof bad_versions / sizeof bad_versions[0]; i++) {
        memcpy(buf + 4, &bad_versions[i], 4);
        gguf_file sentinel;
        f = &sentinel; /* must be reset to NULL on failure */
        CHECK_FAIL(gguf_open_memory(buf, size, &f), LMOE_ERR_UNSUPPORTED, "version");
        CHECK(f == NULL);
    }
    mem_free(buf);
}

static void test_open_arguments(void) {
    gguf_file *f = NULL;
    CHECK_FAIL(gguf_open_memory(NULL, 0, &f), LMOE_ERR_BAD_FILE, "empty");
    CHECK_FAIL(gguf_open_memory(NULL, 10, &f), LMOE_ERR_INVALID_ARGUMENT, "NULL");
    CHECK_FAIL(gguf_open_memory("GGUF", 4, NULL), LMOE_ERR_INVALID_ARGUMENT, "NULL");
    CHECK_FAIL(gguf_open_memory("GGU", 3, &f), LMOE_ERR_BAD_FILE, "GGUF");
    CHECK_FAIL(gguf_open_memory("GGUF", 4, &f), LMOE_ERR_BAD_FILE, "version");
    CHECK_FAIL(gguf_open(NULL, &f), LMOE_ERR_INVALID_ARGUMENT, "NULL");
    CHECK_FAIL(gguf_open(test_tmp_path("gguf-does-not-exist.gguf"), NULL),
               LMOE_ERR_INVALID_ARGUMENT, "NULL");
    CHECK_FAIL(gguf_open(test_tmp_path("gguf-does-not-exist.gguf"), &f), LMOE_ERR_IO,
               "gguf-does-not-exist.gguf");
    CHECK(f == NULL);
    gguf_close(NULL);

    CHECK(strcmp(ggml_type_name(GGML_TYPE_Q4_0), "q4_0") == 0);
    CHECK(strcmp(ggml_type_name(LMOE_TYPE_Q4_0_R16), "q4_0_r16") == 0);
    CHECK(strcmp(ggml_type_name(LMOE_TYPE_Q8_0_R16), "q8_0_r16") == 0);
    CHECK(strcmp(ggml_type_name((ggml_type)3), "unknown") == 0);
    CHECK(ggml_type_block_bytes(GGML_TYPE_Q8_0) == 34);
    CHECK(ggml_type_block_elems(GGML_TYPE_Q8_0) == 32);
    CHECK(ggml_type_block_bytes(GGML_TYPE_Q4_0) == 18);
    CHECK(ggml_type_block_elems(GGML_TYPE_Q4_0) == 32);
    CHECK(ggml_type_block_bytes(GGML_TYPE_BF16) == 2 && ggml_type_block_elems(GGML_TYPE_BF16) == 1);
    CHECK(ggml_type_block_bytes((ggml_type)3) == 0);
    CHECK(strcmp(gguf_type_name(GGUF_TYPE_FLOAT64), "float64") == 0);
    CHECK(strcmp(gguf_type_name((gguf_type)13), "unknown") == 0);
    gguf_str s = {"abc", 3};
    CHECK(gguf_str_eq(s, "abc") && !gguf_str_eq(s, "ab") && !gguf_str_eq(s, "abcd"));
}

/* ------------------------------------------------------------------------------------------------
 * the real vocabulary-only LLaMA-2 tokenizer file (from llama.cpp)
 * ---------------------------------------------------------------------------------------------- */

static void test_real_vocab_file(void) {
    const char *path = test_model_path("tokenizer-tests/ggml-vocab-llama-spm.gguf");
    gguf_file *f = NULL;
    CHECK_OK(gguf_open(path, &f));
    if (!f) return;
    CHECK(f->version == 3);
    CHECK(f->n_tensors == 0);
    CHECK(f->n_kv == 22);
    CHECK(f->mapped == 1);
    const gguf_kv *kv = NULL;
    CHECK_OK(gguf_get_array(f, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &kv));
    CHECK(kv && kv->n_elems == 32000);
    if (kv && kv->n_elems == 32000) {
        gguf_str *strs = malloc(32000 * sizeof *strs);
        gguf_array_strings(kv, strs);
        CHECK(gguf_str_eq(strs[0], "<unk>"));
        CHECK(gguf_str_eq(strs[1], "<s>"));
        CHECK(gguf_str_eq(strs[2], "</s>"));
        CHECK(gguf_str_eq(strs[3], "<0x00>"));
        CHECK(gguf_str_eq(strs[258], "<0xFF>"));
        /* every string lies inside the file */
        for (uint32_t i = 0; i < 32000; i++)
            CHECK_MSG((const uint8_t *)strs[i].ptr >= f->base &&
                          (const uint8_t *)strs[i].ptr + strs[i].len <= f->base + f->size,
                      "token %u outside the file", i);
        free(strs);
    }
    CHECK_OK(gguf_get_array(f, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, &kv));
    CHECK(kv && kv->n_elems == 32000);
    CHECK_OK(gguf_get_array(f, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, &kv));
    CHECK(kv && kv->n_elems == 32000);
    if (kv && kv->n_elems == 32000) /* <unk> unknown, <s> control, <0x00> byte */
        CHECK(gguf_array_i32(kv, 0) == 2 && gguf_array_i32(kv, 1) == 3 &&
              gguf_array_i32(kv, 3) == 6);
    gguf_str s = {0};
    CHECK_OK(gguf_get_str(f, "tokenizer.ggml.model", &s));
    CHECK(gguf_str_eq(s, "llama"));
    CHECK_OK(gguf_get_str(f, "general.architecture", &s));
    CHECK(gguf_str_eq(s, "llama"));
    uint32_t u = 0;
    CHECK_OK(gguf_get_u32(f, "tokenizer.ggml.bos_token_id", &u));
    CHECK(u == 1);
    CHECK_OK(gguf_get_u32(f, "llama.block_count", &u));
    CHECK(u == 32);
    CHECK_OK(gguf_get_u32(f, "llama.embedding_length", &u));
    CHECK(u == 4096);
    bool b = false;
    CHECK_OK(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b));
    CHECK(b == true);
    gguf_close(f);

    /* The same bytes through gguf_open_memory (a heap copy of exactly the file's size, so any
     * read past its end is caught by sanitizers and valgrind). */
    size_t size = 0;
    char *bytes = test_read_file(path, &size);
    CHECK(bytes != NULL && size == 723869);
    f = NULL;
    if (bytes) CHECK_OK(gguf_open_memory(bytes, size, &f));
    CHECK(f && f->n_kv == 22 && f->n_tensors == 0);
    gguf_close(f);
    free(bytes);
}

int main(void) {
    test_round_trip();
    test_metadata_only();
    test_writer_refusals();
    test_scalars_and_getters();
    test_versions();
    test_open_arguments();
    /* The real file last: a missing models folder skips (exit 77) only after everything above has
     * run, and earlier failures are not hidden by the skip. */
    if (test_failures == 0) {
        test_require_models();
        test_real_vocab_file();
    }
    return test_finish("test_gguf");
}
