/* zip_archive.h - a read-only view of a ZIP archive held in memory (PKWARE APPNOTE 6.3, with
 * ZIP64), for the torch.save reader. Nothing is copied or decompressed: records are found by name
 * in the central directory and handed out as pointers into the caller's buffer, after every
 * offset and size involved has been checked against it. Only stored (uncompressed, unencrypted)
 * records can be read, which is all torch.save writes.
 *
 * Internal to the converters (pytorch_zip.c); a separate file so the container format is read in
 * one place and the pickle and state-dict code never see an offset into the archive. */
#ifndef LMOE_ZIP_ARCHIVE_H
#define LMOE_ZIP_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>

#include "llamamoe.h"

/* One central directory entry. The sizes and offset are the ZIP64 ones where the entry has them;
 * nothing here has been checked against the buffer until zip_record_data. */
typedef struct zip_entry {
    const char *name;            /* in the buffer, not NUL-terminated */
    size_t name_len;
    uint16_t flags, method;
    uint64_t comp_size, size, local_offset;
} zip_entry;

typedef struct zip_archive {
    const uint8_t *base;         /* the caller's buffer, not owned */
    size_t size;
    zip_entry *entries;          /* owned; sorted by name, no two alike */
    size_t n_entries;
} zip_archive;

/* Reads the end records and the central directory of the size bytes at data (not copied: they must
 * outlive *zip). Errors (LMOE_ERR_BAD_FILE, LMOE_ERR_UNSUPPORTED, LMOE_ERR_OUT_OF_MEMORY) say
 * "zip: ..." and name the record or offset; on failure *zip owns nothing. */
lmoe_status zip_archive_open(zip_archive *zip, const void *data, size_t size);
void zip_archive_close(zip_archive *zip);

/* The entry named exactly name (name_len bytes), or NULL. */
const zip_entry *zip_find(const zip_archive *zip, const char *name, size_t name_len);

/* The first entry, in name order, whose name ends with suffix and that comes after `after` (NULL:
 * from the start; otherwise an entry of this archive), or NULL. */
const zip_entry *zip_find_suffix(const zip_archive *zip, const char *suffix, size_t suffix_len,
                                 const zip_entry *after);

/* The e->size bytes of a stored record, through its local header: refuses encrypted and
 * compressed records, and checks the local header and the data lie inside the buffer and that the
 * header names the same record. */
lmoe_status zip_record_data(const zip_archive *zip, const zip_entry *e, const uint8_t **data);

#endif
