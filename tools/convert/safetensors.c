/* safetensors.c - reads safetensors files: an 8-byte little-endian header length N, N bytes of JSON
 * ({"__metadata__": {...}, name: {"dtype", "shape", "data_offsets": [begin, end)}, ...}, offsets
 * relative to the data section at 8 + N), then the raw little-endian data. Every field is checked
 * before use: JSON types, integer dims and offsets, shape against byte count, ranges inside the
 * data section, no two tensors overlapping, each tensor aligned to its element size. */
#include "checkpoint.h"

#include <stdlib.h>
#include <string.h>

#include "checkpoint_internal.h"
#include "error.h"
#include "json.h"

#define WHAT "safetensors header"
/* The reference implementation refuses larger headers too (a 7B header is about 30 KB). */
#define MAX_HEADER_BYTES 100000000u
/* 2^53: past this a JSON number (read as a double) may not be the integer that was written. */
#define MAX_EXACT_INTEGER 9007199254740992.0

static uint64_t load_u64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* A JSON number that is a non-negative integer held exactly. */
static int json_to_u64(const json_value *v, uint64_t *out) {
    if (!v || v->kind != JSON_NUMBER || !(v->number >= 0) || v->number > MAX_EXACT_INTEGER)
        return 0;
    uint64_t u = (uint64_t)v->number;
    if ((double)u != v->number) return 0;
    *out = u;
    return 1;
}

static lmoe_status read_dtype(const char *name, const json_value *v, ggml_type *type) {
    RETURN_ERROR_IF(!v || v->kind != JSON_STRING, LMOE_ERR_BAD_FILE,
                    WHAT ": tensor '%.200s': \"dtype\" is missing or not a string", name);
    static const struct { const char *name; ggml_type type; } known[] = {
        {"F32", GGML_TYPE_F32}, {"F16", GGML_TYPE_F16}, {"BF16", GGML_TYPE_BF16}};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strlen(known[i].name) == v->str_len && strcmp(known[i].name, v->str) == 0) {
            *type = known[i].type;
            return LMOE_OK;
        }
    return lmoe_error(LMOE_ERR_UNSUPPORTED,
                      WHAT ": tensor '%.200s' has dtype '%.32s' (F32, F16 and BF16 are supported)",
                      name, v->str);
}

/* Reads "shape" into t and returns the element count in *numel (checked against overflow). */
static lmoe_status read_shape(const char *name, const json_value *v, ckpt_tensor *t,
                              uint64_t *numel) {
    RETURN_ERROR_IF(!v || v->kind != JSON_ARRAY, LMOE_ERR_BAD_FILE,
                    WHAT ": tensor '%.200s': \"shape\" is missing or not an array", name);
    RETURN_ERROR_IF(v->n_items > CKPT_MAX_DIMS, LMOE_ERR_UNSUPPORTED,
                    WHAT ": tensor '%.200s' has %zu dimensions (at most %d are supported)", name,
                    v->n_items, CKPT_MAX_DIMS);
    t->n_dims = (uint32_t)v->n_items;
    *numel = 1;
    for (size_t d = 0; d < v->n_items; d++) {
        RETURN_ERROR_IF(!json_to_u64(&v->items[d], &t->shape[d]), LMOE_ERR_BAD_FILE,
                        WHAT ": tensor '%.200s': shape[%zu] is not a non-negative integer", name,
                        d);
        uint64_t dim = t->shape[d];
        RETURN_ERROR_IF(dim != 0 && *numel > UINT64_MAX / dim, LMOE_ERR_BAD_FILE,
                        WHAT ": tensor '%.200s': the element count of its shape overflows", name);
        *numel *= dim;
    }
    return LMOE_OK;
}

/* One header entry into t (name not yet copied). data_start is the offset of the data section in
 * the file and data_size its length. */
