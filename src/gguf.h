/* gguf.h - GGUF v2/v3 reader (memory-mapped, every field bounds-checked) and writer.
 *
 * Format: "GGUF" magic, uint32 version, uint64 tensor count, uint64 key/value count, the key/value
 * pairs, the tensor infos, padding to general.alignment (default 32), then tensor data. All
 * little-endian. docs/FORMAT.md lists the keys and tensors libllamamoe writes. */
#ifndef LMOE_GGUF_H
#define LMOE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llamamoe.h"

/* Metadata value types, as numbered by the format. */
typedef enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

/* Tensor element types (ggml's numbering). Only these are understood; others are refused.
 * LMOE_TYPE_Q4_0_R16 and LMOE_TYPE_Q8_0_R16 are this library's own (docs/FORMAT.md): Q4_0's /
 * Q8_0's values with groups of 16 rows interleaved, numbered far above ggml's types so that no
 * ggml reader mistakes them for one. A tensor of them needs rows (ne[1]) in multiples of 16; their
 * sizes are Q4_0's and Q8_0's (18 and 34 bytes per 32). */
typedef enum ggml_type {
    GGML_TYPE_F32 = 0,
    GGML_TYPE_F16 = 1,
    GGML_TYPE_Q4_0 = 2,
    GGML_TYPE_Q8_0 = 8,
    GGML_TYPE_BF16 = 30,
    LMOE_TYPE_Q4_0_R16 = 1000,
    LMOE_TYPE_Q8_0_R16 = 1001
} ggml_type;

/* Rows a group of the _R16 types interleaves. */
#define LMOE_R16_ROWS 16

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* A string inside the mapped file: not NUL-terminated. */
typedef struct gguf_str {
    const char *ptr;
    uint64_t len;
} gguf_str;

typedef struct gguf_kv {
    gguf_str key;
    gguf_type type;          /* value type; GGUF_TYPE_ARRAY for arrays */
    gguf_type elem_type;     /* element type of an array (never ARRAY: nested arrays are refused) */
    uint64_t n_elems;        /* array length; 1 for scalars */
    const uint8_t *data;     /* scalar value, or first array element (strings: their length prefix) */
} gguf_kv;

typedef struct gguf_tensor {
    gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS]; /* elements per dimension, ne[0] fastest (row length); unused = 1 */
    ggml_type type;
    uint64_t offset;         /* from the start of the data section */
    uint64_t n_bytes;        /* size of the data, checked to lie inside the file */
    const void *data;        /* points into the map */
} gguf_tensor;

typedef struct gguf_file {
    const uint8_t *base;     /* the whole file (mapped, or the caller's buffer) */
    size_t size;
    int mapped;              /* 1 if base must be unmapped */
    uint32_t version;
    uint64_t n_kv;
    gguf_kv *kv;             /* n_kv entries, owned */
    uint64_t n_tensors;
    gguf_tensor *tensors;    /* n_tensors entries, owned */
    uint64_t alignment;
    uint64_t data_offset;    /* start of the tensor data section */
} gguf_file;

/* Maps and parses the file at path. On failure *out is NULL and the error names the field. */
lmoe_status gguf_open(const char *path, gguf_file **out);
/* Maps and parses an open file (read from its start; fd stays the caller's to close, at any time). */
lmoe_status gguf_open_fd(int fd, gguf_file **out);
/* Parses a caller's buffer (not copied; must outlive the gguf_file). */
lmoe_status gguf_open_memory(const void *data, size_t size, gguf_file **out);
void gguf_close(gguf_file *file);

/* Element size in bytes of a ggml type and its block length (1 for float types, 32 for Q4_0/Q8_0,
 * and Q4_0's 18 bytes per 32 for Q4_0_R16); 0 for a type this library does not know. */
size_t ggml_type_block_bytes(ggml_type type);
size_t ggml_type_block_elems(ggml_type type);
const char *ggml_type_name(ggml_type type);
/* Whether type interleaves groups of LMOE_R16_ROWS rows (Q4_0_R16, Q8_0_R16). */
static inline int ggml_type_is_r16(ggml_type type) {
    return type == LMOE_TYPE_Q4_0_R16 || type == LMOE_TYPE_Q8_0_R16;
}
const char *gguf_type_name(gguf_type type);

/* Lookup. Return NULL when absent. */
const gguf_kv *gguf_find_kv(const gguf_file *file, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *file, const char *name);

