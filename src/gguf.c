/* gguf.c - GGUF v2/v3 reader and writer.
 *
 * The reader never trusts the file: every count, length, offset and extent is checked against the
 * bytes that remain before it is used, and counts are checked against the smallest possible
 * encoding of their elements before anything is allocated for them, so a 100-byte file cannot ask
 * for gigabytes. Multi-byte values are read with memcpy (the map gives no alignment promise for
 * metadata) and assume a little-endian host. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "mem.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libllamamoe reads little-endian GGUF files and needs a little-endian host"
#endif

#define GGUF_MAGIC "GGUF"
/* Limits that no real file comes near; they keep hostile values from reaching arithmetic. */
#define GGUF_MAX_KEY_LEN 65535u
#define GGUF_MAX_NAME_LEN 4096u
#define GGUF_MAX_ALIGNMENT (1u << 20)

/* ------------------------------------------------------------------------------------------------
 * types
 * ---------------------------------------------------------------------------------------------- */

static const size_t gguf_type_sizes[GGUF_TYPE_COUNT] = {
    [GGUF_TYPE_UINT8] = 1,  [GGUF_TYPE_INT8] = 1,    [GGUF_TYPE_UINT16] = 2, [GGUF_TYPE_INT16] = 2,
    [GGUF_TYPE_UINT32] = 4, [GGUF_TYPE_INT32] = 4,   [GGUF_TYPE_FLOAT32] = 4, [GGUF_TYPE_BOOL] = 1,
    [GGUF_TYPE_STRING] = 0, [GGUF_TYPE_ARRAY] = 0,   [GGUF_TYPE_UINT64] = 8, [GGUF_TYPE_INT64] = 8,
    [GGUF_TYPE_FLOAT64] = 8,
};

const char *gguf_type_name(gguf_type type) {
    static const char *const names[GGUF_TYPE_COUNT] = {
        "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
        "bool",  "string", "array", "uint64", "int64", "float64",
    };
    return (unsigned)type < GGUF_TYPE_COUNT ? names[type] : "unknown";
}

size_t ggml_type_block_bytes(ggml_type type) {
    switch (type) {
    case GGML_TYPE_F32: return 4;
    case GGML_TYPE_F16: return 2;
    case GGML_TYPE_BF16: return 2;
    case GGML_TYPE_Q8_0:
    case LMOE_TYPE_Q8_0_R16: return 2 + 32; /* fp16 scale + 32 int8 */
    case GGML_TYPE_Q4_0:
    case LMOE_TYPE_Q4_0_R16: return 2 + 16; /* fp16 scale + 32 nibbles */
    }
    return 0;
}

size_t ggml_type_block_elems(ggml_type type) {
    switch (type) {
    case GGML_TYPE_F32:
    case GGML_TYPE_F16:
    case GGML_TYPE_BF16: return 1;
    case GGML_TYPE_Q8_0:
    case GGML_TYPE_Q4_0:
    case LMOE_TYPE_Q4_0_R16:
    case LMOE_TYPE_Q8_0_R16: return 32;
    }
    return 0;
}

const char *ggml_type_name(ggml_type type) {
    switch (type) {
    case GGML_TYPE_F32: return "f32";
    case GGML_TYPE_F16: return "f16";
    case GGML_TYPE_BF16: return "bf16";
    case GGML_TYPE_Q8_0: return "q8_0";
    case GGML_TYPE_Q4_0: return "q4_0";
    case LMOE_TYPE_Q4_0_R16: return "q4_0_r16";
    case LMOE_TYPE_Q8_0_R16: return "q8_0_r16";
    }
    return "unknown";
}

/* ------------------------------------------------------------------------------------------------
 * reader: a cursor over the file that refuses to step past its end
 * ---------------------------------------------------------------------------------------------- */

typedef struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
} cursor;

static size_t remaining(const cursor *c) { return c->size - c->pos; }

static lmoe_status read_bytes(cursor *c, void *out, size_t n, const char *what) {
    RETURN_ERROR_IF(n > remaining(c), LMOE_ERR_BAD_FILE,
                    "GGUF: %s at offset %zu: needs %zu bytes, only %zu left in the file", what,
                    c->pos, n, remaining(c));
    memcpy(out, c->base + c->pos, n);
    c->pos += n;
    return LMOE_OK;
}

static lmoe_status read_u32(cursor *c, uint32_t *out, const char *what) {
    return read_bytes(c, out, sizeof *out, what);
}

static lmoe_status read_u64(cursor *c, uint64_t *out, const char *what) {
    return read_bytes(c, out, sizeof *out, what);
}

static lmoe_status read_str(cursor *c, gguf_str *out, uint64_t max_len, const char *what) {
    uint64_t len = 0;
    size_t at = c->pos;
    FORWARD_IF_ERROR(read_u64(c, &len, what));
    RETURN_ERROR_IF(len > remaining(c), LMOE_ERR_BAD_FILE,
                    "GGUF: %s at offset %zu: string length %llu is larger than the %zu bytes left "
                    "in the file", what, at, (unsigned long long)len, remaining(c));
    RETURN_ERROR_IF(len > max_len, LMOE_ERR_BAD_FILE,
                    "GGUF: %s at offset %zu: string length %llu exceeds the limit of %llu", what,
                    at, (unsigned long long)len, (unsigned long long)max_len);
    out->ptr = (const char *)c->base + c->pos;
    out->len = len;
    c->pos += (size_t)len;
    return LMOE_OK;
}

