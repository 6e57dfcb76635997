/* pytorch_zip.c - reads `torch.save` files (the zip format written since torch 1.6) without running
 * any code: the state-dict glue between the zip container (zip_archive.c) and the pickle machine
 * (pickle.c), and the pytorch_zip_* functions of checkpoint.h.
 *
 * The container is a ZIP archive of stored, uncompressed records: `<prefix>/data.pkl` (the
 * pickled state dict), `<prefix>/data/<key>` (one raw storage per key), `<prefix>/byteorder` in
 * torch >= 2.1 (must say "little"), and others this reader does not need (`version`,
 * `.data/serialization_id`, ...). The prefix is the file stem for some torch versions and
 * `archive` for others, so only the `/data.pkl` ending is relied on.
 *
 * data.pkl is run by the pickle machine with six globals allowed: collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 (and _rebuild_parameter, which wraps a tensor), and the
 * Float/Half/BFloat16 storage types named in persistent ids. This file gives them their meaning
 * (persistent ids become storages, which are zip records; _rebuild_tensor_v2 makes a contiguous
 * view of one) and walks the resulting dict {name: tensor} into ckpt_tensors. It is kept apart
 * from the container and the machine so that what torch's objects mean is in one place. */
#include "checkpoint.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_internal.h"
#include "error.h"
#include "pickle.h"
#include "zip_archive.h"

/* At most this many bytes of a name from the file go into a message. */
#define NAME_MAX_SHOWN 200
#define SHOWN(len) ((int)((len) < NAME_MAX_SHOWN ? (len) : NAME_MAX_SHOWN))

/* ---------------------------------------------------------------------------------------------
 * the globals a state dict uses, and the hooks that give them meaning
 * ------------------------------------------------------------------------------------------- */

static const char PICKLE_SUFFIX[] = "/data.pkl";

enum {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_PARAMETER,
    G_FLOAT_STORAGE,
    G_HALF_STORAGE,
    G_BFLOAT16_STORAGE
};

static const pk_allowed_global ALLOWED_GLOBALS[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER},
    {"torch", "FloatStorage", G_FLOAT_STORAGE},
    {"torch", "HalfStorage", G_HALF_STORAGE},
    {"torch", "BFloat16Storage", G_BFLOAT16_STORAGE},
};

/* What the hooks need: the archive, and data.pkl's record name, whose prefix[0, prefix_len)
 * (ending in '/') the storage and byteorder records share. */
typedef struct torch_zip {
    const zip_archive *zip;
    const char *prefix;
    size_t prefix_len;
} torch_zip;

static int str_is(const pk_value *v, const char *s) {
    return v->kind == PK_STR && v->str.len == strlen(s) && memcmp(v->str.ptr, s, v->str.len) == 0;
}

/* persistent_load for ('storage', <storage type>, '<key>', '<location>', numel): the storage's
 * bytes are the record <prefix>data/<key>. */