/* Typed getters. An absent key gives LMOE_ERR_BAD_FILE unless the caller checks gguf_find_kv first;
 * a key of the wrong type gives LMOE_ERR_BAD_FILE naming the key, the type expected and the type
 * found. Integer getters accept any integer type whose value fits. */
lmoe_status gguf_get_u32(const gguf_file *file, const char *key, uint32_t *out);
lmoe_status gguf_get_i32(const gguf_file *file, const char *key, int32_t *out);
lmoe_status gguf_get_f32(const gguf_file *file, const char *key, float *out);
lmoe_status gguf_get_bool(const gguf_file *file, const char *key, bool *out);
lmoe_status gguf_get_str(const gguf_file *file, const char *key, gguf_str *out);
/* Same, but leave *out unchanged and succeed when the key is absent. */
lmoe_status gguf_get_u32_opt(const gguf_file *file, const char *key, uint32_t *out);
lmoe_status gguf_get_i32_opt(const gguf_file *file, const char *key, int32_t *out);
lmoe_status gguf_get_f32_opt(const gguf_file *file, const char *key, float *out);
lmoe_status gguf_get_bool_opt(const gguf_file *file, const char *key, bool *out);
/* An array value: checks it is an array of elem_type and returns its kv. */
lmoe_status gguf_get_array(const gguf_file *file, const char *key, gguf_type elem_type,
                           const gguf_kv **out);
/* Fills out[0..kv->n_elems) with the strings of a string array (validated at open). */
void gguf_array_strings(const gguf_kv *kv, gguf_str *out);
/* Element i of a numeric array (no bounds check: i < kv->n_elems). */
float gguf_array_f32(const gguf_kv *kv, uint64_t i);
int32_t gguf_array_i32(const gguf_kv *kv, uint64_t i);
/* Compares a gguf_str with a C string. */
bool gguf_str_eq(gguf_str s, const char *cstr);

/* ---- writer ---- */

typedef struct gguf_writer gguf_writer;

lmoe_status gguf_writer_create(gguf_writer **out);
void gguf_writer_free(gguf_writer *w);
/* Keys are copied. Values are copied, except tensor data: that pointer must stay valid until
 * gguf_writer_write returns. Adding a key or tensor name twice is an error. */
lmoe_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t value);
lmoe_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t value);
lmoe_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t value);
lmoe_status gguf_writer_set_f32(gguf_writer *w, const char *key, float value);
lmoe_status gguf_writer_set_bool(gguf_writer *w, const char *key, bool value);
lmoe_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *value);
lmoe_status gguf_writer_set_str_n(gguf_writer *w, const char *key, const char *value, size_t len);
lmoe_status gguf_writer_set_array(gguf_writer *w, const char *key, gguf_type elem_type,
                                  const void *elems, uint64_t n_elems);
/* A string array from n (pointer, length) pairs. */
lmoe_status gguf_writer_set_str_array(gguf_writer *w, const char *key, const char *const *strs,
                                      const uint32_t *lens, uint64_t n);
/* Copies a key and its value as read from another file. */
lmoe_status gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv);
/* The same under another key (a renamed architecture prefix). */
lmoe_status gguf_writer_copy_kv_as(gguf_writer *w, const char *key, const gguf_kv *kv);
lmoe_status gguf_writer_add_tensor(gguf_writer *w, const char *name, ggml_type type,
                                   uint32_t n_dims, const uint64_t *ne, const void *data);
/* A tensor whose bytes are produced at write time (conversions of large checkpoints never hold
 * more than one converted tensor in memory): fill writes exactly n_bytes into dst. */
typedef lmoe_status (*gguf_tensor_fill_fn)(void *user, void *dst, size_t n_bytes);
lmoe_status gguf_writer_add_tensor_fill(gguf_writer *w, const char *name, ggml_type type,
                                        uint32_t n_dims, const uint64_t *ne,
                                        gguf_tensor_fill_fn fill, void *user);
/* Called after each tensor is written: (user, index, count, name, bytes). */
typedef void (*gguf_write_progress_fn)(void *user, size_t index, size_t count, const char *name,
                                       uint64_t n_bytes);
void gguf_writer_set_progress(gguf_writer *w, gguf_write_progress_fn fn, void *user);
/* Writes a GGUF v3 file (to path.tmp, then renamed, so a failure leaves no partial file). */
lmoe_status gguf_writer_write(gguf_writer *w, const char *path);
/* Same into a buffer from the library's allocator (for tests and fuzz seeds); the caller frees
 * *out with mem_free. */
lmoe_status gguf_writer_write_memory(gguf_writer *w, uint8_t **out, size_t *out_size);

#endif
