/* zip_archive.c - the ZIP container under torch.save files: the end-of-central-directory record
 * (and the ZIP64 end record and locator, since real shards are over 4 GB), the central directory
 * (with the ZIP64 extended-information extra field), and the local headers in front of each
 * record's data. See zip_archive.h.
 *
 * Split from the torch.save reader so that every bounds check on the archive lives here: the
 * callers get records by name and a pointer/size pair already checked against the buffer. */
#include "zip_archive.h"

#include <stdlib.h>
#include <string.h>

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
 * end records, central directory, local headers
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

/* The central directory into zip->entries (for the caller to free, also on failure). */
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

const zip_entry *zip_find(const zip_archive *zip, const char *name, size_t name_len) {
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

const zip_entry *zip_find_suffix(const zip_archive *zip, const char *suffix, size_t suffix_len,
                                 const zip_entry *after) {
    for (size_t i = after ? (size_t)(after - zip->entries) + 1 : 0; i < zip->n_entries; i++) {
        const zip_entry *e = &zip->entries[i];
        if (e->name_len >= suffix_len &&
            memcmp(e->name + e->name_len - suffix_len, suffix, suffix_len) == 0)
            return e;
    }
    return NULL;
}

/* The bytes of a stored record, through its local header (whose name and extra field lengths may
 * differ from the central directory's: torch pads the local extra field to align the data). */
lmoe_status zip_record_data(const zip_archive *zip, const zip_entry *e, const uint8_t **data) {
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

lmoe_status zip_archive_open(zip_archive *zip, const void *data, size_t size) {
    *zip = (zip_archive){.base = data, .size = size};
    lmoe_status status = read_zip(zip);
    if (status != LMOE_OK) zip_archive_close(zip);
    return status;
}

void zip_archive_close(zip_archive *zip) {
    free(zip->entries);
    zip->entries = NULL;
    zip->n_entries = 0;
}