static lmoe_status persistent_load(unpickler *u, void *user, const pk_value *pid, pk_value *out) {
    const torch_zip *tz = user;
    const pk_value *f = pid->kind == PK_TUPLE ? pid->obj->items : NULL;
    PK_CHECK(u, !f || pid->obj->n_items != 5 || !str_is(&f[0], "storage") ||
                    f[1].kind != PK_GLOBAL || f[2].kind != PK_STR || f[4].kind != PK_INT ||
                    f[4].i < 0,
             LMOE_ERR_UNSUPPORTED,
             "persistent id is not ('storage', <type>, '<key>', '<location>', numel)");
    ggml_type type;
    switch (f[1].global) {
    case G_FLOAT_STORAGE: type = GGML_TYPE_F32; break;
    case G_HALF_STORAGE: type = GGML_TYPE_F16; break;
    case G_BFLOAT16_STORAGE: type = GGML_TYPE_BF16; break;
    default:
        PK_FAIL(u, LMOE_ERR_BAD_FILE,
                "persistent id's storage type is not FloatStorage, HalfStorage or BFloat16Storage");
    }

    char record[PK_MAX_GLOBAL_LINE * 2];
    const char *key = f[2].str.ptr;
    size_t key_len = f[2].str.len, len = tz->prefix_len + 5 + key_len;
    PK_CHECK(u, len > sizeof record, LMOE_ERR_BAD_FILE, "storage key of %zu bytes", key_len);
    memcpy(record, tz->prefix, tz->prefix_len);
    memcpy(record + tz->prefix_len, "data/", 5);
    memcpy(record + tz->prefix_len + 5, key, key_len);
    const zip_entry *e = zip_find(tz->zip, record, len);
    PK_CHECK(u, !e, LMOE_ERR_BAD_FILE, "storage '%.*s' has no zip record '%.*s'", SHOWN(key_len),
             key, SHOWN(len), record);
    const uint8_t *data;
    FORWARD_IF_ERROR(zip_record_data(tz->zip, e, &data));

    uint64_t elem = ggml_type_block_bytes(type), numel = (uint64_t)f[4].i;
    PK_CHECK(u, numel > e->size / elem, LMOE_ERR_BAD_FILE,
             "storage '%.*s' of %llu elements needs %llu bytes, its record has %llu",
             SHOWN(key_len), key, (unsigned long long)numel,
             numel > UINT64_MAX / elem ? UINT64_MAX : (unsigned long long)(numel * elem),
             (unsigned long long)e->size);
    /* consumers read tensors in place as float / uint16_t arrays; torch aligns records to 64 */
    PK_CHECK(u, (size_t)(data - tz->zip->base) % elem != 0, LMOE_ERR_UNSUPPORTED,
             "storage '%.*s' starts at file offset %zu, not a multiple of its %llu-byte element",
             SHOWN(key_len), key, (size_t)(data - tz->zip->base), (unsigned long long)elem);
    FORWARD_IF_ERROR(pk_new_obj(u, PK_STORAGE, out));
    out->obj->type = type;
    out->obj->data = data;
    out->obj->numel = numel;
    return LMOE_OK;
}

/* Reads a size or stride tuple of non-negative ints into dims; returns its length in *n. */
static lmoe_status read_dims(unpickler *u, const pk_value *v, const char *what, uint64_t *dims,
                             uint32_t *n) {
    PK_CHECK(u, v->kind != PK_TUPLE, LMOE_ERR_BAD_FILE, "tensor %s is not a tuple", what);
    PK_CHECK(u, v->obj->n_items > CKPT_MAX_DIMS, LMOE_ERR_UNSUPPORTED,
             "tensor with %zu dimensions (at most %d supported)", v->obj->n_items, CKPT_MAX_DIMS);
    for (size_t d = 0; d < v->obj->n_items; d++) {
        const pk_value *x = &v->obj->items[d];
        PK_CHECK(u, x->kind != PK_INT || x->i < 0, LMOE_ERR_BAD_FILE,
                 "tensor %s[%zu] is not a non-negative integer", what, d);
        dims[d] = (uint64_t)x->i;
    }
    *n = (uint32_t)v->obj->n_items;
    return LMOE_OK;
}

/* Row-major: stride[d] is the product of the sizes after d. A dim of size 1 may have any stride,
 * and an empty tensor is contiguous whatever its strides (as torch's is_contiguous says). */
static int is_contiguous(const uint64_t *size, const uint64_t *stride, uint32_t n,
                         uint64_t numel) {
    if (numel == 0) return 1;
    uint64_t expected = 1;
    for (uint32_t d = n; d-- > 0;) {
        if (size[d] != 1 && stride[d] != expected) return 0;
        expected *= size[d];
    }
    return 1;
}

