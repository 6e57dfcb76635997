/* error.c - thread-local error detail and the fixed text of each status code. */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ERROR_TEXT_MAX 512

static _Thread_local char last_error_text[ERROR_TEXT_MAX];

lmoe_status lmoe_error(lmoe_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error_text, sizeof last_error_text, fmt, ap);
    va_end(ap);
    return status;
}

lmoe_status lmoe_error_prefix(lmoe_status status, const char *fmt, ...) {
    if (status == LMOE_OK) return status;
    char prefix[ERROR_TEXT_MAX], old[ERROR_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error_text, sizeof old);
    /* prefix + ": " + old, cut to fit (built by hand: snprintf would warn about truncation) */
    size_t n = strlen(prefix);
    memcpy(last_error_text, prefix, n + 1);
    if (n + 2 < sizeof last_error_text) {
        memcpy(last_error_text + n, ": ", 3);
        size_t room = sizeof last_error_text - (n + 2) - 1, old_len = strlen(old);
        if (old_len > room) old_len = room;
        memcpy(last_error_text + n + 2, old, old_len);
        last_error_text[n + 2 + old_len] = 0;
    }
    return status;
}

const char *lmoe_last_error(void) { return last_error_text; }

const char *lmoe_status_string(lmoe_status status) {
    switch (status) {
    case LMOE_OK: return "success";
    case LMOE_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LMOE_ERR_IO: return "input/output error";
    case LMOE_ERR_BAD_FILE: return "malformed file";
    case LMOE_ERR_UNSUPPORTED: return "unsupported";
    case LMOE_ERR_OUT_OF_MEMORY: return "out of memory";
    case LMOE_ERR_CONTEXT_FULL: return "context full";
    case LMOE_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case LMOE_ERR_MISUSE: return "library misuse";
    case LMOE_ERR_ABORTED: return "aborted";
    case LMOE_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}
