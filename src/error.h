/* error.h - the thread-local error detail behind lmoe_last_error(), and the macros that set it. */
#ifndef LMOE_ERROR_H
#define LMOE_ERROR_H

#include "llamamoe.h"

#if defined(__GNUC__)
#define LMOE_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define LMOE_PRINTF(fmt_idx, arg_idx)
#endif

/* Records a formatted message as the calling thread's last error and returns status unchanged,
 * so a failing path reads `return lmoe_error(LMOE_ERR_BAD_FILE, "...", ...);`. */
lmoe_status lmoe_error(lmoe_status status, const char *fmt, ...) LMOE_PRINTF(2, 3);

/* Returns status after prefixing the current message with "prefix: " (adds context on the way up,
 * e.g. the file name). Does nothing for LMOE_OK. */
lmoe_status lmoe_error_prefix(lmoe_status status, const char *fmt, ...) LMOE_PRINTF(2, 3);

/* Fails the enclosing function with status and a message when cond holds. (The status is
 * returned directly rather than through lmoe_error so the compiler sees a nonzero constant and
 * knows the caller's outputs are not used on that path.) */
#define RETURN_ERROR_IF(cond, status, ...)                                                          \
    do {                                                                                            \
        if (cond) {                                                                                 \
            lmoe_error((status), __VA_ARGS__);                                                      \
            return (status);                                                                        \
        }                                                                                           \
    } while (0)

/* Returns from the enclosing function with the status of expr when it is not LMOE_OK; the message
 * was set by whoever failed. */
#define FORWARD_IF_ERROR(expr)                                                                      \
    do {                                                                                            \
        lmoe_status forward_status_ = (expr);                                                       \
        if (forward_status_ != LMOE_OK) return forward_status_;                                     \
    } while (0)

#endif