static void format_dims(char *buf, size_t cap, const uint64_t *dims, uint32_t n) {
    size_t used = (size_t)snprintf(buf, cap, "(");
    for (uint32_t d = 0; d < n && used < cap; d++)
        used += (size_t)snprintf(buf + used, cap - used, d ? ", %llu" : "%llu",
                                 (unsigned long long)dims[d]);
    if (used < cap) snprintf(buf + used, cap - used, ")");
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks
 * [, metadata]): a view of the storage, which must be a plain contiguous block. */
static lmoe_status rebuild_tensor(unpickler *u, const pk_obj *args, pk_value *out) {
    PK_CHECK(u, args->n_items != 6 && args->n_items != 7, LMOE_ERR_UNSUPPORTED,
             "_rebuild_tensor_v2 with %zu arguments (6 or 7 expected)", args->n_items);
    const pk_value *a = args->items;
    PK_CHECK(u, a[0].kind != PK_STORAGE, LMOE_ERR_BAD_FILE,
             "_rebuild_tensor_v2's first argument is not a storage");
    PK_CHECK(u, a[1].kind != PK_INT || a[1].i < 0, LMOE_ERR_BAD_FILE,
             "_rebuild_tensor_v2's storage offset is not a non-negative integer");
    PK_CHECK(u, a[4].kind != PK_BOOL || a[5].kind != PK_DICT, LMOE_ERR_BAD_FILE,
             "_rebuild_tensor_v2's requires_grad or backward_hooks has the wrong type");
    uint64_t size[CKPT_MAX_DIMS], stride[CKPT_MAX_DIMS];
    uint32_t n_dims, n_strides;
    FORWARD_IF_ERROR(read_dims(u, &a[2], "size", size, &n_dims));
    FORWARD_IF_ERROR(read_dims(u, &a[3], "stride", stride, &n_strides));
    PK_CHECK(u, n_dims != n_strides, LMOE_ERR_BAD_FILE, "tensor has %u sizes but %u strides",
             n_dims, n_strides);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        PK_CHECK(u, size[d] != 0 && numel > UINT64_MAX / size[d], LMOE_ERR_BAD_FILE,
                 "tensor element count overflows");
        numel *= size[d];
    }
    if (!is_contiguous(size, stride, n_dims, numel)) {
        char sizes[160], strides[160];
        format_dims(sizes, sizeof sizes, size, n_dims);
        format_dims(strides, sizeof strides, stride, n_dims);
        PK_FAIL(u, LMOE_ERR_UNSUPPORTED,
                "tensor of size %s has strides %s: non-contiguous tensors are not supported "
                "(save tensor.contiguous())", sizes, strides);
    }
    const pk_obj *storage = a[0].obj;
    uint64_t offset = (uint64_t)a[1].i;
    PK_CHECK(u, offset > storage->numel || numel > storage->numel - offset, LMOE_ERR_BAD_FILE,
             "tensor needs elements [%llu, +%llu) of a storage of %llu elements",
             (unsigned long long)offset, (unsigned long long)numel,
             (unsigned long long)storage->numel);
    FORWARD_IF_ERROR(pk_new_obj(u, PK_TENSOR, out));
    pk_obj *t = out->obj;
    size_t elem = ggml_type_block_bytes(storage->type);
    t->type = storage->type;
    t->data = storage->data + offset * elem;
    t->numel = numel;
    t->n_dims = n_dims;
    memcpy(t->shape, size, n_dims * sizeof *size);
    return LMOE_OK;
}

