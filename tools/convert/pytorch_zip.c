/* pytorch_zip.c - reads `torch.save` files (the zip format written since torch 1.6) without running
 * any code.
 *
 * The container is a ZIP archive (PKWARE APPNOTE 6.3) of stored, uncompressed records:
 * `<prefix>/data.pkl` (the pickled state dict), `<prefix>/data/<key>` (one raw storage per key),
 * `<prefix>/byteorder` in torch >= 2.1 (must say "little"), and others this reader does not need
 * (`version`, `.data/serialization_id`, ...). The prefix is the file stem for some torch versions
 * and `archive` for others, so only the `/data.pkl` ending is relied on. Real shards are over
 * 4 GB, so ZIP64 (the end-of-directory record and locator, and the extended-information extra
 * field) is read too.
 *
 * data.pkl is run by a small pickle stack machine that knows the opcodes a state dict uses and six
 * globals: collections.OrderedDict, torch._utils._rebuild_tensor_v2 (and _rebuild_parameter,
 * which wraps a tensor), and the Float/Half/BFloat16 storage types named in persistent ids. Any
 * other global or opcode is refused by name. Every container the machine builds lives in one list
 * that is freed in one pass, so shared references (memo) and cycles need no ownership rules, and
 * nothing recurses on input depth. */
#include "checkpoint.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_internal.h"
#include "error.h"

/* ---------------------------------------------------------------------------------------------
 * little-endian loads
 * ------------------------------------------------------------------------------------------- */

static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static uint32_t load_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t load_u64(const uint8_t *p) { return load_u32(p) | (uint64_t)load_u32(p + 4) << 32; }

/* At most this many bytes of a name from the file go into a message. */
#define NAME_MAX_SHOWN 200
#define SHOWN(len) ((int)((len) < NAME_MAX_SHOWN ? (len) : NAME_MAX_SHOWN))

/* ---------------------------------------------------------------------------------------------
 * ZIP: end records, central directory, local headers
 * ------------------------------------------------------------------------------------------- */

#define ZIP_EOCD_SIG 0x06054b50u
#define ZIP_EOCD_BYTES 22
#define ZIP_MAX_COMMENT 65535
#define ZIP64_LOCATOR_SIG 0x07064b50u
#define ZIP64_LOCATOR_BYTES 20
#define ZIP64_EOCD_SIG 0x06064b50u
#define ZIP64_EOCD_BYTES 56
#define ZIP_CENTRAL_SIG 0x02014b50u
#define ZIP_CENTRAL_BYTES 46
#define ZIP_LOCAL_SIG 0x04034b50u
#define ZIP_LOCAL_BYTES 30
#define ZIP64_EXTRA_ID 0x0001
#define ZIP_FLAG_ENCRYPTED 0x0001
#define ZIP_METHOD_STORED 0
#define ZIP32_SENTINEL 0xFFFFFFFFu

typedef struct zip_entry {
    const char *name;            /* in the map, not NUL-terminated */
    size_t name_len;
    uint16_t flags, method;
    uint64_t comp_size, size, local_offset;
} zip_entry;

typedef struct zip_archive {
    const uint8_t *base;
    size_t size;
    zip_entry *entries;          /* sorted by name */
    size_t n_entries;
} zip_archive;

/* Where the central directory is, from the end records. */
typedef struct zip_directory {
    uint64_t offset, size, n_entries;
    uint64_t end;                /* first byte after the directory's room (an end record) */
} zip_directory;

/* The end-of-central-directory record: the last signature within the final 22 + 65535 bytes (the
 * comment may be up to 65535 bytes long) whose comment fits in the file. */
static lmoe_status find_eocd(const zip_archive *zip, size_t *out) {
    RETURN_ERROR_IF(zip->size < ZIP_EOCD_BYTES, LMOE_ERR_BAD_FILE,
                    "zip: %zu bytes is too short to hold an end of central directory record",
                    zip->size);
    size_t last = zip->size - ZIP_EOCD_BYTES;
    size_t lowest = last > ZIP_MAX_COMMENT ? last - ZIP_MAX_COMMENT : 0;
    for (size_t pos = last + 1; pos-- > lowest;) {
        const uint8_t *p = zip->base + pos;
        if (load_u32(p) == ZIP_EOCD_SIG && load_u16(p + 20) <= last - pos) {
            *out = pos;
            return LMOE_OK;
        }
    }
    lmoe_error(LMOE_ERR_BAD_FILE,
               "zip: no end of central directory record (truncated, or not a zip file)");
    return LMOE_ERR_BAD_FILE;
}

/* The ZIP64 end record, found through the locator just before the classic end record. */
static lmoe_status read_zip64_end(const zip_archive *zip, size_t locator, zip_directory *dir) {
    const uint8_t *l = zip->base + locator;
    uint64_t record = load_u64(l + 8);
    RETURN_ERROR_IF(load_u32(l + 16) > 1, LMOE_ERR_UNSUPPORTED,
                    "zip: archive spans %u disks (only single-file archives are supported)",
                    load_u32(l + 16));
    RETURN_ERROR_IF(record > locator || locator - record < ZIP64_EOCD_BYTES, LMOE_ERR_BAD_FILE,
                    "zip: zip64 end record offset %llu does not leave room before its locator at "
                    "%zu", (unsigned long long)record, locator);
    const uint8_t *r = zip->base + record;
    RETURN_ERROR_IF(load_u32(r) != ZIP64_EOCD_SIG, LMOE_ERR_BAD_FILE,
                    "zip: no zip64 end record signature at offset %llu",
                    (unsigned long long)record);
    RETURN_ERROR_IF(load_u32(r + 16) != 0 || load_u32(r + 20) != 0 ||
                        load_u64(r + 24) != load_u64(r + 32),
                    LMOE_ERR_UNSUPPORTED, "zip: multi-disk archives are not supported");
    dir->n_entries = load_u64(r + 32);
    dir->size = load_u64(r + 40);
    dir->offset = load_u64(r + 48);
    dir->end = record;
    return LMOE_OK;
}

