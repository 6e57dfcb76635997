/* torch_writer.c - see torch_writer.h. The byte layouts follow what torch 1.13 (zip: miniz through
 * PyTorchStreamWriter; pickle: Python's pickler, protocol 2 and 4) and the safetensors library
 * write, field by field; tools/convert/zip_archive.c, pickle.c and safetensors.c read them. */
#include "torch_writer.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * bytes
 * ------------------------------------------------------------------------------------------- */

void tw_put(tw_bytes *b, const void *src, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data) abort(); /* a test or generator may stop on OOM */
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, src, n);
    b->len += n;
}

void tw_put_u8(tw_bytes *b, unsigned v) {
    uint8_t x = (uint8_t)v;
    tw_put(b, &x, 1);
}

void tw_put_le(tw_bytes *b, uint64_t v, size_t n) {
    for (size_t i = 0; i < n; i++) tw_put_u8(b, (unsigned)(v >> (8 * i)) & 0xFF);
}

void tw_put_str(tw_bytes *b, const char *s) { tw_put(b, s, strlen(s)); }

void tw_bytes_free(tw_bytes *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------------------------------------
 * safetensors
 * ------------------------------------------------------------------------------------------- */

tw_bytes tw_make_safetensors(const char *json, const void *data, size_t data_len) {
    tw_bytes b = {0};
    size_t n = strlen(json), padded = (n + 7) / 8 * 8;
    tw_put_le(&b, padded, 8);
    tw_put_str(&b, json);
    for (size_t i = n; i < padded; i++) tw_put_u8(&b, ' ');
    tw_put(&b, data, data_len);
    return b;
}

/* ---------------------------------------------------------------------------------------------
 * zip archives
 * ------------------------------------------------------------------------------------------- */

uint32_t tw_crc32(const void *data, size_t len) {
    const uint8_t *p = data;
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = crc >> 1 ^ (0xEDB88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

tw_bytes tw_make_zip(const tw_zip_record *recs, size_t n, const tw_zip_opts *o) {
    tw_bytes b = {0};
    uint64_t offsets[32];
    if (n > sizeof offsets / sizeof offsets[0]) abort(); /* a caller's mistake, not input */
    for (size_t i = 0; i < n; i++) {
        offsets[i] = b.len;
        size_t name_len = strlen(recs[i].name), extra = 0;
        if (o->align) {
            size_t at = b.len + 30 + name_len + 4;
            extra = 4 + (64 - at % 64) % 64;
        }
        tw_put_le(&b, 0x04034b50, 4);
        tw_put_le(&b, 0, 2);
        tw_put_le(&b, 0x0808, 2);
        tw_put_le(&b, recs[i].method, 2);
        tw_put_le(&b, 0, 4); /* time, date */
        tw_put_le(&b, 0, 4); /* crc (in the descriptor) */
        tw_put_le(&b, 0, 8); /* sizes (in the descriptor) */
        tw_put_le(&b, name_len, 2);
        tw_put_le(&b, extra, 2);
        tw_put_str(&b, recs[i].name);
        if (extra) {
            tw_put_le(&b, 0x4246, 2); /* "FB" */
            tw_put_le(&b, extra - 4, 2);
            for (size_t k = 4; k < extra; k++) tw_put_u8(&b, 'Z');
        }
        tw_put(&b, recs[i].data, recs[i].len);
        tw_put_le(&b, 0x08074b50, 4);
        tw_put_le(&b, tw_crc32(recs[i].data, recs[i].len), 4);
        tw_put_le(&b, recs[i].len, 4);
        tw_put_le(&b, recs[i].len, 4);
    }
    uint64_t cd_start = b.len;
    for (size_t i = 0; i < n; i++) {
        uint64_t size = recs[i].len, offset = offsets[i];
        if (o->force_size && (size_t)o->force_size_record == i) size = o->force_size;
        if (o->force_offset && (size_t)o->force_size_record == i) offset = o->force_offset;
        int big = o->zip64_extra || size >= 0xFFFFFFFFu || offset >= 0xFFFFFFFFu;
        tw_put_le(&b, 0x02014b50, 4);
        tw_put_le(&b, 0x031e, 2);
        tw_put_le(&b, 0x2d, 2);
        tw_put_le(&b, 0x0808, 2);
        tw_put_le(&b, recs[i].method, 2);
        tw_put_le(&b, 0, 4);
        tw_put_le(&b, tw_crc32(recs[i].data, recs[i].len), 4);
        tw_put_le(&b, big ? 0xFFFFFFFFu : size, 4);
        tw_put_le(&b, big ? 0xFFFFFFFFu : size, 4);
        tw_put_le(&b, strlen(recs[i].name), 2);
        tw_put_le(&b, big ? 28 : 0, 2);
        tw_put_le(&b, 0, 2); /* comment */
        tw_put_le(&b, 0, 2); /* disk */
        tw_put_le(&b, 0, 2);
        tw_put_le(&b, 0, 4);
        tw_put_le(&b, big ? 0xFFFFFFFFu : offset, 4);
        tw_put_str(&b, recs[i].name);
        if (big) {
            tw_put_le(&b, 1, 2);
            tw_put_le(&b, 24, 2);
            tw_put_le(&b, size, 8);
            tw_put_le(&b, size, 8);
            tw_put_le(&b, offset, 8);
        }
    }
    uint64_t cd_size = b.len - cd_start;
    if (o->zip64_end) {
        uint64_t eocd64 = b.len;
        tw_put_le(&b, 0x06064b50, 4);
        tw_put_le(&b, 44, 8);
        tw_put_le(&b, 0x031e, 2);
        tw_put_le(&b, 0x2d, 2);
        tw_put_le(&b, 0, 4);
        tw_put_le(&b, 0, 4);
        tw_put_le(&b, n, 8);
        tw_put_le(&b, n, 8);
        tw_put_le(&b, cd_size, 8);
        tw_put_le(&b, cd_start, 8);
        tw_put_le(&b, 0x07064b50, 4);
        tw_put_le(&b, 0, 4);
        tw_put_le(&b, eocd64, 8);
        tw_put_le(&b, 1, 4);
    }
    tw_put_le(&b, 0x06054b50, 4);
    tw_put_le(&b, 0, 2);
    tw_put_le(&b, 0, 2);
    tw_put_le(&b, n, 2);
    tw_put_le(&b, n, 2);
    tw_put_le(&b, cd_size, 4);
    tw_put_le(&b, cd_start, 4);
    tw_put_le(&b, 0, 2);
    return b;
}

/* ---------------------------------------------------------------------------------------------
 * pickles, assembled opcode by opcode
 * ------------------------------------------------------------------------------------------- */

typedef struct pickler {
    tw_bytes b;
    int proto4;                  /* SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE instead of X, c, q */
    uint32_t next_memo;
    /* memo slots of what torch's pickler memoizes once and fetches again (0 = not yet) */
    uint32_t memo_rebuild, memo_dict, memo_storage_str, memo_cpu, memo_type[3];
} pickler;

static void pk_put_memo(pickler *p) {
    if (p->proto4) {
        tw_put_u8(&p->b, 0x94);
    } else if (p->next_memo < 256) {
        tw_put_u8(&p->b, 'q');
        tw_put_u8(&p->b, p->next_memo);
    } else {
        tw_put_u8(&p->b, 'r');
        tw_put_le(&p->b, p->next_memo, 4);
    }
    p->next_memo++;
}

static void pk_get(pickler *p, uint32_t slot) {
    if (slot < 256) {
        tw_put_u8(&p->b, 'h');
        tw_put_u8(&p->b, slot);
    } else {
        tw_put_u8(&p->b, 'j');
        tw_put_le(&p->b, slot, 4);
    }
}

static void pk_string(pickler *p, const char *s) {
    size_t n = strlen(s);
    if (p->proto4 && n < 256) {
        tw_put_u8(&p->b, 0x8c);
        tw_put_u8(&p->b, (unsigned)n);
    } else {
        tw_put_u8(&p->b, 'X');
        tw_put_le(&p->b, n, 4);
    }
    tw_put_str(&p->b, s);
    pk_put_memo(p);
}

/* Pushes a memoized string or global, fetching it from the memo after the first time. */
static void pk_global(pickler *p, const char *module, const char *name, uint32_t *slot) {
    if (*slot) {
        pk_get(p, *slot - 1);
        return;
    }
    if (p->proto4) {
        pk_string(p, module);
        pk_string(p, name);
        tw_put_u8(&p->b, 0x93);
    } else {
        tw_put_u8(&p->b, 'c');
        tw_put_str(&p->b, module);
        tw_put_u8(&p->b, '\n');
        tw_put_str(&p->b, name);
        tw_put_u8(&p->b, '\n');
    }
    *slot = p->next_memo + 1;
    pk_put_memo(p);
}

static void pk_memo_string(pickler *p, const char *s, uint32_t *slot) {
    if (*slot) {
        pk_get(p, *slot - 1);
        return;
    }
    *slot = p->next_memo + 1;
    pk_string(p, s);
}

/* Python's pickler: BININT1, BININT2, BININT, then LONG1. */
static void pk_int(pickler *p, int64_t v) {
    if (v >= 0 && v < 256) {
        tw_put_u8(&p->b, 'K');
        tw_put_u8(&p->b, (unsigned)v);
    } else if (v >= 0 && v < 65536) {
        tw_put_u8(&p->b, 'M');
        tw_put_le(&p->b, (uint64_t)v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        tw_put_u8(&p->b, 'J');
        tw_put_le(&p->b, (uint64_t)v, 4);
    } else {
        tw_put_u8(&p->b, 0x8a);
        tw_put_u8(&p->b, 8);
        tw_put_le(&p->b, (uint64_t)v, 8);
    }
}

static void pk_int_tuple(pickler *p, const int64_t *v, int n) {
    if (n == 0) {
        tw_put_u8(&p->b, ')');
    } else if (n <= 3) {
        for (int i = 0; i < n; i++) pk_int(p, v[i]);
        tw_put_u8(&p->b, 0x84 + n); /* TUPLE1..3 */
    } else {
        tw_put_u8(&p->b, '(');
        for (int i = 0; i < n; i++) pk_int(p, v[i]);
        tw_put_u8(&p->b, 't');
    }
    pk_put_memo(p);
}

static const char *const STORAGE_NAMES[3] = {"FloatStorage", "HalfStorage", "BFloat16Storage"};

tw_bytes tw_make_pickle(const tw_tensor *t, size_t n, int proto4, int as_parameter) {
    pickler p = {.proto4 = proto4};
    uint32_t memo_param = 0;
    tw_put_u8(&p.b, 0x80);
    tw_put_u8(&p.b, proto4 ? 4 : 2);
    if (proto4) { /* a FRAME around everything, as protocol 4 writes it */
        tw_put_u8(&p.b, 0x95);
        tw_put_le(&p.b, 0, 8);
    }
    tw_put_u8(&p.b, '}');
    pk_put_memo(&p);
    tw_put_u8(&p.b, '(');
    for (size_t i = 0; i < n; i++) {
        pk_string(&p, t[i].name);
        if (as_parameter) {
            pk_global(&p, "torch._utils", "_rebuild_parameter", &memo_param);
            tw_put_u8(&p.b, '(');
        }
        pk_global(&p, "torch._utils", "_rebuild_tensor_v2", &p.memo_rebuild);
        tw_put_u8(&p.b, '(');
        tw_put_u8(&p.b, '(');
        pk_memo_string(&p, "storage", &p.memo_storage_str);
        pk_global(&p, "torch", STORAGE_NAMES[t[i].type], &p.memo_type[t[i].type]);
        pk_string(&p, t[i].key);
        pk_memo_string(&p, "cpu", &p.memo_cpu);
        pk_int(&p, t[i].numel);
        tw_put_u8(&p.b, 't');
        pk_put_memo(&p);
        tw_put_u8(&p.b, 'Q');
        pk_int(&p, t[i].offset);
        pk_int_tuple(&p, t[i].size, t[i].n_dims);
        pk_int_tuple(&p, t[i].stride, t[i].n_dims);
        tw_put_u8(&p.b, 0x89);
        pk_global(&p, "collections", "OrderedDict", &p.memo_dict);
        tw_put_u8(&p.b, ')');
        tw_put_u8(&p.b, 'R');
        pk_put_memo(&p);
        tw_put_u8(&p.b, 't');
        pk_put_memo(&p);
        tw_put_u8(&p.b, 'R');
        pk_put_memo(&p);
        if (as_parameter) {
            tw_put_u8(&p.b, 0x88);
            pk_global(&p, "collections", "OrderedDict", &p.memo_dict);
            tw_put_u8(&p.b, ')');
            tw_put_u8(&p.b, 'R');
            pk_put_memo(&p);
            tw_put_u8(&p.b, 't');
            pk_put_memo(&p);
            tw_put_u8(&p.b, 'R');
            pk_put_memo(&p);
        }
    }
    tw_put_u8(&p.b, 'u');
    tw_put_u8(&p.b, '.');
    return p.b;
}