/* REDUCE: only the three callables a state dict uses. */
static lmoe_status reduce(unpickler *u, void *user, int callable, const pk_obj *a, pk_value *out) {
    (void)user;
    switch (callable) {
    case G_ORDERED_DICT:
        PK_CHECK(u, a->n_items != 0, LMOE_ERR_UNSUPPORTED, "OrderedDict called with arguments");
        FORWARD_IF_ERROR(pk_new_obj(u, PK_DICT, out));
        break;
    case G_REBUILD_TENSOR_V2:
        FORWARD_IF_ERROR(rebuild_tensor(u, a, out));
        break;
    case G_REBUILD_PARAMETER: /* (tensor, requires_grad, backward_hooks): the tensor itself */
        PK_CHECK(u, a->n_items != 3 || a->items[0].kind != PK_TENSOR, LMOE_ERR_UNSUPPORTED,
                 "_rebuild_parameter with arguments other than (tensor, bool, hooks)");
        *out = a->items[0];
        break;
    default:
        PK_FAIL(u, LMOE_ERR_UNSUPPORTED,
                "calls a storage type; only OrderedDict and _rebuild_tensor_v2 are called in a "
                "state dict");
    }
    return LMOE_OK;
}

/* ---------------------------------------------------------------------------------------------
 * the state dict
 * ------------------------------------------------------------------------------------------- */

/* The record <prefix>/data.pkl, whatever the prefix; exactly one. */
static lmoe_status find_pickle(const zip_archive *zip, const zip_entry **out) {
    const size_t suffix_len = sizeof PICKLE_SUFFIX - 1;
    const zip_entry *found = zip_find_suffix(zip, PICKLE_SUFFIX, suffix_len, NULL);
    const zip_entry *e = found ? zip_find_suffix(zip, PICKLE_SUFFIX, suffix_len, found) : NULL;
    RETURN_ERROR_IF(e, LMOE_ERR_BAD_FILE,
                    "zip: two pickles, '%.*s' and '%.*s': not one torch.save file",
                    SHOWN(found->name_len), found->name, SHOWN(e->name_len), e->name);
    RETURN_ERROR_IF(!found, LMOE_ERR_BAD_FILE,
                    "zip: no '<prefix>/data.pkl' record: not a torch.save file");
    *out = found;
    return LMOE_OK;
}

/* torch >= 2.1 records the byte order of the storages in <prefix>/byteorder; older files have
 * none and are little-endian. The tensors are handed out as little-endian, so "big" is refused. */
static lmoe_status check_byte_order(const torch_zip *tz) {
    char name[NAME_MAX_SHOWN + 16];
    size_t len = tz->prefix_len + strlen("byteorder");
    if (len > sizeof name) return LMOE_OK; /* no such long prefix was ever written by torch */
    memcpy(name, tz->prefix, tz->prefix_len);
    memcpy(name + tz->prefix_len, "byteorder", len - tz->prefix_len);
    const zip_entry *e = zip_find(tz->zip, name, len);
    if (!e) return LMOE_OK;
    const uint8_t *data;
    FORWARD_IF_ERROR(zip_record_data(tz->zip, e, &data));
    RETURN_ERROR_IF(e->size != 6 || memcmp(data, "little", 6) != 0, LMOE_ERR_UNSUPPORTED,
                    "zip: record '%.*s' says the storages are not little-endian ('%.*s'); "
                    "only little-endian files are supported", SHOWN(len), name,
                    SHOWN(e->size < 16 ? e->size : 16), (const char *)data);
    return LMOE_OK;
}