static lmoe_status read_end_records(const zip_archive *zip, zip_directory *dir) {
    size_t eocd;
    FORWARD_IF_ERROR(find_eocd(zip, &eocd));
    const uint8_t *e = zip->base + eocd;
    if (eocd >= ZIP64_LOCATOR_BYTES &&
        load_u32(zip->base + eocd - ZIP64_LOCATOR_BYTES) == ZIP64_LOCATOR_SIG) {
        FORWARD_IF_ERROR(read_zip64_end(zip, eocd - ZIP64_LOCATOR_BYTES, dir));
    } else {
        RETURN_ERROR_IF(load_u16(e + 4) != 0 || load_u16(e + 6) != 0 ||
                            load_u16(e + 8) != load_u16(e + 10),
                        LMOE_ERR_UNSUPPORTED, "zip: multi-disk archives are not supported");
        dir->n_entries = load_u16(e + 10);
        dir->size = load_u32(e + 12);
        dir->offset = load_u32(e + 16);
        dir->end = eocd;
        RETURN_ERROR_IF(dir->n_entries == 0xFFFF || dir->size == ZIP32_SENTINEL ||
                            dir->offset == ZIP32_SENTINEL,
                        LMOE_ERR_BAD_FILE,
                        "zip: the end record defers to a zip64 record, but there is no zip64 "
                        "locator");
    }
    RETURN_ERROR_IF(dir->offset > dir->end || dir->size > dir->end - dir->offset,
                    LMOE_ERR_BAD_FILE,
                    "zip: central directory at offset %llu, %llu bytes, runs past its end record "
                    "at %llu", (unsigned long long)dir->offset, (unsigned long long)dir->size,
                    (unsigned long long)dir->end);
    RETURN_ERROR_IF(dir->n_entries > dir->size / ZIP_CENTRAL_BYTES, LMOE_ERR_BAD_FILE,
                    "zip: %llu entries cannot fit in a central directory of %llu bytes",
                    (unsigned long long)dir->n_entries, (unsigned long long)dir->size);
    return LMOE_OK;
}

/* Sizes or offset of 0xFFFFFFFF mean "see the zip64 extra field", which holds the 8-byte values
 * that were replaced, in this order: size, compressed size, local header offset. */
static lmoe_status read_zip64_extra(const uint8_t *extra, size_t len, zip_entry *e) {
    int need_size = e->size == ZIP32_SENTINEL, need_comp = e->comp_size == ZIP32_SENTINEL;
    int need_offset = e->local_offset == ZIP32_SENTINEL;
    if (!need_size && !need_comp && !need_offset) return LMOE_OK;
    while (len >= 4) {
        uint16_t id = load_u16(extra), field_len = load_u16(extra + 2);
        RETURN_ERROR_IF(field_len > len - 4, LMOE_ERR_BAD_FILE,
                        "zip: record '%.*s': an extra field runs past its entry",
                        SHOWN(e->name_len), e->name);
        if (id == ZIP64_EXTRA_ID) {
            size_t needed = 8u * (size_t)(need_size + need_comp + need_offset);
            RETURN_ERROR_IF(field_len < needed, LMOE_ERR_BAD_FILE,
                            "zip: record '%.*s': zip64 extra field has %u bytes, %zu needed",
                            SHOWN(e->name_len), e->name, field_len, needed);
            const uint8_t *p = extra + 4;
            if (need_size) e->size = load_u64(p), p += 8;
            if (need_comp) e->comp_size = load_u64(p), p += 8;
            if (need_offset) e->local_offset = load_u64(p);
            return LMOE_OK;
        }
        extra += 4 + field_len;
        len -= 4 + (size_t)field_len;
    }
    return lmoe_error(LMOE_ERR_BAD_FILE,
                      "zip: record '%.*s' defers its sizes to a zip64 extra field it lacks",
                      SHOWN(e->name_len), e->name);
}

/* One central directory entry at p (left bytes remain in the directory); *used gets its size. */
static lmoe_status read_central_entry(const uint8_t *p, uint64_t left, size_t index,
                                      zip_entry *e, size_t *used) {
    RETURN_ERROR_IF(left < ZIP_CENTRAL_BYTES || load_u32(p) != ZIP_CENTRAL_SIG,
                    LMOE_ERR_BAD_FILE,
                    "zip: central directory entry %zu is truncated or has a bad signature", index);
    size_t name_len = load_u16(p + 28), extra_len = load_u16(p + 30);
    size_t total = ZIP_CENTRAL_BYTES + name_len + extra_len + load_u16(p + 32);
    RETURN_ERROR_IF(total > left, LMOE_ERR_BAD_FILE,
                    "zip: central directory entry %zu runs past the directory", index);
    e->flags = load_u16(p + 8);
    e->method = load_u16(p + 10);
    e->comp_size = load_u32(p + 20);
    e->size = load_u32(p + 24);
    e->local_offset = load_u32(p + 42);
    e->name = (const char *)p + ZIP_CENTRAL_BYTES;
    e->name_len = name_len;
    *used = total;
    return read_zip64_extra(p + ZIP_CENTRAL_BYTES + name_len, extra_len, e);
}

static int cmp_names(const char *a, size_t a_len, const char *b, size_t b_len) {
    int c = memcmp(a, b, a_len < b_len ? a_len : b_len);
    if (c != 0) return c;
    return a_len < b_len ? -1 : a_len > b_len;
}

static int cmp_entries(const void *a, const void *b) {
    const zip_entry *x = a, *y = b;
    return cmp_names(x->name, x->name_len, y->name, y->name_len);
}