static lmoe_status read_tensor(const char *name, const json_value *info, const uint8_t *base,
                               uint64_t data_start, uint64_t data_size, ckpt_tensor *t) {
    RETURN_ERROR_IF(info->kind != JSON_OBJECT, LMOE_ERR_BAD_FILE,
                    WHAT ": entry '%.200s' is not an object", name);
    uint64_t numel;
    FORWARD_IF_ERROR(read_dtype(name, json_get(info, "dtype"), &t->type));
    FORWARD_IF_ERROR(read_shape(name, json_get(info, "shape"), t, &numel));

    const json_value *offsets = json_get(info, "data_offsets");
    uint64_t begin, end;
    RETURN_ERROR_IF(!offsets || offsets->kind != JSON_ARRAY || offsets->n_items != 2 ||
                        !json_to_u64(&offsets->items[0], &begin) ||
                        !json_to_u64(&offsets->items[1], &end),
                    LMOE_ERR_BAD_FILE,
                    WHAT ": tensor '%.200s': \"data_offsets\" is not two non-negative integers",
                    name);
    RETURN_ERROR_IF(begin > end || end > data_size, LMOE_ERR_BAD_FILE,
                    WHAT ": tensor '%.200s': data_offsets [%llu, %llu) are not inside the data "
                    "section of %llu bytes", name, (unsigned long long)begin,
                    (unsigned long long)end, (unsigned long long)data_size);

    uint64_t elem = ggml_type_block_bytes(t->type);
    RETURN_ERROR_IF(numel > UINT64_MAX / elem || numel * elem != end - begin, LMOE_ERR_BAD_FILE,
                    WHAT ": tensor '%.200s': shape holds %llu elements of %llu bytes, but "
                    "data_offsets span %llu bytes", name, (unsigned long long)numel,
                    (unsigned long long)elem, (unsigned long long)(end - begin));
    /* Consumers read the data in place as float / uint16_t arrays. */
    RETURN_ERROR_IF((data_start + begin) % elem != 0, LMOE_ERR_BAD_FILE,
                    WHAT ": tensor '%.200s' starts at file offset %llu, not a multiple of its "
                    "%llu-byte element", name, (unsigned long long)(data_start + begin),
                    (unsigned long long)elem);
    t->n_bytes = end - begin;
    t->data = base + data_start + begin;
    return LMOE_OK;
}

static int cmp_by_data(const void *a, const void *b) {
    const ckpt_tensor *x = *(const ckpt_tensor *const *)a, *y = *(const ckpt_tensor *const *)b;
    if (x->data != y->data) return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    return x->n_bytes < y->n_bytes ? -1 : x->n_bytes > y->n_bytes;
}

/* Sorted by start, each tensor must begin at or after the end of the one before. Two names for
 * the same bytes would let a writer hide one tensor inside another. */
static lmoe_status check_no_overlap(const ckpt_tensor *tensors, size_t n, const uint8_t *base) {
    if (n < 2) return LMOE_OK;
    const ckpt_tensor **sorted = malloc(n * sizeof *sorted);
    RETURN_ERROR_IF(!sorted, LMOE_ERR_OUT_OF_MEMORY, WHAT ": out of memory");
    for (size_t i = 0; i < n; i++) sorted[i] = &tensors[i];
    qsort(sorted, n, sizeof *sorted, cmp_by_data);
    lmoe_status status = LMOE_OK;
    for (size_t i = 1; i < n && status == LMOE_OK; i++) {
        const ckpt_tensor *prev = sorted[i - 1], *cur = sorted[i];
        uint64_t prev_begin = (uint64_t)((const uint8_t *)prev->data - base);
        uint64_t cur_begin = (uint64_t)((const uint8_t *)cur->data - base);
        if (cur_begin < prev_begin + prev->n_bytes)
            status = lmoe_error(LMOE_ERR_BAD_FILE,
                                WHAT ": tensors '%.200s' and '%.200s' overlap (file bytes "
                                "[%llu, %llu) and [%llu, %llu))", prev->name, cur->name,
                                (unsigned long long)prev_begin,
                                (unsigned long long)(prev_begin + prev->n_bytes),
                                (unsigned long long)cur_begin,
                                (unsigned long long)(cur_begin + cur->n_bytes));
    }
    free(sorted);
    return status;
}