/* The unpickled object must be a dict {str: tensor}; each entry becomes a ckpt_tensor. */
static lmoe_status collect_tensors(const unpickler *u, const pk_value *root, ckpt_file *out) {
    PK_CHECK(u, root->kind != PK_DICT, LMOE_ERR_UNSUPPORTED,
             "the pickled object is not a dict of tensors (a state dict)");
    const pk_obj *dict = root->obj;
    size_t n = dict->n_items / 2;
    if (n > 0) {
        out->tensors = calloc(n, sizeof *out->tensors);
        PK_CHECK(u, !out->tensors, LMOE_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const pk_value *key = &dict->items[2 * i], *value = &dict->items[2 * i + 1];
        PK_CHECK(u, key->kind != PK_STR, LMOE_ERR_UNSUPPORTED, "state dict key %zu is not a string",
                 i);
        PK_CHECK(u, memchr(key->str.ptr, 0, key->str.len) != NULL, LMOE_ERR_BAD_FILE,
                 "state dict key %zu contains a NUL byte", i);
        PK_CHECK(u, value->kind != PK_TENSOR, LMOE_ERR_UNSUPPORTED,
                 "state dict entry '%.*s' is not a tensor", SHOWN(key->str.len), key->str.ptr);
        ckpt_tensor *t = &out->tensors[out->n_tensors];
        t->name = malloc(key->str.len + 1);
        PK_CHECK(u, !t->name, LMOE_ERR_OUT_OF_MEMORY, "out of memory");
        memcpy(t->name, key->str.ptr, key->str.len);
        t->name[key->str.len] = 0;
        out->n_tensors++;
        const pk_obj *src = value->obj;
        t->type = src->type;
        t->n_dims = src->n_dims;
        memcpy(t->shape, src->shape, sizeof t->shape);
        t->data = src->data;
        t->n_bytes = src->numel * ggml_type_block_bytes(src->type); /* fits: checked vs record */
    }
    return ckpt_check_unique_names(out->tensors, out->n_tensors, "data.pkl");
}

/* A file that is not a zip but starts like a pickle was written by torch.save before torch 1.6. */
static lmoe_status explain_not_zip(const uint8_t *base, size_t size, lmoe_status status) {
    if (size >= 2 && base[0] == 0x80 && base[1] <= PK_MAX_PROTOCOL)
        return lmoe_error(LMOE_ERR_UNSUPPORTED,
                          "a legacy (pre-1.6, non-zip) torch.save file; load and save it with a "
                          "newer torch to convert it");
    return status;
}

lmoe_status pytorch_zip_parse(const void *data, size_t size, ckpt_file *out) {
    RETURN_ERROR_IF(!out, LMOE_ERR_INVALID_ARGUMENT, "pytorch_zip_parse: out is NULL");
    memset(out, 0, sizeof *out);
    RETURN_ERROR_IF(!data && size > 0, LMOE_ERR_INVALID_ARGUMENT, "pytorch_zip_parse: no data");
    zip_archive zip;
    torch_zip tz = {.zip = &zip};
    const pk_hooks hooks = {.globals = ALLOWED_GLOBALS,
                            .n_globals = sizeof ALLOWED_GLOBALS / sizeof ALLOWED_GLOBALS[0],
                            .persistent_load = persistent_load,
                            .reduce = reduce,
                            .user = &tz};
    const zip_entry *pickle = NULL;
    const uint8_t *code = NULL;
    unpickler u = {0};
    pk_value root;
    lmoe_status status = zip_archive_open(&zip, data, size);
    if (status != LMOE_OK) status = explain_not_zip(data, size, status);
    if (status == LMOE_OK) status = find_pickle(&zip, &pickle);
    if (status == LMOE_OK) status = zip_record_data(&zip, pickle, &code);
    if (status == LMOE_OK) {
        tz.prefix = pickle->name;
        tz.prefix_len = pickle->name_len - (sizeof PICKLE_SUFFIX - 2); /* keeps the '/' */
        pk_init(&u, code, (size_t)pickle->size, pickle->name, pickle->name_len, &hooks);
        status = check_byte_order(&tz);
    }
    if (status == LMOE_OK) status = pk_run(&u, &root);
    if (status == LMOE_OK) status = collect_tensors(&u, &root, out);
    pk_free(&u);
    zip_archive_close(&zip);
    if (status != LMOE_OK) {
        ckpt_file_close(out);
        return status;
    }
    out->map.data = data;
    out->map.size = size;
    return LMOE_OK;
}

lmoe_status pytorch_zip_open(const char *path, ckpt_file *out) {
    return ckpt_open_with(path, out, pytorch_zip_parse);
}