static lmoe_status read_zip(zip_archive *zip) {
    zip_directory dir;
    FORWARD_IF_ERROR(read_end_records(zip, &dir));
    zip->entries = calloc(dir.n_entries ? (size_t)dir.n_entries : 1, sizeof *zip->entries);
    RETURN_ERROR_IF(!zip->entries, LMOE_ERR_OUT_OF_MEMORY, "zip: out of memory for %llu entries",
                    (unsigned long long)dir.n_entries);
    const uint8_t *p = zip->base + dir.offset;
    uint64_t left = dir.size;
    for (size_t i = 0; i < dir.n_entries; i++) {
        size_t used;
        FORWARD_IF_ERROR(read_central_entry(p, left, i, &zip->entries[i], &used));
        zip->n_entries++;
        p += used;
        left -= used;
    }
    /* sorted for lookups by name; a repeated name would make a lookup ambiguous */
    qsort(zip->entries, zip->n_entries, sizeof *zip->entries, cmp_entries);
    for (size_t i = 1; i < zip->n_entries; i++)
        RETURN_ERROR_IF(cmp_entries(&zip->entries[i - 1], &zip->entries[i]) == 0,
                        LMOE_ERR_BAD_FILE, "zip: two records are named '%.*s'",
                        SHOWN(zip->entries[i].name_len), zip->entries[i].name);
    return LMOE_OK;
}

