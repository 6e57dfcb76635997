/* log.c - see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

void lmoe_log(const lmoe_logger *logger, lmoe_log_level level, const char *fmt, ...) {
    if (!logger || !logger->fn || level > logger->max_level) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    logger->fn(logger->user, level, line);
}