/* Skips over (and so validates) one value of the given scalar or string type, n times. */
static lmoe_status skip_values(cursor *c, gguf_type type, uint64_t n, bool is_array,
                               const gguf_str *key) {
    if (type == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < n; i++) {
            gguf_str s = {0};
            lmoe_status st = read_str(c, &s, UINT64_MAX, "string value");
            if (st != LMOE_OK && is_array)
                return lmoe_error_prefix(st, "key '%.*s' element %llu", (int)key->len, key->ptr,
                                         (unsigned long long)i);
            if (st != LMOE_OK)
                return lmoe_error_prefix(st, "key '%.*s'", (int)key->len, key->ptr);
        }
        return LMOE_OK;
    }
    size_t elem = gguf_type_sizes[type];
    RETURN_ERROR_IF(n > remaining(c) / elem, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%.*s' at offset %zu: %llu values of %s need more than the %zu "
                    "bytes left in the file", (int)key->len, key->ptr, c->pos,
                    (unsigned long long)n, gguf_type_name(type), remaining(c));
    c->pos += (size_t)n * elem;
    return LMOE_OK;
}

static lmoe_status parse_kv(cursor *c, gguf_kv *kv) {
    size_t at = c->pos;
    FORWARD_IF_ERROR(read_str(c, &kv->key, GGUF_MAX_KEY_LEN, "metadata key"));
    uint32_t type = 0;
    FORWARD_IF_ERROR(read_u32(c, &type, "metadata value type"));
    RETURN_ERROR_IF(type >= GGUF_TYPE_COUNT, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%.*s' at offset %zu: value type %u is not a GGUF type",
                    (int)kv->key.len, kv->key.ptr, at, type);
    kv->type = (gguf_type)type;
    kv->elem_type = kv->type;
    kv->n_elems = 1;
    if (kv->type == GGUF_TYPE_ARRAY) {
        uint32_t elem_type = 0;
        FORWARD_IF_ERROR(read_u32(c, &elem_type, "array element type"));
        RETURN_ERROR_IF(elem_type >= GGUF_TYPE_COUNT || elem_type == GGUF_TYPE_ARRAY,
                        LMOE_ERR_BAD_FILE,
                        "GGUF: key '%.*s': array element type %u is not supported (nested arrays "
                        "are refused)", (int)kv->key.len, kv->key.ptr, elem_type);
        kv->elem_type = (gguf_type)elem_type;
        FORWARD_IF_ERROR(read_u64(c, &kv->n_elems, "array length"));
    }
    kv->data = c->base + c->pos;
    FORWARD_IF_ERROR(
        skip_values(c, kv->elem_type, kv->n_elems, kv->type == GGUF_TYPE_ARRAY, &kv->key));
    if (kv->type == GGUF_TYPE_BOOL) {
        RETURN_ERROR_IF(*kv->data > 1, LMOE_ERR_BAD_FILE, "GGUF: key '%.*s': bool value %u",
                        (int)kv->key.len, kv->key.ptr, *kv->data);
    }
    return LMOE_OK;
}

static lmoe_status tensor_extent(gguf_tensor *t) {
    size_t block_bytes = ggml_type_block_bytes(t->type);
    size_t block_elems = ggml_type_block_elems(t->type);
    RETURN_ERROR_IF(block_bytes == 0, LMOE_ERR_UNSUPPORTED,
                    "GGUF: tensor '%.*s' has element type %u, which this library does not "
                    "support (supported: f32, f16, bf16, q8_0, q4_0, q8_0_r16, q4_0_r16)", (int)t->name.len,
                    t->name.ptr, (unsigned)t->type);
    uint64_t n_elems = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
        RETURN_ERROR_IF(t->ne[d] == 0 || t->ne[d] > (uint64_t)INT64_MAX / n_elems,
                        LMOE_ERR_BAD_FILE,
                        "GGUF: tensor '%.*s': dimension %u is %llu (zero, or the element count "
                        "overflows)", (int)t->name.len, t->name.ptr, d,
                        (unsigned long long)t->ne[d]);
        n_elems *= t->ne[d];
    }
    RETURN_ERROR_IF(t->ne[0] % block_elems != 0, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor '%.*s': row length %llu is not a multiple of the %s block of "
                    "%zu", (int)t->name.len, t->name.ptr, (unsigned long long)t->ne[0],
                    ggml_type_name(t->type), block_elems);
    RETURN_ERROR_IF(ggml_type_is_r16(t->type) && t->ne[1] % LMOE_R16_ROWS != 0, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor '%.*s': %s interleaves groups of %d rows, but it has %llu",
                    (int)t->name.len, t->name.ptr, ggml_type_name(t->type), LMOE_R16_ROWS,
                    (unsigned long long)t->ne[1]);
    uint64_t n_blocks = n_elems / block_elems;
    RETURN_ERROR_IF(n_blocks > UINT64_MAX / block_bytes, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor '%.*s': byte size overflows", (int)t->name.len, t->name.ptr);
    t->n_bytes = n_blocks * block_bytes;
    return LMOE_OK;
}