static const zip_entry *zip_find(const zip_archive *zip, const char *name, size_t name_len) {
    size_t lo = 0, hi = zip->n_entries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const zip_entry *e = &zip->entries[mid];
        int c = cmp_names(e->name, e->name_len, name, name_len);
        if (c == 0) return e;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* The bytes of a stored record, through its local header (whose name and extra field lengths may
 * differ from the central directory's: torch pads the local extra field to align the data). */
static lmoe_status zip_record_data(const zip_archive *zip, const zip_entry *e,
                                   const uint8_t **data) {
    int n = SHOWN(e->name_len);
    RETURN_ERROR_IF(e->flags & ZIP_FLAG_ENCRYPTED, LMOE_ERR_UNSUPPORTED,
                    "zip: record '%.*s' is encrypted", n, e->name);
    RETURN_ERROR_IF(e->method != ZIP_METHOD_STORED, LMOE_ERR_UNSUPPORTED,
                    "zip: record '%.*s' is compressed (method %u); torch.save stores records "
                    "uncompressed, the only kind this reader maps", n, e->name, e->method);
    RETURN_ERROR_IF(e->comp_size != e->size, LMOE_ERR_BAD_FILE,
                    "zip: stored record '%.*s' has compressed size %llu but size %llu", n, e->name,
                    (unsigned long long)e->comp_size, (unsigned long long)e->size);
    RETURN_ERROR_IF(e->local_offset > zip->size || zip->size - e->local_offset < ZIP_LOCAL_BYTES,
                    LMOE_ERR_BAD_FILE,
                    "zip: record '%.*s': local header at offset %llu runs past the end of the "
                    "%zu-byte file", n, e->name, (unsigned long long)e->local_offset, zip->size);
    const uint8_t *l = zip->base + e->local_offset;
    RETURN_ERROR_IF(load_u32(l) != ZIP_LOCAL_SIG, LMOE_ERR_BAD_FILE,
                    "zip: record '%.*s': no local header signature at offset %llu", n, e->name,
                    (unsigned long long)e->local_offset);
    uint64_t start = e->local_offset + ZIP_LOCAL_BYTES + load_u16(l + 26) + load_u16(l + 28);
    RETURN_ERROR_IF(start > zip->size || zip->size - start < e->size, LMOE_ERR_BAD_FILE,
                    "zip: record '%.*s': %llu bytes of data at offset %llu run past the end of "
                    "the %zu-byte file", n, e->name, (unsigned long long)e->size,
                    (unsigned long long)start, zip->size);
    RETURN_ERROR_IF(load_u16(l + 26) != e->name_len ||
                        memcmp(l + ZIP_LOCAL_BYTES, e->name, e->name_len) != 0,
                    LMOE_ERR_BAD_FILE,
                    "zip: record '%.*s': the local header at offset %llu names another record", n,
                    e->name, (unsigned long long)e->local_offset);
    *data = zip->base + start;
    return LMOE_OK;
}

/* ---------------------------------------------------------------------------------------------
 * pickle values
 * ------------------------------------------------------------------------------------------- */

/* Bounds on what a hostile data.pkl can make the machine allocate. A 7B state dict needs a few
 * thousand of each. */
#define PK_MAX_STACK (1u << 20)
#define PK_MAX_MARKS (1u << 20)
#define PK_MAX_MEMO (1u << 20)
#define PK_MAX_OBJECTS (1u << 22)
#define PK_MAX_ITEMS (1u << 22)        /* container items, all containers together */
#define PK_MAX_GLOBAL_LINE 256
#define PK_MAX_PROTOCOL 5

typedef enum pk_kind {
    PK_UNSET,                    /* an empty memo slot; never on the stack */
    PK_NONE,
    PK_BOOL,
    PK_INT,
    PK_STR,
    PK_GLOBAL,
    PK_TUPLE,
    PK_LIST,
    PK_DICT,
    PK_STORAGE,
    PK_TENSOR
} pk_kind;

typedef enum pk_global {
    G_ORDERED_DICT,
    G_REBUILD_TENSOR_V2,
    G_REBUILD_PARAMETER,
    G_FLOAT_STORAGE,
    G_HALF_STORAGE,
    G_BFLOAT16_STORAGE
} pk_global;

static const struct {
    const char *module, *name;
    pk_global id;
} ALLOWED_GLOBALS[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2},
    {"torch._utils", "_rebuild_parameter", G_REBUILD_PARAMETER},
    {"torch", "FloatStorage", G_FLOAT_STORAGE},
    {"torch", "HalfStorage", G_HALF_STORAGE},
    {"torch", "BFloat16Storage", G_BFLOAT16_STORAGE},
};

typedef struct pk_obj pk_obj;

typedef struct pk_value {
    pk_kind kind;
    union {
        int64_t i;               /* PK_BOOL, PK_INT */
        struct {
            const char *ptr;     /* PK_STR: bytes inside data.pkl, not NUL-terminated */
            size_t len;
        } str;
        pk_global global;        /* PK_GLOBAL */
        pk_obj *obj;             /* PK_TUPLE, PK_LIST, PK_DICT, PK_STORAGE, PK_TENSOR */
    };
} pk_value;

struct pk_obj {
    pk_value *items;             /* tuple, list: the items; dict: key, value, key, value, ... */
    size_t n_items, cap;
    ggml_type type;              /* storage, tensor: element type */
    const uint8_t *data;         /* storage, tensor: first byte, in the map */
    uint64_t numel;              /* storage, tensor: elements */
    uint32_t n_dims;             /* tensor */
    uint64_t shape[CKPT_MAX_DIMS];
};

typedef struct unpickler {
    const uint8_t *code;         /* data.pkl */
    size_t size, pos;
    size_t op_pos;               /* offset of the opcode being run, for messages */
    const zip_archive *zip;
    const char *where;           /* data.pkl's record name, for messages and the storage prefix */
    size_t where_len, prefix_len; /* the prefix is where[0, prefix_len), ending in '/' */
    pk_value *stack;
    size_t n_stack, cap_stack;
    size_t *marks;               /* stack heights at each MARK */
    size_t n_marks, cap_marks;
    pk_value *memo;              /* indexed by memo key; PK_UNSET where nothing was put */
    size_t cap_memo, n_memo_set;
    pk_obj **objs;               /* every object made, freed together */
    size_t n_objs, cap_objs, n_items_total;
} unpickler;

/* Records "pickle in <record> at byte N: <detail>" and returns status. */
static lmoe_status pk_fail(const unpickler *u, lmoe_status status, const char *fmt, ...)
    LMOE_PRINTF(3, 4);
static lmoe_status pk_fail(const unpickler *u, lmoe_status status, const char *fmt, ...) {
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return lmoe_error(status, "pickle in %.*s at byte %zu: %s", SHOWN(u->where_len), u->where,
                      u->op_pos, detail);
}

/* Like RETURN_ERROR_IF, with the pickle's name and offset in front of the message; PK_FAIL
 * fails unconditionally. Both return status itself, so the compiler sees a nonzero constant. */
#define PK_CHECK(u, cond, status, ...)                                                             \
    do {                                                                                           \
        if (cond) {                                                                                \
            pk_fail((u), (status), __VA_ARGS__);                                                   \
            return (status);                                                                       \
        }                                                                                          \
    } while (0)
#define PK_FAIL(u, status, ...) return (pk_fail((u), (status), __VA_ARGS__), (status))

/* Room for need items of elem bytes in array (capacity *cap, doubled up to limit). Returns the
 * array, moved or not, or NULL past the limit or out of memory (the old array is untouched). */
static void *grow(void *array, size_t *cap, size_t need, size_t elem, size_t limit) {
    if (need <= *cap) return array;
    if (need > limit) return NULL;
    size_t new_cap = *cap ? *cap : 16;
    while (new_cap < need) new_cap *= 2;
    if (new_cap > limit) new_cap = limit;
    void *p = realloc(array, new_cap * elem);
    if (p) *cap = new_cap;
    return p;
}

static void unpickler_free(unpickler *u) {
    for (size_t i = 0; i < u->n_objs; i++) {
        free(u->objs[i]->items);
        free(u->objs[i]);
    }
    free(u->objs);
    free(u->stack);
    free(u->marks);
    free(u->memo);
}

static lmoe_status new_obj(unpickler *u, pk_kind kind, pk_value *out) {
    pk_obj **objs = grow(u->objs, &u->cap_objs, u->n_objs + 1, sizeof *objs, PK_MAX_OBJECTS);
    PK_CHECK(u, !objs, LMOE_ERR_UNSUPPORTED, "more than %u objects (or out of memory)",
             PK_MAX_OBJECTS);
    u->objs = objs;
    pk_obj *obj = calloc(1, sizeof *obj);
    PK_CHECK(u, !obj, LMOE_ERR_OUT_OF_MEMORY, "out of memory");
    u->objs[u->n_objs++] = obj;
    out->kind = kind;
    out->obj = obj;
    return LMOE_OK;
}

static lmoe_status obj_append(unpickler *u, pk_obj *obj, pk_value v) {
    pk_value *items = u->n_items_total < PK_MAX_ITEMS
                          ? grow(obj->items, &obj->cap, obj->n_items + 1, sizeof *items,
                                 PK_MAX_ITEMS)
                          : NULL;
    PK_CHECK(u, !items, LMOE_ERR_UNSUPPORTED, "more than %u container items (or out of memory)",
             PK_MAX_ITEMS);
    obj->items = items;
    obj->items[obj->n_items++] = v;
    u->n_items_total++;
    return LMOE_OK;
}

/* ---- the stack; MARK splits it into frames that pops may not cross ---- */

static size_t frame_floor(const unpickler *u) { return u->n_marks ? u->marks[u->n_marks - 1] : 0; }

static lmoe_status push(unpickler *u, pk_value v) {
    pk_value *stack = grow(u->stack, &u->cap_stack, u->n_stack + 1, sizeof *stack, PK_MAX_STACK);
    PK_CHECK(u, !stack, LMOE_ERR_UNSUPPORTED, "stack deeper than %u (or out of memory)",
             PK_MAX_STACK);
    u->stack = stack;
    u->stack[u->n_stack++] = v;
    return LMOE_OK;
}

static lmoe_status pop(unpickler *u, pk_value *out) {
    PK_CHECK(u, u->n_stack <= frame_floor(u), LMOE_ERR_BAD_FILE,
             "opcode 0x%02x pops from an empty stack", u->code[u->op_pos]);
    *out = u->stack[--u->n_stack];
    return LMOE_OK;
}

static lmoe_status peek(unpickler *u, pk_value **out) {
    PK_CHECK(u, u->n_stack <= frame_floor(u), LMOE_ERR_BAD_FILE,
             "opcode 0x%02x needs a value on an empty stack", u->code[u->op_pos]);
    *out = &u->stack[u->n_stack - 1];
    return LMOE_OK;
}

/* Ends the innermost MARK frame: its items are stack[*start, n_stack), still on the stack; the
 * caller uses them and then sets n_stack = *start. */
static lmoe_status pop_mark(unpickler *u, size_t *start) {
    PK_CHECK(u, u->n_marks == 0, LMOE_ERR_BAD_FILE, "opcode 0x%02x without a MARK",
             u->code[u->op_pos]);
    *start = u->marks[--u->n_marks];
    return LMOE_OK;
}

/* ---- operands ---- */

static lmoe_status take(unpickler *u, size_t n, const uint8_t **out) {
    PK_CHECK(u, u->size - u->pos < n, LMOE_ERR_BAD_FILE,
             "data ends inside the operand of opcode 0x%02x", u->code[u->op_pos]);
    *out = u->code + u->pos;
    u->pos += n;
    return LMOE_OK;
}

static lmoe_status take_uint(unpickler *u, size_t n, uint64_t *out) {
    const uint8_t *p;
    FORWARD_IF_ERROR(take(u, n, &p));
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = v << 8 | p[i];
    *out = v;
    return LMOE_OK;
}

/* GLOBAL's operands: "module\nname\n". */
static lmoe_status take_line(unpickler *u, const char **line, size_t *len) {
    size_t left = u->size - u->pos;
    size_t limit = left < PK_MAX_GLOBAL_LINE ? left : PK_MAX_GLOBAL_LINE;
    const uint8_t *start = u->code + u->pos, *nl = memchr(start, '\n', limit);
    PK_CHECK(u, !nl, LMOE_ERR_BAD_FILE, "GLOBAL operand has no newline in %zu bytes", limit);
    *line = (const char *)start;
    *len = (size_t)(nl - start);
    u->pos += *len + 1;
    return LMOE_OK;
}

/* ---------------------------------------------------------------------------------------------
 * pickle opcodes
 * ------------------------------------------------------------------------------------------- */

static int str_is(const pk_value *v, const char *s) {
    return v->kind == PK_STR && v->str.len == strlen(s) && memcmp(v->str.ptr, s, v->str.len) == 0;
}

static lmoe_status load_global(unpickler *u, const char *module, size_t module_len,
                               const char *name, size_t name_len) {
    for (size_t i = 0; i < sizeof ALLOWED_GLOBALS / sizeof ALLOWED_GLOBALS[0]; i++)
        if (strlen(ALLOWED_GLOBALS[i].module) == module_len &&
            memcmp(ALLOWED_GLOBALS[i].module, module, module_len) == 0 &&
            strlen(ALLOWED_GLOBALS[i].name) == name_len &&
            memcmp(ALLOWED_GLOBALS[i].name, name, name_len) == 0)
            return push(u, (pk_value){.kind = PK_GLOBAL, .global = ALLOWED_GLOBALS[i].id});
    PK_FAIL(u, LMOE_ERR_UNSUPPORTED,
            "asks for global '%.*s.%.*s'; a state dict never needs it (refused: this reader "
            "runs no code)", SHOWN(module_len), module, SHOWN(name_len), name);
}

static lmoe_status op_global(unpickler *u) {
    const char *module, *name;
    size_t module_len, name_len;
    FORWARD_IF_ERROR(take_line(u, &module, &module_len));
    FORWARD_IF_ERROR(take_line(u, &name, &name_len));
    return load_global(u, module, module_len, name, name_len);
}

static lmoe_status op_stack_global(unpickler *u) {
    pk_value module, name;
    FORWARD_IF_ERROR(pop(u, &name));
    FORWARD_IF_ERROR(pop(u, &module));
    PK_CHECK(u, module.kind != PK_STR || name.kind != PK_STR, LMOE_ERR_BAD_FILE,
             "STACK_GLOBAL needs two strings");
    return load_global(u, module.str.ptr, module.str.len, name.str.ptr, name.str.len);
}

static lmoe_status op_string(unpickler *u, size_t len_bytes) {
    uint64_t len;
    const uint8_t *p;
    FORWARD_IF_ERROR(take_uint(u, len_bytes, &len));
    PK_CHECK(u, len > u->size - u->pos, LMOE_ERR_BAD_FILE,
             "string of %llu bytes runs past the end of the pickle", (unsigned long long)len);
    FORWARD_IF_ERROR(take(u, (size_t)len, &p));
    return push(u, (pk_value){.kind = PK_STR, .str = {(const char *)p, (size_t)len}});
}

/* BININT1/BININT2 are unsigned, BININT signed 32-bit, LONG1 signed little-endian of n bytes. */
static lmoe_status op_int(unpickler *u, size_t n_bytes, int is_signed) {
    uint64_t raw;
    FORWARD_IF_ERROR(take_uint(u, n_bytes, &raw));
    int64_t v = (int64_t)raw;
    if (is_signed && n_bytes > 0 && n_bytes < 8 && (raw >> (8 * n_bytes - 1)) & 1)
        v = (int64_t)(raw | ~(uint64_t)0 << (8 * n_bytes)); /* sign-extend */
    return push(u, (pk_value){.kind = PK_INT, .i = v});
}

static lmoe_status op_long1(unpickler *u) {
    uint64_t n;
    FORWARD_IF_ERROR(take_uint(u, 1, &n));
    PK_CHECK(u, n > 8, LMOE_ERR_UNSUPPORTED, "LONG1 integer of %llu bytes (at most 8 supported)",
             (unsigned long long)n);
    return op_int(u, (size_t)n, 1);
}

/* A tuple of the n values on top of the stack (n = SIZE_MAX: everything since the MARK). */
static lmoe_status op_tuple(unpickler *u, size_t n) {
    size_t start;
    if (n == SIZE_MAX) {
        FORWARD_IF_ERROR(pop_mark(u, &start));
    } else {
        PK_CHECK(u, u->n_stack - frame_floor(u) < n, LMOE_ERR_BAD_FILE,
                 "TUPLE%zu with fewer than %zu values on the stack", n, n);
        start = u->n_stack - n;
    }
    pk_value tuple;
    FORWARD_IF_ERROR(new_obj(u, PK_TUPLE, &tuple));
    for (size_t i = start; i < u->n_stack; i++)
        FORWARD_IF_ERROR(obj_append(u, tuple.obj, u->stack[i]));
    u->n_stack = start;
    return push(u, tuple);
}

static lmoe_status op_put(unpickler *u, uint64_t index) {
    pk_value *top;
    FORWARD_IF_ERROR(peek(u, &top));
    PK_CHECK(u, index >= PK_MAX_MEMO, LMOE_ERR_UNSUPPORTED,
             "memo index %llu (at most %u supported)", (unsigned long long)index, PK_MAX_MEMO);
    size_t old_cap = u->cap_memo;
    pk_value *memo = grow(u->memo, &u->cap_memo, (size_t)index + 1, sizeof *memo, PK_MAX_MEMO);
    PK_CHECK(u, !memo, LMOE_ERR_OUT_OF_MEMORY, "out of memory for memo index %llu",
             (unsigned long long)index);
    u->memo = memo;
    for (size_t i = old_cap; i < u->cap_memo; i++) u->memo[i].kind = PK_UNSET;
    if (u->memo[index].kind == PK_UNSET) u->n_memo_set++;
    u->memo[index] = *top;
    return LMOE_OK;
}

static lmoe_status op_get(unpickler *u, uint64_t index) {
    PK_CHECK(u, index >= u->cap_memo || u->memo[index].kind == PK_UNSET, LMOE_ERR_BAD_FILE,
             "memo index %llu was never put", (unsigned long long)index);
    return push(u, u->memo[index]);
}

/* persistent_load for ('storage', <storage type>, '<key>', '<location>', numel): the storage's
 * bytes are the record <prefix>data/<key>. */
static lmoe_status op_persistent_id(unpickler *u) {
    pk_value pid;
    FORWARD_IF_ERROR(pop(u, &pid));
    const pk_value *f = pid.kind == PK_TUPLE ? pid.obj->items : NULL;
    PK_CHECK(u, !f || pid.obj->n_items != 5 || !str_is(&f[0], "storage") ||
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
    size_t key_len = f[2].str.len, len = u->prefix_len + 5 + key_len;
    PK_CHECK(u, len > sizeof record, LMOE_ERR_BAD_FILE, "storage key of %zu bytes", key_len);
    memcpy(record, u->where, u->prefix_len);
    memcpy(record + u->prefix_len, "data/", 5);
    memcpy(record + u->prefix_len + 5, key, key_len);
    const zip_entry *e = zip_find(u->zip, record, len);
    PK_CHECK(u, !e, LMOE_ERR_BAD_FILE, "storage '%.*s' has no zip record '%.*s'", SHOWN(key_len),
             key, SHOWN(len), record);
    const uint8_t *data;
    FORWARD_IF_ERROR(zip_record_data(u->zip, e, &data));

    uint64_t elem = ggml_type_block_bytes(type), numel = (uint64_t)f[4].i;
    PK_CHECK(u, numel > e->size / elem, LMOE_ERR_BAD_FILE,
             "storage '%.*s' of %llu elements needs %llu bytes, its record has %llu",
             SHOWN(key_len), key, (unsigned long long)numel,
             numel > UINT64_MAX / elem ? UINT64_MAX : (unsigned long long)(numel * elem),
             (unsigned long long)e->size);
    /* consumers read tensors in place as float / uint16_t arrays; torch aligns records to 64 */
    PK_CHECK(u, (size_t)(data - u->zip->base) % elem != 0, LMOE_ERR_UNSUPPORTED,
             "storage '%.*s' starts at file offset %zu, not a multiple of its %llu-byte element",
             SHOWN(key_len), key, (size_t)(data - u->zip->base), (unsigned long long)elem);
    pk_value storage;
    FORWARD_IF_ERROR(new_obj(u, PK_STORAGE, &storage));
    storage.obj->type = type;
    storage.obj->data = data;
    storage.obj->numel = numel;
    return push(u, storage);
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
    FORWARD_IF_ERROR(new_obj(u, PK_TENSOR, out));
    pk_obj *t = out->obj;
    size_t elem = ggml_type_block_bytes(storage->type);
    t->type = storage->type;
    t->data = storage->data + offset * elem;
    t->numel = numel;
    t->n_dims = n_dims;
    memcpy(t->shape, size, n_dims * sizeof *size);
    return LMOE_OK;
}

/* REDUCE calls a global on an argument tuple; only the three callables a state dict uses. */
static lmoe_status op_reduce(unpickler *u) {
    pk_value args, callable, result;
    FORWARD_IF_ERROR(pop(u, &args));
    FORWARD_IF_ERROR(pop(u, &callable));
    PK_CHECK(u, callable.kind != PK_GLOBAL || args.kind != PK_TUPLE, LMOE_ERR_BAD_FILE,
             "REDUCE needs a global and an argument tuple");
    const pk_obj *a = args.obj;
    switch (callable.global) {
    case G_ORDERED_DICT:
        PK_CHECK(u, a->n_items != 0, LMOE_ERR_UNSUPPORTED, "OrderedDict called with arguments");
        FORWARD_IF_ERROR(new_obj(u, PK_DICT, &result));
        break;
    case G_REBUILD_TENSOR_V2:
        FORWARD_IF_ERROR(rebuild_tensor(u, a, &result));
        break;
    case G_REBUILD_PARAMETER: /* (tensor, requires_grad, backward_hooks): the tensor itself */
        PK_CHECK(u, a->n_items != 3 || a->items[0].kind != PK_TENSOR, LMOE_ERR_UNSUPPORTED,
                 "_rebuild_parameter with arguments other than (tensor, bool, hooks)");
        result = a->items[0];
        break;
    default:
        PK_FAIL(u, LMOE_ERR_UNSUPPORTED,
                "calls a storage type; only OrderedDict and _rebuild_tensor_v2 are called in a "
                "state dict");
    }
    return push(u, result);
}

/* SETITEM(S) into the dict under the items; n_values is 2 or SIZE_MAX (since the MARK). */
static lmoe_status op_setitems(unpickler *u, size_t n_values) {
    size_t start;
    if (n_values == SIZE_MAX) {
        FORWARD_IF_ERROR(pop_mark(u, &start));
    } else {
        PK_CHECK(u, u->n_stack - frame_floor(u) < 2, LMOE_ERR_BAD_FILE,
                 "SETITEM needs a key and a value");
        start = u->n_stack - 2;
    }
    PK_CHECK(u, (u->n_stack - start) % 2 != 0, LMOE_ERR_BAD_FILE,
             "SETITEMS with an odd number of values");
    PK_CHECK(u, start <= frame_floor(u) || u->stack[start - 1].kind != PK_DICT,
             LMOE_ERR_BAD_FILE, "SETITEM(S) on something that is not a dict");
    pk_obj *dict = u->stack[start - 1].obj;
    for (size_t i = start; i < u->n_stack; i++)
        FORWARD_IF_ERROR(obj_append(u, dict, u->stack[i]));
    u->n_stack = start;
    return LMOE_OK;
}

static lmoe_status op_appends(unpickler *u, size_t n_values) {
    size_t start;
    if (n_values == SIZE_MAX) {
        FORWARD_IF_ERROR(pop_mark(u, &start));
    } else {
        PK_CHECK(u, u->n_stack - frame_floor(u) < 1, LMOE_ERR_BAD_FILE, "APPEND needs a value");
        start = u->n_stack - 1;
    }
    PK_CHECK(u, start <= frame_floor(u) || u->stack[start - 1].kind != PK_LIST,
             LMOE_ERR_BAD_FILE, "APPEND(S) on something that is not a list");
    pk_obj *list = u->stack[start - 1].obj;
    for (size_t i = start; i < u->n_stack; i++)
        FORWARD_IF_ERROR(obj_append(u, list, u->stack[i]));
    u->n_stack = start;
    return LMOE_OK;
}

/* BUILD sets an object's state; torch only builds OrderedDicts (with empty state): ignored. */
static lmoe_status op_build(unpickler *u) {
    pk_value state, *target;
    FORWARD_IF_ERROR(pop(u, &state));
    FORWARD_IF_ERROR(peek(u, &target));
    PK_CHECK(u, target->kind != PK_DICT, LMOE_ERR_UNSUPPORTED,
             "BUILD on something other than an OrderedDict");
    return LMOE_OK;
}

static lmoe_status op_mark(unpickler *u) {
    size_t *marks = grow(u->marks, &u->cap_marks, u->n_marks + 1, sizeof *marks, PK_MAX_MARKS);
    PK_CHECK(u, !marks, LMOE_ERR_UNSUPPORTED, "more than %u nested MARKs (or out of memory)",
             PK_MAX_MARKS);
    u->marks = marks;
    u->marks[u->n_marks++] = u->n_stack;
    return LMOE_OK;
}

static lmoe_status op_proto(unpickler *u) {
    uint64_t version;
    FORWARD_IF_ERROR(take_uint(u, 1, &version));
    PK_CHECK(u, version > PK_MAX_PROTOCOL, LMOE_ERR_UNSUPPORTED,
             "pickle protocol %llu (at most %d supported)", (unsigned long long)version,
             PK_MAX_PROTOCOL);
    return LMOE_OK;
}

static lmoe_status op_new(unpickler *u, pk_kind kind) {
    pk_value v;
    FORWARD_IF_ERROR(new_obj(u, kind, &v));
    return push(u, v);
}

/* Runs one opcode; *stop is set by STOP. */
static lmoe_status step(unpickler *u, uint8_t op, int *stop) {
    uint64_t n;
    switch (op) {
    case 0x80: return op_proto(u);                                   /* PROTO */
    case 0x95: return take_uint(u, 8, &n);                           /* FRAME: a buffering hint */
    case '}': return op_new(u, PK_DICT);                             /* EMPTY_DICT */
    case ']': return op_new(u, PK_LIST);                             /* EMPTY_LIST */
    case ')': return op_tuple(u, 0);                                 /* EMPTY_TUPLE */
    case '(': return op_mark(u);                                     /* MARK */
    case 'q': FORWARD_IF_ERROR(take_uint(u, 1, &n)); return op_put(u, n); /* BINPUT */
    case 'r': FORWARD_IF_ERROR(take_uint(u, 4, &n)); return op_put(u, n); /* LONG_BINPUT */
    case 'h': FORWARD_IF_ERROR(take_uint(u, 1, &n)); return op_get(u, n); /* BINGET */
    case 'j': FORWARD_IF_ERROR(take_uint(u, 4, &n)); return op_get(u, n); /* LONG_BINGET */
    case 0x94: return op_put(u, u->n_memo_set);                      /* MEMOIZE */
    case 'X': return op_string(u, 4);                                /* BINUNICODE */
    case 0x8c: return op_string(u, 1);                               /* SHORT_BINUNICODE */
    case 0x8d: return op_string(u, 8);                               /* BINUNICODE8 */
    case 'J': return op_int(u, 4, 1);                                /* BININT */
    case 'K': return op_int(u, 1, 0);                                /* BININT1 */
    case 'M': return op_int(u, 2, 0);                                /* BININT2 */
    case 0x8a: return op_long1(u);                                   /* LONG1 */
    case 'N': return push(u, (pk_value){.kind = PK_NONE});           /* NONE */
    case 0x88: return push(u, (pk_value){.kind = PK_BOOL, .i = 1});  /* NEWTRUE */
    case 0x89: return push(u, (pk_value){.kind = PK_BOOL, .i = 0});  /* NEWFALSE */
    case 't': return op_tuple(u, SIZE_MAX);                          /* TUPLE */
    case 0x85: return op_tuple(u, 1);                                /* TUPLE1 */
    case 0x86: return op_tuple(u, 2);                                /* TUPLE2 */
    case 0x87: return op_tuple(u, 3);                                /* TUPLE3 */
    case 'c': return op_global(u);                                   /* GLOBAL */
    case 0x93: return op_stack_global(u);                            /* STACK_GLOBAL */
    case 'Q': return op_persistent_id(u);                            /* BINPERSID */
    case 'R': return op_reduce(u);                                   /* REDUCE */
    case 's': return op_setitems(u, 2);                              /* SETITEM */
    case 'u': return op_setitems(u, SIZE_MAX);                       /* SETITEMS */
    case 'a': return op_appends(u, 1);                               /* APPEND */
    case 'e': return op_appends(u, SIZE_MAX);                        /* APPENDS */
    case 'b': return op_build(u);                                    /* BUILD */
    case '.': *stop = 1; return LMOE_OK;                             /* STOP */
    default: break;
    }
    PK_FAIL(u, LMOE_ERR_UNSUPPORTED,
            "opcode 0x%02x ('%c') is not one a state dict uses (refused: this reader runs no "
            "code)", op, op >= 0x20 && op < 0x7f ? op : '?');
}

static lmoe_status run_pickle(unpickler *u, pk_value *result) {
    for (int stop = 0; !stop;) {
        u->op_pos = u->pos;
        PK_CHECK(u, u->pos >= u->size, LMOE_ERR_BAD_FILE, "the pickle ends without STOP");
        FORWARD_IF_ERROR(step(u, u->code[u->pos++], &stop));
    }
    return pop(u, result);
}

/* ---------------------------------------------------------------------------------------------
 * the state dict
 * ------------------------------------------------------------------------------------------- */

/* The record <prefix>/data.pkl, whatever the prefix; exactly one. */
static lmoe_status find_pickle(const zip_archive *zip, unpickler *u) {
    static const char suffix[] = "/data.pkl";
    const size_t suffix_len = sizeof suffix - 1;
    const zip_entry *found = NULL;
    for (size_t i = 0; i < zip->n_entries; i++) {
        const zip_entry *e = &zip->entries[i];
        if (e->name_len < suffix_len ||
            memcmp(e->name + e->name_len - suffix_len, suffix, suffix_len) != 0)
            continue;
        RETURN_ERROR_IF(found, LMOE_ERR_BAD_FILE,
                        "zip: two pickles, '%.*s' and '%.*s': not one torch.save file",
                        SHOWN(found->name_len), found->name, SHOWN(e->name_len), e->name);
        found = e;
    }
    RETURN_ERROR_IF(!found, LMOE_ERR_BAD_FILE,
                    "zip: no '<prefix>/data.pkl' record: not a torch.save file");
    FORWARD_IF_ERROR(zip_record_data(zip, found, &u->code));
    u->size = (size_t)found->size;
    u->zip = zip;
    u->where = found->name;
    u->where_len = found->name_len;
    u->prefix_len = found->name_len - (suffix_len - 1); /* keeps the '/' */
    return LMOE_OK;
}

/* torch >= 2.1 records the byte order of the storages in <prefix>/byteorder; older files have
 * none and are little-endian. The tensors are handed out as little-endian, so "big" is refused. */
static lmoe_status check_byte_order(const unpickler *u) {
    char name[NAME_MAX_SHOWN + 16];
    size_t len = u->prefix_len + strlen("byteorder");
    if (len > sizeof name) return LMOE_OK; /* no such long prefix was ever written by torch */
    memcpy(name, u->where, u->prefix_len);
    memcpy(name + u->prefix_len, "byteorder", len - u->prefix_len);
    const zip_entry *e = zip_find(u->zip, name, len);
    if (!e) return LMOE_OK;
    const uint8_t *data;
    FORWARD_IF_ERROR(zip_record_data(u->zip, e, &data));
    RETURN_ERROR_IF(e->size != 6 || memcmp(data, "little", 6) != 0, LMOE_ERR_UNSUPPORTED,
                    "zip: record '%.*s' says the storages are not little-endian ('%.*s'); "
                    "only little-endian files are supported", SHOWN(len), name,
                    SHOWN(e->size < 16 ? e->size : 16), (const char *)data);
    return LMOE_OK;
}

/* The unpickled object must be a dict {str: tensor}; each entry becomes a ckpt_tensor. */
static lmoe_status collect_tensors(unpickler *u, const pk_value *root, ckpt_file *out) {
    u->op_pos = u->size;
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
    zip_archive zip = {.base = data, .size = size};
    unpickler u = {0};
    pk_value root;
    lmoe_status status = read_zip(&zip);
    if (status != LMOE_OK) status = explain_not_zip(data, size, status);
    if (status == LMOE_OK) status = find_pickle(&zip, &u);
    if (status == LMOE_OK) status = check_byte_order(&u);
    if (status == LMOE_OK) status = run_pickle(&u, &root);
    if (status == LMOE_OK) status = collect_tensors(&u, &root, out);
    unpickler_free(&u);
    free(zip.entries);
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