/* Fills out->tensors from the parsed header object (out->n_tensors counts the ones with a name, so
 * ckpt_file_close frees a half-built list). */
static lmoe_status read_entries(const json_value *root, const uint8_t *base, uint64_t data_start,
                                uint64_t data_size, ckpt_file *out) {
    RETURN_ERROR_IF(root->kind != JSON_OBJECT, LMOE_ERR_BAD_FILE, WHAT ": not a JSON object");
    if (root->n_items > 0) {
        out->tensors = calloc(root->n_items, sizeof *out->tensors);
        RETURN_ERROR_IF(!out->tensors, LMOE_ERR_OUT_OF_MEMORY, WHAT ": out of memory");
    }
    for (size_t i = 0; i < root->n_items; i++) {
        const char *name = root->keys[i];
        if (strcmp(name, "__metadata__") == 0) {
            /* free-form strings such as {"format": "pt"}; nothing here is needed */
            RETURN_ERROR_IF(root->items[i].kind != JSON_OBJECT, LMOE_ERR_BAD_FILE,
                            WHAT ": \"__metadata__\" is not an object");
            continue;
        }
        ckpt_tensor *t = &out->tensors[out->n_tensors];
        FORWARD_IF_ERROR(read_tensor(name, &root->items[i], base, data_start, data_size, t));
        t->name = strdup(name);
        RETURN_ERROR_IF(!t->name, LMOE_ERR_OUT_OF_MEMORY, WHAT ": out of memory");
        out->n_tensors++;
    }
    FORWARD_IF_ERROR(ckpt_check_unique_names(out->tensors, out->n_tensors, WHAT));
    return check_no_overlap(out->tensors, out->n_tensors, base);
}

static lmoe_status parse_file(const uint8_t *base, size_t size, ckpt_file *out) {
    RETURN_ERROR_IF(size < 8, LMOE_ERR_BAD_FILE,
                    "safetensors: %zu bytes, shorter than the 8-byte header length", size);
    uint64_t header_bytes = load_u64_le(base);
    RETURN_ERROR_IF(header_bytes > size - 8, LMOE_ERR_BAD_FILE,
                    "safetensors: header length %llu runs past the end of the %zu-byte file",
                    (unsigned long long)header_bytes, size);
    RETURN_ERROR_IF(header_bytes > MAX_HEADER_BYTES, LMOE_ERR_BAD_FILE,
                    "safetensors: header length %llu is over the %u-byte limit",
                    (unsigned long long)header_bytes, MAX_HEADER_BYTES);
    json_value *root = json_parse((const char *)base + 8, (size_t)header_bytes);
    RETURN_ERROR_IF(!root, LMOE_ERR_BAD_FILE,
                    WHAT ": the %llu bytes after the length are not valid JSON",
                    (unsigned long long)header_bytes);
    uint64_t data_start = 8 + header_bytes;
    lmoe_status status = read_entries(root, base, data_start, size - data_start, out);
    json_free(root);
    return status;
}

lmoe_status safetensors_parse(const void *data, size_t size, ckpt_file *out) {
    RETURN_ERROR_IF(!out, LMOE_ERR_INVALID_ARGUMENT, "safetensors_parse: out is NULL");
    memset(out, 0, sizeof *out);
    RETURN_ERROR_IF(!data && size > 0, LMOE_ERR_INVALID_ARGUMENT, "safetensors_parse: no data");
    lmoe_status status = parse_file(data, size, out);
    if (status != LMOE_OK) {
        ckpt_file_close(out);
        return status;
    }
    out->map.data = data;
    out->map.size = size;
    return LMOE_OK;
}

lmoe_status safetensors_open(const char *path, ckpt_file *out) {
    return ckpt_open_with(path, out, safetensors_parse);
}