static lmoe_status parse_tensor_info(cursor *c, gguf_tensor *t) {
    FORWARD_IF_ERROR(read_str(c, &t->name, GGUF_MAX_NAME_LEN, "tensor name"));
    FORWARD_IF_ERROR(read_u32(c, &t->n_dims, "tensor dimension count"));
    RETURN_ERROR_IF(t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor '%.*s': %u dimensions (1 to %d allowed)", (int)t->name.len,
                    t->name.ptr, t->n_dims, GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        FORWARD_IF_ERROR(read_u64(c, &t->ne[d], "tensor dimension"));
    uint32_t type = 0;
    FORWARD_IF_ERROR(read_u32(c, &type, "tensor type"));
    t->type = (ggml_type)type;
    FORWARD_IF_ERROR(read_u64(c, &t->offset, "tensor data offset"));
    return tensor_extent(t);
}

static int compare_str(const gguf_str *a, const gguf_str *b) {
    size_t n = a->len < b->len ? (size_t)a->len : (size_t)b->len;
    int r = memcmp(a->ptr, b->ptr, n);
    if (r != 0) return r;
    return (a->len > b->len) - (a->len < b->len);
}

static int compare_kv_keys(const void *a, const void *b) {
    return compare_str(&(*(const gguf_kv *const *)a)->key, &(*(const gguf_kv *const *)b)->key);
}

static int compare_tensor_names(const void *a, const void *b) {
    return compare_str(&(*(const gguf_tensor *const *)a)->name,
                       &(*(const gguf_tensor *const *)b)->name);
}

/* Refuses files that name a key or a tensor twice: which one a reader used would be a guess. */
static lmoe_status check_unique(const gguf_file *f) {
    uint64_t n = f->n_kv > f->n_tensors ? f->n_kv : f->n_tensors;
    if (n < 2) return LMOE_OK;
    const void **sorted = mem_alloc((size_t)n * sizeof *sorted);
    RETURN_ERROR_IF(!sorted, LMOE_ERR_OUT_OF_MEMORY, "GGUF: out of memory checking names");
    lmoe_status st = LMOE_OK;
    for (uint64_t i = 0; i < f->n_kv; i++) sorted[i] = &f->kv[i];
    qsort(sorted, (size_t)f->n_kv, sizeof *sorted, compare_kv_keys);
    for (uint64_t i = 1; i < f->n_kv && st == LMOE_OK; i++) {
        const gguf_kv *a = sorted[i - 1], *b = sorted[i];
        if (compare_str(&a->key, &b->key) == 0)
            st = lmoe_error(LMOE_ERR_BAD_FILE, "GGUF: metadata key '%.*s' appears twice",
                            (int)a->key.len, a->key.ptr);
    }
    for (uint64_t i = 0; i < f->n_tensors && st == LMOE_OK; i++) sorted[i] = &f->tensors[i];
    if (st == LMOE_OK) qsort(sorted, (size_t)f->n_tensors, sizeof *sorted, compare_tensor_names);
    for (uint64_t i = 1; i < f->n_tensors && st == LMOE_OK; i++) {
        const gguf_tensor *a = sorted[i - 1], *b = sorted[i];
        if (compare_str(&a->name, &b->name) == 0)
            st = lmoe_error(LMOE_ERR_BAD_FILE, "GGUF: tensor '%.*s' appears twice",
                            (int)a->name.len, a->name.ptr);
    }
    mem_free(sorted);
    return st;
}

static lmoe_status read_alignment(gguf_file *f) {
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    if (!kv) return LMOE_OK;
    uint32_t alignment = 0;
    FORWARD_IF_ERROR(gguf_get_u32(f, "general.alignment", &alignment));
    RETURN_ERROR_IF(alignment == 0 || (alignment & (alignment - 1)) != 0 ||
                        alignment > GGUF_MAX_ALIGNMENT,
                    LMOE_ERR_BAD_FILE,
                    "GGUF: general.alignment is %u; it must be a power of two up to %u",
                    alignment, GGUF_MAX_ALIGNMENT);
    f->alignment = alignment;
    return LMOE_OK;
}

static lmoe_status place_tensors(gguf_file *f, size_t infos_end) {
    if (f->n_tensors == 0) return LMOE_OK;
    uint64_t data_offset = (infos_end + f->alignment - 1) / f->alignment * f->alignment;
    RETURN_ERROR_IF(data_offset > f->size, LMOE_ERR_BAD_FILE,
                    "GGUF: the tensor data section would start at offset %llu, past the end of "
                    "the %zu-byte file", (unsigned long long)data_offset, f->size);
    f->data_offset = data_offset;
    uint64_t data_size = f->size - data_offset;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        RETURN_ERROR_IF(t->offset % f->alignment != 0, LMOE_ERR_BAD_FILE,
                        "GGUF: tensor '%.*s': data offset %llu is not a multiple of the "
                        "alignment %llu", (int)t->name.len, t->name.ptr,
                        (unsigned long long)t->offset, (unsigned long long)f->alignment);
        RETURN_ERROR_IF(t->offset > data_size || t->n_bytes > data_size - t->offset,
                        LMOE_ERR_BAD_FILE,
                        "GGUF: tensor '%.*s' (%llu bytes at data offset %llu) extends past the end "
                        "of the file (data section is %llu bytes)", (int)t->name.len, t->name.ptr,
                        (unsigned long long)t->n_bytes, (unsigned long long)t->offset,
                        (unsigned long long)data_size);
        t->data = f->base + data_offset + t->offset;
    }
    return LMOE_OK;
}

