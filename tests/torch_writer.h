/* torch_writer.h - byte-exact writers of the checkpoint files the converter reads: torch.save zips
 * (the container torch's PyTorchStreamWriter writes, and the pickled state dict inside it) and
 * safetensors files. Plain functions with no test harness, shared by tests/test_checkpoint.c (good
 * and bad inputs) and fuzz/seedgen.c (seeds), so the formats are written down once. Allocation
 * failure aborts: only a test or a seed generator calls these. */
#ifndef LMOE_TORCH_WRITER_H
#define LMOE_TORCH_WRITER_H

#include <stddef.h>
#include <stdint.h>

/* ---- a growable byte buffer ---- */

typedef struct tw_bytes {
    uint8_t *data;               /* malloc'd; free with tw_bytes_free */
    size_t len, cap;
} tw_bytes;

void tw_put(tw_bytes *b, const void *src, size_t n);
void tw_put_u8(tw_bytes *b, unsigned v);
void tw_put_le(tw_bytes *b, uint64_t v, size_t n_bytes); /* little-endian, n_bytes <= 8 */
void tw_put_str(tw_bytes *b, const char *s);             /* without the NUL */
void tw_bytes_free(tw_bytes *b);

/* ---- safetensors ---- */

/* 8-byte header length, the JSON padded with spaces to a multiple of 8, then data_len bytes. The
 * JSON is written as given, so it may lie about offsets and shapes. */
tw_bytes tw_make_safetensors(const char *json, const void *data, size_t data_len);

/* ---- zip archives ---- */

typedef struct tw_zip_record {
    const char *name;
    const void *data;
    size_t len;
    uint16_t method;             /* 0 stored; anything else is only written into the headers */
} tw_zip_record;

typedef struct tw_zip_opts {
    int zip64_end;               /* write the ZIP64 end record and locator (torch always does) */
    int zip64_extra;             /* sizes/offsets as 0xFFFFFFFF + the zip64 extra field */
    int align;                   /* pad local headers (an extra field) so data starts at 64n */
    uint64_t force_size;         /* nonzero: this size in the central directory of record .. */
    int force_size_record;       /* .. this one */
    uint64_t force_offset;       /* nonzero: this local header offset for force_size_record */
} tw_zip_opts;

/* CRC-32 (ISO-HDLC, as zip uses): the readers do not check it, but other zip tools do. */
uint32_t tw_crc32(const void *data, size_t len);

/* Writes records like torch's PyTorchStreamWriter (miniz): local headers with flags 0x0808 and
 * zero sizes, data aligned to 64 bytes through an "FB" extra field of 'Z's (with align), a data
 * descriptor, the central directory, and the end records. At most 32 records. */
tw_bytes tw_make_zip(const tw_zip_record *recs, size_t n, const tw_zip_opts *o);

/* ---- pickled state dicts ---- */

enum { TW_FLOAT = 0, TW_HALF = 1, TW_BFLOAT16 = 2 }; /* torch.{Float,Half,BFloat16}Storage */

typedef struct tw_tensor {
    const char *name;
    int type;                    /* TW_FLOAT, TW_HALF or TW_BFLOAT16 */
    const char *key;             /* storage record data/<key> */
    int64_t numel;               /* storage elements, in the persistent id */
    int64_t offset;              /* storage_offset */
    int n_dims;                  /* 0 to 4 */
    int64_t size[4], stride[4];
} tw_tensor;

/* torch.save({name: tensor, ...}) as torch 1.13 writes it: protocol 2 (BINUNICODE, GLOBAL,
 * BINPUT), or with proto4 protocol 4 (a FRAME, SHORT_BINUNICODE, STACK_GLOBAL, MEMOIZE). Each
 * tensor is _rebuild_tensor_v2 of a persistent-id storage; as_parameter wraps each in
 * _rebuild_parameter, as pickling an nn.Parameter does. Values are written as given. */
tw_bytes tw_make_pickle(const tw_tensor *t, size_t n, int proto4, int as_parameter);

#endif
