/* params.h - versioned params structs: filling defaults and reading a caller's struct.
 *
 * Every public params struct starts with `size_t struct_size` and only ever grows at the end.
 * A caller compiled against an older header passes a smaller struct: the fields it does not know
 * keep their defaults. A caller compiled against a newer header passes a larger one: that is
 * accepted only if every byte we do not know is zero, because a nonzero byte there is a setting
 * this library would silently ignore. */
#ifndef LMOE_PARAMS_H
#define LMOE_PARAMS_H

#include <stddef.h>

#include "llamamoe.h"

/* Writes the defaults of a params struct into the caller's struct of dst_size bytes (their
 * sizeof). defaults is our own struct of defaults_size bytes (our sizeof); min_size is the size of
 * the struct's first published version. Bytes past defaults_size are zeroed (fields of a newer
 * header that this library does not know: zero is what params_read accepts), and struct_size is
 * set to dst_size. what starts each message and names the struct, e.g. "sampler params".
 * Fails with LMOE_ERR_INVALID_ARGUMENT if dst is NULL or dst_size < min_size. */
lmoe_status params_write_defaults(void *dst, size_t dst_size, const void *defaults,
                                  size_t defaults_size, size_t min_size, const char *what);

/* Reads a caller's params struct src (whose first member is its size_t struct_size) into our
 * struct dst of dst_size bytes, which the caller has already filled with defaults: fields beyond
 * src's struct_size keep them. Afterwards dst's struct_size is dst_size.
 * Fails with LMOE_ERR_INVALID_ARGUMENT if src is NULL or its struct_size < min_size, and with
 * LMOE_ERR_UNSUPPORTED if it is larger than dst_size with a nonzero byte past dst_size. */
lmoe_status params_read(void *dst, size_t dst_size, const void *src, size_t min_size,
                        const char *what);

#endif