static lmoe_status parse(gguf_file *f) {
    cursor c = {f->base, f->size, 0};
    RETURN_ERROR_IF(f->size == 0, LMOE_ERR_BAD_FILE, "GGUF: the file is empty");
    char magic[4];
    RETURN_ERROR_IF(f->size < 4 || memcmp(f->base, GGUF_MAGIC, 4) != 0, LMOE_ERR_BAD_FILE,
                    "not a GGUF file: the first bytes are not \"GGUF\"");
    FORWARD_IF_ERROR(read_bytes(&c, magic, 4, "magic"));
    FORWARD_IF_ERROR(read_u32(&c, &f->version, "version"));
    RETURN_ERROR_IF(f->version != 2 && f->version != 3, LMOE_ERR_UNSUPPORTED,
                    "GGUF: version %u is not supported (2 and 3 are)", f->version);
    FORWARD_IF_ERROR(read_u64(&c, &f->n_tensors, "tensor count"));
    FORWARD_IF_ERROR(read_u64(&c, &f->n_kv, "metadata key count"));
    /* The smallest key/value takes 13 bytes (8 length + 1 key byte... a 0-length key still needs
     * 8 + 4 + 1) and the smallest tensor info 32: bound the counts before allocating. */
    RETURN_ERROR_IF(f->n_kv > remaining(&c) / 13, LMOE_ERR_BAD_FILE,
                    "GGUF: metadata key count %llu is larger than the file can hold",
                    (unsigned long long)f->n_kv);
    RETURN_ERROR_IF(f->n_tensors > remaining(&c) / 32, LMOE_ERR_BAD_FILE,
                    "GGUF: tensor count %llu is larger than the file can hold",
                    (unsigned long long)f->n_tensors);
    if (f->n_kv) {
        f->kv = mem_calloc((size_t)f->n_kv, sizeof *f->kv);
        RETURN_ERROR_IF(!f->kv, LMOE_ERR_OUT_OF_MEMORY, "GGUF: out of memory for %llu keys",
                        (unsigned long long)f->n_kv);
    }
    for (uint64_t i = 0; i < f->n_kv; i++) FORWARD_IF_ERROR(parse_kv(&c, &f->kv[i]));
    if (f->n_tensors) {
        f->tensors = mem_calloc((size_t)f->n_tensors, sizeof *f->tensors);
        RETURN_ERROR_IF(!f->tensors, LMOE_ERR_OUT_OF_MEMORY,
                        "GGUF: out of memory for %llu tensors", (unsigned long long)f->n_tensors);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        lmoe_status st = parse_tensor_info(&c, &f->tensors[i]);
        if (st != LMOE_OK)
            return lmoe_error_prefix(st, "tensor info %llu", (unsigned long long)i);
    }
    FORWARD_IF_ERROR(check_unique(f));
    FORWARD_IF_ERROR(read_alignment(f));
    return place_tensors(f, c.pos);
}

static lmoe_status finish_open(gguf_file *f, gguf_file **out) {
    lmoe_status st = parse(f);
    if (st != LMOE_OK) {
        gguf_close(f);
        return st;
    }
    *out = f;
    return LMOE_OK;
}

lmoe_status gguf_open_memory(const void *data, size_t size, gguf_file **out) {
    RETURN_ERROR_IF(!out, LMOE_ERR_INVALID_ARGUMENT, "gguf_open_memory: out is NULL");
    *out = NULL;
    RETURN_ERROR_IF(!data && size, LMOE_ERR_INVALID_ARGUMENT, "gguf_open_memory: data is NULL");
    gguf_file *f = mem_calloc(1, sizeof *f);
    RETURN_ERROR_IF(!f, LMOE_ERR_OUT_OF_MEMORY, "GGUF: out of memory");
    f->base = data;
    f->size = size;
    return finish_open(f, out);
}

/* Maps and parses an open file descriptor (not closed: the mapping outlives it); name is for
 * messages. */
static lmoe_status open_fd(int fd, const char *name, gguf_file **out) {
    struct stat st;
    int stat_failed = fstat(fd, &st) != 0;
    if (stat_failed || !S_ISREG(st.st_mode)) {
        int err = stat_failed ? errno : 0; /* errno is stale when fstat succeeded */
        return lmoe_error(LMOE_ERR_IO, "%s: not a regular file%s%s", name, err ? ": " : "",
                          err ? strerror(err) : "");
    }
    RETURN_ERROR_IF(st.st_size == 0, LMOE_ERR_BAD_FILE, "%s: GGUF: the file is empty", name);
    RETURN_ERROR_IF((uint64_t)st.st_size > SIZE_MAX, LMOE_ERR_BAD_FILE,
                    "%s: the file is larger than the address space", name);
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    RETURN_ERROR_IF(map == MAP_FAILED, LMOE_ERR_IO, "%s: cannot map: %s", name, strerror(errno));
    gguf_file *f = mem_calloc(1, sizeof *f);
    if (!f) {
        munmap(map, (size_t)st.st_size);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", name);
    }
    f->base = map;
    f->size = (size_t)st.st_size;
    f->mapped = 1;
    return lmoe_error_prefix(finish_open(f, out), "%s", name);
}

lmoe_status gguf_open_fd(int fd, gguf_file **out) {
    RETURN_ERROR_IF(!out, LMOE_ERR_INVALID_ARGUMENT, "gguf_open_fd: out is NULL");
    *out = NULL;
    RETURN_ERROR_IF(fd < 0, LMOE_ERR_INVALID_ARGUMENT, "gguf_open_fd: fd %d is not open", fd);
    char name[32];
    snprintf(name, sizeof name, "file descriptor %d", fd);
    return open_fd(fd, name, out);
}

