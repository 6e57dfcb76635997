/* params.c - versioned params structs (see params.h). */
#include "params.h"

#include <string.h>

#include "error.h"

lmoe_status params_write_defaults(void *dst, size_t dst_size, const void *defaults,
                                  size_t defaults_size, size_t min_size, const char *what) {
    RETURN_ERROR_IF(dst == NULL, LMOE_ERR_INVALID_ARGUMENT, "%s: params is NULL", what);
    RETURN_ERROR_IF(dst_size < min_size, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: params_size %zu is smaller than the smallest version (%zu bytes)",
                    what, dst_size, min_size);
    size_t n_known = dst_size < defaults_size ? dst_size : defaults_size;
    memcpy(dst, defaults, n_known);
    memset((unsigned char *)dst + n_known, 0, dst_size - n_known);
    memcpy(dst, &dst_size, sizeof dst_size); /* struct_size: the caller's own sizeof */
    return LMOE_OK;
}

/* Returns 1 if bytes [from, to) of p are all zero. */
static int bytes_are_zero(const unsigned char *p, size_t from, size_t to) {
    for (size_t i = from; i < to; i++)
        if (p[i] != 0) return 0;
    return 1;
}

lmoe_status params_read(void *dst, size_t dst_size, const void *src, size_t min_size,
                        const char *what) {
    RETURN_ERROR_IF(src == NULL, LMOE_ERR_INVALID_ARGUMENT, "%s: params is NULL", what);
    size_t src_size;
    memcpy(&src_size, src, sizeof src_size); /* no alignment assumption about the caller's struct */
    RETURN_ERROR_IF(src_size < min_size, LMOE_ERR_INVALID_ARGUMENT,
                    "%s: struct_size %zu is smaller than the smallest version (%zu bytes); "
                    "fill the struct with its lmoe_*_default_params function",
                    what, src_size, min_size);
    RETURN_ERROR_IF(src_size > dst_size && !bytes_are_zero(src, dst_size, src_size),
                    LMOE_ERR_UNSUPPORTED,
                    "%s: struct_size %zu is larger than this library's %zu and sets fields "
                    "it does not know (params struct from a newer header)",
                    what, src_size, dst_size);
    memcpy(dst, src, src_size < dst_size ? src_size : dst_size);
    memcpy(dst, &dst_size, sizeof dst_size);
    return LMOE_OK;
}
