/* log.h - passing diagnostics to the caller's log callback (the library never prints). */
#ifndef LMOE_LOG_H
#define LMOE_LOG_H

#include "error.h"
#include "llamamoe.h"

typedef struct lmoe_logger {
    lmoe_log_fn fn;          /* NULL: logging off */
    void *user;
    lmoe_log_level max_level; /* most detailed level passed on */
} lmoe_logger;

/* Formats one line and passes it to logger->fn if level <= max_level. */
void lmoe_log(const lmoe_logger *logger, lmoe_log_level level, const char *fmt, ...)
    LMOE_PRINTF(3, 4);

#endif