lmoe_status gguf_open(const char *path, gguf_file **out) {
    RETURN_ERROR_IF(!out, LMOE_ERR_INVALID_ARGUMENT, "gguf_open: out is NULL");
    *out = NULL;
    RETURN_ERROR_IF(!path, LMOE_ERR_INVALID_ARGUMENT, "gguf_open: path is NULL");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    RETURN_ERROR_IF(fd < 0, LMOE_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    lmoe_status st = open_fd(fd, path, out);
    close(fd);
    return st;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    if (f->mapped) munmap((void *)f->base, f->size);
    mem_free(f->kv);
    mem_free(f->tensors);
    mem_free(f);
}

/* ------------------------------------------------------------------------------------------------
 * lookup and typed getters
 * ---------------------------------------------------------------------------------------------- */

bool gguf_str_eq(gguf_str s, const char *cstr) {
    size_t n = strlen(cstr);
    return s.len == n && memcmp(s.ptr, cstr, n) == 0;
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (gguf_str_eq(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    for (uint64_t i = 0; i < f->n_tensors; i++)
        if (gguf_str_eq(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static lmoe_status find_scalar(const gguf_file *f, const char *key, const gguf_kv **out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    RETURN_ERROR_IF(!kv, LMOE_ERR_BAD_FILE, "GGUF: required key '%s' is missing", key);
    RETURN_ERROR_IF(kv->type == GGUF_TYPE_ARRAY, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%s' is an array, expected a single value", key);
    *out = kv;
    return LMOE_OK;
}

/* Reads any integer-typed scalar as a signed 64-bit value (uint64 above INT64_MAX is refused). */
static lmoe_status get_integer(const gguf_file *f, const char *key, int64_t *out) {
    const gguf_kv *kv = NULL;
    FORWARD_IF_ERROR(find_scalar(f, key, &kv));
    const uint8_t *p = kv->data;
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            uint64_t u64; int64_t i64; } v;
    switch (kv->type) {
    case GGUF_TYPE_UINT8: memcpy(&v.u8, p, 1); *out = v.u8; return LMOE_OK;
    case GGUF_TYPE_INT8: memcpy(&v.i8, p, 1); *out = v.i8; return LMOE_OK;
    case GGUF_TYPE_UINT16: memcpy(&v.u16, p, 2); *out = v.u16; return LMOE_OK;
    case GGUF_TYPE_INT16: memcpy(&v.i16, p, 2); *out = v.i16; return LMOE_OK;
    case GGUF_TYPE_UINT32: memcpy(&v.u32, p, 4); *out = v.u32; return LMOE_OK;
    case GGUF_TYPE_INT32: memcpy(&v.i32, p, 4); *out = v.i32; return LMOE_OK;
    case GGUF_TYPE_INT64: memcpy(&v.i64, p, 8); *out = v.i64; return LMOE_OK;
    case GGUF_TYPE_UINT64:
        memcpy(&v.u64, p, 8);
        RETURN_ERROR_IF(v.u64 > (uint64_t)INT64_MAX, LMOE_ERR_BAD_FILE,
                        "GGUF: key '%s' = %llu is out of range", key, (unsigned long long)v.u64);
        *out = (int64_t)v.u64;
        return LMOE_OK;
    default: break;
    }
    return lmoe_error(LMOE_ERR_BAD_FILE, "GGUF: key '%s' has type %s, expected an integer", key,
                      gguf_type_name(kv->type));
}

lmoe_status gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    int64_t v = 0;
    FORWARD_IF_ERROR(get_integer(f, key, &v));
    RETURN_ERROR_IF(v < 0 || v > UINT32_MAX, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%s' = %lld does not fit in uint32", key, (long long)v);
    *out = (uint32_t)v;
    return LMOE_OK;
}

lmoe_status gguf_get_i32(const gguf_file *f, const char *key, int32_t *out) {
    int64_t v = 0;
    FORWARD_IF_ERROR(get_integer(f, key, &v));
    RETURN_ERROR_IF(v < INT32_MIN || v > INT32_MAX, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%s' = %lld does not fit in int32", key, (long long)v);
    *out = (int32_t)v;
    return LMOE_OK;
}

lmoe_status gguf_get_f32(const gguf_file *f, const char *key, float *out) {
    const gguf_kv *kv = NULL;
    FORWARD_IF_ERROR(find_scalar(f, key, &kv));
    if (kv->type == GGUF_TYPE_FLOAT32) {
        memcpy(out, kv->data, 4);
    } else if (kv->type == GGUF_TYPE_FLOAT64) {
        double d;
        memcpy(&d, kv->data, 8);
        *out = (float)d;
    } else {
        return lmoe_error(LMOE_ERR_BAD_FILE, "GGUF: key '%s' has type %s, expected float32", key,
                          gguf_type_name(kv->type));
    }
    RETURN_ERROR_IF(!isfinite(*out), LMOE_ERR_BAD_FILE, "GGUF: key '%s' is not a finite number",
                    key);
    return LMOE_OK;
}

lmoe_status gguf_get_bool(const gguf_file *f, const char *key, bool *out) {
    const gguf_kv *kv = NULL;
    FORWARD_IF_ERROR(find_scalar(f, key, &kv));
    RETURN_ERROR_IF(kv->type != GGUF_TYPE_BOOL, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%s' has type %s, expected bool", key, gguf_type_name(kv->type));
    *out = kv->data[0] != 0;
    return LMOE_OK;
}

lmoe_status gguf_get_str(const gguf_file *f, const char *key, gguf_str *out) {
    const gguf_kv *kv = NULL;
    FORWARD_IF_ERROR(find_scalar(f, key, &kv));
    RETURN_ERROR_IF(kv->type != GGUF_TYPE_STRING, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%s' has type %s, expected string", key, gguf_type_name(kv->type));
    uint64_t len = 0;
    memcpy(&len, kv->data, 8);
    out->ptr = (const char *)kv->data + 8;
    out->len = len;
    return LMOE_OK;
}

lmoe_status gguf_get_u32_opt(const gguf_file *f, const char *key, uint32_t *out) {
    return gguf_find_kv(f, key) ? gguf_get_u32(f, key, out) : LMOE_OK;
}

lmoe_status gguf_get_i32_opt(const gguf_file *f, const char *key, int32_t *out) {
    return gguf_find_kv(f, key) ? gguf_get_i32(f, key, out) : LMOE_OK;
}

lmoe_status gguf_get_f32_opt(const gguf_file *f, const char *key, float *out) {
    return gguf_find_kv(f, key) ? gguf_get_f32(f, key, out) : LMOE_OK;
}

lmoe_status gguf_get_bool_opt(const gguf_file *f, const char *key, bool *out) {
    return gguf_find_kv(f, key) ? gguf_get_bool(f, key, out) : LMOE_OK;
}

lmoe_status gguf_get_array(const gguf_file *f, const char *key, gguf_type elem_type,
                           const gguf_kv **out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    RETURN_ERROR_IF(!kv, LMOE_ERR_BAD_FILE, "GGUF: required key '%s' is missing", key);
    RETURN_ERROR_IF(kv->type != GGUF_TYPE_ARRAY || kv->elem_type != elem_type, LMOE_ERR_BAD_FILE,
                    "GGUF: key '%s' has type %s%s%s, expected an array of %s", key,
                    gguf_type_name(kv->type), kv->type == GGUF_TYPE_ARRAY ? " of " : "",
                    kv->type == GGUF_TYPE_ARRAY ? gguf_type_name(kv->elem_type) : "",
                    gguf_type_name(elem_type));
    *out = kv;
    return LMOE_OK;
}

void gguf_array_strings(const gguf_kv *kv, gguf_str *out) {
    const uint8_t *p = kv->data;
    for (uint64_t i = 0; i < kv->n_elems; i++) {
        uint64_t len = 0;
        memcpy(&len, p, 8);
        out[i].ptr = (const char *)p + 8;
        out[i].len = len;
        p += 8 + len;
    }
}

float gguf_array_f32(const gguf_kv *kv, uint64_t i) {
    float v;
    memcpy(&v, kv->data + i * 4, 4);
    return v;
}

int32_t gguf_array_i32(const gguf_kv *kv, uint64_t i) {
    int32_t v;
    memcpy(&v, kv->data + i * 4, 4);
    return v;
}

/* ------------------------------------------------------------------------------------------------
 * writer
 * ---------------------------------------------------------------------------------------------- */

typedef struct writer_kv {
    char *key;
    gguf_type type;
    uint8_t *value;          /* serialised value bytes (after the type field) */
    size_t value_size;
} writer_kv;

typedef struct writer_tensor {
    char *name;
    ggml_type type;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    const void *data;
    gguf_tensor_fill_fn fill; /* when data is NULL: produces the bytes at write time */
    void *fill_user;
    uint64_t n_bytes;
} writer_tensor;

struct gguf_writer {
    gguf_write_progress_fn progress;
    void *progress_user;
    writer_kv *kv;
    size_t n_kv, cap_kv;
    writer_tensor *tensors;
    size_t n_tensors, cap_tensors;
};

lmoe_status gguf_writer_create(gguf_writer **out) {
    *out = mem_calloc(1, sizeof **out);
    RETURN_ERROR_IF(!*out, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    return LMOE_OK;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        mem_free(w->kv[i].key);
        mem_free(w->kv[i].value);
    }
    for (size_t i = 0; i < w->n_tensors; i++) mem_free(w->tensors[i].name);
    mem_free(w->kv);
    mem_free(w->tensors);
    mem_free(w);
}

static char *dup_cstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = mem_alloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static lmoe_status grow(void **items, size_t *cap, size_t need, size_t item_size) {
    if (need <= *cap) return LMOE_OK;
    size_t new_cap = *cap ? *cap * 2 : 16;
    while (new_cap < need) new_cap *= 2;
    void *p = mem_realloc(*items, new_cap * item_size);
    RETURN_ERROR_IF(!p, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    *items = p;
    *cap = new_cap;
    return LMOE_OK;
}

/* Takes ownership of value (freed on failure too). */
static lmoe_status add_kv(gguf_writer *w, const char *key, gguf_type type, uint8_t *value,
                          size_t value_size) {
    lmoe_status st = LMOE_OK;
    /* The writer always aligns tensor data to GGUF_DEFAULT_ALIGNMENT; a different value in the
     * file would make readers look for the data elsewhere. */
    if (strcmp(key, "general.alignment") == 0)
        st = lmoe_error(LMOE_ERR_INVALID_ARGUMENT,
                        "GGUF writer: general.alignment cannot be set (data is aligned to %d)",
                        GGUF_DEFAULT_ALIGNMENT);
    for (size_t i = 0; i < w->n_kv && st == LMOE_OK; i++)
        if (strcmp(w->kv[i].key, key) == 0)
            st = lmoe_error(LMOE_ERR_INVALID_ARGUMENT, "GGUF writer: key '%s' set twice", key);
    if (st == LMOE_OK) st = grow((void **)&w->kv, &w->cap_kv, w->n_kv + 1, sizeof *w->kv);
    char *key_copy = st == LMOE_OK ? dup_cstr(key) : NULL;
    if (st == LMOE_OK && !key_copy)
        st = lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    if (st != LMOE_OK) {
        mem_free(value);
        return st;
    }
    w->kv[w->n_kv++] = (writer_kv){key_copy, type, value, value_size};
    return LMOE_OK;
}

static lmoe_status add_scalar(gguf_writer *w, const char *key, gguf_type type, const void *v,
                              size_t size) {
    uint8_t *value = mem_alloc(size);
    RETURN_ERROR_IF(!value, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    memcpy(value, v, size);
    return add_kv(w, key, type, value, size);
}

lmoe_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t value) {
    return add_scalar(w, key, GGUF_TYPE_UINT32, &value, 4);
}

lmoe_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t value) {
    return add_scalar(w, key, GGUF_TYPE_UINT64, &value, 8);
}

lmoe_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t value) {
    return add_scalar(w, key, GGUF_TYPE_INT32, &value, 4);
}

lmoe_status gguf_writer_set_f32(gguf_writer *w, const char *key, float value) {
    return add_scalar(w, key, GGUF_TYPE_FLOAT32, &value, 4);
}

lmoe_status gguf_writer_set_bool(gguf_writer *w, const char *key, bool value) {
    uint8_t b = value ? 1 : 0;
    return add_scalar(w, key, GGUF_TYPE_BOOL, &b, 1);
}

lmoe_status gguf_writer_set_str_n(gguf_writer *w, const char *key, const char *value, size_t len) {
    uint8_t *buf = mem_alloc(8 + len);
    RETURN_ERROR_IF(!buf, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    uint64_t len64 = len;
    memcpy(buf, &len64, 8);
    if (len) memcpy(buf + 8, value, len);
    return add_kv(w, key, GGUF_TYPE_STRING, buf, 8 + len);
}

lmoe_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *value) {
    return gguf_writer_set_str_n(w, key, value, strlen(value));
}

lmoe_status gguf_writer_set_array(gguf_writer *w, const char *key, gguf_type elem_type,
                                  const void *elems, uint64_t n_elems) {
    RETURN_ERROR_IF(elem_type >= GGUF_TYPE_COUNT || gguf_type_sizes[elem_type] == 0,
                    LMOE_ERR_INVALID_ARGUMENT,
                    "GGUF writer: key '%s': use gguf_writer_set_str_array for strings", key);
    size_t elem = gguf_type_sizes[elem_type];
    RETURN_ERROR_IF(n_elems > (SIZE_MAX - 12) / elem, LMOE_ERR_INVALID_ARGUMENT,
                    "GGUF writer: key '%s': array too large", key);
    size_t size = 12 + (size_t)n_elems * elem;
    uint8_t *buf = mem_alloc(size);
    RETURN_ERROR_IF(!buf, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    uint32_t t = elem_type;
    memcpy(buf, &t, 4);
    memcpy(buf + 4, &n_elems, 8);
    if (n_elems) memcpy(buf + 12, elems, (size_t)n_elems * elem);
    return add_kv(w, key, GGUF_TYPE_ARRAY, buf, size);
}

lmoe_status gguf_writer_set_str_array(gguf_writer *w, const char *key, const char *const *strs,
                                      const uint32_t *lens, uint64_t n) {
    size_t size = 12;
    for (uint64_t i = 0; i < n; i++) size += 8 + lens[i];
    uint8_t *buf = mem_alloc(size);
    RETURN_ERROR_IF(!buf, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    uint32_t t = GGUF_TYPE_STRING;
    memcpy(buf, &t, 4);
    memcpy(buf + 4, &n, 8);
    uint8_t *p = buf + 12;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = lens[i];
        memcpy(p, &len, 8);
        if (len) memcpy(p + 8, strs[i], len);
        p += 8 + len;
    }
    return add_kv(w, key, GGUF_TYPE_ARRAY, buf, size);
}

void gguf_writer_set_progress(gguf_writer *w, gguf_write_progress_fn fn, void *user) {
    w->progress = fn;
    w->progress_user = user;
}

lmoe_status gguf_writer_add_tensor_fill(gguf_writer *w, const char *name, ggml_type type,
                                        uint32_t n_dims, const uint64_t *ne,
                                        gguf_tensor_fill_fn fill, void *user) {
    FORWARD_IF_ERROR(gguf_writer_add_tensor(w, name, type, n_dims, ne, NULL));
    w->tensors[w->n_tensors - 1].fill = fill;
    w->tensors[w->n_tensors - 1].fill_user = user;
    return LMOE_OK;
}

/* The serialised size of n values of a type starting at p (validated at open). */
static size_t values_size(gguf_type type, const uint8_t *p, uint64_t n) {
    if (type != GGUF_TYPE_STRING) return (size_t)n * gguf_type_sizes[type];
    size_t size = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len;
        memcpy(&len, p + size, 8);
        size += 8 + (size_t)len;
    }
    return size;
}

lmoe_status gguf_writer_copy_kv(gguf_writer *w, const gguf_kv *kv) {
    RETURN_ERROR_IF(kv->key.len > GGUF_MAX_KEY_LEN, LMOE_ERR_INVALID_ARGUMENT,
                    "GGUF writer: key too long");
    char key[GGUF_MAX_KEY_LEN + 1];
    memcpy(key, kv->key.ptr, (size_t)kv->key.len);
    key[kv->key.len] = 0;
    return gguf_writer_copy_kv_as(w, key, kv);
}

lmoe_status gguf_writer_copy_kv_as(gguf_writer *w, const char *key, const gguf_kv *kv) {
    /* arrays: the element type and count precede the first element */
    const uint8_t *start = kv->type == GGUF_TYPE_ARRAY ? kv->data - 12 : kv->data;
    size_t size = (size_t)(kv->data - start) + values_size(kv->elem_type, kv->data, kv->n_elems);
    uint8_t *value = mem_alloc(size ? size : 1);
    RETURN_ERROR_IF(!value, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    memcpy(value, start, size);
    return add_kv(w, key, kv->type, value, size);
}

lmoe_status gguf_writer_add_tensor(gguf_writer *w, const char *name, ggml_type type,
                                   uint32_t n_dims, const uint64_t *ne, const void *data) {
    RETURN_ERROR_IF(n_dims == 0 || n_dims > GGUF_MAX_DIMS, LMOE_ERR_INVALID_ARGUMENT,
                    "GGUF writer: tensor '%s': %u dimensions", name, n_dims);
    for (size_t i = 0; i < w->n_tensors; i++)
        RETURN_ERROR_IF(strcmp(w->tensors[i].name, name) == 0, LMOE_ERR_INVALID_ARGUMENT,
                        "GGUF writer: tensor '%s' added twice", name);
    writer_tensor t = {.type = type, .n_dims = n_dims, .data = data};
    gguf_tensor check = {.name = {name, strlen(name)}, .n_dims = n_dims, .type = type};
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) t.ne[d] = check.ne[d] = d < n_dims ? ne[d] : 1;
    FORWARD_IF_ERROR(tensor_extent(&check));
    t.n_bytes = check.n_bytes;
    FORWARD_IF_ERROR(grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors + 1,
                          sizeof *w->tensors));
    t.name = dup_cstr(name);
    RETURN_ERROR_IF(!t.name, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    w->tensors[w->n_tensors++] = t;
    return LMOE_OK;
}

/* Output goes either to a FILE or to a growing memory buffer. */
typedef struct sink {
    FILE *file;
    uint8_t *buf;
    size_t size, cap;
    uint64_t written;
    int failed;
} sink;

static void put(sink *s, const void *data, size_t n) {
    if (s->failed || n == 0) return;
    if (s->file) {
        if (fwrite(data, 1, n, s->file) != n) s->failed = 1;
    } else {
        if (s->size + n > s->cap) {
            size_t cap = s->cap ? s->cap : 4096;
            while (cap < s->size + n) cap *= 2;
            uint8_t *p = mem_realloc(s->buf, cap);
            if (!p) {
                s->failed = 1;
                return;
            }
            s->buf = p;
            s->cap = cap;
        }
        memcpy(s->buf + s->size, data, n);
        s->size += n;
    }
    s->written += n;
}

static void put_u32(sink *s, uint32_t v) { put(s, &v, 4); }
static void put_u64(sink *s, uint64_t v) { put(s, &v, 8); }

static void put_padding(sink *s, uint64_t alignment) {
    static const uint8_t zeros[GGUF_DEFAULT_ALIGNMENT];
    uint64_t pad = (alignment - s->written % alignment) % alignment;
    put(s, zeros, (size_t)pad);
}

static void put_str(sink *s, const char *str) {
    put_u64(s, strlen(str));
    put(s, str, strlen(str));
}

/* Produces a tensor's bytes with its fill callback and writes them. */
static lmoe_status put_filled(sink *s, const writer_tensor *t) {
    void *buf = t->n_bytes <= SIZE_MAX ? mem_alloc(t->n_bytes ? (size_t)t->n_bytes : 1) : NULL;
    RETURN_ERROR_IF(!buf, LMOE_ERR_OUT_OF_MEMORY,
                    "GGUF writer: out of memory for tensor '%s' (%llu bytes)", t->name,
                    (unsigned long long)t->n_bytes);
    lmoe_status st = t->fill(t->fill_user, buf, (size_t)t->n_bytes);
    if (st == LMOE_OK) put(s, buf, (size_t)t->n_bytes);
    mem_free(buf);
    return lmoe_error_prefix(st, "tensor '%s'", t->name);
}

/* Returns LMOE_OK unless a fill callback failed (its message is set); sink failures are in
 * s->failed. */
static lmoe_status serialise(const gguf_writer *w, sink *s) {
    put(s, GGUF_MAGIC, 4);
    put_u32(s, 3);
    put_u64(s, w->n_tensors);
    put_u64(s, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        put_str(s, w->kv[i].key);
        put_u32(s, w->kv[i].type);
        put(s, w->kv[i].value, w->kv[i].value_size);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        put_str(s, t->name);
        put_u32(s, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) put_u64(s, t->ne[d]);
        put_u32(s, t->type);
        put_u64(s, offset);
        offset += (t->n_bytes + GGUF_DEFAULT_ALIGNMENT - 1) / GGUF_DEFAULT_ALIGNMENT *
                  GGUF_DEFAULT_ALIGNMENT;
    }
    if (w->n_tensors == 0) return LMOE_OK;
    put_padding(s, GGUF_DEFAULT_ALIGNMENT);
    for (size_t i = 0; i < w->n_tensors && !s->failed; i++) {
        const writer_tensor *t = &w->tensors[i];
        if (t->fill) {
            FORWARD_IF_ERROR(put_filled(s, t));
        } else {
            put(s, t->data, (size_t)t->n_bytes);
        }
        put_padding(s, GGUF_DEFAULT_ALIGNMENT);
        if (w->progress) w->progress(w->progress_user, i, w->n_tensors, t->name, t->n_bytes);
    }
    return LMOE_OK;
}

lmoe_status gguf_writer_write_memory(gguf_writer *w, uint8_t **out, size_t *out_size) {
    sink s = {0};
    lmoe_status st = serialise(w, &s);
    if (st != LMOE_OK || s.failed) {
        mem_free(s.buf);
        return st != LMOE_OK ? st : lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    }
    *out = s.buf;
    *out_size = s.size;
    return LMOE_OK;
}

lmoe_status gguf_writer_write(gguf_writer *w, const char *path) {
    size_t tmp_len = strlen(path) + 5;
    char *tmp = mem_alloc(tmp_len);
    RETURN_ERROR_IF(!tmp, LMOE_ERR_OUT_OF_MEMORY, "GGUF writer: out of memory");
    snprintf(tmp, tmp_len, "%s.tmp", path);
    sink s = {0};
    s.file = fopen(tmp, "wb");
    if (!s.file) {
        lmoe_status st = lmoe_error(LMOE_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
        mem_free(tmp);
        return st;
    }
    lmoe_status st = serialise(w, &s);
    int err = s.failed ? errno : 0;
    if (fclose(s.file) != 0 && !s.failed) {
        s.failed = 1;
        err = errno;
    }
    if (st != LMOE_OK) {
        remove(tmp);
    } else if (s.failed) {
        st = lmoe_error(LMOE_ERR_IO, "%s: write failed: %s", tmp, strerror(err));
        remove(tmp);
    } else if (rename(tmp, path) != 0) {
        st = lmoe_error(LMOE_ERR_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        remove(tmp);
    }
    mem_free(tmp);
    return st;
}
